//! What the API port costs an attacker: slow bodies are cut at the
//! whole-request deadline, connections beyond `api.max_connections` cost no
//! more descriptors, oversize and over-long requests are refused before they
//! are read, and thousands of unsigned junk bodies leave the state dir as it
//! was. Throughout, `/healthz` keeps answering.
//!
//! Everything runs against the real agent over loopback with raw sockets,
//! since an HTTP client library would hide the slowness and the headers
//! these tests are about.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tourniquet::command::envelope::{Envelope, COMMAND_PAYLOAD_TYPE};
use tourniquet_e2e::*;

/// The default config with extra `[api]` keys.
fn config_with_api(env: &Env, extra: &str) -> String {
    let cfg = env.default_config();
    let old = "[api]\nlisten = \"127.0.0.1:0\"\n";
    assert!(cfg.contains(old), "the harness config changed: {cfg}");
    cfg.replacen(old, &format!("{old}{extra}\n"), 1)
}

/// `127.0.0.1:PORT` of a running agent.
fn addr(agent: &Agent) -> String {
    agent
        .url
        .strip_prefix("http://")
        .expect("a plain-HTTP agent")
        .to_string()
}

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd (these tests need Linux)")
        .count()
}

/// Bytes in all files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read state dir") {
        let entry = entry.expect("dir entry");
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            total += tree_bytes(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}

/// `GET /healthz` on a fresh connection.
fn healthz(agent: &Agent) -> Option<u16> {
    http_get_status(&format!("{}/healthz", agent.url))
}

/// Whether the agent has closed a non-blocking socket, collecting what it
/// sent before. An error counts as closed (a reset after the answer).
fn closed(stream: &mut TcpStream, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// A client sending a command's body one byte at a time.
struct SlowBody {
    stream: TcpStream,
    got: Vec<u8>,
    closed: bool,
}

impl SlowBody {
    fn open(addr: &str) -> SlowBody {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let head = format!(
            "POST /v1/commands HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).expect("write head");
        stream.set_nonblocking(true).expect("nonblocking");
        SlowBody {
            stream,
            got: Vec::new(),
            closed: false,
        }
    }

    /// Sends the next byte unless the agent has closed the connection;
    /// returns whether it is closed.
    fn dribble(&mut self) -> bool {
        if !self.closed {
            self.closed = closed(&mut self.stream, &mut self.got)
                || matches!(self.stream.write(b" "), Err(e) if e.kind() != ErrorKind::WouldBlock);
        }
        self.closed
    }
}

#[test]
fn slow_bodies_are_cut_at_the_read_deadline_while_healthz_answers() {
    const DEADLINE: Duration = Duration::from_secs(2);
    let env = Env::new();
    env.write_config(&config_with_api(&env, "read_timeout = \"2s\""));
    let agent = env.start();
    let addr = addr(&agent);

    let mut slow: Vec<SlowBody> = (0..100).map(|_| SlowBody::open(&addr)).collect();
    let opened = Instant::now();
    assert_eq!(healthz(&agent), Some(200), "/healthz under 100 slow bodies");
    let open_after_healthz = slow.iter_mut().map(|s| s.dribble()).filter(|c| !c).count();
    assert_eq!(
        open_after_healthz,
        100,
        "every slow connection was still open when /healthz answered, {:?} after they opened",
        opened.elapsed()
    );

    // One byte every 500 ms from each, until the agent closes them all: the
    // dribble never extends the deadline.
    let bound = DEADLINE * 4;
    loop {
        let open = slow.iter_mut().map(|s| s.dribble()).filter(|c| !c).count();
        if open == 0 {
            break;
        }
        assert!(
            opened.elapsed() < bound,
            "{open} of 100 slow connections still open {:?} after they opened (read_timeout 2s)",
            opened.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // They were answered 408 where the answer got through (a client that
    // writes after the close may see a reset instead).
    let mut timeouts = 0;
    for s in &slow {
        if s.got.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(&s.got);
        assert!(
            text.starts_with("HTTP/1.1 408") && text.contains("request_timeout"),
            "a slow body got something else than 408 request_timeout: {text}"
        );
        timeouts += 1;
    }
    assert!(timeouts > 0, "no slow client saw a 408 request_timeout");
    assert_eq!(healthz(&agent), Some(200), "/healthz after the slow bodies");
}

#[test]
fn connections_beyond_the_cap_cost_no_descriptors_and_healthz_answers() {
    const CAP: usize = 20;
    let env = Env::new();
    env.write_config(&config_with_api(&env, &format!("max_connections = {CAP}")));
    let agent = env.start();
    let pid = agent.child.id();
    let addr = addr(&agent);
    // The agent's own files: state, watches, runtime, listener.
    wait_for(
        "agent_started in the audit log",
        Duration::from_secs(10),
        || {
            env.audit_entries()
                .iter()
                .any(|e| e["event"] == "agent_started")
                .then_some(())
        },
    );
    let own = fd_count(pid);
    assert!(own < 64, "the idle agent holds {own} descriptors");
    // Evicted sockets close when their task next runs; a few may be in
    // flight at any moment.
    let bound = own + CAP + 4;

    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        peak = peak.max(fd_count(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(healthz(&agent), Some(200), "/healthz with the cap reached");
    // A signed command still gets through the flood.
    let mut p = payload(set_new_flow("off"));
    p["dry_run"] = json!(true);
    let (status, v) = post_command(&agent, &sign(&p, &[env.key("alice")]));
    assert_eq!(status, 202, "a signed command with the cap reached: {v}");
    peak = peak.max(fd_count(pid));
    assert!(
        peak <= bound,
        "with 40 idle connections and max_connections = {CAP} the agent held {peak} descriptors \
         (its own: {own}; bound {bound})"
    );
    drop(idle);
}

#[test]
fn an_oversize_content_length_is_refused_before_the_body_is_read() {
    let env = Env::new();
    let agent = env.start();
    let addr = addr(&agent);
    let mut stream = TcpStream::connect(&addr).expect("connect");
    // Generous: the answer is immediate; without the early refusal the agent
    // would wait for a body that never comes, and this read would time out.
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let head = format!(
        "POST /v1/commands HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("write head");
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 413") && text.contains("too_large"),
        "an oversize Content-Length without a body: {text:?}"
    );
    assert_eq!(healthz(&agent), Some(200));
}

#[test]
fn too_many_header_fields_are_refused() {
    let env = Env::new();
    let agent = env.start();
    let addr = addr(&agent);
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for i in 0..50 {
        head.push_str(&format!("X-Junk-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "50 header fields: {text:?}"
    );
    assert_eq!(healthz(&agent), Some(200));
}

/// A cheap deterministic byte stream (xorshift64*).
struct Noise(u64);

impl Noise {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }
}

/// A well-formed envelope of about 40 KB around a valid-looking payload,
/// with the given signers (none: unsigned).
fn big_envelope(signers: &[&OperatorKey]) -> Vec<u8> {
    let mut p = payload(set_new_flow("off"));
    p["reason"] = Value::String(format!("INC-1: {}", "x".repeat(29_000)));
    let bytes = serde_json::to_vec(&p).expect("payload");
    let env = if signers.is_empty() {
        Envelope::new(COMMAND_PAYLOAD_TYPE, &bytes)
    } else {
        sign_bytes(&bytes, signers)
    };
    serde_json::to_vec(&env).expect("envelope")
}

/// Issue 9, item 7: a command rejected before a signature from a trusted
/// key verifies costs O(1) disk. Until rejections of unsigned input stop
/// writing journal lines and receipt files, this test fails.
#[test]
fn two_thousand_unsigned_junk_bodies_leave_the_state_dir_as_it_was() {
    let env = Env::new();
    let agent = env.start();
    wait_for(
        "agent_started in the audit log",
        Duration::from_secs(10),
        || {
            env.audit_entries()
                .iter()
                .any(|e| e["event"] == "agent_started")
                .then_some(())
        },
    );
    let state = env.path("state");
    let before = tree_bytes(&state);

    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mallory = env.key("mallory");
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..2_000 {
        let body = match i % 4 {
            0 => noise.bytes(40_000),
            1 => format!("not json {}", "junk ".repeat(8_000)).into_bytes(),
            2 => big_envelope(&[]),
            _ => big_envelope(&[mallory]),
        };
        let (status, v) = post_command(&agent, &body);
        assert!(
            (400..500).contains(&status),
            "junk body {i} was answered {status}: {v}"
        );
        *statuses.entry(status).or_insert(0u32) += 1;
    }
    let grown = tree_bytes(&state).saturating_sub(before);
    assert_eq!(
        healthz(&agent),
        Some(200),
        "/healthz after 2,000 junk bodies"
    );
    assert!(
        grown <= 64 * 1024,
        "2,000 unsigned junk bodies ({statuses:?} by status) grew the state dir by {grown} bytes \
         (at most 65536 allowed)"
    );
}

/// The deadline is below TLS: a client that connects and never finishes
/// its handshake is closed at `api.read_timeout` too.
#[test]
fn a_stalled_tls_handshake_is_cut_at_the_read_deadline() {
    const DEADLINE: Duration = Duration::from_secs(2);
    let env = Env::new();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("self-signed certificate");
    std::fs::write(env.path("server.pem"), cert.cert.pem()).expect("cert");
    std::fs::write(env.path("server-key.pem"), cert.key_pair.serialize_pem()).expect("key");
    env.write_config(&config_with_api(
        &env,
        "tls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\nread_timeout = \"2s\"",
    ));
    let agent = env.start();
    let addr = agent
        .url
        .strip_prefix("https://")
        .expect("an HTTPS agent")
        .to_string();
    let opened = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).expect("connect");
            // The first bytes of a TLS record header, and no more.
            s.write_all(&[0x16, 0x03]).expect("write");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let bound = DEADLINE * 4;
    loop {
        let mut ignored = Vec::new();
        let open = stalled
            .iter_mut()
            .map(|s| closed(s, &mut ignored))
            .filter(|c| !c)
            .count();
        if open == 0 {
            break;
        }
        assert!(
            opened.elapsed() < bound,
            "{open} of 10 stalled TLS handshakes still open {:?} after they opened (read_timeout 2s)",
            opened.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
