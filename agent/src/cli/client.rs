//! Talking to agents: HTTP(S) and inbox directories.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::{exit, render, CliResult, Conn, Failure};
use crate::api::{self, Accepted, ApiError, CommandAnswer, CommandQuery};
use crate::command::envelope::Envelope;
use crate::lifecycle::record::State;

/// Where an envelope goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    Http(String),
    Dir(PathBuf),
    /// A fleet: NATS server URL(s); the fleet name comes from `--fleet`.
    Nats(String),
}

impl Destination {
    pub fn parse(text: &str) -> Result<Destination, Failure> {
        if let Some(path) = text.strip_prefix("dir:") {
            return Ok(Destination::Dir(PathBuf::from(path)));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Destination::Http(text.trim_end_matches('/').to_string()));
        }
        if text.starts_with("nats://") || text.starts_with("tls://") {
            return Ok(Destination::Nats(text.to_string()));
        }
        Err(Failure::error(format!(
            "{text:?} is not a destination: use http[s]://HOST:PORT, dir:PATH or nats://HOST:PORT"
        )))
    }
}

pub(super) fn http_client(conn: &Conn) -> Result<reqwest::Client, Failure> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(90));
    if let Some(ca) = &conn.cacert {
        let pem =
            std::fs::read(ca).map_err(|e| Failure::error(format!("{}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| Failure::error(format!("{}: {e}", ca.display())))?;
        b = b.add_root_certificate(cert);
    }
    if let (Some(cert), Some(key)) = (&conn.client_cert, &conn.client_key) {
        let mut pem =
            std::fs::read(cert).map_err(|e| Failure::error(format!("{}: {e}", cert.display())))?;
        pem.extend(
            std::fs::read(key).map_err(|e| Failure::error(format!("{}: {e}", key.display())))?,
        );
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| Failure::error(format!("client identity: {e}")))?;
        b = b.identity(id);
    }
    b.build()
        .map_err(|e| Failure::error(format!("HTTP client: {e}")))
}

pub(super) async fn get_json(client: &reqwest::Client, url: &str) -> Result<(u16, Value), Failure> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| Failure::error(format!("GET {url}: {}", describe(&e))))?;
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// Reads an agent's answer as its API type. An answer that does not fit
/// is most likely from an agent of another version.
pub(super) fn read_answer<T: DeserializeOwned>(url: &str, body: &Value) -> Result<T, Failure> {
    T::deserialize(body).map_err(|e| {
        Failure::error(format!(
            "{url}: the agent's answer does not read ({e}); is it running the same tourniquet version as this CLI?"
        ))
    })
}

/// The sentence of the error an agent answered with.
pub(super) fn answer_error(status: u16, body: &Value) -> String {
    match ApiError::deserialize(body) {
        Ok(e) => e.message,
        Err(_) => format!("HTTP {status}: {body}"),
    }
}

fn describe(e: &reqwest::Error) -> String {
    crate::telemetry::error_chain(e)
}

/// Sends an envelope and, unless `no_wait`, waits for a settled receipt
/// and prints it.
pub async fn deliver(env: &Envelope, dest: &str, conn: &Conn, no_wait: bool) -> CliResult {
    let id = env
        .payload_bytes()
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("id").and_then(Value::as_str).map(String::from))
        .unwrap_or_default();
    match Destination::parse(dest)? {
        Destination::Nats(url) => super::fleet::publish(env, &url, conn).await,
        Destination::Dir(dir) => {
            let name = if id.is_empty() {
                "command".to_string()
            } else {
                id.clone()
            };
            if !dir.is_dir() {
                return Err(Failure::error(format!(
                    "{} is not a directory: point dir: at the [inbox] dir of a running agent, which creates it",
                    dir.display()
                )));
            }
            let tmp = dir.join(format!(".{name}.json.tmp"));
            let final_path = dir.join(format!("{name}.json"));
            std::fs::write(&tmp, env.to_json_pretty())
                .map_err(|e| Failure::error(format!("{}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, &final_path)
                .map_err(|e| Failure::error(format!("{}: {e}", final_path.display())))?;
            if conn.json {
                println!(
                    "{}",
                    serde_json::json!({"id": id, "status": "delivered", "path": final_path})
                );
            } else {
                println!("delivered {id} to {}", final_path.display());
            }
            Ok(())
        }
        Destination::Http(base) => {
            let client = http_client(conn)?;
            let url = format!("{base}{}", api::COMMANDS_PATH);
            let started = Instant::now();
            let resp = client
                .post(&url)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(env)?)
                .send()
                .await
                .map_err(|e| Failure::error(format!("POST {url}: {}", describe(&e))))?;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status != 202 {
                if conn.json {
                    println!("{}", serde_json::to_string_pretty(&body)?);
                }
                let why = match ApiError::deserialize(&body) {
                    Ok(e) => format!("({status} {}): {}", e.reason, e.message),
                    Err(_) => format!("({status}): {body}"),
                };
                return Err(Failure {
                    code: exit::REJECTED,
                    message: format!("rejected {why}"),
                });
            }
            let accepted: Accepted = read_answer(&url, &body)?;
            let id = accepted.id;
            if no_wait {
                if conn.json {
                    println!("{}", serde_json::to_string_pretty(&body)?);
                } else {
                    println!("accepted {id} ({})", accepted.status.as_str());
                }
                return Ok(());
            }
            let (body, record) = wait_settled(&client, &base, &id, conn.wait, !conn.json).await?;
            let elapsed = started.elapsed();
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!("{}", render::record(&record));
                eprintln!("({} ms from send to receipt)", elapsed.as_millis());
            }
            outcome_code(&record)
        }
    }
}

/// Polls with long waits until the command settles, showing progress.
/// Returns the settled answer as sent (for `--json`) and as read.
async fn wait_settled(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    max_secs: u64,
    progress: bool,
) -> Result<(Value, CommandAnswer), Failure> {
    let deadline = Instant::now() + Duration::from_secs(max_secs);
    let mut last_state = String::new();
    let query = CommandQuery {
        wait: Some(Duration::from_secs(10)),
        after: None,
    };
    loop {
        let url = format!("{base}{}{}", api::command_path(id), query.to_query());
        let (status, body) = get_json(client, &url).await?;
        if status != 200 {
            return Err(Failure::error(format!(
                "GET {url}: {}",
                answer_error(status, &body)
            )));
        }
        let record: CommandAnswer = read_answer(&url, &body)?;
        if record.settled() {
            return Ok((body, record));
        }
        let state = record.state().as_str().to_string();
        if progress && state != last_state {
            eprintln!("… {id}: {state}");
            last_state = state;
        }
        if Instant::now() >= deadline {
            return Err(Failure::error(format!(
                "{id} not settled after {max_secs}s (state {last_state}); check `tourniquet status {id}`"
            )));
        }
    }
}

fn outcome_code(record: &CommandAnswer) -> CliResult {
    let msg = record.message().unwrap_or("");
    match record.state() {
        State::RolledBack => Err(Failure {
            code: exit::ROLLED_BACK,
            message: "the guard breached and the change was rolled back".into(),
        }),
        State::Failed => Err(Failure {
            code: exit::FAILED,
            message: format!("apply failed, nothing left changed: {msg}"),
        }),
        State::Rejected => Err(Failure {
            code: exit::REJECTED,
            message: format!("rejected: {msg}"),
        }),
        _ => Ok(()),
    }
}
