//! The `tourniquet` binary: the agent and the operator CLI.

use std::process::ExitCode;

use clap::Parser;
use tourniquet::cli::{Cli, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOURNIQUET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.with_target(false).init();
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
