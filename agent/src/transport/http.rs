//! The HTTP API (DESIGN §7): loopback by default, TLS and mTLS via rustls.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::ApiSection;
use crate::lifecycle::{Lifecycle, Submission};
use crate::payload::Timestamp;
use crate::policy::MAX_ENVELOPE_BYTES;
use crate::record::CommandRecord;

/// Longest `?wait=` a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Builds the TLS acceptor from the `[api]` section, if TLS is configured.
pub fn tls_acceptor(api: &ApiSection) -> Result<Option<TlsAcceptor>, String> {
    let (Some(cert), Some(key)) = (&api.tls_cert, &api.tls_key) else {
        return Ok(None);
    };
    let certs = load_certs(cert)?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(open(key)?))
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &api.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn open(p: &Path) -> Result<std::fs::File, String> {
    std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn load_certs(p: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> =
        rustls_pemfile::certs(&mut std::io::BufReader::new(open(p)?)).collect();
    let certs = certs.map_err(|e| format!("{}: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", p.display()));
    }
    Ok(certs)
}

/// Serves the API on an already bound listener until the task is dropped.
pub async fn serve(lc: Arc<Lifecycle>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let lc = lc.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let lc = lc.clone();
                async move { Ok::<_, Infallible>(route(lc, req, peer).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => builder.serve_connection(TokioIo::new(s), service).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: u16, body: &Value) -> Resp {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_default()
}

fn error(status: u16, reason: &str, message: &str) -> Resp {
    json_response(status, &json!({"reason": reason, "message": message}))
}

async fn route(lc: Arc<Lifecycle>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    tracing::debug!(%peer, method = %req.method(), %path, "request");
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => healthz(&lc),
        (Method::GET, "/metrics") => Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(lc.metrics.render())))
            .unwrap_or_default(),
        (Method::POST, "/v1/commands") => post_command(lc, req).await,
        (Method::GET, "/v1/hotfixes") => hotfixes(&lc),
        (Method::GET, "/v1/identity") => identity(&lc),
        (Method::GET, p) if p.starts_with("/v1/commands/") => {
            let id = &p["/v1/commands/".len()..];
            get_command(&lc, id, &query).await
        }
        (_, "/healthz" | "/metrics" | "/v1/commands" | "/v1/hotfixes" | "/v1/identity") => {
            error(405, "method_not_allowed", "method not allowed on this path")
        }
        _ => error(404, "not_found", "no such endpoint; see GET /v1/identity"),
    }
}

/// Reads at most `limit + 1` bytes of the body, so an oversize body is
/// detected without buffering all of it.
async fn read_limited(mut body: Incoming, limit: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            let room = (limit + 1).saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
            if buf.len() > limit {
                break;
            }
        }
    }
    Ok(buf)
}

async fn post_command(lc: Arc<Lifecycle>, req: Request<Incoming>) -> Resp {
    let body = match read_limited(req.into_body(), MAX_ENVELOPE_BYTES).await {
        Ok(b) => b,
        Err(e) => return error(400, "bad_envelope", &format!("reading the body: {e}")),
    };
    match lc.submit(&body, "http").await {
        Submission::Accepted { id, state } => {
            json_response(202, &json!({"id": id, "status": state.as_str()}))
        }
        Submission::Rejected { rejection, receipt } => json_response(
            rejection.reason.http_status(),
            &json!({"reason": rejection.reason.code(), "message": rejection.message, "receipt": receipt}),
        ),
    }
}

/// 200 while the agent can record commands; 503, with the reason, while
/// its state dir refuses writes (commands are refused then).
fn healthz(lc: &Lifecycle) -> Resp {
    match lc.storage_health() {
        Ok(()) => json_response(200, &json!({"status": "ok"})),
        Err(why) => json_response(
            503,
            &json!({"status": "unavailable", "reason": "storage_unavailable", "message": why}),
        ),
    }
}

fn hold_left(r: &CommandRecord) -> Option<u64> {
    r.hold_until.map(|t| Timestamp::now().until(t).as_secs())
}

/// The record as the API shows it: everything but the raw envelope.
fn record_view(lc: &Lifecycle, r: &CommandRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("settled".into(), Value::Bool(r.is_settled()));
        o.insert("terminal".into(), Value::Bool(r.is_terminal()));
        o.insert("hold_left_s".into(), json!(hold_left(r)));
        o.insert(
            "receipt".into(),
            r.receipts
                .last()
                .and_then(|n| lc.read_receipt(n))
                .unwrap_or(Value::Null),
        );
    }
    v
}

async fn get_command(lc: &Arc<Lifecycle>, id: &str, query: &str) -> Resp {
    let wait = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait="))
        .and_then(|w| humantime::parse_duration(w).ok())
        .map(|d| d.min(MAX_WAIT));
    let mut changes = lc.subscribe();
    let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
    // `seen` lets a client wait for the next change after a known state.
    let after_state = query.split('&').find_map(|kv| kv.strip_prefix("after="));
    loop {
        let rec = lc.record(id);
        let done = match &rec {
            Some(r) => r.is_settled() && after_state != Some(r.state.as_str()),
            None => false,
        };
        if done || wait.is_none() || tokio::time::Instant::now() >= deadline {
            return match rec {
                Some(r) => json_response(200, &record_view(lc, &r)),
                None => match lc.archived_view(id).await {
                    Some(v) => json_response(200, &v),
                    None => error(404, "not_found", &format!("this agent has no command {id}")),
                },
            };
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            continue;
        }
    }
}

fn hotfixes(lc: &Lifecycle) -> Resp {
    let list: Vec<Value> = lc
        .active()
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "issuer": r.payload.as_ref().map(|p| p.issuer.clone()),
                "reason": r.payload.as_ref().map(|p| p.reason.clone()),
                "actions": r.actions.iter().map(|a| json!({"resource": a.resource, "op": a.op, "params": a.params, "before": a.before, "after": a.after})).collect::<Vec<_>>(),
                "applied_at": r.timeline.iter().rev().find(|t| t.state == crate::record::State::Applied).map(|t| t.at),
                "hold_until": r.hold_until,
                "hold_left_s": hold_left(r),
            })
        })
        .collect();
    json_response(200, &json!({"hotfixes": list}))
}

fn identity(lc: &Lifecycle) -> Resp {
    let id = lc.identity();
    let resources: Vec<Value> = lc
        .resources()
        .iter()
        .map(|(n, r)| json!({"name": n, "kind": r.provider.kind()}))
        .collect();
    json_response(
        200,
        &json!({
            "agent_id": id.id,
            "labels": id.labels,
            "public_key": lc.agent_ref().key,
            "fingerprint": crate::envelope::fingerprint(id.key.public_key().key_data()),
            "policy_sha256": lc.policy_sha256(),
            "resources": resources,
            "probes": lc.probes().names().collect::<Vec<_>>(),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}
