//! The `tourniquet` binary: the agent and the operator CLI.

use std::process::ExitCode;

use tourniquet::cli::LogFormat;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

fn main() -> ExitCode {
    let cli = match tourniquet::cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let is_agent = matches!(cli.command, tourniquet::cli::Command::Agent(_));
    if !is_agent {
        quiet_on_closed_stdout();
    }
    // `TOURNIQUET_LOG=debug`, or per module: `info,tourniquet::transport=debug`.
    let filter: Targets = std::env::var("TOURNIQUET_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            // The agent logs what it does; the CLI only warnings, so its
            // output stays what the operator asked for.
            let level = if is_agent {
                LevelFilter::INFO
            } else {
                LevelFilter::WARN
            };
            Targets::new().with_default(level)
        });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if cli.log_format == LogFormat::Json {
        tracing_subscriber::registry()
            .with(fmt.json().with_filter(filter))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(fmt.with_target(false).with_filter(filter))
            .init();
    }
    // Two workers are plenty for an agent beside a service; it must not
    // compete with what it protects.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tourniquet: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(tourniquet::cli::run(cli))
}

/// `tourniquet status | head` closes the pipe before the CLI is done
/// printing. Rust ignores SIGPIPE, so the next `println!` panics on EPIPE;
/// for an operator command that is not a failure: the reader has all it
/// wanted. This ends such a command quietly with exit 0. (Restoring
/// SIGPIPE's default would end it by the signal instead, which scripts
/// with `pipefail` read as a failure.) The agent keeps the default hook:
/// it writes to sockets and files, never to a pipe it should die of.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if is_broken_stdout(info) {
            std::process::exit(0);
        }
        default(info)
    }));
}

/// Is this `println!`'s panic on a closed stdout ("failed printing to
/// stdout: Broken pipe (os error 32)")?
fn is_broken_stdout(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let payload = info.payload();
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    let broken_pipe = std::io::Error::from_raw_os_error(libc::EPIPE).to_string();
    text.starts_with("failed printing to stdout") && text.ends_with(&broken_pipe)
}
