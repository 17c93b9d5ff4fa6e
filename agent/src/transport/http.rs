//! The HTTP API (DESIGN §7): loopback by default, TLS and mTLS via rustls.
//!
//! # What a connection may cost
//!
//! The API port is open to anyone who can reach it, signed or not, so what
//! a client can make the agent hold is bounded, and a flood of slow clients
//! cannot starve `/healthz` or an operator's signed command:
//!
//! - **Whole-request deadline** (`api.read_timeout`, default 10s). A
//!   request's head and body, and on a new connection the TLS handshake
//!   too, must arrive within it, counted from the request's first byte (from
//!   the accept for a new connection). A client dribbling a byte a second
//!   does not reset it. A late body is answered 408 `request_timeout`; a late
//!   head or handshake is closed (hyper owns head parsing, so there is no
//!   point at which to answer). The handler's own time (verifying, waiting
//!   on `?wait=`) is not the client's and has no such deadline.
//! - **Idle deadline** (`api.idle_timeout`, default 30s): a keep-alive
//!   connection waiting for its next request, and an answer whose writing
//!   stalls on a client that does not read, are closed after it.
//! - **Head size**: at most [`MAX_HEADERS`] header fields and
//!   [`MAX_HEAD_BYTES`] of head (431 beyond either); hyper's read buffer is
//!   capped at [`MAX_READ_BUFFER`].
//! - **Body size**: a `Content-Length` above [`MAX_ENVELOPE_BYTES`] is
//!   answered 413 `too_large` at once, without reading the body; a chunked
//!   body is read to one byte past the limit, never further.
//! - **Connection cap** (`api.max_connections`, default 256). Each
//!   connection holds one slot from accept to close. At the cap a new
//!   connection does not wait and is not refused: it takes the slot of the
//!   connection that has waited longest *on its client* (idle between
//!   requests, or still sending its request), which is closed. A connection
//!   whose request the agent is working on is never closed this way; one
//!   whose handler waits on the client's behalf (`?wait=`) is closed only
//!   when no connection is waiting on its client. Only if every slot is busy
//!   with a request being worked on is the new connection turned away (503
//!   `too_many_connections` on plain HTTP, a bare close on TLS).
//!
//!   Why not a few reserve slots that only serve `/healthz`? Idle clients
//!   fill a reserve as easily as the main pool, and a probe then fails just
//!   the same. Closing the stalest connection instead keeps the agent's
//!   descriptors at `max_connections` (the accept loop waits for an evicted
//!   connection's socket to close before it accepts the next), lets a
//!   client that sends its request promptly in — `/healthz` and a `POST` of
//!   a signed hotfix alike — unless the attacker opens `max_connections`
//!   connections in the time that client takes to send its request, and
//!   costs an attacker a fresh connection for every slot held.
//! - **Accept errors** such as running out of descriptors (EMFILE) back off
//!   from 10ms to 1s instead of retrying in a tight loop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::api::{
    self, Accepted, ApiError, ArchivedCommand, CommandAnswer, CommandQuery, CommandView, ErrorCode,
    Health, HealthStatus, Hotfix, Hotfixes, IdentityResource, Rejected, MAX_WAIT,
};
use crate::command::payload::Timestamp;
use crate::command::rejection::Reason;
use crate::config::ApiSection;
use crate::lifecycle::record::CommandRecord;
use crate::lifecycle::{Lifecycle, Submission};
use crate::trust::policy::MAX_ENVELOPE_BYTES;
/// Header fields a request may carry. The CLI sends five or six.
pub const MAX_HEADERS: usize = 32;
/// Bytes of request line plus header fields.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// hyper's per-connection read buffer (its minimum is 8 KiB).
pub const MAX_READ_BUFFER: usize = 16 * 1024;
/// While the handler reads a body it answers 408 itself at the deadline;
/// the connection's own timer fires this much later, only if it did not.
const BODY_GRACE: Duration = Duration::from_secs(1);
/// Back-off bounds after a failed accept (EMFILE and the like).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Written to a connection turned away because every slot is busy.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\ncontent-length: 80\r\nconnection: close\r\n\r\n\
{\"reason\":\"too_many_connections\",\"message\":\"every API connection slot is busy\"}\n";

/// The API's limits, from `[api]`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
}

/// What [`serve`] needs besides the listener: the TLS acceptor, if TLS is
/// configured, and the connection limits. It derefs to the optional TLS
/// acceptor, so `acceptor.is_some()` says whether the API speaks TLS.
#[derive(Clone)]
pub struct Acceptor {
    tls: Option<TlsAcceptor>,
    limits: Limits,
}

impl Deref for Acceptor {
    type Target = Option<TlsAcceptor>;
    fn deref(&self) -> &Self::Target {
        &self.tls
    }
}

/// Builds the [`Acceptor`] from the `[api]` section: TLS if configured, and
/// the connection limits.
pub fn tls_acceptor(api: &ApiSection) -> Result<Acceptor, String> {
    Ok(Acceptor {
        tls: tls_config(api)?,
        limits: Limits {
            read_timeout: api.read_timeout.0,
            idle_timeout: api.idle_timeout.0,
            max_connections: api.max_connections,
        },
    })
}

/// The rustls acceptor, if `[api]` configures TLS.
fn tls_config(api: &ApiSection) -> Result<Option<TlsAcceptor>, String> {
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

/// Where a connection is in its life, which decides its deadline and
/// whether a newer connection may take its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the next request since the last answer was handed over.
    Idle(Instant),
    /// Receiving a request (TLS handshake, head) since its first byte.
    Head(Instant),
    /// The handler reads the body of the request that began then.
    Body(Instant),
    /// The handler works on the request: no deadline, never taken over.
    Busy,
    /// The handler waits on the client's behalf (`?wait=`) since then.
    Waiting(Instant),
    /// Closed to make room for a newer connection.
    Evicted,
}

/// One connection's phase, shared by its I/O wrapper, its handler and the
/// accept loop.
struct Clock {
    phase: Mutex<Phase>,
    limits: Limits,
}

/// The connection was closed to make room for a newer one.
#[derive(Debug)]
struct Evicted;

impl Clock {
    fn new(limits: Limits) -> Clock {
        Clock {
            phase: Mutex::new(Phase::Head(Instant::now())),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection must be closed, if it has a deadline now.
    /// Deadlines that would overflow the clock count as none.
    fn deadline(&self) -> Result<Option<Instant>, Evicted> {
        let l = self.limits;
        Ok(match *self.lock() {
            Phase::Idle(t) => t.checked_add(l.idle_timeout),
            Phase::Head(t) => t.checked_add(l.read_timeout),
            Phase::Body(t) => t
                .checked_add(l.read_timeout)
                .and_then(|d| d.checked_add(BODY_GRACE)),
            Phase::Busy | Phase::Waiting(_) => None,
            Phase::Evicted => return Err(Evicted),
        })
    }

    /// Bytes arrived: an idle connection starts a request.
    fn on_bytes(&self) {
        let mut p = self.lock();
        if let Phase::Idle(_) = *p {
            *p = Phase::Head(Instant::now());
        }
    }

    /// The head is parsed: returns when the request began.
    fn begin_body(&self) -> Result<Instant, Evicted> {
        let mut p = self.lock();
        let started = match *p {
            Phase::Head(t) => t,
            Phase::Evicted => return Err(Evicted),
            // A pipelined request parsed from bytes already buffered.
            _ => Instant::now(),
        };
        *p = Phase::Body(started);
        Ok(started)
    }

    /// The request is read: the handler works on it from now on.
    fn begin_work(&self) -> Result<(), Evicted> {
        self.set_unless_evicted(Phase::Busy)
    }

    /// The handler waits on the client's behalf.
    fn begin_wait(&self) -> Result<(), Evicted> {
        self.set_unless_evicted(Phase::Waiting(Instant::now()))
    }

    /// The answer is handed to hyper; the idle deadline covers writing it.
    fn answered(&self) {
        let _ = self.set_unless_evicted(Phase::Idle(Instant::now()));
    }

    fn set_unless_evicted(&self, next: Phase) -> Result<(), Evicted> {
        let mut p = self.lock();
        if *p == Phase::Evicted {
            return Err(Evicted);
        }
        *p = next;
        Ok(())
    }

    /// How eagerly this connection gives up its slot: lower goes first.
    /// Connections waiting on their client go before handlers waiting on
    /// the client's behalf; within a class, the longest waiting goes first.
    fn eviction_rank(&self) -> Option<(u8, Instant)> {
        match *self.lock() {
            Phase::Idle(t) | Phase::Head(t) | Phase::Body(t) => Some((0, t)),
            Phase::Waiting(t) => Some((1, t)),
            Phase::Busy | Phase::Evicted => None,
        }
    }

    /// Marks the connection evicted if it still may be.
    fn evict(&self) -> bool {
        let mut p = self.lock();
        match *p {
            Phase::Busy | Phase::Evicted => false,
            _ => {
                *p = Phase::Evicted;
                true
            }
        }
    }
}

/// The open connections, at most `max_connections`.
struct Registry {
    max: usize,
    next_id: u64,
    conns: HashMap<u64, Entry>,
    /// Evicted connections whose tasks have not yet been dropped (their
    /// sockets are still open). The accept loop waits for them, so the
    /// descriptors in use stay at the cap even under a flood.
    closing: usize,
    /// Told when an evicted connection's task is dropped.
    closed: Arc<tokio::sync::Notify>,
}

struct Entry {
    clock: Arc<Clock>,
    /// Set right after the connection's task is spawned.
    task: Option<AbortHandle>,
}

/// A connection's hold on the registry; dropping it frees the slot.
struct Slot {
    registry: Arc<Mutex<Registry>>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut r = lock_registry(&self.registry);
        if r.conns.remove(&self.id).is_none() {
            // Evicted: its entry went at eviction, its socket goes now.
            r.closing = r.closing.saturating_sub(1);
            r.closed.notify_one();
        }
    }
}

fn lock_registry(r: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every slot is busy with a request being worked on.
struct AllBusy;

impl Registry {
    fn new(max: usize) -> Registry {
        Registry {
            max,
            next_id: 0,
            conns: HashMap::new(),
            closing: 0,
            closed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Waits until every evicted connection's socket is closed.
    async fn settled(this: &Mutex<Registry>) {
        loop {
            let closed = lock_registry(this).closed.clone();
            let notified = closed.notified();
            if lock_registry(this).closing == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Takes a slot for a new connection, closing the connection that has
    /// waited longest on its client if the registry is full.
    fn admit(this: &Arc<Mutex<Registry>>, clock: Arc<Clock>) -> Result<Slot, AllBusy> {
        let mut r = lock_registry(this);
        while r.conns.len() >= r.max {
            let victim = r
                .conns
                .iter()
                .filter_map(|(id, e)| e.clock.eviction_rank().map(|rank| (rank, *id)))
                .min()
                .map(|(_, id)| id);
            let Some(id) = victim else {
                return Err(AllBusy);
            };
            // The victim may have become busy since it was ranked; then it
            // stays, and the next candidate is tried.
            if r.conns.get(&id).is_some_and(|e| e.clock.evict()) {
                r.closing = r.closing.saturating_add(1);
                if let Some(task) = r.conns.remove(&id).and_then(|e| e.task) {
                    task.abort();
                }
                tracing::debug!("API connection cap reached: closed the stalest connection");
            }
        }
        let id = r.next_id;
        r.next_id = r.next_id.wrapping_add(1);
        r.conns.insert(id, Entry { clock, task: None });
        Ok(Slot {
            registry: this.clone(),
            id,
        })
    }

    fn set_task(this: &Mutex<Registry>, id: u64, task: AbortHandle) {
        if let Some(e) = lock_registry(this).conns.get_mut(&id) {
            e.task = Some(task);
        }
    }
}

/// The connection's socket, under its deadline: reads and writes fail once
/// the phase's deadline has passed or the connection was evicted. It sits
/// below TLS, so the handshake is under the same deadline.
struct Guarded<T> {
    inner: T,
    clock: Arc<Clock>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<T> Guarded<T> {
    fn new(inner: T, clock: Arc<Clock>) -> Guarded<T> {
        Guarded {
            inner,
            clock,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    /// Fails if the connection is out of time; otherwise makes sure the
    /// task is woken at the current deadline.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = self.clock.deadline().map_err(|Evicted| {
            io::Error::other("closed to make room for a newer connection (api.max_connections)")
        })?;
        let Some(deadline) = deadline else {
            return Ok(());
        };
        if self.armed != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client was too slow (api.read_timeout or api.idle_timeout)",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.on_bytes();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether a failed accept concerns only the connection being accepted
/// (retry at once) rather than the process (back off).
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Serves the API on an already bound listener until the task is dropped.
pub async fn serve(lc: Arc<Lifecycle>, listener: TcpListener, acceptor: Acceptor) {
    let limits = acceptor.limits;
    let registry = Arc::new(Mutex::new(Registry::new(limits.max_connections)));
    let mut backoff = Duration::ZERO;
    let mut failed: u64 = 0;
    loop {
        Registry::settled(&registry).await;
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                if failed == 0 {
                    tracing::warn!(error = %e, "API accept failed; backing off until it works again");
                }
                failed = failed.saturating_add(1);
                backoff = (backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if failed > 0 {
            tracing::info!(failed, "API accepts work again");
            failed = 0;
            backoff = Duration::ZERO;
        }
        let clock = Arc::new(Clock::new(limits));
        let slot = match Registry::admit(&registry, clock.clone()) {
            Ok(slot) => slot,
            Err(AllBusy) => {
                tracing::debug!(%peer, "every API connection slot is busy; turned away");
                if acceptor.tls.is_none() {
                    // One non-blocking write; a client that is not reading
                    // just misses the explanation.
                    let _ = stream.try_write(TOO_MANY_CONNECTIONS);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = slot.id;
        let task = tokio::spawn(connection(
            lc.clone(),
            stream,
            peer,
            acceptor.tls.clone(),
            clock,
            slot,
        ));
        Registry::set_task(&registry, id, task.abort_handle());
    }
}

/// Serves one connection until it closes, times out or is evicted.
async fn connection(
    lc: Arc<Lifecycle>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    clock: Arc<Clock>,
    _slot: Slot,
) {
    let io = Guarded::new(stream, clock.clone());
    let service = service_fn(move |req| {
        let lc = lc.clone();
        let clock = clock.clone();
        async move { Ok::<_, Infallible>(handle(lc, req, peer, &clock).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The connection's clock owns every deadline (see the module doc).
        .header_read_timeout(None)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_READ_BUFFER);
    let result = match tls {
        Some(acceptor) => match acceptor.accept(io).await {
            Ok(s) => builder.serve_connection(TokioIo::new(s), service).await,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
        },
        None => builder.serve_connection(TokioIo::new(io), service).await,
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: u16, body: &impl Serialize) -> Resp {
    let bytes = api::to_body(body).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_default()
}

fn error(status: u16, reason: ErrorCode, message: &str) -> Resp {
    json_response(status, &ApiError::new(reason, message))
}

/// The answer, and the connection closes after it: for requests whose body
/// is left unread, or whose client ran out of time.
fn closing(mut resp: Resp) -> Resp {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn evicted() -> Resp {
    closing(error(
        503,
        ErrorCode::TooManyConnections,
        "this connection was closed to make room for a newer one",
    ))
}

/// Runs one request through the connection's clock: the body under the
/// request's deadline, the handler without one.
async fn handle(
    lc: Arc<Lifecycle>,
    req: Request<Incoming>,
    peer: SocketAddr,
    clock: &Clock,
) -> Resp {
    let Ok(started) = clock.begin_body() else {
        return evicted();
    };
    // An overflowing deadline is as good as none: the connection's own
    // timer is the backstop then.
    let deadline = started
        .checked_add(clock.limits.read_timeout)
        .unwrap_or_else(|| Instant::now() + MAX_WAIT);
    let resp = route(lc, req, peer, clock, deadline).await;
    clock.answered();
    resp
}

async fn route(
    lc: Arc<Lifecycle>,
    req: Request<Incoming>,
    peer: SocketAddr,
    clock: &Clock,
    deadline: Instant,
) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    tracing::debug!(%peer, method = %req.method(), %path, "request");
    if req.method() == Method::POST && path == "/v1/commands" {
        return post_command(lc, req, clock, deadline).await;
    }
    // Other requests have no body worth reading; hyper drops what comes.
    if clock.begin_work().is_err() {
        return evicted();
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, api::HEALTHZ_PATH) => healthz(&lc),
        (Method::GET, api::METRICS_PATH) => Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(lc.metrics.render())))
            .unwrap_or_default(),
        (Method::GET, api::HOTFIXES_PATH) => hotfixes(&lc),
        (Method::GET, api::IDENTITY_PATH) => identity(&lc),
        (Method::GET, p) if p.starts_with("/v1/commands/") => {
            let id = &p["/v1/commands/".len()..];
            get_command(&lc, id, CommandQuery::parse(&query), clock).await
        }
        (
            _,
            api::HEALTHZ_PATH
            | api::METRICS_PATH
            | api::COMMANDS_PATH
            | api::HOTFIXES_PATH
            | api::IDENTITY_PATH,
        ) => error(
            405,
            ErrorCode::MethodNotAllowed,
            "method not allowed on this path",
        ),
        _ => error(
            404,
            ErrorCode::NotFound,
            "no such endpoint; see GET /v1/identity",
        ),
    }
}

/// Reads at most `limit + 1` bytes of the body, so an oversize body is
/// detected without buffering all of it.
async fn read_limited(mut body: Incoming, limit: usize) -> Result<Vec<u8>, hyper::Error> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            let room = limit.saturating_add(1).saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
            if buf.len() > limit {
                break;
            }
        }
    }
    Ok(buf)
}

/// Whether reading failed because the connection's own timer fired.
fn timed_out(e: &hyper::Error) -> bool {
    e.is_timeout()
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
}

fn request_timeout(clock: &Clock) -> Resp {
    closing(error(
        408,
        ErrorCode::RequestTimeout,
        &format!(
            "the request did not arrive within api.read_timeout ({})",
            humantime::format_duration(clock.limits.read_timeout)
        ),
    ))
}

async fn post_command(
    lc: Arc<Lifecycle>,
    req: Request<Incoming>,
    clock: &Clock,
    deadline: Instant,
) -> Resp {
    // A declared length over the limit is refused before a byte of the
    // body is read; hyper then closes the connection rather than drain it.
    let declared = req.body().size_hint().lower();
    if declared > MAX_ENVELOPE_BYTES as u64 {
        lc.metrics.count_command(Some("too_large"));
        return closing(error(
            413,
            ErrorCode::Refused(Reason::TooLarge),
            &format!("the body is {declared} bytes; the limit is {MAX_ENVELOPE_BYTES}"),
        ));
    }
    let body =
        match tokio::time::timeout_at(deadline, read_limited(req.into_body(), MAX_ENVELOPE_BYTES))
            .await
        {
            Ok(Ok(b)) => b,
            Err(_) => return request_timeout(clock),
            Ok(Err(e)) if timed_out(&e) => return request_timeout(clock),
            Ok(Err(e)) => {
                return closing(error(
                    400,
                    ErrorCode::Refused(Reason::BadEnvelope),
                    &format!("reading the body: {e}"),
                ))
            }
        };
    if clock.begin_work().is_err() {
        return evicted();
    }
    // A task of its own: a client that hangs up, or a connection closed at
    // its deadline, never cuts a submission off half-way.
    let submitted = tokio::spawn(async move { lc.submit(&body, "http").await }).await;
    match submitted {
        Ok(Submission::Accepted { id, state }) => {
            json_response(202, &Accepted { id, status: state })
        }
        Ok(Submission::Rejected { rejection, receipt }) => json_response(
            rejection.reason.http_status(),
            &Rejected {
                reason: rejection.reason,
                message: rejection.message,
                receipt,
                superseded_by: rejection.superseded_by,
            },
        ),
        Err(e) => {
            tracing::error!(error = %e, "submitting a command failed");
            error(
                500,
                ErrorCode::InternalError,
                "the agent failed to process this command; see its log",
            )
        }
    }
}

/// 200 while the agent can record commands; 503, with the reason, while
/// its state dir refuses writes (commands are refused then).
fn healthz(lc: &Lifecycle) -> Resp {
    match lc.storage_health() {
        Ok(()) => json_response(
            200,
            &Health {
                status: HealthStatus::Ok,
                reason: None,
                message: None,
            },
        ),
        Err(e) => json_response(
            503,
            &Health {
                status: HealthStatus::Unavailable,
                reason: Some(Reason::StorageUnavailable),
                message: Some(e.to_string()),
            },
        ),
    }
}

/// The record as the API shows it: everything but the raw envelope.
fn record_view(lc: &Lifecycle, r: CommandRecord) -> CommandAnswer {
    // Stored as an envelope by the agent itself, so it reads as one.
    let receipt = r
        .receipts
        .last()
        .and_then(|n| lc.read_receipt(n))
        .and_then(|v| serde_json::from_value(v).ok());
    CommandAnswer::Live(Box::new(CommandView::of(r, receipt, Timestamp::now())))
}

async fn get_command(lc: &Arc<Lifecycle>, id: &str, query: CommandQuery, clock: &Clock) -> Resp {
    let wait = query.wait;
    let mut changes = lc.subscribe();
    let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
    loop {
        let rec = lc.record(id);
        let done = match &rec {
            // `after` lets a client wait for the next change after a
            // state it has seen.
            Some(r) => r.is_settled() && query.after != Some(r.state),
            None => false,
        };
        if done || wait.is_none() || tokio::time::Instant::now() >= deadline {
            return match rec {
                Some(r) => json_response(200, &record_view(lc, r)),
                None => match lc.archived_receipt(id).await {
                    Some(a) => json_response(
                        200,
                        &CommandAnswer::Archived(Box::new(ArchivedCommand::of(
                            a.id, a.name, a.receipt, a.envelope,
                        ))),
                    ),
                    None => error(
                        404,
                        ErrorCode::NotFound,
                        &format!("this agent has no command {id}"),
                    ),
                },
            };
        }
        // While it waits, a newer connection may take this one's slot.
        if clock.begin_wait().is_err() {
            return evicted();
        }
        let changed = tokio::time::timeout_at(deadline, changes.changed()).await;
        if clock.begin_work().is_err() {
            return evicted();
        }
        if changed.is_err() {
            continue;
        }
    }
}

fn hotfixes(lc: &Lifecycle) -> Resp {
    let now = Timestamp::now();
    let hotfixes = lc.active().iter().map(|r| Hotfix::of(r, now)).collect();
    json_response(200, &Hotfixes { hotfixes })
}

fn identity(lc: &Lifecycle) -> Resp {
    let id = lc.identity();
    json_response(
        200,
        &api::Identity {
            agent_id: id.id.clone(),
            labels: id.labels.clone(),
            public_key: lc.agent_ref().key.clone(),
            fingerprint: crate::command::envelope::fingerprint(id.key.public_key().key_data()),
            policy_sha256: lc.policy_sha256(),
            resources: lc
                .resources()
                .iter()
                .map(|(name, r)| IdentityResource {
                    name: name.clone(),
                    kind: r.provider.kind().to_string(),
                })
                .collect(),
            probes: lc.probes().names().cloned().collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> Limits {
        Limits {
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: max,
        }
    }

    #[test]
    fn the_turned_away_answer_declares_its_length() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
        let e: ApiError = serde_json::from_str(body).unwrap();
        assert_eq!(e.reason, ErrorCode::TooManyConnections);
    }

    #[tokio::test]
    async fn deadlines_follow_the_phase() {
        let clock = Clock::new(limits(1));
        let Ok(Some(head)) = clock.deadline() else {
            panic!("a new connection has a deadline");
        };
        let started = clock.begin_body().unwrap();
        assert_eq!(head, started + Duration::from_secs(10));
        assert_eq!(
            clock.deadline().unwrap(),
            Some(started + Duration::from_secs(10) + BODY_GRACE)
        );
        clock.begin_work().unwrap();
        assert_eq!(clock.deadline().unwrap(), None);
        assert!(!clock.evict(), "a busy handler is never evicted");
        clock.answered();
        assert!(clock.deadline().unwrap().is_some());
        assert!(clock.evict());
        assert!(clock.deadline().is_err());
        assert!(clock.begin_work().is_err());
        assert!(clock.begin_body().is_err());
    }

    #[tokio::test]
    async fn at_the_cap_the_stalest_connection_makes_room() {
        let registry = Arc::new(Mutex::new(Registry::new(3)));
        let busy = Arc::new(Clock::new(limits(3)));
        let waiting = Arc::new(Clock::new(limits(3)));
        let slow = Arc::new(Clock::new(limits(3)));
        let _a = Registry::admit(&registry, busy.clone()).ok().unwrap();
        let _b = Registry::admit(&registry, waiting.clone()).ok().unwrap();
        let _c = Registry::admit(&registry, slow.clone()).ok().unwrap();
        busy.begin_work().unwrap();
        waiting.begin_work().unwrap();
        waiting.begin_wait().unwrap();
        // The connection still sending its request goes first, though the
        // waiting handler is older.
        let _d = Registry::admit(&registry, Arc::new(Clock::new(limits(3))))
            .ok()
            .unwrap();
        assert!(slow.deadline().is_err(), "the slow client was evicted");
        assert!(waiting.deadline().is_ok());
        assert_eq!(lock_registry(&registry).conns.len(), 3);
        // Then the fresh one (waiting on its client), then the handler.
        let _e = Registry::admit(&registry, Arc::new(Clock::new(limits(3))))
            .ok()
            .unwrap();
        assert!(waiting.deadline().is_ok());
        let f = Arc::new(Clock::new(limits(3)));
        let _f = Registry::admit(&registry, f.clone()).ok().unwrap();
        f.begin_work().unwrap();
        let _g = Registry::admit(&registry, Arc::new(Clock::new(limits(3))))
            .ok()
            .unwrap();
        assert!(waiting.deadline().is_err(), "the waiting handler went last");
        // Busy handlers are never taken over: now every slot is busy or
        // the newest, which is waiting on its client.
        assert!(busy.deadline().is_ok() && f.deadline().is_ok());
        drop(_g);
        let h = Arc::new(Clock::new(limits(3)));
        let _h = Registry::admit(&registry, h.clone()).ok().unwrap();
        h.begin_work().unwrap();
        assert!(Registry::admit(&registry, Arc::new(Clock::new(limits(3)))).is_err());
    }
}
