//! Composing, signing and verifying commands on the operator's side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{
    client, exit, CliResult, Common, Failure, FlagCommand, NewArgs, RevertArgs, SignArgs,
    VerifyArgs,
};
use crate::command::envelope::{self, Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};
use crate::command::payload::{
    Action, Guard, HumanDuration, OnBreach, Payload, Target, Timestamp, HALT_OP, REVERT_OP,
};
use crate::trust::keys::{self, Signer};
use crate::trust::policy::Policy;

pub fn keygen(out: &Path, comment: &str) -> CliResult {
    let public = keys::generate_keypair(out, comment)?;
    println!(
        "wrote {} (0600) and {}\n{}\nfingerprint {}",
        out.display(),
        keys::pub_path(out).display(),
        public.to_openssh().unwrap_or_default(),
        envelope::fingerprint(public.key_data())
    );
    Ok(())
}

fn parse_kv(items: &[String], what: &str) -> Result<BTreeMap<String, String>, Failure> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| Failure::error(format!("{what} {item:?} is not K=V")))?;
        if k.is_empty() {
            return Err(Failure::error(format!("{what} {item:?} has an empty key")));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn default_issuer() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// Builds a payload from the shared options and the actions.
fn compose(common: &Common, actions: Vec<Action>) -> Result<Payload, Failure> {
    let reason = common
        .reason
        .clone()
        .ok_or_else(|| Failure::error("--reason is required: say what incident this answers, e.g. --reason \"INC-1: checkout 500s\""))?;
    let now = Timestamp::now();
    let expires = HumanDuration::parse(&common.expires)
        .map_err(|e| Failure::error(format!("--expires: {e}")))?;
    let hold = common
        .hold
        .as_deref()
        .map(HumanDuration::parse)
        .transpose()
        .map_err(|e| Failure::error(format!("--hold: {e}")))?;
    let guard = if common.guard.is_empty() {
        None
    } else {
        Some(Guard {
            probes: common.guard.clone(),
            bake: common
                .bake
                .as_deref()
                .map(HumanDuration::parse)
                .transpose()
                .map_err(|e| Failure::error(format!("--bake: {e}")))?,
            before: None,
            interval: None,
            on_inconclusive: Default::default(),
            failure_limit: None,
            on_breach: if common.keep_on_breach {
                OnBreach::Keep
            } else {
                OnBreach::Rollback
            },
            checks: Vec::new(),
        })
    };
    let payload = Payload {
        id: ulid::Ulid::new().to_string(),
        issuer: common.issuer.clone().unwrap_or_else(default_issuer),
        issued_at: now,
        not_before: None,
        expires: now.plus(expires.0),
        reason,
        ticket: common.ticket.clone(),
        target: Target {
            labels: parse_kv(&common.target, "--target")?,
            agents: common.agent_ids.clone(),
        },
        actions,
        hold,
        guard,
        rollout: rollout(common)?,
        expect: common.expect,
        dry_run: common.dry_run,
    };
    payload.check().map_err(Failure::error)?;
    Ok(payload)
}

/// `--waves 1,10,50,100 --wave-bake 60s --max-failures 0`.
fn rollout(common: &Common) -> Result<Option<crate::command::payload::Rollout>, Failure> {
    let Some(text) = &common.waves else {
        if common.wave_bake.is_some() || common.max_failures.is_some() {
            return Err(Failure::error(
                "--wave-bake and --max-failures need --waves (e.g. --waves 1,10,50,100)",
            ));
        }
        return Ok(None);
    };
    let waves = text
        .split(',')
        .map(|w| {
            w.trim()
                .trim_end_matches('%')
                .parse::<u32>()
                .map_err(|_| Failure::error(format!("--waves: {w:?} is not a percentage")))
        })
        .collect::<Result<Vec<u32>, Failure>>()?;
    let wave_bake = common
        .wave_bake
        .as_deref()
        .map(HumanDuration::parse)
        .transpose()
        .map_err(|e| Failure::error(format!("--wave-bake: {e}")))?;
    Ok(Some(crate::command::payload::Rollout {
        waves,
        wave_bake,
        max_failures: common.max_failures.unwrap_or(0),
    }))
}

/// The signing key: --key, $TOURNIQUET_KEY, or the dev key.
fn load_signer(key: Option<&Path>) -> Result<Signer, Failure> {
    let path: PathBuf = match key {
        Some(p) => p.to_path_buf(),
        None => {
            let dev = crate::defaults::dev_key_path();
            if !dev.exists() {
                return Err(Failure::error(format!(
                    "no --key given and no dev key at {} (start `tourniquet agent` once, or pass --key)",
                    dev.display()
                )));
            }
            dev
        }
    };
    Ok(Signer::load(&path)?)
}

fn sign_payload(payload_bytes: &[u8], signer: &Signer) -> Result<Envelope, Failure> {
    let mut env = Envelope::new(COMMAND_PAYLOAD_TYPE, payload_bytes);
    let sig = signer.sign(
        COMMAND_NAMESPACE,
        &envelope::pae(COMMAND_PAYLOAD_TYPE, payload_bytes),
    )?;
    env.add_signature(&sig)?;
    Ok(env)
}

/// Signs a composed payload, then sends it or writes it out.
async fn sign_and_deliver(common: &Common, payload: Payload) -> CliResult {
    let signer = load_signer(common.key.as_deref())?;
    let env = sign_payload(&payload.to_json(), &signer)?;
    match &common.send {
        Some(dest) => client::deliver(&env, dest, &common.conn, false).await,
        None => write_out(common.out.as_deref(), &env.to_json_pretty()),
    }
}

fn write_out(out: Option<&Path>, text: &str) -> CliResult {
    match out {
        Some(p) => {
            std::fs::write(p, format!("{text}\n"))
                .map_err(|e| Failure::error(format!("{}: {e}", p.display())))?;
            eprintln!("wrote {}", p.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

fn action(resource: Option<String>, op: &str, params: Vec<(&str, String)>) -> Action {
    let mut m = Map::new();
    for (k, v) in params {
        m.insert(k.to_string(), Value::String(v));
    }
    Action {
        resource,
        op: op.to_string(),
        params: m,
    }
}

pub async fn flag(cmd: FlagCommand) -> CliResult {
    let (common, act) = match cmd {
        FlagCommand::Set {
            resource,
            flag,
            variant,
            common,
        } => (
            common,
            action(
                Some(resource),
                "flag.set",
                vec![("flag", flag), ("variant", variant)],
            ),
        ),
        FlagCommand::State {
            resource,
            flag,
            state,
            common,
        } => {
            let state = if state == "on" { "ENABLED" } else { "DISABLED" };
            (
                common,
                action(
                    Some(resource),
                    "flag.state",
                    vec![("flag", flag), ("state", state.into())],
                ),
            )
        }
    };
    let payload = compose(&common, vec![act])?;
    sign_and_deliver(&common, payload).await
}

pub async fn revert(args: RevertArgs) -> CliResult {
    ulid::Ulid::from_string(&args.id)
        .map_err(|_| Failure::error(format!("{:?} is not a command id (a ULID)", args.id)))?;
    let payload = compose(
        &args.common,
        vec![action(None, REVERT_OP, vec![("command", args.id.clone())])],
    )?;
    sign_and_deliver(&args.common, payload).await
}

pub async fn halt(args: RevertArgs) -> CliResult {
    ulid::Ulid::from_string(&args.id)
        .map_err(|_| Failure::error(format!("{:?} is not a command id (a ULID)", args.id)))?;
    let payload = compose(
        &args.common,
        vec![action(None, HALT_OP, vec![("command", args.id.clone())])],
    )?;
    sign_and_deliver(&args.common, payload).await
}

pub fn new_payload(args: NewArgs) -> CliResult {
    let mut params = Map::new();
    for (k, v) in parse_kv(&args.params, "--param")? {
        params.insert(k, Value::String(v));
    }
    let act = Action {
        resource: args.resource,
        op: args.op,
        params,
    };
    let payload = compose(&args.common, vec![act])?;
    let text = serde_json::to_string_pretty(&payload)?;
    // Re-parse strictly so what we hand over is what an agent will accept.
    Payload::parse(text.as_bytes())
        .map_err(|e| Failure::error(format!("composed payload is invalid: {e}")))?;
    write_out(args.common.out.as_deref(), &text)
}

/// A file is an envelope if it parses as one; otherwise a payload.
fn read_envelope_or_payload(path: &Path) -> Result<(Option<Envelope>, Vec<u8>), Failure> {
    let bytes =
        std::fs::read(path).map_err(|e| Failure::error(format!("{}: {e}", path.display())))?;
    match Envelope::from_json(&bytes) {
        Ok(env) => {
            let payload = env.payload_bytes()?;
            Ok((Some(env), payload))
        }
        Err(_) => {
            Payload::parse(&bytes).map_err(|e| {
                Failure::error(format!(
                    "{}: neither an envelope nor a valid payload: {e}",
                    path.display()
                ))
            })?;
            Ok((None, bytes))
        }
    }
}

pub fn sign(args: SignArgs) -> CliResult {
    let (env, payload) = read_envelope_or_payload(&args.file)?;
    let payload_type = env
        .as_ref()
        .map(|e| e.payload_type.clone())
        .unwrap_or_else(|| COMMAND_PAYLOAD_TYPE.to_string());
    if args.pae {
        use std::io::Write;
        let bytes = envelope::pae(&payload_type, &payload);
        std::io::stdout().write_all(&bytes)?;
        return Ok(());
    }
    if let Some(n) = args.export_sig {
        let env = env.ok_or_else(|| Failure::error("--export-sig needs an envelope"))?;
        let s = env
            .signatures
            .get(n)
            .ok_or_else(|| Failure::error(format!("the envelope has no signature {n}")))?;
        let sig = envelope::decode_signature(&s.sig).map_err(Failure::error)?;
        print!(
            "{}",
            envelope::armor_signature(&sig).map_err(Failure::error)?
        );
        return Ok(());
    }
    let mut env = env.unwrap_or_else(|| Envelope::new(COMMAND_PAYLOAD_TYPE, &payload));
    let sig = match &args.sig {
        Some(sig_file) => {
            let text = std::fs::read_to_string(sig_file)
                .map_err(|e| Failure::error(format!("{}: {e}", sig_file.display())))?;
            let sig = envelope::decode_signature(&text)
                .map_err(|e| Failure::error(format!("{}: {e}", sig_file.display())))?;
            envelope::verify_sshsig(COMMAND_NAMESPACE, &envelope::pae(&payload_type, &payload), &sig).map_err(|e| {
                Failure::error(format!(
                    "{}: {e} (sign the bytes of `tourniquet sign FILE --pae` with -n {COMMAND_NAMESPACE})",
                    sig_file.display()
                ))
            })?;
            sig
        }
        None => {
            let signer = load_signer(args.key.as_deref())?;
            signer.sign(COMMAND_NAMESPACE, &envelope::pae(&payload_type, &payload))?
        }
    };
    let fingerprint = envelope::fingerprint(sig.public_key());
    if env.signatures.iter().any(|s| s.keyid == fingerprint) {
        eprintln!("note: the envelope already has a signature by {fingerprint}; quorum counts distinct keys");
    }
    env.add_signature(&sig)?;
    let out = args.out.clone().or_else(|| {
        // Co-signing an envelope updates it in place; a payload goes to stdout.
        Envelope::from_json(&std::fs::read(&args.file).unwrap_or_default())
            .ok()
            .map(|_| args.file.clone())
    });
    eprintln!(
        "signed by {fingerprint} ({} signature(s))",
        env.signatures.len()
    );
    write_out(out.as_deref(), &env.to_json_pretty())
}

pub fn verify(args: VerifyArgs) -> CliResult {
    let bytes = std::fs::read(&args.envelope)
        .map_err(|e| Failure::error(format!("{}: {e}", args.envelope.display())))?;
    if let Some(key) = &args.agent_key {
        let key_text = if Path::new(key).exists() {
            std::fs::read_to_string(key)?
        } else {
            key.clone()
        };
        let env = Envelope::from_json(&bytes)?;
        return match crate::lifecycle::receipt::verify_receipt(&env, &key_text) {
            Ok(receipt) => {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&receipt)?);
                } else {
                    println!(
                        "receipt ok: signed by agent {} — {} {}",
                        receipt.agent.id,
                        receipt.outcome,
                        receipt.command_id.unwrap_or_default()
                    );
                }
                Ok(())
            }
            Err(e) => Err(Failure {
                code: exit::INVALID,
                message: format!("receipt does not verify: {e}"),
            }),
        };
    }
    let policy_path = args.policy.as_deref().unwrap_or(Path::new("policy.toml"));
    let policy = Policy::load(policy_path)?;
    let verdict = policy
        .verify_envelope(&bytes, Timestamp::now())
        .and_then(|v| {
            for a in &v.payload.actions {
                if a.op != REVERT_OP {
                    policy.authorize(
                        &a.op,
                        a.resource.as_deref().unwrap_or_default(),
                        &v.signers,
                    )?;
                }
            }
            Ok(v)
        });
    match verdict {
        Ok(v) => {
            let signers: Vec<String> = v
                .signers
                .iter()
                .map(|s| format!("{} ({})", s.name, s.fingerprint))
                .collect();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"accepted": true, "id": v.payload.id, "signers": v.signers, "actions": v.payload.actions})
                );
            } else {
                println!(
                    "would accept {}: signed by {}",
                    v.payload.id,
                    signers.join(", ")
                );
                for a in &v.payload.actions {
                    println!("  {}", a.describe());
                }
                println!("(an agent also checks targeting, its resources, replays and the resource's current state)");
            }
            Ok(())
        }
        Err(rej) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"accepted": false, "reason": rej.reason.code(), "message": rej.message})
                );
            }
            Err(Failure {
                code: exit::REJECTED,
                message: format!("would reject: {}: {}", rej.reason.code(), rej.message),
            })
        }
    }
}
