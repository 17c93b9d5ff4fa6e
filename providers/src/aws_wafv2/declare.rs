//! The `aws-wafv2` kind and `waf.block`, as people meet them: CLI verb,
//! `tourniquet ops`, typed params and readable changes.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::registry::{
    declaration, list_text, param_strings, strings_at, Change, Declaration, KindDecl, OpDecl,
    ParamDecl, ParamKind, Placement, Rendered,
};
use crate::{ConfigError, Provider, ProviderError};

use super::{Waf, WafConfig, OP};

pub static KIND: KindDecl = KindDecl {
    kind: "aws-wafv2",
    about: "A WAFv2 IP set that a blocking web ACL rule uses",
    ops: &[&BLOCK],
    config: declaration::<WafConfig>,
};

pub static BLOCK: OpDecl = OpDecl {
    name: OP,
    about: "Add networks to a WAF IP set that a web ACL blocks",
    example: "tourniquet waf block edge-waf 203.0.113.7/32 --reason \"INC-7: credential stuffing\" --hold 2h --to http://127.0.0.1:7370",
    params: &[ParamDecl {
        name: "cidrs",
        kind: ParamKind::Cidr,
        doc: "Networks (or single addresses) to block; all of the IP set's family",
        example: "203.0.113.7/32",
        required: true,
        placement: Placement::Positional,
        repeatable: true,
    }],
    reversible: true,
    render: render_block,
};

fn canonical_set(items: &[String]) -> BTreeSet<String> {
    items
        .iter()
        .map(|a| crate::cidr::canonical(a).map_or_else(|_| a.clone(), |c| c.text))
        .collect()
}

/// `+203.0.113.7/32 (3 → 4 addresses)`.
fn render_block(c: &Change) -> Rendered {
    let before = strings_at(c.before, "addresses");
    let after = strings_at(c.after, "addresses");
    if c.before.is_none() || c.after.is_none() {
        return Rendered::text(list_text("+", &param_strings(c.params, "cidrs")));
    }
    let (b, a) = (canonical_set(&before), canonical_set(&after));
    let added: Vec<String> = a.difference(&b).cloned().collect();
    let removed: Vec<String> = b.difference(&a).cloned().collect();
    let count = format!("({} → {} addresses)", before.len(), after.len());
    Rendered::text(match (added.is_empty(), removed.is_empty()) {
        (true, true) => format!(
            "{} already blocked {count}",
            list_text("", &param_strings(c.params, "cidrs"))
        ),
        (false, true) => format!("{} {count}", list_text("+", &added)),
        (true, false) => format!("{} {count}", list_text("-", &removed)),
        (false, false) => format!(
            "{}, {} {count}",
            list_text("+", &added),
            list_text("-", &removed)
        ),
    })
}

impl Declaration for WafConfig {
    fn detail(&self) -> String {
        format!(
            "IP set {}, {}",
            self.ip_set_name,
            self.client_settings().describe()
        )
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        Vec::new()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        WafConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(Box::new(Waf::new(self.clone())))
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::change_line;
    use serde_json::json;

    #[test]
    fn a_block_reads_as_the_networks_added_and_the_set_size() {
        let params = json!({"cidrs": ["203.0.113.7"]});
        let before = json!({"addresses": ["10.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24"]});
        let after = json!({"addresses": ["10.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.7/32"]});
        let p = params.as_object().unwrap();
        assert_eq!(
            change_line("edge-waf", "waf.block", p, Some(&before), Some(&after)),
            "edge-waf waf.block: +203.0.113.7/32 (3 → 4 addresses)"
        );
        assert_eq!(
            change_line("edge-waf", "waf.block", p, Some(&after), Some(&before)),
            "edge-waf waf.block: -203.0.113.7/32 (4 → 3 addresses)"
        );
    }
}
