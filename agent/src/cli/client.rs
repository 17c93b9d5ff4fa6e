//! Talking to agents: HTTP(S) and inbox directories.
//!
//! When an agent cannot be reached, the operator gets one line saying
//! where, why in a few words, and what to check, not the error chain of
//! the HTTP stack: at 3 a.m. "connection refused" should read as "the
//! agent is not running there".

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
        Err(Failure::usage(format!(
            "--to {text:?} is not a destination: use http[s]://HOST:PORT, dir:PATH or nats://HOST:PORT"
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
        .map_err(|e| unreachable(url, &e))?;
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

/// The error an agent answered with: its status, reason code and message.
pub(super) fn answer_error(status: u16, body: &Value) -> String {
    match ApiError::deserialize(body) {
        Ok(e) => format!("the agent answered {status} {}: {}", e.reason, e.message),
        Err(_) => format!(
            "HTTP {status} with no tourniquet answer: is --to the address of a tourniquet agent's API?"
        ),
    }
}

/// Why an HTTP request reached no agent, in a few words.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unreached {
    Refused,
    TimedOut,
    Dns,
    /// The TLS handshake failed: the detail rustls gave.
    Tls(String),
    /// Anything else: the error chain, as a last resort.
    Other(String),
}

/// An error and its causes, outermost first. An `io::Error` that wraps
/// another error (as rustls's handshake errors are, twice over) is
/// followed into what it wraps: its `source()` skips that error.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        out.push(err);
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    out
}

/// Does any cause say the connection was refused?
fn is_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).iter().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

impl Unreached {
    fn of(e: &reqwest::Error) -> Unreached {
        if is_refused(e) {
            return Unreached::Refused;
        }
        let mut timed_out = e.is_timeout();
        let mut dns = false;
        for err in causes(e) {
            if let Some(tls) = err.downcast_ref::<rustls::Error>() {
                return Unreached::Tls(tls.to_string());
            }
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                timed_out = true;
            }
            // hyper-util names the failing step of a connect in its message.
            if err.to_string().starts_with("dns error") {
                dns = true;
            }
        }
        if timed_out {
            Unreached::TimedOut
        } else if dns {
            Unreached::Dns
        } else {
            Unreached::Other(crate::telemetry::error_chain(e))
        }
    }
}

/// The one-line failure for a request that reached no agent at `url`:
/// `no agent answers at http://127.0.0.1:7370 (connection refused): is
/// 'tourniquet agent' running there?`
pub(super) fn unreachable(url: &str, e: &reqwest::Error) -> Failure {
    let at = e
        .url()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .unwrap_or_else(|| url.to_string());
    let running = "is 'tourniquet agent' running there?";
    let line = match Unreached::of(e) {
        Unreached::Refused => format!("no agent answers at {at} (connection refused): {running}"),
        Unreached::TimedOut => format!(
            "no agent answers at {at} (timed out): {running} Is a firewall in the way?"
        ),
        Unreached::Dns => format!(
            "no agent answers at {at} (DNS lookup failed): check the host name in --to"
        ),
        Unreached::Tls(why) => format!(
            "no agent answers at {at} (TLS handshake failed: {why}): pass the CA that signed the agent's certificate with --cacert PEM (and --client-cert/--client-key if it asks for mTLS)"
        ),
        Unreached::Other(why) => format!("no agent answers at {at} ({why}): {running}"),
    };
    Failure::error(line)
}

/// The one-line failure for a NATS server that does not let us in.
pub(super) fn nats_unreachable(
    url: &str,
    fleet_name: &str,
    e: &async_nats::ConnectError,
) -> Failure {
    use async_nats::ConnectErrorKind as Kind;
    let at = crate::transport::nats::fleet::redact_url(url);
    let refused = is_refused(e);
    let server = format!(
        "is the NATS server of fleet '{fleet_name}' running there? (--to names the server, --fleet the fleet)"
    );
    let line = match e.kind() {
        Kind::Authentication | Kind::AuthorizationViolation => format!(
            "the NATS server at {at} refused us ({e}): pass the fleet's credentials with --nats-creds FILE or nats://USER:PASS@HOST:PORT"
        ),
        Kind::Tls => format!(
            "no NATS server answers at {at} (TLS failed: {e}): check the server's TLS setup and the tls:// address"
        ),
        Kind::Dns => format!(
            "no NATS server answers at {at} (DNS lookup failed): check the host name in --to"
        ),
        Kind::TimedOut => format!("no NATS server answers at {at} (timed out): {server}"),
        _ if refused => format!("no NATS server answers at {at} (connection refused): {server}"),
        _ => format!("no NATS server answers at {at} ({e}): {server}"),
    };
    Failure::error(line)
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
                .map_err(|e| unreachable(&base, &e))?;
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
