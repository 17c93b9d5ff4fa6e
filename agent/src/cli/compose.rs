//! Composing, signing and verifying commands on the operator's side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{client, CliResult, Common, Failure};
use crate::command::envelope::{self, Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};
use crate::command::payload::{Action, Guard, HumanDuration, OnBreach, Payload, Target, Timestamp};
use crate::trust::keys::{KeyError, Signer};

pub(super) fn parse_kv(items: &[String], what: &str) -> Result<BTreeMap<String, String>, Failure> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("{what} {item:?} is not K=V")))?;
        if k.is_empty() {
            return Err(Failure::usage(format!("{what} {item:?} has an empty key")));
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
pub(super) fn compose(common: &Common, actions: Vec<Action>) -> Result<Payload, Failure> {
    let reason = common
        .reason
        .clone()
        .ok_or_else(|| Failure::usage("--reason is required: say what incident this answers, e.g. --reason \"INC-1: checkout 500s\""))?;
    let now = Timestamp::now();
    let expires = HumanDuration::parse(&common.expires)
        .map_err(|e| Failure::usage(format!("--expires: {e}")))?;
    let hold = common
        .hold
        .as_deref()
        .map(HumanDuration::parse)
        .transpose()
        .map_err(|e| Failure::usage(format!("--hold: {e}")))?;
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
                .map_err(|e| Failure::usage(format!("--bake: {e}")))?,
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
    payload.check().map_err(Failure::usage)?;
    Ok(payload)
}

/// `--waves 1,10,50,100 --wave-bake 60s --max-failures 0`.
fn rollout(common: &Common) -> Result<Option<crate::command::payload::Rollout>, Failure> {
    let Some(text) = &common.waves else {
        if common.wave_bake.is_some() || common.max_failures.is_some() {
            return Err(Failure::usage(
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
                .map_err(|_| Failure::usage(format!("--waves: {w:?} is not a percentage")))
        })
        .collect::<Result<Vec<u32>, Failure>>()?;
    let wave_bake = common
        .wave_bake
        .as_deref()
        .map(HumanDuration::parse)
        .transpose()
        .map_err(|e| Failure::usage(format!("--wave-bake: {e}")))?;
    Ok(Some(crate::command::payload::Rollout {
        waves,
        wave_bake,
        max_failures: common.max_failures.unwrap_or(0),
    }))
}

/// The signing key: --key, $TOURNIQUET_KEY, or the dev key.
pub(super) fn load_signer(key: Option<&Path>) -> Result<Signer, Failure> {
    let path: PathBuf = match key {
        Some(p) => p.to_path_buf(),
        None => {
            let dev = crate::defaults::dev_key_path();
            if !dev.exists() {
                return Err(Failure::error(format!(
                    "no --key given and no dev key at {}: start `tourniquet agent` once for the dev key, or pass --key FILE (or set TOURNIQUET_KEY); `tourniquet keygen --out FILE` makes one",
                    dev.display()
                )));
            }
            dev
        }
    };
    Signer::load(&path).map_err(|e| match e {
        KeyError::Load { .. } => Failure::error(format!(
            "cannot use the signing key {e}: pass a readable OpenSSH ed25519 key with --key FILE or TOURNIQUET_KEY; `tourniquet keygen --out FILE` makes one"
        )),
        other => other.into(),
    })
}

pub(super) fn sign_payload(payload_bytes: &[u8], signer: &Signer) -> Result<Envelope, Failure> {
    let mut env = Envelope::new(COMMAND_PAYLOAD_TYPE, payload_bytes);
    let sig = signer.sign(
        COMMAND_NAMESPACE,
        &envelope::pae(COMMAND_PAYLOAD_TYPE, payload_bytes),
    )?;
    env.add_signature(&sig)?;
    Ok(env)
}

/// Signs a composed payload, then sends it (`--to`, `$TOURNIQUET_TO`) or
/// writes it out (stdout, `-o FILE`).
pub(super) async fn sign_and_deliver(common: &Common, payload: Payload) -> CliResult {
    let dest = common.destination();
    // A destination that cannot work is a usage error before anything is signed.
    if let Some(d) = &dest {
        client::Destination::parse(d)?;
    }
    let signer = load_signer(common.key.as_deref())?;
    let env = sign_payload(&payload.to_json(), &signer)?;
    match dest {
        Some(dest) => client::deliver(&env, &dest, &common.conn, false).await,
        None => write_out(common.out.as_deref(), &env.to_json_pretty()),
    }
}

pub(super) fn write_out(out: Option<&Path>, text: &str) -> CliResult {
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

pub(super) fn action(resource: Option<String>, op: &str, params: Vec<(&str, String)>) -> Action {
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

/// A file is an envelope if it parses as one; otherwise a payload.
pub(super) fn read_envelope_or_payload(
    path: &Path,
) -> Result<(Option<Envelope>, Vec<u8>), Failure> {
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
