//! A CLI verb per op, and `tourniquet ops`, generated from the providers'
//! op registry at runtime.
//!
//! The registry is the one place an op is declared, so the verbs cannot
//! drift from what the providers accept: `waf block edge-waf 203.0.113.7/32`
//! builds `{"cidrs": ["203.0.113.7/32"]}` because `cidrs` is declared a
//! repeatable CIDR, and a provider added to the registry gets its verbs,
//! its `ops` entry and its readable changes with no edit here. Each verb
//! composes, signs and sends exactly like every other composing command,
//! through the shared [`Common`] options.

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches};
use serde_json::{json, Map, Value};
use tourniquet_providers::registry::{self, OpDecl, ParamDecl, ParamKind, Placement};

use super::compose::{compose, sign_and_deliver};
use super::{exit, CliResult, Common, Failure};
use crate::command::payload::Action;

/// One op verb as typed: `waf block edge-waf 203.0.113.7/32 --reason …`.
#[derive(Debug, Clone)]
pub struct OpVerb {
    pub op: &'static OpDecl,
    pub resource: String,
    /// The words given for each param, in declaration order.
    pub words: Vec<(&'static ParamDecl, Vec<String>)>,
    pub common: Common,
}

/// The groups (`flag`, `waf`, `cdn`…) and their ops, in registry order.
fn groups() -> Vec<(&'static str, Vec<registry::OpEntry>)> {
    let mut out: Vec<(&'static str, Vec<registry::OpEntry>)> = Vec::new();
    for entry in registry::ops() {
        let g = entry.op.group();
        match out.iter_mut().find(|(name, _)| *name == g) {
            Some((_, ops)) => ops.push(entry),
            None => out.push((g, vec![entry])),
        }
    }
    out
}

/// The value name shown in usage: `CIDR`, `PATH`, `N`.
fn value_name(p: &ParamDecl) -> &'static str {
    match p.kind {
        ParamKind::Cidr => "CIDR",
        ParamKind::UrlPath => "PATH",
        ParamKind::Host => "HOST",
        ParamKind::Integer { .. } => "N",
        ParamKind::Duration { .. } => "DURATION",
        ParamKind::Percent => "PCT",
        ParamKind::Weight => "VERSION=PCT",
        ParamKind::Enum(_) | ParamKind::String | ParamKind::Bool => match p.name {
            "flag" => "FLAG",
            "variant" => "VARIANT",
            "state" => "STATE",
            "version" | "to_version" => "VERSION",
            _ => "VALUE",
        },
    }
}

fn param_arg(p: &'static ParamDecl) -> Option<Arg> {
    let help = format!("{} ({}, e.g. {})", p.doc, p.type_name(), p.example);
    let arg = Arg::new(p.name).help(help).required(p.required);
    let arg = match p.placement {
        Placement::JsonOnly => return None,
        Placement::Positional => arg.value_name(value_name(p)),
        Placement::Flag(long) => arg.long(long).value_name(value_name(p)),
    };
    let arg = match (p.kind, p.repeatable, p.placement) {
        (ParamKind::Bool, _, Placement::Flag(_)) => arg.action(ArgAction::SetTrue),
        (ParamKind::Enum(words), _, _) => arg.value_parser(
            words
                .iter()
                .map(|(w, _)| *w)
                .filter(|w| w.chars().all(|c| c.is_ascii_lowercase()))
                .collect::<Vec<_>>(),
        ),
        (_, true, Placement::Positional) => arg.num_args(1..).action(ArgAction::Append),
        (_, true, _) => arg.action(ArgAction::Append),
        _ => arg,
    };
    Some(arg)
}

/// `tourniquet GROUP VERB`: one op's command.
fn verb_command(entry: &registry::OpEntry) -> clap::Command {
    let op = entry.op;
    // Common's own doc would become the verb's about: the op's goes after.
    let mut cmd = Common::augment_args(clap::Command::new(op.verb()))
        .about(op.about.to_string())
        .long_about(None)
        .after_help(format!(
            "Example:\n  {}\n\nResource kinds: {}.{}",
            op.example,
            entry.kinds.join(", "),
            if op.reversible {
                ""
            } else {
                " Not reversible: it cannot be held or reverted."
            }
        ))
        .arg(
            Arg::new("resource")
                .value_name("RESOURCE")
                .required(true)
                .help("The resource, as the agent's config names it"),
        );
    for p in op.params {
        if let Some(arg) = param_arg(p) {
            cmd = cmd.arg(arg);
        }
    }
    cmd
}

fn group_command(name: &'static str, ops: &[registry::OpEntry]) -> clap::Command {
    let mut kinds: Vec<&str> = ops.iter().flat_map(|e| e.kinds.iter().copied()).collect();
    kinds.dedup();
    let verbs: Vec<&str> = ops.iter().map(|e| e.op.verb()).collect();
    let mut cmd = clap::Command::new(name)
        .about(format!(
            "Ops on {} resources: {}. Compose, sign and (with --to) send.",
            kinds.join(", "),
            verbs.join(", ")
        ))
        .subcommand_required(true)
        .arg_required_else_help(true);
    for e in ops {
        cmd = cmd.subcommand(verb_command(e));
    }
    cmd
}

impl FromArgMatches for OpVerb {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let missing = || clap::Error::new(clap::error::ErrorKind::MissingSubcommand);
        let (group, gm) = m.subcommand().ok_or_else(missing)?;
        let (verb, vm) = gm.subcommand().ok_or_else(missing)?;
        let op = registry::op(&format!("{group}.{verb}"))
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))?;
        let resource = vm
            .get_one::<String>("resource")
            .cloned()
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingRequiredArgument))?;
        let mut words = Vec::new();
        for p in op.params {
            let given: Vec<String> = match (p.placement, p.kind) {
                (Placement::JsonOnly, _) => continue,
                (Placement::Flag(_), ParamKind::Bool) => {
                    if vm.get_flag(p.name) {
                        vec!["true".into()]
                    } else {
                        Vec::new()
                    }
                }
                _ => vm
                    .get_many::<String>(p.name)
                    .map(|v| v.cloned().collect())
                    .unwrap_or_default(),
            };
            if !given.is_empty() {
                words.push((p, given));
            }
        }
        Ok(OpVerb {
            op,
            resource,
            words,
            common: Common::from_arg_matches(vm)?,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = OpVerb::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Subcommand for OpVerb {
    fn augment_subcommands(mut cmd: clap::Command) -> clap::Command {
        for (name, ops) in groups() {
            cmd = cmd.subcommand(group_command(name, &ops));
        }
        cmd
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        OpVerb::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        registry::ops().iter().any(|e| e.op.group() == name)
    }
}

/// A usage error: the value does not fit the op (exit 64).
fn usage(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: exit::USAGE,
        message: e.to_string(),
    }
}

/// Parses the words into the op's typed params.
fn params_of(v: &OpVerb) -> Result<Map<String, Value>, Failure> {
    let mut params = Map::new();
    for (p, words) in &v.words {
        params.insert(p.name.to_string(), p.parse_words(words).map_err(usage)?);
    }
    v.op.check(&params).map_err(usage)?;
    Ok(params)
}

/// Composes, signs and sends (or writes, with -o) one op verb's command.
pub async fn run(v: OpVerb) -> CliResult {
    let params = params_of(&v)?;
    let act = Action {
        resource: Some(v.resource.clone()),
        op: v.op.name.to_string(),
        params,
    };
    let payload = compose(&v.common, vec![act])?;
    sign_and_deliver(&v.common, payload).await
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  tourniquet ops cdn.purge --json")]
pub struct OpsArgs {
    /// Only this op, e.g. waf.block.
    pub op: Option<String>,
    /// Print JSON instead of a human listing.
    #[arg(long)]
    pub json: bool,
}

fn param_json(p: &ParamDecl) -> Value {
    json!({
        "name": p.name,
        "type": p.type_name(),
        "doc": p.doc,
        "example": p.example,
        "required": p.required,
        "repeatable": p.repeatable,
        "cli": match p.placement {
            Placement::Positional => Value::String("positional".into()),
            Placement::Flag(f) => Value::String(format!("--{f}")),
            Placement::JsonOnly => Value::Null,
        },
    })
}

/// `tourniquet waf block RESOURCE CIDR… [--status N]`.
fn usage_line(op: &OpDecl) -> String {
    let mut out = format!("tourniquet {} {} RESOURCE", op.group(), op.verb());
    for p in op.params {
        let name = value_name(p);
        let dots = if p.repeatable { "…" } else { "" };
        let word = match (p.placement, p.kind) {
            (Placement::JsonOnly, _) => continue,
            (Placement::Positional, _) => format!("{name}{dots}"),
            (Placement::Flag(f), ParamKind::Bool) => format!("--{f}"),
            (Placement::Flag(f), _) => format!("--{f} {name}{dots}"),
        };
        if p.required {
            out.push_str(&format!(" {word}"));
        } else {
            out.push_str(&format!(" [{word}]"));
        }
    }
    out
}

/// `tourniquet ops`: every op, its params and the kinds that support it.
pub fn list(args: OpsArgs) -> CliResult {
    let mut entries = registry::ops();
    if let Some(name) = &args.op {
        registry::find_op(name).map_err(usage)?;
        entries.retain(|e| e.op.name == name);
    }
    if args.json {
        let out: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "op": e.op.name,
                    "about": e.op.about,
                    "usage": usage_line(e.op),
                    "example": e.op.example,
                    "reversible": e.op.reversible,
                    "kinds": e.kinds,
                    "params": e.op.params.iter().map(param_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut text = String::new();
    for e in &entries {
        let op = e.op;
        text.push_str(&format!(
            "{}  {}{}\n  kinds:   {}\n  usage:   {}\n",
            op.name,
            op.about,
            if op.reversible {
                ""
            } else {
                " [not reversible]"
            },
            e.kinds.join(", "),
            usage_line(op)
        ));
        for p in op.params {
            let place = match p.placement {
                Placement::Positional => "positional".to_string(),
                Placement::Flag(f) => format!("--{f}"),
                Placement::JsonOnly => "JSON only".to_string(),
            };
            text.push_str(&format!(
                "    {:<15} {:<18} {:<16} {} (e.g. {}){}\n",
                p.name,
                p.type_name(),
                place,
                p.doc,
                p.example,
                if p.required { ", required" } else { "" }
            ));
        }
        text.push_str(&format!("  example: {}\n\n", op.example));
    }
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_generated_verbs_are_a_valid_command_line() {
        super::super::Cli::command().debug_assert();
    }

    fn verb(argv: &[&str]) -> OpVerb {
        let cli = super::super::Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        match cli.command {
            super::super::Command::Op(v) => v,
            other => panic!("not an op verb: {other:?}"),
        }
    }

    fn params(argv: &[&str]) -> Value {
        Value::Object(params_of(&verb(argv)).unwrap_or_else(|f| panic!("{}", f.message)))
    }

    #[test]
    fn each_verb_builds_the_params_its_provider_takes() {
        assert_eq!(
            params(&[
                "t",
                "waf",
                "block",
                "edge-waf",
                "203.0.113.7/32",
                "10.0.0.0/8"
            ]),
            json!({"cidrs": ["203.0.113.7/32", "10.0.0.0/8"]})
        );
        assert_eq!(
            params(&[
                "t",
                "nginx",
                "brownout",
                "edge",
                "/search",
                "--status",
                "429",
                "--retry-after",
                "2m"
            ]),
            json!({"paths": ["/search"], "status": 429, "retry_after": 120})
        );
        assert_eq!(
            params(&["t", "cdn", "purge", "shop", "--tag", "a", "--tag", "b"]),
            json!({"tags": ["a", "b"]})
        );
        assert_eq!(
            params(&["t", "lambda", "alias", "fn", "3", "--weight", "2=10%"]),
            json!({"version": "3", "weights": {"2": "10%"}})
        );
        assert_eq!(
            params(&["t", "lambda", "concurrency", "fn", "4"]),
            json!({"reserved": 4})
        );
        assert_eq!(
            params(&["t", "asg", "cap", "web", "--max", "4", "--desired", "4"]),
            json!({"max": 4, "desired": 4})
        );
        assert_eq!(
            params(&["t", "secret", "rollback", "s", "--to-version", "v1"]),
            json!({"to_version": "v1"})
        );
        assert_eq!(
            params(&["t", "flag", "state", "f", "new_flow", "off"]),
            json!({"flag": "new_flow", "state": "DISABLED"})
        );
        assert_eq!(
            params(&["t", "flag", "set", "f", "new_flow", "off"]),
            json!({"flag": "new_flow", "variant": "off"})
        );
        let v = verb(&["t", "waf", "block", "edge-waf", "abc", "--reason", "r"]);
        let err = params_of(&v).unwrap_err();
        assert_eq!(err.code, exit::USAGE);
        assert!(err.message.contains("is not a CIDR"), "{}", err.message);
        assert_eq!(v.common.reason.as_deref(), Some("r"));
    }
}
