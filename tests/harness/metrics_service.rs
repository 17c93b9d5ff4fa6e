//! A small real HTTP service with real Prometheus metrics, for telemetry
//! tests: `/work` fails a set share of requests while a flag in the flags
//! file has a given variant (read on every request, as a flagd file
//! provider would), and takes a few milliseconds so its latency histogram
//! has data; `/metrics` is a `prometheus-client` registry's exposition.
//!
//! [`drive_load`] sends it traffic from the test itself, over loopback, in
//! a background thread: bounded in count and time, and stoppable.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;

/// Latency buckets, in seconds: `/work` takes 1 to 8 ms.
pub const BUCKETS: [f64; 9] = [0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.025, 0.1, 1.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

/// When and how much `/work` fails.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The flag read from the flags file on every request.
    pub flag: String,
    /// While the flag's `defaultVariant` is this, `/work` fails.
    pub variant: String,
    /// The share of requests that fail then, in percent, spread evenly
    /// (every request's share is counted, not drawn at random).
    pub percent: u64,
}

struct Shared {
    flags_path: PathBuf,
    failure: Failure,
    registry: Registry,
    requests: Family<CodeLabels, Counter>,
    duration: Histogram,
    failure_percent: Gauge<i64, AtomicI64>,
    /// `/work` requests answered.
    served: AtomicU64,
    /// `/work` requests seen while failing, for spreading the failures.
    while_failing: AtomicU64,
}

impl Shared {
    fn failing_now(&self) -> bool {
        std::fs::read(&self.flags_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| {
                v["flags"][&self.failure.flag]["defaultVariant"]
                    .as_str()
                    .map(|s| s == self.failure.variant)
            })
            .unwrap_or(false)
    }

    /// Whether the request is one of the failing share: the k-th request
    /// fails when `floor(k·p/100)` steps up, so any run of n requests has
    /// `n·p/100` failures, ±1.
    fn fails(&self) -> bool {
        let p = self.failure.percent.min(100);
        let k = self.while_failing.fetch_add(1, Ordering::SeqCst);
        (k + 1) * p / 100 > k * p / 100
    }

    fn work(&self) -> (u16, &'static str) {
        let start = Instant::now();
        let fail = self.failing_now() && self.fails();
        let n = self.served.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1 + n % 8));
        let code: u16 = if fail { 500 } else { 200 };
        self.requests
            .get_or_create(&CodeLabels {
                code: code.to_string(),
            })
            .inc();
        self.duration.observe(start.elapsed().as_secs_f64());
        self.served.fetch_add(1, Ordering::SeqCst);
        if fail {
            (500, "failing")
        } else {
            (200, "ok")
        }
    }

    fn metrics(&self) -> String {
        let percent = if self.failing_now() {
            self.failure.percent as i64
        } else {
            0
        };
        self.failure_percent.set(percent);
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("encode metrics");
        text
    }
}

/// The running service. Stopped on drop.
pub struct MetricsService {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsService {
    /// Starts the service on an ephemeral loopback port.
    pub fn start(flags_path: PathBuf, failure: Failure) -> MetricsService {
        let mut registry = Registry::default();
        let requests = Family::<CodeLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests to /work, by status code",
            requests.clone(),
        );
        let duration = Histogram::new(BUCKETS);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer /work",
            duration.clone(),
        );
        let failure_percent = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "work_failure_percent",
            "The share of /work requests this service fails now, in percent",
            failure_percent.clone(),
        );
        let shared = Arc::new(Shared {
            flags_path,
            failure,
            registry,
            requests,
            duration,
            failure_percent,
            served: AtomicU64::new(0),
            while_failing: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind metrics service");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, shared2) = (stop.clone(), shared.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = shared2.clone();
                std::thread::spawn(move || handle(stream, &shared));
            }
        });
        MetricsService {
            port,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `/work` requests answered so far.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// The exposition `/metrics` serves now.
    pub fn exposition(&self) -> String {
        self.shared.metrics()
    }
}

impl Drop for MetricsService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads a request head (the service ignores bodies).
fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while buf.len() < 16 * 1024 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn handle(mut s: TcpStream, shared: &Shared) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let head = read_head(&mut s);
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    let accept = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("accept"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let (code, content_type, body) = match path {
        "/work" => {
            let (code, text) = shared.work();
            (code, "text/plain", text.to_string())
        }
        "/metrics" => {
            // The same text either way: prometheus-client writes
            // OpenMetrics, which a classic text parser also reads.
            let ct = if accept.contains("application/openmetrics-text") {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            (200, ct, shared.metrics())
        }
        _ => (404, "text/plain", "not found".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
}

/// What a load loop sent and got back.
#[derive(Debug, Default)]
pub struct LoadCounts {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// No answer (connection refused, timeout).
    pub errors: AtomicU64,
}

/// A running load loop. Stopped (and joined) on drop.
pub struct Load {
    pub counts: Arc<LoadCounts>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.counts.sent.load(Ordering::SeqCst)
    }

    /// Stops the loop and waits for its last request.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The longest a load loop runs, whatever its request count.
pub const MAX_LOAD_TIME: Duration = Duration::from_secs(180);

/// Sends up to `requests` `GET /work` to `127.0.0.1:port`, one at a time
/// with `pause` between them, from a background thread, until stopped,
/// done, or [`MAX_LOAD_TIME`] has passed.
pub fn drive_load(port: u16, requests: u64, pause: Duration) -> Load {
    let counts = Arc::new(LoadCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (counts2, stop2) = (counts.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + MAX_LOAD_TIME;
        for _ in 0..requests {
            if stop2.load(Ordering::SeqCst) || Instant::now() > deadline {
                break;
            }
            counts2.sent.fetch_add(1, Ordering::SeqCst);
            match get_status(port, "/work") {
                Some(200) => counts2.ok.fetch_add(1, Ordering::SeqCst),
                Some(_) => counts2.failed.fetch_add(1, Ordering::SeqCst),
                None => counts2.errors.fetch_add(1, Ordering::SeqCst),
            };
            std::thread::sleep(pause);
        }
    });
    Load {
        counts,
        stop,
        thread: Some(thread),
    }
}

/// One `GET` with short timeouts; the status, or `None` without an answer.
fn get_status(port: u16, path: &str) -> Option<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
