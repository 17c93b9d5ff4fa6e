//! The hotfix entries of an nginx include: strict parsing of what a command
//! asks for, and the one place that turns entries into nginx syntax.
//!
//! Nothing from a command reaches the file as it came: a CIDR is parsed into
//! an address and a prefix length and printed back by the standard library,
//! a path prefix must match a small character set that has no meaning to
//! nginx's parser, and numbers are numbers. What cannot be parsed is
//! `Invalid`, which the lifecycle turns into `invalid_action`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The most CIDRs one `nginx.deny` may carry.
pub const MAX_CIDRS: usize = 1024;
/// The most path prefixes one `nginx.brownout` may carry.
pub const MAX_PATHS: usize = 64;
/// The longest path prefix accepted.
pub const MAX_PATH_LEN: usize = 256;
/// The longest Retry-After, in seconds (a day).
pub const MAX_RETRY_AFTER: u32 = 86_400;
/// Retry-After when a brownout names none, in seconds.
pub const DEFAULT_RETRY_AFTER: u32 = 60;
/// The status of a brownout that names none.
pub const DEFAULT_STATUS: u16 = 503;

/// First line of every include the agent writes. A non-empty file without
/// it is not ours, and the agent refuses to overwrite it.
pub const HEADER: &str =
    "# Managed by tourniquet (nginx provider). Do not edit: the agent rewrites";
const ENTRY_MARK: &str = "# tourniquet-entry ";
const GENERATION_MARK: &str = "# tourniquet-generation ";
/// Where the generation check answers. The last segment is a random token
/// only the include file and the agent know.
pub const GENERATION_PATH: &str = "/.well-known/tourniquet/";
/// The variable brownouts set for the Retry-After header.
const RETRY_VAR: &str = "$tourniquet_retry_after";

/// One canonical rule: what the file holds for one hotfix action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum Rule {
    /// Answer 403 to these networks.
    #[serde(rename = "nginx.deny")]
    Deny { cidrs: Vec<String> },
    /// Answer `status` with `Retry-After: retry_after` on these path prefixes.
    #[serde(rename = "nginx.brownout")]
    Brownout {
        paths: Vec<String>,
        status: u16,
        retry_after: u32,
    },
}

/// Params of `nginx.deny`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyParams {
    pub cidrs: Vec<String>,
}

/// Params of `nginx.brownout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrownoutParams {
    pub paths: Vec<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub retry_after: Option<u32>,
}

impl Rule {
    /// The canonical rule of `nginx.deny`: networks parsed, masked, sorted
    /// and deduplicated.
    pub fn deny(p: DenyParams) -> Result<Rule, String> {
        if p.cidrs.is_empty() {
            return Err("cidrs: must name at least one network".into());
        }
        if p.cidrs.len() > MAX_CIDRS {
            return Err(format!("cidrs: at most {MAX_CIDRS} per action"));
        }
        let mut cidrs = p
            .cidrs
            .iter()
            .map(|c| parse_cidr(c).map_err(|e| format!("cidrs: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        cidrs.sort();
        cidrs.dedup();
        Ok(Rule::Deny { cidrs })
    }

    /// The canonical rule of `nginx.brownout`.
    pub fn brownout(p: BrownoutParams) -> Result<Rule, String> {
        if p.paths.is_empty() {
            return Err("paths: must name at least one path prefix".into());
        }
        if p.paths.len() > MAX_PATHS {
            return Err(format!("paths: at most {MAX_PATHS} per action"));
        }
        let mut paths = p
            .paths
            .iter()
            .map(|s| {
                check_path(s)
                    .map(|()| s.clone())
                    .map_err(|e| format!("paths: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        paths.sort();
        paths.dedup();
        let status = p.status.unwrap_or(DEFAULT_STATUS);
        check_status(status)?;
        let retry_after = p.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
        if !(1..=MAX_RETRY_AFTER).contains(&retry_after) {
            return Err(format!(
                "retry_after: {retry_after} is not between 1 and {MAX_RETRY_AFTER} seconds"
            ));
        }
        Ok(Rule::Brownout {
            paths,
            status,
            retry_after,
        })
    }

    /// Re-checks a rule read back from the file: the file is re-validated
    /// as strictly as a command, so a hand-edited marker cannot smuggle
    /// syntax into the next rendering.
    fn recheck(&self) -> Result<Rule, String> {
        match self {
            Rule::Deny { cidrs } => Rule::deny(DenyParams {
                cidrs: cidrs.clone(),
            }),
            Rule::Brownout {
                paths,
                status,
                retry_after,
            } => Rule::brownout(BrownoutParams {
                paths: paths.clone(),
                status: Some(*status),
                retry_after: Some(*retry_after),
            }),
        }
    }

    /// The entry id: the op and a digest of the canonical rule. Two actions
    /// asking for the same thing share one entry.
    pub fn id(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        match self {
            Rule::Deny { .. } => format!("deny-{hex}"),
            Rule::Brownout { .. } => format!("brownout-{hex}"),
        }
    }
}

/// The include's content: entries in the order they were added, and the
/// generation token of the rendering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Include {
    pub entries: Vec<Rule>,
    pub generation: String,
}

/// What [`parse_include`] found.
#[derive(Debug)]
pub struct Parsed {
    pub include: Include,
    /// The file is exactly what the agent would render from its markers. A
    /// hand edit makes this false, and no entry then counts as in force.
    pub intact: bool,
}

impl Include {
    pub fn contains(&self, id: &str) -> bool {
        self.entries.iter().any(|r| r.id() == id)
    }

    /// Adds `rule` unless an equal one is there.
    pub fn insert(&mut self, rule: Rule) {
        if !self.contains(&rule.id()) {
            self.entries.push(rule);
        }
    }

    pub fn remove(&mut self, id: &str) {
        self.entries.retain(|r| r.id() != id);
    }

    /// The brownout answer nginx gives for `path` under this include, if
    /// any: the first matching rule in file order wins, as in nginx.
    pub fn brownout_for(&self, path: &str) -> Option<(u16, u32)> {
        self.entries.iter().find_map(|r| match r {
            Rule::Brownout {
                paths,
                status,
                retry_after,
            } if paths.iter().any(|p| path.starts_with(p.as_str())) => {
                Some((*status, *retry_after))
            }
            _ => None,
        })
    }

    /// Renders the include. Every value printed was parsed by this module.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(HEADER);
        out.push_str(
            "\n# this file from its active hotfixes. Include it once, inside the server\n\
             # block it protects, before that block's own allow/deny rules.\n",
        );
        let _ = writeln!(out, "{GENERATION_MARK}{}", self.generation);
        // Answered in the server's rewrite phase, before any brownout or
        // deny, so the agent can tell when a reload is live.
        let _ = writeln!(
            out,
            "if ($uri = \"{GENERATION_PATH}{}\") {{ return 204; }}",
            self.generation
        );
        let brownouts = self
            .entries
            .iter()
            .any(|r| matches!(r, Rule::Brownout { .. }));
        if brownouts {
            let _ = writeln!(out, "set {RETRY_VAR} \"\";");
        }
        for rule in &self.entries {
            let marker = serde_json::to_string(rule).unwrap_or_default();
            let _ = writeln!(out, "\n{ENTRY_MARK}{} {marker}", rule.id());
            match rule {
                Rule::Deny { cidrs } => {
                    for c in cidrs {
                        let _ = writeln!(out, "deny {c};");
                    }
                }
                Rule::Brownout {
                    paths,
                    status,
                    retry_after,
                } => {
                    for p in paths {
                        let _ = writeln!(
                            out,
                            "if ($uri ~ \"^{}\") {{ set {RETRY_VAR} {retry_after}; return {status}; }}",
                            regex_escape(p)
                        );
                    }
                }
            }
        }
        if brownouts {
            // Empty (so not sent) unless a brownout matched.
            let _ = writeln!(out, "\nadd_header Retry-After {RETRY_VAR} always;");
        }
        out
    }
}

/// Reads an include back. An empty or missing file holds no entries; a
/// non-empty file the agent did not write is an error, so an operator's own
/// config is never overwritten.
pub fn parse_include(text: &str) -> Result<Parsed, String> {
    if text.trim().is_empty() {
        return Ok(Parsed {
            include: Include::default(),
            intact: true,
        });
    }
    if !text.starts_with(HEADER) {
        return Err(
            "was not written by tourniquet (its first line is not the agent's header); \
             it must be empty or managed by the agent"
                .into(),
        );
    }
    let mut include = Include::default();
    for (n, line) in text.lines().enumerate() {
        if let Some(token) = line.strip_prefix(GENERATION_MARK) {
            if !token.chars().all(|c| c.is_ascii_hexdigit()) || token.len() > 64 {
                return Err(format!("line {}: bad generation marker", n + 1));
            }
            include.generation = token.to_string();
        } else if let Some(rest) = line.strip_prefix(ENTRY_MARK) {
            let (id, json) = rest
                .split_once(' ')
                .ok_or_else(|| format!("line {}: bad entry marker", n + 1))?;
            let rule: Rule = serde_json::from_str(json)
                .map_err(|e| format!("line {}: bad entry marker: {e}", n + 1))?;
            let rule = rule
                .recheck()
                .map_err(|e| format!("line {}: entry {id}: {e}", n + 1))?;
            if rule.id() != id {
                return Err(format!(
                    "line {}: entry {id} does not match its rule",
                    n + 1
                ));
            }
            include.insert(rule);
        }
    }
    let intact = include.render() == text;
    Ok(Parsed { include, intact })
}

/// Parses `a.b.c.d/n`, `x:y::/n` or a bare address (a host network) and
/// prints it back masked to the network address.
pub fn parse_cidr(s: &str) -> Result<String, String> {
    match crate::cidr::canonical(s) {
        Ok(c) => Ok(c.text),
        Err(crate::cidr::CidrError::Everything { text }) => Err(format!(
            "{text:?} would deny every address; brown out \"/\" to shed all traffic"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// A path prefix: starts with `/`, only `A-Z a-z 0-9 / _ . ~ -`, no empty,
/// `.` or `..` segment (nginx normalises `$uri`, so those never match).
pub fn check_path(p: &str) -> Result<(), String> {
    let shown: String = p.chars().take(64).collect();
    if !p.starts_with('/') {
        return Err(format!("{shown:?} must start with \"/\""));
    }
    if p.len() > MAX_PATH_LEN {
        return Err(format!("{shown:?}…: longer than {MAX_PATH_LEN} bytes"));
    }
    if let Some(bad) = p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.' | '~' | '-')))
    {
        return Err(format!(
            "{shown:?}: character {bad:?} is not allowed in a path prefix (only A-Z a-z 0-9 / _ . ~ -)"
        ));
    }
    let segments: Vec<&str> = p[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if (seg.is_empty() && !last) || *seg == "." || *seg == ".." {
            return Err(format!(
                "{shown:?}: empty, \".\" and \"..\" segments never match a normalised URI"
            ));
        }
    }
    Ok(())
}

/// A status a brownout may answer: 4xx or 5xx, but not nginx's own
/// connection-closing 444 or the log-only 499.
pub fn check_status(status: u16) -> Result<(), String> {
    if !(400..=599).contains(&status) || status == 444 || status == 499 {
        return Err(format!(
            "status: {status} is not a 4xx or 5xx status nginx can send"
        ));
    }
    Ok(())
}

/// Escapes the one PCRE metacharacter the path charset allows.
fn regex_escape(p: &str) -> String {
    p.replace('.', "\\.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(c: &[&str]) -> Result<Rule, String> {
        Rule::deny(DenyParams {
            cidrs: c.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn brownout(p: &[&str]) -> Result<Rule, String> {
        Rule::brownout(BrownoutParams {
            paths: p.iter().map(|s| s.to_string()).collect(),
            status: None,
            retry_after: None,
        })
    }

    #[test]
    fn cidrs_are_parsed_masked_and_printed_back() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap(), "10.0.0.0/8");
        assert_eq!(parse_cidr("192.0.2.7").unwrap(), "192.0.2.7/32");
        assert_eq!(parse_cidr("2001:db8::1/32").unwrap(), "2001:db8::/32");
        assert_eq!(parse_cidr("::1").unwrap(), "::1/128");
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/08",
            "10.0.0.0/0",
            "::/0",
            "010.0.0.1/32",
            "10.0.0.256",
            "1.2.3",
            "10.0.0.0/8; }",
            "10.0.0.0/8;",
            "10.0.0.0/8\ndeny all",
            "all",
            "unix:",
            "fe80::1%eth0",
            "\"10.0.0.0/8\"",
            "$remote_addr",
            "10.0.0.0/8 ",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn paths_are_strict() {
        for ok in ["/", "/search", "/api/v1.2/", "/a-b_c~d", "/x/"] {
            check_path(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in [
            "", "search", "/a; }", "/a\n", "/a\"", "/a'", "/a$uri", "/a{", "/a}", "/a b", "/a\\",
            "/a%2f", "/a//b", "/a/../b", "/./a", "/a?x=1", "/a#", "/a*", "/ä",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_path(&format!("/{}", "a".repeat(MAX_PATH_LEN))).is_err());
    }

    #[test]
    fn statuses_and_retry_after_are_bounded() {
        for s in [400, 429, 503, 599] {
            check_status(s).unwrap();
        }
        for s in [200, 301, 399, 444, 499, 600, 0] {
            assert!(check_status(s).is_err(), "{s}");
        }
        for ra in [0, MAX_RETRY_AFTER + 1] {
            assert!(Rule::brownout(BrownoutParams {
                paths: vec!["/x".into()],
                status: None,
                retry_after: Some(ra),
            })
            .is_err());
        }
        assert!(brownout(&[]).is_err());
        assert!(deny(&[]).is_err());
    }

    #[test]
    fn equal_requests_share_one_id() {
        let a = deny(&["10.0.0.1/8", "192.0.2.0/24"]).unwrap();
        let b = deny(&["192.0.2.0/24", "10.0.0.0/8", "10.0.0.0/8"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id(), b.id());
        assert!(a.id().starts_with("deny-"));
        assert_ne!(a.id(), deny(&["10.0.0.0/9"]).unwrap().id());
    }

    #[test]
    fn rendering_round_trips_through_the_markers() {
        let mut inc = Include {
            entries: vec![],
            generation: "00ff".into(),
        };
        inc.insert(deny(&["10.0.0.0/8", "2001:db8::/32"]).unwrap());
        inc.insert(brownout(&["/search", "/api/v1.2"]).unwrap());
        let text = inc.render();
        assert!(text.contains("deny 10.0.0.0/8;\n"), "{text}");
        assert!(text.contains("deny 2001:db8::/32;\n"), "{text}");
        assert!(
            text.contains(
                "if ($uri ~ \"^/api/v1\\.2\") { set $tourniquet_retry_after 60; return 503; }"
            ),
            "{text}"
        );
        assert!(text.contains("add_header Retry-After $tourniquet_retry_after always;"));
        let back = parse_include(&text).unwrap();
        assert!(back.intact);
        assert_eq!(back.include, inc);
        // A hand edit is seen.
        let edited = text.replace("deny 10.0.0.0/8;\n", "");
        let back = parse_include(&edited).unwrap();
        assert!(!back.intact);
        assert_eq!(back.include.entries.len(), 2);
        // An empty include has no brownout machinery.
        let empty = Include::default().render();
        assert!(!empty.contains("add_header"));
        assert!(parse_include("").unwrap().include.entries.is_empty());
    }

    #[test]
    fn a_file_not_ours_or_with_a_forged_marker_is_refused() {
        assert!(parse_include("deny all;\n").is_err());
        let forged = format!(
            "{HEADER}\n{ENTRY_MARK}deny-0 {{\"op\":\"nginx.deny\",\"cidrs\":[\"all; }}\"]}}\n"
        );
        assert!(parse_include(&forged).is_err());
        let rule = deny(&["10.0.0.0/8"]).unwrap();
        let wrong_id = format!(
            "{HEADER}\n{ENTRY_MARK}deny-0000 {}\n",
            serde_json::to_string(&rule).unwrap()
        );
        assert!(parse_include(&wrong_id).is_err());
    }

    #[test]
    fn brownout_matching_follows_file_order() {
        let mut inc = Include::default();
        inc.insert(
            Rule::brownout(BrownoutParams {
                paths: vec!["/search".into()],
                status: Some(429),
                retry_after: Some(5),
            })
            .unwrap(),
        );
        inc.insert(brownout(&["/"]).unwrap());
        assert_eq!(inc.brownout_for("/search/x"), Some((429, 5)));
        assert_eq!(inc.brownout_for("/other"), Some((503, 60)));
    }
}
