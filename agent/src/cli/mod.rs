//! The operator CLI and the `agent` entry point (DESIGN §9).
//!
//! One binary, two faces: the daemon, and the commands an on-call engineer
//! types at 3 a.m. Human output by default, `--json` for scripts, and a
//! one-line reason with a non-zero exit code on every failure.

mod agent;
mod audit;
mod client;
mod completions;
mod compose;
mod fleet;
mod keygen;
mod new;
mod ops;
mod render;
mod revert;
mod send;
mod sign;
mod status;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

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
    /// The command line cannot work: a value of the wrong type, a missing
    /// argument (BSD sysexits EX_USAGE).
    pub const USAGE: u8 = 64;
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
--hold 10m --to http://127.0.0.1:7370   # terminal 2\n\n\
Environment: TOURNIQUET_TO is the default --to, TOURNIQUET_KEY the default --key.",
    after_help = "Exit codes: 0 ok, 1 error, 2 rejected, 3 failed, 4 rolled back, 5 invalid, 64 usage."
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
    Agent(agent::AgentArgs),
    /// Create an OpenSSH ed25519 key pair (FILE and FILE.pub) for automation.
    Keygen(keygen::KeygenArgs),
    /// Every op, its params and the resource kinds that support it.
    Ops(ops::OpsArgs),
    /// One verb per op (`flag set`, `waf block`, `cdn purge`…), from the providers' registry.
    #[command(flatten)]
    Op(ops::OpVerb),
    /// Write an unsigned command payload, for review and co-signing.
    New(new::NewArgs),
    /// Sign a payload into an envelope, add a co-signature, or show the bytes to sign.
    Sign(sign::SignArgs),
    /// Offline: would an agent with this policy accept the envelope, and why not?
    Verify(verify::VerifyArgs),
    /// Send a signed envelope to an agent (http[s]://HOST:PORT), an inbox (dir:PATH) or a fleet (nats://HOST:PORT).
    Send(send::SendArgs),
    /// Show a command's state and receipt, or the agent's active hotfixes.
    Status(status::StatusArgs),
    /// Undo an earlier command on the agent (a signed `revert`).
    #[command(
        after_help = "Example:\n  tourniquet revert 01JD3Z8K6Q0V6N9W2X4Y5Z7A8B --reason \"INC-1 resolved\" --to http://127.0.0.1:7370"
    )]
    Revert(revert::RevertArgs),
    /// Stop a fleet rollout: agents whose wave has not started report `halted`.
    #[command(
        after_help = "Example:\n  tourniquet halt 01JD3Z8K6Q0V6N9W2X4Y5Z7A8B --reason \"wave 1 shows errors\" --to nats://nats-1:4222 --fleet prod"
    )]
    Halt(revert::RevertArgs),
    /// Fleet tools over NATS JetStream: create the streams, list agents.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the manual page, or write one page per command with --dir.
    Man(completions::ManArgs),
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
    /// Send at once: http[s]://HOST:PORT or dir:PATH (waits for the receipt), or
    /// nats://HOST:PORT (a fleet, see --fleet). Default: $TOURNIQUET_TO. Without
    /// either, the signed envelope goes to stdout, or to -o FILE.
    // `--send` is the name older scripts use.
    #[arg(long, alias = "send", value_name = "DEST", conflicts_with = "out")]
    pub to: Option<String>,
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
    /// How many agents should answer; `status ID --to nats://…` then shows n of expected.
    #[arg(long)]
    pub expect: Option<u32>,
    /// Who is asking (default: $USER@host).
    #[arg(long)]
    pub issuer: Option<String>,
    /// Write the signed envelope here instead of stdout, and do not send it
    /// (even with $TOURNIQUET_TO set): how the two-person flow starts.
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

    /// The command line cannot work as typed (exit 64).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::USAGE,
            message: message.into(),
        }
    }
}

impl Common {
    /// Where to send: `--to`, else `$TOURNIQUET_TO` unless `-o` asks for a
    /// file. `None`: write the envelope out.
    pub fn destination(&self) -> Option<String> {
        match (&self.to, &self.out) {
            (Some(to), _) => Some(to.clone()),
            (None, Some(_)) => None,
            (None, None) => env_to(),
        }
    }
}

/// `$TOURNIQUET_TO`, the default destination, when set and not empty.
pub fn env_to() -> Option<String> {
    std::env::var("TOURNIQUET_TO")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// The whole command line: every command, flag and generated op verb.
/// Parsing, `--help`, completions and manual pages all come from here, so
/// whatever is added here shows up in all four.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the process's arguments with [`command`]. `Err` is the exit code
/// after clap printed help, the version or a usage error: help and
/// version exit 0, usage errors 64 (2 means "rejected" here).
pub fn parse() -> Result<Cli, ExitCode> {
    let parsed = command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    parsed.map_err(|e| {
        // Printing fails only on a closed stream; the exit code still tells.
        let _ = e.print();
        ExitCode::from(usage_exit_code(&e))
    })
}

/// The exit code of a clap error: 0 for help and version, 64 otherwise.
fn usage_exit_code(e: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
        _ => exit::USAGE,
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
        Command::Agent(args) => agent::run(args).await,
        Command::Keygen(args) => keygen::run(args),
        Command::Ops(args) => ops::list(args),
        Command::Op(verb) => ops::run(verb).await,
        Command::New(args) => new::run(args),
        Command::Sign(args) => sign::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Send(args) => send::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Revert(args) => revert::revert(args).await,
        Command::Halt(args) => revert::halt(args).await,
        Command::Fleet(cmd) => fleet::run(cmd).await,
        Command::Audit(cmd) => audit::run(cmd),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tourniquet: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
