//! Connection flood: how the API's whole-request deadline and connection cap
//! hold up against many slow clients.
//!
//! Starts a real agent (the binary in `$TOURNIQUET_BIN`, e.g. a release
//! build) on loopback, then opens `--clients` connections that each send a
//! `POST /v1/commands` head announcing a 1,000-byte body and then one byte
//! every 500 ms. A client whose connection the agent closes opens a new
//! one at once, as a persistent attacker would. Meanwhile, once a second,
//! it measures `/healthz` on a fresh connection and samples the agent's
//! open descriptors and resident memory.
//!
//! ```text
//! cargo build --release -p tourniquet
//! TOURNIQUET_BIN=target/release/tourniquet cargo run -p tourniquet-e2e \
//!     --bin tourniquet-conn-flood -- --clients 1000 --seconds 30 \
//!     [--max-connections 256] [--read-timeout 10s]
//! ```
//!
//! Traffic goes to 127.0.0.1 only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tourniquet_e2e::*;

struct Args {
    clients: usize,
    seconds: u64,
    max_connections: Option<usize>,
    read_timeout: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        clients: 1000,
        seconds: 30,
        max_connections: None,
        read_timeout: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--clients" => args.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--seconds" => args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--max-connections" => {
                args.max_connections =
                    Some(value()?.parse().map_err(|e| format!("--max-connections: {e}"))?)
            }
            "--read-timeout" => args.read_timeout = Some(value()?),
            other => {
                return Err(format!(
                    "unknown argument {other}; use --clients N --seconds S [--max-connections N] [--read-timeout D]"
                ))
            }
        }
    }
    Ok(args)
}

/// What the slow clients saw.
#[derive(Default)]
struct Stats {
    /// Connections currently open from the clients' side.
    open: AtomicU64,
    opened: AtomicU64,
    connect_failed: AtomicU64,
    /// Closed by the agent after answering 408 request_timeout.
    answered_408: AtomicU64,
    /// Closed by the agent after answering 503 too_many_connections.
    answered_503: AtomicU64,
    /// Closed by the agent without an answer (evicted at the cap, or reset).
    closed_silently: AtomicU64,
    /// How long each connection the agent closed had lived, in ms.
    lifetimes_ms: Mutex<Vec<u64>>,
}

async fn slow_client(addr: String, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let head = format!(
        "POST /v1/commands HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    );
    while !stop.load(Ordering::Relaxed) {
        let mut s = match tokio::net::TcpStream::connect(&addr).await {
            Ok(s) => s,
            Err(_) => {
                stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        stats.opened.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let born = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let mut closed = s.write_all(head.as_bytes()).await.is_err();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.tick().await;
        while !closed && !stop.load(Ordering::Relaxed) {
            tokio::select! {
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => closed = true,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                },
                _ = tick.tick() => {
                    if s.write_all(b" ").await.is_err() {
                        closed = true;
                    }
                }
            }
        }
        stats.open.fetch_sub(1, Ordering::Relaxed);
        if !closed {
            break;
        }
        let text = String::from_utf8_lossy(&got);
        let counter = if text.starts_with("HTTP/1.1 408") {
            &stats.answered_408
        } else if text.starts_with("HTTP/1.1 503") {
            &stats.answered_503
        } else {
            &stats.closed_silently
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let ms = born.elapsed().as_millis() as u64;
        stats
            .lifetimes_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ms);
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One `/healthz` on a fresh connection: (status, latency).
fn probe(url: &str) -> (Option<u16>, Duration) {
    let t = Instant::now();
    let status = http_get_status(&format!("{url}/healthz"));
    (status, t.elapsed())
}

fn percentile(sorted: &[Duration], p: u32) -> Duration {
    tourniquet::telemetry::percentile(sorted, p).unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let env = Env::new();
    let mut api = String::new();
    if let Some(n) = args.max_connections {
        api.push_str(&format!("max_connections = {n}\n"));
    }
    if let Some(t) = &args.read_timeout {
        api.push_str(&format!("read_timeout = \"{t}\"\n"));
    }
    let cfg = env.default_config();
    let listen = "[api]\nlisten = \"127.0.0.1:0\"\n";
    assert!(cfg.contains(listen), "the harness config changed");
    env.write_config(&cfg.replacen(listen, &format!("{listen}{api}"), 1));
    let agent = env.start();
    let pid = agent.child.id();
    let addr = agent
        .url
        .strip_prefix("http://")
        .expect("plain-HTTP agent")
        .to_string();
    println!("agent: {} (pid {pid})", bin().display());
    println!(
        "[api] max_connections = {}, read_timeout = {}; {} slow clients for {} s",
        args.max_connections
            .map(|n| n.to_string())
            .unwrap_or_else(|| "default (256)".into()),
        args.read_timeout.as_deref().unwrap_or("default (10s)"),
        args.clients,
        args.seconds
    );

    // At rest.
    std::thread::sleep(Duration::from_secs(1));
    let mut rest: Vec<Duration> = (0..20).map(|_| probe(&agent.url).1).collect();
    rest.sort();
    let fds_rest = fd_count(pid);
    let (rss_rest, _) = memory_kib(pid);
    println!(
        "at rest: /healthz p50 {} max {}; {fds_rest} fds; RSS {} KiB",
        ms(percentile(&rest, 50)),
        ms(percentile(&rest, 100)),
        rss_rest
    );

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let clients = {
        let (stats, stop, addr, n) = (stats.clone(), stop.clone(), addr.clone(), args.clients);
        std::thread::spawn(move || {
            rt.block_on(async move {
                let tasks: Vec<_> = (0..n)
                    .map(|_| tokio::spawn(slow_client(addr.clone(), stats.clone(), stop.clone())))
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            })
        })
    };

    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut failures = 0u32;
    let (mut fds_max, mut fds_min_after_ramp, mut rss_max) = (0usize, usize::MAX, 0u64);
    while start.elapsed() < Duration::from_secs(args.seconds) {
        std::thread::sleep(Duration::from_secs(1));
        let (status, latency) = probe(&agent.url);
        if status == Some(200) {
            latencies.push(latency);
        } else {
            failures += 1;
        }
        let fds = fd_count(pid);
        let (rss, _) = memory_kib(pid);
        fds_max = fds_max.max(fds);
        if start.elapsed() > Duration::from_secs(3) {
            fds_min_after_ramp = fds_min_after_ramp.min(fds);
        }
        rss_max = rss_max.max(rss);
        println!(
            "t={:>3}s  /healthz {:?} in {:>9}  agent fds {:>5}  RSS {:>6} KiB  clients open {:>5}  opened {:>6}  408 {:>6}  closed silently {:>6}",
            start.elapsed().as_secs(),
            status,
            ms(latency),
            fds,
            rss,
            stats.open.load(Ordering::Relaxed),
            stats.opened.load(Ordering::Relaxed),
            stats.answered_408.load(Ordering::Relaxed),
            stats.closed_silently.load(Ordering::Relaxed),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = clients.join();
    let (_, hwm) = memory_kib(pid);

    latencies.sort();
    let mut lifetimes = stats
        .lifetimes_ms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    lifetimes.sort_unstable();
    let life = |p: f64| -> u64 {
        if lifetimes.is_empty() {
            return 0;
        }
        lifetimes[((lifetimes.len() - 1) as f64 * p).round() as usize]
    };
    println!();
    println!(
        "summary ({} slow clients, {} s):",
        args.clients, args.seconds
    );
    println!(
        "  /healthz under flood: {} ok, {failures} failed; p50 {} p99 {} max {}",
        latencies.len(),
        ms(percentile(&latencies, 50)),
        ms(percentile(&latencies, 99)),
        ms(percentile(&latencies, 100))
    );
    println!(
        "  agent descriptors: {fds_rest} at rest, {} to {fds_max} under flood (connections held: at most {})",
        if fds_min_after_ramp == usize::MAX { 0 } else { fds_min_after_ramp },
        fds_max.saturating_sub(fds_rest)
    );
    println!(
        "  agent RSS: {rss_rest} KiB at rest, {rss_max} KiB max sampled, high-water mark {hwm} KiB"
    );
    println!(
        "  slow connections: {} opened, {} connect failures; closed by the agent: {} with 408, {} with 503, {} without an answer",
        stats.opened.load(Ordering::Relaxed),
        stats.connect_failed.load(Ordering::Relaxed),
        stats.answered_408.load(Ordering::Relaxed),
        stats.answered_503.load(Ordering::Relaxed),
        stats.closed_silently.load(Ordering::Relaxed),
    );
    println!(
        "  lifetime of a closed slow connection: p50 {} ms, p99 {} ms, max {} ms",
        life(0.5),
        life(0.99),
        life(1.0)
    );
}
