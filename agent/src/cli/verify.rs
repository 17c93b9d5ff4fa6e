//! `tourniquet verify`: offline, would an agent accept this envelope, and
//! does this receipt verify?

use std::path::{Path, PathBuf};

use clap::Args;

use super::{exit, CliResult, Failure};
use crate::command::envelope::Envelope;
use crate::command::payload::{Timestamp, REVERT_OP};
use crate::trust::policy::Policy;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  tourniquet verify cmd.signed.json --policy /etc/tourniquet/policy.toml   # what is signed, and would it pass?\n  \
tourniquet verify receipt.json --agent-key agent.pub"
)]
pub struct VerifyArgs {
    /// A command envelope, or with --agent-key a receipt.
    pub envelope: PathBuf,
    /// The policy to judge a command against.
    #[arg(long, required_unless_present = "agent_key")]
    pub policy: Option<PathBuf>,
    /// Verify a receipt against this agent public key (OpenSSH line or .pub file).
    #[arg(long, value_name = "PUB")]
    pub agent_key: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: VerifyArgs) -> CliResult {
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
