//! The `aws-autoscaling` kind and `asg.cap`, as people meet them: CLI
//! verb, `tourniquet ops`, typed params and readable changes.

use std::path::PathBuf;

use serde_json::Value;

use crate::registry::{
    declaration, word, Change, Declaration, KindDecl, OpDecl, ParamDecl, ParamKind, Placement,
    Rendered,
};
use crate::{ConfigError, Provider, ProviderError};

use super::{AutoScaling, AutoScalingConfig, OP};

pub static KIND: KindDecl = KindDecl {
    kind: "aws-autoscaling",
    about: "An EC2 Auto Scaling group whose size can be capped",
    ops: &[&CAP],
    config: declaration::<AutoScalingConfig>,
};

const SIZE: ParamKind = ParamKind::Integer {
    min: 0,
    max: i32::MAX as i64,
};

pub static CAP: OpDecl = OpDecl {
    name: OP,
    about: "Lower the group's MaxSize (and DesiredCapacity), to stop a runaway scale-out",
    example: "tourniquet asg cap web-asg --max 4 --desired 4 --reason \"INC-6: scale-out loop\" --hold 1h --to http://127.0.0.1:7370",
    params: &[
        ParamDecl {
            name: "max",
            kind: SIZE,
            doc: "The new MaxSize; not below MinSize, not above today's MaxSize",
            example: "4",
            required: true,
            placement: Placement::Flag("max"),
            repeatable: false,
        },
        ParamDecl {
            name: "desired",
            kind: SIZE,
            doc: "The new DesiredCapacity (default: today's, lowered to max)",
            example: "4",
            required: false,
            placement: Placement::Flag("desired"),
            repeatable: false,
        },
    ],
    reversible: true,
    render: render_cap,
};

/// `max 20 → 4, desired 12 → 4` (and min, when it moved).
fn render_cap(c: &Change) -> Rendered {
    fn get<'a>(s: Option<&'a Value>, k: &str) -> Option<&'a Value> {
        s.and_then(|s| s.get(k)).filter(|v| !v.is_null())
    }
    let mut parts = Vec::new();
    for k in ["min", "max", "desired"] {
        let (from, to) = (get(c.before, k), get(c.after, k).or(c.params.get(k)));
        match (from, to) {
            (Some(f), Some(t)) if k != "min" || f != t => {
                parts.push(format!("{k} {} → {}", word(Some(f)), word(Some(t))))
            }
            (None, Some(t)) if k != "min" => parts.push(format!("{k} → {}", word(Some(t)))),
            _ => {}
        }
    }
    if parts.is_empty() {
        return Rendered::text("no size change");
    }
    Rendered::text(parts.join(", "))
}

impl Declaration for AutoScalingConfig {
    fn detail(&self) -> String {
        format!(
            "group {}, {}",
            self.group,
            self.client_settings().describe()
        )
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        Vec::new()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        AutoScalingConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(Box::new(AutoScaling::new(self.clone())))
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::change_line;
    use serde_json::json;

    #[test]
    fn a_cap_reads_as_max_and_desired() {
        let params = json!({"max": 4, "desired": 4});
        let before = json!({"group": "web", "min": 2, "max": 20, "desired": 12});
        let after = json!({"group": "web", "min": 2, "max": 4, "desired": 4});
        assert_eq!(
            change_line(
                "web-asg",
                "asg.cap",
                params.as_object().unwrap(),
                Some(&before),
                Some(&after)
            ),
            "web-asg asg.cap: max 20 → 4, desired 12 → 4"
        );
    }
}
