//! `tourniquet-fleet-bench`: what a fleet command costs end to end, next to
//! the bare NATS engine it rides on, at 100 to 10,000 agents.
//!
//! The fleet claim ("10,000 agents apply within a second or two") is only
//! worth what the real path delivers, so every simulated agent is a real
//! lifecycle built by `agent::build` with the real NATS transport attached:
//! its own connection, state dir, journal, audit log, agent key and
//! flags-file resource, verifying the signed command, applying it and
//! publishing a signed receipt. Running the same N as bare echoes (a core
//! subscription and an acked JetStream reply, nothing else) on the same
//! server and streams turns the numbers into ratios, which travel between
//! machines far better than milliseconds do.
//!
//! Agents live in worker processes (this binary with `--worker`): one when
//! the open-file limit allows, more when each agent's three descriptors
//! (socket, journal, audit log) would exceed it. Workers stamp events with
//! `CLOCK_MONOTONIC`, which every process on the machine shares, so the
//! coordinator can subtract its publish time from them. Separate processes
//! also keep the coordinator's own connections out of the per-agent RSS.
//!
//! Run with `scripts/bench-fleet` (a release build). Measurements only;
//! nothing here asserts a time.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tourniquet::command::envelope::{self, Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};
use tourniquet::transport;
use tourniquet::transport::nats::fleet;

/// Flags one round each: round 1 sets `new_flow` off, later rounds set
/// `new_flow_2`, `new_flow_3`, … off, so no round supersedes an earlier
/// command and every round does the same work.
const ROUND_FLAGS: usize = 16;

fn flags_file() -> String {
    let flags: Vec<String> = (0..ROUND_FLAGS)
        .map(|r| {
            format!(
                r#""{}": {{"state": "ENABLED", "variants": {{"on": true, "off": false}}, "defaultVariant": "on"}}"#,
                round_flag(r)
            )
        })
        .collect();
    format!("{{\"flags\": {{{}}}}}\n", flags.join(", "))
}

fn round_flag(round: usize) -> String {
    match round {
        0 => "new_flow".to_string(),
        r => format!("new_flow_{}", r + 1),
    }
}

/// Descriptors one simulated agent holds open: its NATS socket, journal and
/// audit log.
const FDS_PER_AGENT: u64 = 3;
/// Descriptors a worker keeps free for the runtime, pipes and the
/// temporary files of atomic writes.
const FD_HEADROOM: u64 = 512;
const TOURNIQUET_FLEET: &str = "bench";
const BARE_FLEET: &str = "bare";
/// How long one round may take before the agents still missing are
/// reported as missing.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    Tourniquet,
    Bare,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Tourniquet => "tourniquet",
            Engine::Bare => "bare",
        }
    }
    fn fleet(self) -> &'static str {
        match self {
            Engine::Tourniquet => TOURNIQUET_FLEET,
            Engine::Bare => BARE_FLEET,
        }
    }
    fn parse(s: &str) -> Engine {
        match s {
            "tourniquet" => Engine::Tourniquet,
            "bare" => Engine::Bare,
            other => panic!("unknown engine {other:?}"),
        }
    }
}

/// Nanoseconds on the machine-wide monotonic clock.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// CPU milliseconds (user + system) a process has used so far.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) * 1000.0 / hz.max(1.0)
}

/// Raises the soft open-file limit to the hard one; returns the limit now
/// in force.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Two distinct free loopback ports: both are held while the second is
/// chosen, so they cannot come back equal.
fn free_ports() -> (u16, u16) {
    let bind =
        || std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral loopback port");
    let (a, b) = (bind(), bind());
    let port =
        |l: &std::net::TcpListener| l.local_addr().expect("reading the ephemeral port").port();
    (port(&a), port(&b))
}

fn pct(sorted: &[f64], p: u32) -> f64 {
    tourniquet::telemetry::percentile(sorted, p).unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    pct(&v, 50)
}

/// p50 / p99 / max of per-agent latencies in milliseconds.
fn latency_summary(mut ms: Vec<f64>, expected: usize) -> Value {
    ms.sort_by(|a, b| a.total_cmp(b));
    json!({
        "n": ms.len(),
        "missing": expected.saturating_sub(ms.len()),
        "p50": pct(&ms, 50),
        "p99": pct(&ms, 99),
        "max": ms.last().copied().unwrap_or(f64::NAN),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    if args.first().is_some_and(|a| a == "--worker") {
        runtime.block_on(worker::run(&args[1..]));
    } else {
        runtime.block_on(coordinator(&args));
    }
}

// ---------------------------------------------------------------- workers

mod worker {
    //! One process holding a slice of the simulated fleet. It talks to the
    //! coordinator in JSON lines: it announces `ready` once every agent's
    //! transport is started, and answers each `watch ID` with `watching`
    //! and, once every agent has settled the command (or the round timed
    //! out), the monotonic time each one did.

    use super::*;

    struct Spec {
        engine: Engine,
        url: String,
        first: usize,
        count: usize,
        root: PathBuf,
        policy: PathBuf,
        receipt_bytes: usize,
    }

    fn parse(args: &[String]) -> Spec {
        let get = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .unwrap_or_else(|| panic!("worker needs {name}"))
                .clone()
        };
        Spec {
            engine: Engine::parse(&get("--engine")),
            url: get("--url"),
            first: get("--first").parse().expect("--first is a number"),
            count: get("--count").parse().expect("--count is a number"),
            root: PathBuf::from(get("--root")),
            policy: PathBuf::from(get("--policy")),
            receipt_bytes: get("--receipt-bytes")
                .parse()
                .expect("--receipt-bytes is a number"),
        }
    }

    fn say(v: Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    /// Coordinator lines, read on a plain thread (stdin is blocking).
    fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    pub async fn run(args: &[String]) {
        raise_fd_limit();
        let spec = parse(args);
        let pid = std::process::id();
        let rss_before = rss_kib(pid);
        let started = Instant::now();
        let fleet_of = match spec.engine {
            Engine::Tourniquet => Fleet::Tourniquet(start_agents(&spec).await),
            Engine::Bare => Fleet::Bare(start_echoes(&spec).await),
        };
        say(json!({
            "ready": true,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_kib(pid),
            "start_s": started.elapsed().as_secs_f64(),
        }));
        let mut lines = stdin_lines();
        while let Some(line) = lines.recv().await {
            let Some(id) = line.strip_prefix("watch ") else {
                break;
            };
            let id = id.trim().to_string();
            let cpu_before = cpu_ms(pid);
            let done = match &fleet_of {
                Fleet::Tourniquet(agents) => watch_agents(agents, &id).await,
                Fleet::Bare(echoes) => watch_echoes(echoes, &id, spec.count).await,
            };
            say(json!({
                "id": id,
                "done_ns": done.0,
                "states": done.1,
                "rss_kib": rss_kib(pid),
                "cpu_ms": cpu_ms(pid) - cpu_before,
            }));
        }
    }

    enum Fleet {
        Tourniquet(Vec<Arc<tourniquet::lifecycle::Lifecycle>>),
        Bare(Echoes),
    }

    fn agent_toml(spec: &Spec, dir: &Path, id: &str) -> String {
        format!(
            r#"[agent]
id = "{id}"
labels = {{ fleet = "{fleet}" }}
state_dir = "{state}"
policy = "{policy}"

[api]
enabled = false

[resources.checkout-flags]
kind = "flags-file"
path = "{flags}"

[nats]
url = "{url}"
fleet = "{fleet}"
heartbeat = "1h"
"#,
            fleet = TOURNIQUET_FLEET,
            state = dir.join("state").display(),
            policy = spec.policy.display(),
            flags = dir.join("flags.json").display(),
            url = spec.url,
        )
    }

    /// Real agents: `agent::build` plus the NATS transport, nothing faked.
    /// Drift watches and the HTTP API are left out: neither is on the path
    /// of a fleet command, and each watch costs a thread.
    async fn start_agents(spec: &Spec) -> Vec<Arc<tourniquet::lifecycle::Lifecycle>> {
        let mut agents = Vec::with_capacity(spec.count);
        for i in spec.first..spec.first + spec.count {
            let id = format!("agent-{i:05}");
            let dir = spec.root.join("agents").join(&id);
            std::fs::create_dir_all(&dir).expect("creating the agent dir");
            std::fs::write(dir.join("flags.json"), flags_file()).expect("writing the flags file");
            let cfg = tourniquet::config::AgentConfig::from_toml(
                &agent_toml(spec, &dir, &id),
                &format!("{id}.toml"),
                &dir,
            )
            .expect("a valid agent config");
            let built = tourniquet::agent::build(&cfg).expect("building the agent");
            let nats = cfg.nats.clone().expect("the config has a [nats] section");
            transport::nats::start(built.lc.clone(), nats, &cfg.agent.state_dir)
                .await
                .expect("starting the NATS transport");
            agents.push(built.lc);
        }
        agents
    }

    /// Waits until every agent's record of `id` has settled; returns the
    /// monotonic time each did (0 for those that timed out) and the count
    /// per final state.
    async fn watch_agents(
        agents: &[Arc<tourniquet::lifecycle::Lifecycle>],
        id: &str,
    ) -> (Vec<u64>, BTreeMap<String, usize>) {
        let waits = agents.iter().map(|lc| {
            let lc = lc.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                // Subscribed before the first look, so no change is missed.
                let mut changes = lc.subscribe();
                let settled = async {
                    loop {
                        if let Some(rec) = lc.record(&id) {
                            if rec.is_settled() {
                                return (monotonic_ns(), rec.state.as_str().to_string());
                            }
                        }
                        if changes.changed().await.is_err() {
                            return (0, "lifecycle_gone".to_string());
                        }
                    }
                };
                tokio::time::timeout(ROUND_TIMEOUT, settled)
                    .await
                    .unwrap_or((0, "timed_out".to_string()))
            })
        });
        let results = futures_util::future::join_all(waits).await;
        let mut times = Vec::with_capacity(results.len());
        let mut states = BTreeMap::new();
        for (at, state) in results
            .into_iter()
            .map(|r| r.unwrap_or((0, "panicked".into())))
        {
            times.push(at);
            *states.entry(state).or_insert(0) += 1;
        }
        (times, states)
    }

    /// Bare echoes: each has a connection and a core subscription on the
    /// republished command subject; on each command it stamps the arrival
    /// and publishes an acked JetStream reply of a receipt's size.
    struct Echoes {
        arrivals: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(String, u64)>>,
        _clients: Vec<async_nats::Client>,
    }

    async fn start_echoes(spec: &Spec) -> Echoes {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::with_capacity(spec.count);
        let ids: Vec<usize> = (spec.first..spec.first + spec.count).collect();
        // Connected in batches: a handshake is a round trip, and 10,000 in
        // series would make start-up the slowest part of the bench.
        for batch in ids.chunks(200) {
            let connects = batch.iter().map(|i| {
                let name = format!("echo-{i:05}");
                let url = spec.url.clone();
                async move {
                    let client = async_nats::ConnectOptions::new()
                        .name(name.clone())
                        .connect(url.as_str())
                        .await
                        .expect("bare echo connecting");
                    (name, client)
                }
            });
            for (name, client) in futures_util::future::join_all(connects).await {
                let mut live = client
                    .subscribe(fleet::live_subject(BARE_FLEET))
                    .await
                    .expect("bare echo subscribing");
                let js = jetstream::new(client.clone());
                let tx = tx.clone();
                let body = vec![b'x'; spec.receipt_bytes.max(1)];
                tokio::spawn(async move {
                    while let Some(msg) = live.next().await {
                        let at = monotonic_ns();
                        let id = msg
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("Nats-Msg-Id"))
                            .map(|v| v.as_str().to_string())
                            .unwrap_or_default();
                        let _ = tx.send((id.clone(), at));
                        let subject = fleet::receipt_subject(&id, &name);
                        let msg_id = format!("{name}.{id}");
                        if let Err(e) =
                            transport::nats::publish_acked(&js, &subject, &msg_id, body.clone())
                                .await
                        {
                            eprintln!("bare echo {name}: reply not stored: {e}");
                        }
                    }
                });
                clients.push(client);
            }
        }
        for c in &clients {
            let _ = c.flush().await;
        }
        Echoes {
            arrivals: tokio::sync::Mutex::new(rx),
            _clients: clients,
        }
    }

    async fn watch_echoes(
        echoes: &Echoes,
        id: &str,
        count: usize,
    ) -> (Vec<u64>, BTreeMap<String, usize>) {
        let mut arrivals = echoes.arrivals.lock().await;
        let mut times = Vec::with_capacity(count);
        let deadline = tokio::time::Instant::now() + ROUND_TIMEOUT;
        while times.len() < count {
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some((got, at))) if got == id => times.push(at),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let mut states = BTreeMap::new();
        states.insert("received".to_string(), times.len());
        if times.len() < count {
            states.insert("timed_out".to_string(), count - times.len());
        }
        times.resize(count, 0);
        (times, states)
    }
}

// ------------------------------------------------------------ coordinator

struct Server {
    child: std::process::Child,
    url: String,
    monitor: String,
}

impl Server {
    /// A private JetStream server on ephemeral ports, with room for every
    /// connection the largest run opens.
    fn start(dir: &Path) -> Server {
        let (port, monitor_port) = free_ports();
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store).expect("creating the JetStream store dir");
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            "max_connections: 1000000\nmax_pending: 268435456\nwrite_deadline: \"30s\"\n",
        )
        .expect("writing the nats-server config");
        let mut child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor_port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is required (the Debian package nats-server)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited at start ({status}); run it by hand with the same flags to see why");
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not accept connections within 20s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            monitor: format!("http://127.0.0.1:{monitor_port}"),
        }
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    async fn monitor_json(&self, http: &reqwest::Client, path: &str) -> Value {
        match http.get(format!("{}{path}", self.monitor)).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn next_json(&mut self) -> Value {
        let line = self
            .lines
            .next_line()
            .await
            .expect("reading a worker's output")
            .expect("a worker exited early (its stderr says why)");
        serde_json::from_str(&line).expect("a worker wrote a JSON line")
    }
}

/// The bench operator's key and the policy every agent shares.
struct Operator {
    signer: tourniquet::trust::keys::Signer,
    policy: PathBuf,
}

fn make_operator(dir: &Path) -> Operator {
    let key = dir.join("operator_ed25519");
    let public = tourniquet::trust::keys::generate_keypair(&key, "bench-operator")
        .expect("generating the operator key");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"version = 1
max_ttl = "30m"
clock_skew = "2m"

[keys.bench]
public_key = "{}"
roles = ["sre"]

[[rules]]
ops = ["flag.*"]
resources = ["*"]
roles = ["sre"]
threshold = 1
"#,
            public.to_openssh().expect("encoding the operator key")
        ),
    )
    .expect("writing the policy");
    Operator {
        signer: tourniquet::trust::keys::Signer::load(&key).expect("loading the operator key"),
        policy,
    }
}

/// `flag.set checkout-flags <flag>=off`: no guard, no hold.
fn signed_command(op: &Operator, flag: &str) -> (String, Vec<u8>) {
    let id = ulid::Ulid::new().to_string();
    let now = std::time::SystemTime::now();
    let payload = json!({
        "id": id,
        "issuer": "bench-operator",
        "issued_at": humantime::format_rfc3339_seconds(now).to_string(),
        "expires": humantime::format_rfc3339_seconds(now + Duration::from_secs(900)).to_string(),
        "reason": "fleet bench",
        "target": {},
        "actions": [{"resource": "checkout-flags", "op": "flag.set", "flag": flag, "variant": "off"}],
    });
    let bytes = serde_json::to_vec(&payload).expect("payload json");
    let mut env = Envelope::new(COMMAND_PAYLOAD_TYPE, &bytes);
    let sig = op
        .signer
        .sign(
            COMMAND_NAMESPACE,
            &envelope::pae(COMMAND_PAYLOAD_TYPE, &bytes),
        )
        .expect("signing the command");
    env.add_signature(&sig).expect("adding the signature");
    (id, serde_json::to_vec(&env).expect("envelope json"))
}

fn parse_agents(args: &[String]) -> Vec<usize> {
    let list = args
        .iter()
        .position(|a| a == "--agents")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("100,1000,10000");
    list.split(',')
        .map(|n| {
            n.trim()
                .replace('_', "")
                .parse()
                .expect("--agents takes numbers, e.g. 100,1000")
        })
        .collect()
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// A scratch dir on tmpfs when there is one: fsync there is nearly free, so
/// what is measured is the agent's work, not the disk's.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("tourniquet-fleet-bench-");
        b
    };
    if shm.is_dir() {
        if let Ok(d) = builder.tempdir_in(shm) {
            return d;
        }
    }
    builder.tempdir().expect("creating a scratch dir")
}

async fn coordinator(args: &[String]) {
    let json_out = args.iter().any(|a| a == "--json");
    let rounds: usize = arg_value(args, "--rounds")
        .map(|r| r.parse().expect("--rounds takes a number"))
        .unwrap_or(3)
        .clamp(1, ROUND_FLAGS);
    let sizes = parse_agents(args);
    let fd_limit = raise_fd_limit();
    let per_worker = ((fd_limit.saturating_sub(FD_HEADROOM)) / FDS_PER_AGENT).max(1) as usize;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let server_version = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!(
        "fleet bench: {cores} cores, {server_version}, open-file limit {fd_limit} ({per_worker} agents per worker process), {rounds} round(s) per size"
    );

    let mut results = Vec::new();
    for &n in &sizes {
        results.push(run_size(n, rounds, per_worker).await);
    }
    let report = json!({
        "cores": cores,
        "nats_server": server_version,
        "open_file_limit": fd_limit,
        "rounds": rounds,
        "sizes": results,
    });
    if json_out {
        println!("{report}");
    } else {
        print_table(&report);
    }
}

/// One fleet size: a fresh server, then Tourniquet agents, then bare echoes.
async fn run_size(n: usize, rounds: usize, per_worker: usize) -> Value {
    let scratch = scratch_dir();
    let op = make_operator(scratch.path());
    let workers = n.div_ceil(per_worker);
    eprintln!("N={n}: {workers} worker process(es)");
    let tq = on_fresh_server(
        Engine::Tourniquet,
        n,
        workers,
        rounds,
        &op,
        scratch.path(),
        0,
    )
    .await;
    let receipt_bytes = tq["receipt_bytes"].as_f64().unwrap_or(1500.0) as usize;
    let bare = on_fresh_server(
        Engine::Bare,
        n,
        workers,
        rounds,
        &op,
        scratch.path(),
        receipt_bytes,
    )
    .await;
    let ratio = |what: &str, stat: &str| {
        let t = tq[what][stat].as_f64().unwrap_or(f64::NAN);
        let b = bare[what][stat].as_f64().unwrap_or(f64::NAN);
        t / b
    };
    json!({
        "agents": n,
        "worker_processes": workers,
        "tourniquet": tq,
        "bare": bare,
        "ratio": {
            "applied": {"p50": ratio("applied_ms", "p50"), "p99": ratio("applied_ms", "p99"), "max": ratio("applied_ms", "max")},
            "receipts": {"p50": ratio("receipts_ms", "p50"), "p99": ratio("receipts_ms", "p99"), "max": ratio("receipts_ms", "max")},
        },
    })
}

/// Each engine gets its own server and streams: a server keeps memory it
/// once used, so a shared one would hide the second engine's cost.
async fn on_fresh_server(
    engine: Engine,
    n: usize,
    workers: usize,
    rounds: usize,
    op: &Operator,
    root: &Path,
    receipt_bytes: usize,
) -> Value {
    let server_dir = root.join(format!("server-{}", engine.name()));
    std::fs::create_dir_all(&server_dir).expect("creating the server dir");
    let server = Server::start(&server_dir);
    let client = async_nats::ConnectOptions::new()
        .name("fleet-bench")
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(server.url.as_str())
        .await
        .expect("connecting to the bench server");
    let js = jetstream::new(client.clone());
    transport::nats::ensure_streams(&js, Duration::from_secs(3600), 1)
        .await
        .expect("creating the streams");
    let http = reqwest::Client::new();
    let server_rss_empty = server.rss_kib();
    let mut result = run_engine(
        engine,
        n,
        workers,
        rounds,
        &server,
        &http,
        &client,
        op,
        root,
        receipt_bytes,
    )
    .await;
    result["server_rss_kib_empty"] = json!(server_rss_empty);
    result
}

async fn spawn_workers(
    engine: Engine,
    n: usize,
    workers: usize,
    server: &Server,
    op: &Operator,
    root: &Path,
    receipt_bytes: usize,
) -> Vec<Worker> {
    let exe = std::env::current_exe().expect("finding this bench binary");
    let mut out = Vec::with_capacity(workers);
    let base = n / workers;
    let mut first = 0;
    for w in 0..workers {
        let count = base + usize::from(w < n % workers);
        let mut child = Command::new(&exe)
            .arg("--worker")
            .args(["--engine", engine.name(), "--url", &server.url])
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .arg("--root")
            .arg(root)
            .arg("--policy")
            .arg(&op.policy)
            .args(["--receipt-bytes", &receipt_bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning a worker");
        let stdin = child.stdin.take().expect("worker stdin");
        let stdout = child.stdout.take().expect("worker stdout");
        out.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
        first += count;
    }
    out
}

/// Waits until the server holds every connection and its subscription
/// count has stopped moving: every agent is subscribed and has finished
/// its start-up catch-up.
async fn wait_settled_server(server: &Server, http: &reqwest::Client, connections: usize) -> u64 {
    let started = Instant::now();
    loop {
        let varz = server.monitor_json(http, "/varz").await;
        if varz["connections"].as_u64().unwrap_or(0) as usize >= connections {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} of {connections} connections after 300s",
            varz["connections"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut last = u64::MAX;
    let mut stable_since = Instant::now();
    loop {
        let subs = server.monitor_json(http, "/subsz").await["num_subscriptions"]
            .as_u64()
            .unwrap_or(0);
        if subs != last {
            last = subs;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(2) {
            return subs;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_engine(
    engine: Engine,
    n: usize,
    workers: usize,
    rounds: usize,
    server: &Server,
    http: &reqwest::Client,
    client: &async_nats::Client,
    op: &Operator,
    root: &Path,
    receipt_bytes: usize,
) -> Value {
    let server_rss_before = server.rss_kib();
    let started = Instant::now();
    let mut ws = spawn_workers(engine, n, workers, server, op, root, receipt_bytes).await;
    let mut rss_before = 0;
    let mut rss_after = 0;
    for w in &mut ws {
        let ready = w.next_json().await;
        rss_before += ready["rss_before_kib"].as_u64().unwrap_or(0);
        rss_after += ready["rss_after_kib"].as_u64().unwrap_or(0);
    }
    // The coordinator's own connection is the +1.
    let subscriptions = wait_settled_server(server, http, n + 1).await;
    let start_s = started.elapsed().as_secs_f64();
    let server_rss_with = server.rss_kib();
    eprintln!(
        "  {}: {n} connected and settled in {start_s:.1}s ({subscriptions} subscriptions)",
        engine.name()
    );

    let js = jetstream::new(client.clone());
    let mut per_round = Vec::new();
    let mut receipt_sizes = Vec::new();
    for round in 0..rounds {
        let (id, body) = signed_command(op, &round_flag(round));
        let mut receipts = client
            .subscribe(fleet::receipts_of(&id))
            .await
            .expect("subscribing to receipts");
        client.flush().await.expect("flushing the subscription");
        for w in &mut ws {
            w.stdin
                .write_all(format!("watch {id}\n").as_bytes())
                .await
                .expect("telling a worker what to watch");
            w.stdin.flush().await.expect("flushing a worker's stdin");
        }
        let stream = js
            .get_stream(fleet::RECEIPT_STREAM)
            .await
            .expect("the receipt stream");
        let stored_before = stream
            .get_info()
            .await
            .map(|i| i.state.messages)
            .unwrap_or(0);

        let server_cpu_before = cpu_ms(server.child.id());
        let published_at = monotonic_ns();
        transport::nats::publish_acked(&js, &fleet::command_subject(engine.fleet()), &id, body)
            .await
            .expect("publishing the command");

        let mut arrivals: HashMap<String, u64> = HashMap::with_capacity(n);
        let deadline = tokio::time::Instant::now() + ROUND_TIMEOUT;
        while arrivals.len() < n {
            match tokio::time::timeout_at(deadline, receipts.next()).await {
                Ok(Some(msg)) => {
                    let at = monotonic_ns();
                    let agent = msg
                        .subject
                        .rsplit('.')
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    receipt_sizes.push(msg.payload.len() as f64);
                    arrivals.entry(agent).or_insert(at);
                }
                _ => break,
            }
        }
        // Every receipt was acked to its sender; this confirms the stream
        // holds them all.
        let stored = stream
            .get_info()
            .await
            .map(|i| i.state.messages)
            .unwrap_or(0)
            .saturating_sub(stored_before);

        let mut applied_ms = Vec::with_capacity(n);
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        let mut worker_rss = 0;
        let mut worker_cpu_ms = 0.0;
        for w in &mut ws {
            let done = w.next_json().await;
            worker_cpu_ms += done["cpu_ms"].as_f64().unwrap_or(0.0);
            for t in done["done_ns"].as_array().into_iter().flatten() {
                let t = t.as_u64().unwrap_or(0);
                if t > 0 {
                    applied_ms.push(t.saturating_sub(published_at) as f64 / 1e6);
                }
            }
            if let Some(m) = done["states"].as_object() {
                for (k, v) in m {
                    *states.entry(k.clone()).or_insert(0) += v.as_u64().unwrap_or(0) as usize;
                }
            }
            worker_rss += done["rss_kib"].as_u64().unwrap_or(0);
        }
        let receipts_ms: Vec<f64> = arrivals
            .values()
            .map(|t| t.saturating_sub(published_at) as f64 / 1e6)
            .collect();
        let r = json!({
            "id": id,
            "applied_ms": latency_summary(applied_ms, n),
            "receipts_ms": latency_summary(receipts_ms, n),
            "receipts_stored": stored,
            "states": states,
            "worker_rss_kib": worker_rss,
            "client_cpu_us_per_agent": worker_cpu_ms * 1000.0 / n as f64,
            "server_cpu_us_per_agent": (cpu_ms(server.child.id()) - server_cpu_before) * 1000.0 / n as f64,
        });
        eprintln!(
            "  {} round {}: all applied {:.0} ms, all receipts {:.0} ms, stored {stored}/{n}, states {}",
            engine.name(),
            round + 1,
            r["applied_ms"]["max"].as_f64().unwrap_or(f64::NAN),
            r["receipts_ms"]["max"].as_f64().unwrap_or(f64::NAN),
            r["states"]
        );
        per_round.push(r);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let server_rss_after = server.rss_kib();
    let last_worker_rss = per_round
        .last()
        .and_then(|r| r["worker_rss_kib"].as_u64())
        .unwrap_or(0);
    for mut w in ws {
        drop(w.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), w.child.wait()).await;
        let _ = w.child.kill().await;
    }
    // Let the server notice the closed connections before the next engine.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let median_of = |what: &str, stat: &str| {
        median(
            per_round
                .iter()
                .map(|r| r[what][stat].as_f64().unwrap_or(f64::NAN))
                .collect(),
        )
    };
    let stat_block = |what: &str| {
        json!({
            "p50": median_of(what, "p50"),
            "p99": median_of(what, "p99"),
            "max": median_of(what, "max"),
        })
    };
    let median_field = |what: &str| {
        median(
            per_round
                .iter()
                .map(|r| r[what].as_f64().unwrap_or(f64::NAN))
                .collect(),
        )
    };
    json!({
        "engine": engine.name(),
        "start_s": start_s,
        "client_cpu_us_per_agent": median_field("client_cpu_us_per_agent"),
        "server_cpu_us_per_agent": median_field("server_cpu_us_per_agent"),
        "applied_ms": stat_block("applied_ms"),
        "receipts_ms": stat_block("receipts_ms"),
        "client_rss_kib_per_agent": (rss_after.saturating_sub(rss_before)) as f64 / n as f64,
        "client_rss_kib_per_agent_after_rounds": (last_worker_rss.saturating_sub(rss_before)) as f64 / n as f64,
        "server_rss_kib": server_rss_with,
        "server_rss_kib_per_connection": (server_rss_with.saturating_sub(server_rss_before)) as f64 / n as f64,
        "server_rss_kib_after_rounds": server_rss_after,
        "receipt_bytes": if receipt_sizes.is_empty() { 0.0 } else { receipt_sizes.iter().sum::<f64>() / receipt_sizes.len() as f64 },
        "rounds": per_round,
    })
}

fn print_table(report: &Value) {
    println!(
        "fleet bench: {} cores, {}, medians of {} round(s); latencies from publish, in ms",
        report["cores"],
        report["nats_server"].as_str().unwrap_or("nats-server"),
        report["rounds"]
    );
    println!(
        "{:>7} {:<11} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}   {:>12} {:>12} {:>10}",
        "agents",
        "engine",
        "appl p50",
        "appl p99",
        "appl max",
        "rcpt p50",
        "rcpt p99",
        "rcpt max",
        "client KiB/a",
        "server KiB/c",
        "CPU us/a"
    );
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    for size in report["sizes"].as_array().into_iter().flatten() {
        for engine in ["tourniquet", "bare"] {
            let e = &size[engine];
            println!(
                "{:>7} {:<11} {:>8.1} {:>8.1} {:>8.1}   {:>8.1} {:>8.1} {:>8.1}   {:>12.1} {:>12.1} {:>10.0}",
                size["agents"].as_u64().unwrap_or(0),
                engine,
                f(&e["applied_ms"]["p50"]),
                f(&e["applied_ms"]["p99"]),
                f(&e["applied_ms"]["max"]),
                f(&e["receipts_ms"]["p50"]),
                f(&e["receipts_ms"]["p99"]),
                f(&e["receipts_ms"]["max"]),
                f(&e["client_rss_kib_per_agent"]),
                f(&e["server_rss_kib_per_connection"]),
                f(&e["client_cpu_us_per_agent"]),
            );
        }
        let r = &size["ratio"];
        println!(
            "{:>7} {:<11} {:>7.2}x {:>7.2}x {:>7.2}x   {:>7.2}x {:>7.2}x {:>7.2}x",
            size["agents"].as_u64().unwrap_or(0),
            "ratio",
            f(&r["applied"]["p50"]),
            f(&r["applied"]["p99"]),
            f(&r["applied"]["max"]),
            f(&r["receipts"]["p50"]),
            f(&r["receipts"]["p99"]),
            f(&r["receipts"]["max"]),
        );
        println!(
            "{:>7} {:<11} server RSS {} KiB with agents, {} KiB bare ({} KiB empty); receipt {:.0} B; {} worker process(es); start {:.1}s",
            "",
            "",
            size["tourniquet"]["server_rss_kib"],
            size["bare"]["server_rss_kib"],
            size["tourniquet"]["server_rss_kib_empty"],
            f(&size["tourniquet"]["receipt_bytes"]),
            size["worker_processes"],
            f(&size["tourniquet"]["start_s"]),
        );
    }
}
