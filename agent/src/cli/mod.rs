//! The operator CLI and the `agent` entry point (DESIGN §9).
//!
//! One binary, two faces: the daemon, and the commands an on-call engineer
//! types at 3 a.m. Human output by default, `--json` for scripts, and a
//! one-line reason with a non-zero exit code on every failure.

mod client;
mod compose;
mod fleet;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use client::Destination;

/// Exit codes scripts can rely on.
pub mod exit {
    /// Usage, input or I/O error on this side.
    pub const ERROR: u8 = 1;
    /// The agent rejected the command.
    pub const REJECTED: u8 = 2;
    /// Accepted, but applying it failed (nothing left changed).
    pub const FAILED: u8 = 3;
    /// Applied, then rolled back by its guard.
    pub const ROLLED_BACK: u8 = 4;
    /// Offline verification or audit check failed.
    pub const INVALID: u8 = 5;
}

#[derive(Parser, Debug)]
#[command(
    name = "tourniquet",
    version,
    about = "Signed, guarded, self-reverting emergency config hotfixes",
    long_about = "Tourniquet applies config-only emergency hotfixes (flag flips and more) on the \
agents that hold the resources, only when a signed command that the agent's trust policy \
permits asks for it. Every change is journaled, measured before and after, reported in a \
signed receipt, and undone when its hold runs out or its guard sees things get worse.\n\n\
Quick start:\n  tourniquet agent                      # terminal 1: embedded demo, dev trust\n  \
tourniquet flag set demo-flags new_checkout off --reason \"INC-1: checkout 500s\" \\\n      \
--hold 10m --send http://127.0.0.1:7370   # terminal 2",
    after_help = "Exit codes: 0 ok, 1 error, 2 rejected, 3 failed, 4 rolled back, 5 invalid."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format of the agent and of CLI diagnostics.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent. Without --config: the embedded demo under ./.tourniquet (dev trust).
    Agent(AgentArgs),
    /// Create an OpenSSH ed25519 key pair (FILE and FILE.pub) for automation.
    Keygen {
        /// Where to write the private key (0600); the public key goes to FILE.pub.
        #[arg(long)]
        out: PathBuf,
        /// Comment stored in the key.
        #[arg(long, default_value = "tourniquet-operator")]
        comment: String,
    },
    /// Flip a flag in a flags-file resource: compose, sign and (with --send) send.
    #[command(subcommand)]
    Flag(FlagCommand),
    /// Write an unsigned command payload, for review and co-signing.
    New(NewArgs),
    /// Sign a payload into an envelope, add a co-signature, or show the bytes to sign.
    Sign(SignArgs),
    /// Offline: would an agent with this policy accept the envelope, and why not?
    Verify(VerifyArgs),
    /// Send a signed envelope to an agent (http[s]://HOST:PORT), an inbox (dir:PATH) or a fleet (nats://HOST:PORT).
    Send(SendArgs),
    /// Show a command's state and receipt, or the agent's active hotfixes.
    Status(StatusArgs),
    /// Undo an earlier command on the agent (a signed `revert`).
    Revert(RevertArgs),
    /// Stop a fleet rollout: agents whose wave has not started report `halted`.
    Halt(RevertArgs),
    /// Fleet tools over NATS JetStream: create the streams, list agents.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Agent config (agent.toml). Without it, the embedded default runs.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Validate the config and its policy, then exit.
    #[arg(long)]
    pub check: bool,
    /// Listen here instead of [api].listen (e.g. 127.0.0.1:7371).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Subcommand, Debug)]
pub enum FlagCommand {
    /// Set a flag's default variant, e.g. `flag set checkout-flags new_flow off`.
    Set {
        resource: String,
        flag: String,
        variant: String,
        #[command(flatten)]
        common: Common,
    },
    /// Enable or disable a flag, e.g. `flag state checkout-flags new_flow off`.
    State {
        resource: String,
        flag: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Options every composing command shares.
#[derive(Args, Debug, Clone, Default)]
pub struct Common {
    /// Why: the incident and its symptom. Recorded in the audit log and receipts.
    #[arg(long)]
    pub reason: Option<String>,
    /// Ticket or incident id.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Target agents by label glob, e.g. --target env=prod --target region='eu-*'.
    #[arg(long = "target", value_name = "K=V")]
    pub target: Vec<String>,
    /// Target agents by id (repeatable).
    #[arg(long = "agent-id", value_name = "ID")]
    pub agent_ids: Vec<String>,
    /// Make the hotfix temporary: the agent reverts it when this runs out (e.g. 30m).
    #[arg(long)]
    pub hold: Option<String>,
    /// Delivery deadline from now (capped by the policy's max_ttl).
    #[arg(long, default_value = "15m")]
    pub expires: String,
    /// Signing key: an OpenSSH private key file, or a .pub whose key is in ssh-agent.
    /// Default: $TOURNIQUET_KEY, then the dev key of the embedded default.
    #[arg(long, env = "TOURNIQUET_KEY")]
    pub key: Option<PathBuf>,
    /// Send at once: http[s]://HOST:PORT or dir:PATH (waits for the receipt), or nats://HOST:PORT.
    #[arg(long)]
    pub send: Option<String>,
    /// Guard the change with these agent probes (repeatable).
    #[arg(long = "guard", value_name = "PROBE")]
    pub guard: Vec<String>,
    /// Bake window of the guard before the after-sample.
    #[arg(long, requires = "guard")]
    pub bake: Option<String>,
    /// Keep the change even if the guard breaches (default: roll back).
    #[arg(long, requires = "guard")]
    pub keep_on_breach: bool,
    /// Plan only: show before and intended after, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Fleet rollout in waves: cumulative percentages ending at 100, e.g. 1,10,50,100.
    #[arg(long, value_name = "P,P,…")]
    pub waves: Option<String>,
    /// Time between wave starts (default 60s).
    #[arg(long, requires = "waves")]
    pub wave_bake: Option<String>,
    /// Failure or rollback receipts in earlier waves at which later waves halt (default 0).
    #[arg(long, requires = "waves")]
    pub max_failures: Option<u32>,
    /// How many agents should answer; `status --nats` then shows n of expected.
    #[arg(long)]
    pub expect: Option<u32>,
    /// Who is asking (default: $USER@host).
    #[arg(long)]
    pub issuer: Option<String>,
    /// Write the signed envelope here instead of stdout (when not sending).
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub conn: Conn,
}

/// How to reach an agent over HTTPS.
#[derive(Args, Debug, Clone, Default)]
pub struct Conn {
    /// CA certificate (PEM) to trust for an https:// agent.
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for an agent that requires mTLS.
    #[arg(long, value_name = "PEM", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Print JSON instead of a human summary.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for a settled receipt after sending.
    #[arg(long, default_value_t = 120)]
    pub wait: u64,
    /// The fleet a nats:// destination publishes to (subject tourniquet.cmd.FLEET).
    #[arg(long, env = "TOURNIQUET_FLEET", default_value = "default")]
    pub fleet: String,
    /// NATS credentials file (.creds) for nats:// destinations.
    #[arg(long, env = "TOURNIQUET_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The op, e.g. flag.set, flag.state, revert.
    pub op: String,
    /// The resource the action names (omit for revert).
    #[arg(long)]
    pub resource: Option<String>,
    /// Op parameters, e.g. --param flag=new_flow --param variant=off.
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    /// A payload (JSON from `tourniquet new`) or an envelope to co-sign.
    pub file: PathBuf,
    /// Signing key (OpenSSH private key, or .pub through ssh-agent).
    #[arg(long, env = "TOURNIQUET_KEY")]
    pub key: Option<PathBuf>,
    /// Attach a signature made by `ssh-keygen -Y sign -n tourniquet-command` over the --pae bytes.
    #[arg(long, value_name = "SIGFILE", conflicts_with = "key")]
    pub sig: Option<PathBuf>,
    /// Print the exact bytes a signature covers (DSSE PAE) and exit.
    #[arg(long, conflicts_with_all = ["key", "sig"])]
    pub pae: bool,
    /// Print signature N of an envelope in ssh-keygen's armored form and exit.
    #[arg(long, value_name = "N", conflicts_with_all = ["key", "sig", "pae"])]
    pub export_sig: Option<usize>,
    /// Output file (default: overwrite an envelope in place; a payload → stdout).
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
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

#[derive(Args, Debug)]
pub struct SendArgs {
    pub envelope: PathBuf,
    /// http[s]://HOST:PORT, dir:PATH (an agent's inbox) or nats://HOST:PORT (a fleet; see --fleet).
    #[arg(long)]
    pub to: String,
    /// Return after the agent accepts, without waiting for the receipt.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Command id; without it, the agent's active hotfixes.
    pub id: Option<String>,
    #[arg(long, default_value = "http://127.0.0.1:7370")]
    pub agent: String,
    /// Fleet view: collect every agent's receipt for ID from NATS JetStream.
    #[arg(long, value_name = "URL", requires = "id")]
    pub nats: Option<String>,
    /// With --nats: keep refreshing until every expected agent has settled (Ctrl-C stops).
    #[arg(long, requires = "nats")]
    pub watch: bool,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Args, Debug)]
pub struct RevertArgs {
    /// The command to undo.
    pub id: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Create or update the TOURNIQUET_CMD and TOURNIQUET_RECEIPTS streams (an operator action).
    Init {
        /// The NATS server, e.g. nats://127.0.0.1:4222.
        #[arg(long)]
        nats: String,
        /// How long commands stay in the stream; must exceed the policy's max_ttl.
        #[arg(long, default_value = "24h")]
        max_age: String,
        /// How long receipts stay in the stream.
        #[arg(long, default_value = "30d")]
        receipt_max_age: String,
        /// Stream replicas (1 for a single server; 3 in a cluster).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        #[command(flatten)]
        conn: Conn,
    },
    /// List agents seen recently (their heartbeats), with labels and active hotfixes.
    Ls {
        #[arg(long)]
        nats: String,
        /// How long to listen for heartbeats after asking every agent for one.
        #[arg(long, default_value = "2s")]
        listen: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the audit log's hash chain from the first entry to the last.
    Verify {
        /// The agent's state dir (default: the embedded default's).
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Incident timeline and postmortem metrics from the verified audit log.
    Export {
        /// The agent's state dir (default: the embedded default's).
        #[arg(long)]
        state: Option<PathBuf>,
        /// How far back, e.g. 24h, 7d.
        #[arg(long, default_value = "24h")]
        since: String,
        #[arg(long, value_enum, default_value_t = crate::audit::export::Format::Json)]
        format: crate::audit::export::Format,
        /// Write here (0600) instead of stdout.
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
    },
}

/// A CLI failure: the exit code and the one-line reason.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn error(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::ERROR,
            message: message.into(),
        }
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::error(e.to_string())
    }
}

pub type CliResult = Result<(), Failure>;

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Agent(args) => run_agent(args).await,
        Command::Keygen { out, comment } => compose::keygen(&out, &comment),
        Command::Flag(cmd) => compose::flag(cmd).await,
        Command::New(args) => compose::new_payload(args),
        Command::Sign(args) => compose::sign(args),
        Command::Verify(args) => compose::verify(args),
        Command::Send(args) => client::send_file(args).await,
        Command::Status(args) => client::status(args).await,
        Command::Revert(args) => compose::revert(args).await,
        Command::Halt(args) => compose::halt(args).await,
        Command::Fleet(cmd) => fleet::run(cmd).await,
        Command::Audit(AuditCommand::Verify { state, json }) => audit_verify(state, json),
        Command::Audit(AuditCommand::Export {
            state,
            since,
            format,
            out,
        }) => {
            crate::audit::export::run(state, &since, format, out.as_deref()).map_err(|e| Failure {
                code: if e.is_broken() {
                    exit::INVALID
                } else {
                    exit::ERROR
                },
                message: e.to_string(),
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tourniquet: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn run_agent(args: AgentArgs) -> CliResult {
    let (mut cfg, dev) = match &args.config {
        Some(path) => (crate::config::AgentConfig::load(path)?, false),
        None => {
            if args.check {
                return Err(Failure::error("--check needs --config FILE"));
            }
            (crate::defaults::prepare()?.config, true)
        }
    };
    if let Some(addr) = args.listen {
        cfg.api.listen = addr;
        if dev {
            crate::defaults::follow_listen(&mut cfg, addr);
        }
        cfg.validate("--listen")?;
    }
    if args.check {
        println!("{}", crate::agent::check(&cfg)?);
        return Ok(());
    }
    crate::agent::run(cfg, dev).await?;
    Ok(())
}

fn audit_verify(state: Option<PathBuf>, json: bool) -> CliResult {
    let dir = state.unwrap_or_else(|| PathBuf::from(crate::defaults::DEFAULT_DIR).join("state"));
    let checkpoint = crate::lifecycle::store::read_checkpoint(&dir);
    match crate::audit::verify(&dir, checkpoint.as_ref()) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "entries": report.entries,
                        "first_seq": report.first_seq,
                        "last_seq": report.last_seq,
                        "last_hash": report.last_hash,
                        "segments": report.segments,
                        "pruned_before": report.pruned_before,
                        "checkpoint": report.checkpoint,
                    })
                );
            } else {
                let mut line = format!(
                    "audit log ok: {} entries in {} segment(s), chain head {}",
                    report.entries,
                    report.segments,
                    report.last_hash.get(..16).unwrap_or_default()
                );
                if report.pruned_before {
                    line.push_str(&format!(
                        "; starts at seq {} (older segments were deleted by [retention])",
                        report.first_seq
                    ));
                }
                match &report.checkpoint {
                    Some(cp) => {
                        line.push_str(&format!("; checkpoint at seq {} is covered", cp.seq))
                    }
                    None => line.push_str("; no checkpoint yet, so a cut tail cannot be ruled out"),
                }
                println!("{line}");
            }
            Ok(())
        }
        Err(e) => {
            if json {
                let missing = match &e {
                    crate::audit::AuditError::Truncated { missing, .. } => Some(*missing),
                    _ => None,
                };
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "error": e.to_string(), "missing_entries": missing})
                );
            }
            Err(Failure {
                code: exit::INVALID,
                message: e.to_string(),
            })
        }
    }
}
