//! `tourniquet audit verify|export`: the audit log, read offline from a
//! state dir.

use std::path::PathBuf;

use clap::Subcommand;

use super::{exit, CliResult, Failure};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the audit log's hash chain from the first entry to the last.
    #[command(after_help = "Example:\n  tourniquet audit verify --state /var/lib/tourniquet")]
    Verify {
        /// The agent's state dir (default: the embedded default's).
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Incident timeline and postmortem metrics from the verified audit log.
    #[command(
        after_help = "Example:\n  tourniquet audit export --state /var/lib/tourniquet --since 7d --format csv -o incidents.csv"
    )]
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

pub fn run(cmd: AuditCommand) -> CliResult {
    match cmd {
        AuditCommand::Verify { state, json } => audit_verify(state, json),
        AuditCommand::Export {
            state,
            since,
            format,
            out,
        } => audit_export(state, &since, format, out.as_deref()).map_err(|e| Failure {
            code: if e.is_broken() {
                exit::INVALID
            } else {
                exit::ERROR
            },
            message: e.to_string(),
        }),
    }
}

/// `tourniquet audit export`: renders to stdout, or to `out` (0600).
fn audit_export(
    state: Option<PathBuf>,
    since: &str,
    format: crate::audit::export::Format,
    out: Option<&std::path::Path>,
) -> Result<(), crate::audit::export::ExportError> {
    let dir = state.unwrap_or_else(|| PathBuf::from(crate::defaults::DEFAULT_DIR).join("state"));
    let text = crate::audit::export::export_state(&dir, since)?.render(format);
    match out {
        Some(path) => tourniquet_providers::write_atomically(path, text.as_bytes(), 0o600)
            .map_err(|e| crate::audit::export::ExportError::Io(format!("{}: {e}", path.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
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
