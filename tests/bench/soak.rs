//! `tourniquet-soak`: drives N valid, signed flag toggles through one real
//! agent over HTTP and watches what the agent keeps: resident memory, open
//! descriptors and the bytes in its state dir, every `--every` commands.
//! Then it stops the agent, starts it again on the same state dir and times
//! exec → `/healthz` 200, because an agent that has run for weeks must
//! still come back fast after a restart.
//!
//! The agent runs with a `[retention]` section small enough to bite during
//! the run, so the state dir must level off at what those settings allow.
//! `--no-retention` leaves the section out, for agents that predate it.
//!
//! ```text
//! tourniquet-soak --commands N [--state-dir DIR] [--every 10000]
//!                 [--clients C] [--no-retention] [--json]
//! ```
//!
//! The agent is `$TOURNIQUET_BIN` (default `target/release/tourniquet`); its
//! keys, policy, config and flags file go in a temp dir (`$TMPDIR`), its
//! state dir in `--state-dir` or beside them. It logs at `warn`. Run it with
//! `scripts/bench --soak N [--tmpfs]`. This is a measurement: it asserts
//! nothing about time or size, and fails only when the agent does (a
//! refused command, an agent that dies or does not answer).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tourniquet::command::envelope::{self, Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};
use tourniquet::trust::keys::Signer;
use tourniquet_e2e::store::{dir_usage, DirUsage};
use tourniquet_e2e::{http_get_status, payload, set_new_flow, Agent, Env};

/// The `[retention]` the agent runs with: small enough that rotation and
/// pruning happen many times in a run of 100,000 commands.
const AUDIT_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
const AUDIT_SEGMENTS: u64 = 4;
const RECEIPTS_COUNT: u64 = 20_000;

/// State-dir bytes are sampled this often (at least) for the maximum.
const USAGE_SAMPLE_EVERY: u64 = 1_000;

const USAGE: &str = "usage: tourniquet-soak --commands N [--state-dir DIR] [--every 10000] \
[--clients C] [--no-retention] [--json]";

/// Why the soak stopped early.
#[derive(Debug)]
enum SoakError {
    Usage(String),
    Io(String, std::io::Error),
    Sign(String),
    Http(String),
    Config(String),
    Refused { status: u16, body: String },
    AgentGone(String),
}

impl fmt::Display for SoakError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SoakError::Usage(why) => write!(f, "{why}\n{USAGE}"),
            SoakError::Io(what, e) => write!(f, "{what}: {e}"),
            SoakError::Sign(why) => write!(f, "signing a command: {why}"),
            SoakError::Config(why) => write!(f, "the agent refuses the soak's config: {why}"),
            SoakError::Http(why) => write!(f, "talking to the agent: {why}"),
            SoakError::Refused { status, body } => {
                write!(
                    f,
                    "the agent refused a valid command: HTTP {status}: {body}"
                )
            }
            SoakError::AgentGone(why) => write!(f, "the agent is gone: {why}"),
        }
    }
}

struct Args {
    commands: u64,
    state_dir: Option<PathBuf>,
    every: u64,
    clients: usize,
    retention: bool,
    json: bool,
}

fn parse_args() -> Result<Args, SoakError> {
    let mut args = Args {
        commands: 0,
        state_dir: None,
        every: 10_000,
        clients: 1,
        retention: true,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |flag: &str, v: Option<String>| -> Result<u64, SoakError> {
        v.as_deref()
            .and_then(|s| s.replace('_', "").parse::<u64>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| SoakError::Usage(format!("{flag} needs a positive number")))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--commands" => args.commands = number("--commands", it.next())?,
            "--every" => args.every = number("--every", it.next())?,
            "--clients" => {
                let n = number("--clients", it.next())?;
                args.clients = usize::try_from(n.min(64)).unwrap_or(1);
            }
            "--state-dir" => {
                let dir = it
                    .next()
                    .ok_or_else(|| SoakError::Usage("--state-dir needs a directory".into()))?;
                args.state_dir = Some(PathBuf::from(dir));
            }
            "--no-retention" => args.retention = false,
            "--json" => args.json = true,
            "-h" | "--help" => return Err(SoakError::Usage(String::new())),
            other => return Err(SoakError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    if args.commands == 0 {
        return Err(SoakError::Usage("--commands N is required".into()));
    }
    Ok(args)
}

/// The agent binary: `$TOURNIQUET_BIN` or the release build.
fn agent_bin() -> PathBuf {
    let p = std::env::var_os("TOURNIQUET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/tourniquet"));
    std::fs::canonicalize(&p).unwrap_or(p)
}

fn free_port() -> Result<u16, SoakError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| SoakError::Io("finding a free loopback port".into(), e))
}

/// What filesystem `dir` is on, by its magic number.
fn fs_kind(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as i64 {
        0x0102_1994 => "tmpfs".into(),
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("fs type {other:#x}"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// The state dir's bytes, split by what holds them.
#[derive(Clone, Copy, Default)]
struct StateUsage {
    total: DirUsage,
    audit: u64,
    receipts: u64,
    journal: u64,
}

fn state_usage(dir: &Path) -> StateUsage {
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    StateUsage {
        total: dir_usage(dir),
        audit: len(&dir.join("audit.jsonl")) + dir_usage(&dir.join("audit")).bytes,
        receipts: dir_usage(&dir.join("receipts")).bytes,
        journal: len(&dir.join("journal.jsonl")),
    }
}

fn usage_json(u: &StateUsage) -> Value {
    json!({
        "bytes": u.total.bytes,
        "allocated_bytes": u.total.allocated,
        "files": u.total.files,
        "audit_bytes": u.audit,
        "receipts_bytes": u.receipts,
        "journal_bytes": u.journal,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// One line of the running report.
struct Sample {
    commands: u64,
    elapsed_s: f64,
    rss_kib: u64,
    fds: u64,
    state: StateUsage,
    per_s: f64,
}

impl Sample {
    fn json(&self) -> Value {
        json!({
            "commands": self.commands,
            "elapsed_s": self.elapsed_s,
            "rss_kib": self.rss_kib,
            "fds": self.fds,
            "state": usage_json(&self.state),
            "commands_per_s": self.per_s,
        })
    }

    fn print(&self) {
        println!(
            "{:>9} commands  RSS {:>7.1} MiB  fds {:>4}  state {:>8.1} MiB ({:.1} MiB on disk, {} files; audit {:.1}, receipts {:.1}, journal {:.1})  {:>7.1} commands/s",
            self.commands,
            self.rss_kib as f64 / 1024.0,
            self.fds,
            mib(self.state.total.bytes),
            mib(self.state.total.allocated),
            self.state.total.files,
            mib(self.state.audit),
            mib(self.state.receipts),
            mib(self.state.journal),
            self.per_s,
        );
    }
}

/// Shared between client tasks: progress and what was measured so far.
struct Progress {
    next: AtomicU64,
    done: AtomicU64,
    started: Instant,
    pid: u32,
    state_dir: PathBuf,
    every: u64,
    quiet: bool,
    samples: Mutex<Vec<Sample>>,
    max_state: Mutex<StateUsage>,
    last_mark: Mutex<(u64, Instant)>,
}

impl Progress {
    fn observe(&self, done: u64) {
        if done % USAGE_SAMPLE_EVERY != 0 && done % self.every != 0 {
            return;
        }
        let state = state_usage(&self.state_dir);
        if let Ok(mut max) = self.max_state.lock() {
            if state.total.bytes > max.total.bytes {
                *max = state;
            }
        }
        if done % self.every != 0 {
            return;
        }
        let now = Instant::now();
        let per_s = match self.last_mark.lock() {
            Ok(mut mark) => {
                let (n0, t0) = *mark;
                *mark = (done, now);
                (done - n0) as f64 / now.duration_since(t0).as_secs_f64().max(1e-9)
            }
            Err(_) => 0.0,
        };
        let sample = Sample {
            commands: done,
            elapsed_s: now.duration_since(self.started).as_secs_f64(),
            rss_kib: rss_kib(self.pid),
            fds: open_fds(self.pid),
            state,
            per_s,
        };
        if !self.quiet {
            sample.print();
        }
        if let Ok(mut s) = self.samples.lock() {
            s.push(sample);
        }
    }
}

fn sign_flip(signer: &Signer, variant: &str) -> Result<Vec<u8>, SoakError> {
    let bytes = serde_json::to_vec(&payload(set_new_flow(variant)))
        .map_err(|e| SoakError::Sign(e.to_string()))?;
    let mut env = Envelope::new(COMMAND_PAYLOAD_TYPE, &bytes);
    let sig = signer
        .sign(
            COMMAND_NAMESPACE,
            &envelope::pae(COMMAND_PAYLOAD_TYPE, &bytes),
        )
        .map_err(|e| SoakError::Sign(e.to_string()))?;
    env.add_signature(&sig)
        .map_err(|e| SoakError::Sign(e.to_string()))?;
    serde_json::to_vec(&env).map_err(|e| SoakError::Sign(e.to_string()))
}

fn http_err(e: reqwest::Error) -> SoakError {
    SoakError::Http(tourniquet::telemetry::error_chain(&e))
}

/// One keep-alive client: takes command numbers until N are sent, sends
/// each and waits for it to settle.
async fn client(
    base: String,
    total: u64,
    signer: Arc<Signer>,
    progress: Arc<Progress>,
) -> Result<(), SoakError> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(http_err)?;
    loop {
        let n = progress.next.fetch_add(1, Ordering::SeqCst);
        if n >= total {
            return Ok(());
        }
        let variant = if n % 2 == 0 { "off" } else { "on" };
        let body = sign_flip(&signer, variant)?;
        let resp = http
            .post(format!("{base}/v1/commands"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(http_err)?;
        let status = resp.status().as_u16();
        let text = resp.bytes().await.map_err(http_err)?;
        if status != 202 {
            return Err(SoakError::Refused {
                status,
                body: String::from_utf8_lossy(&text).into_owned(),
            });
        }
        let id = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|v| v["id"].as_str().map(String::from))
            .ok_or_else(|| {
                SoakError::Http(format!("no id in {}", String::from_utf8_lossy(&text)))
            })?;
        loop {
            let rec: Value = http
                .get(format!("{base}/v1/commands/{id}?wait=10s"))
                .send()
                .await
                .map_err(http_err)?
                .json()
                .await
                .map_err(http_err)?;
            if rec["settled"] == json!(true) {
                break;
            }
        }
        let done = progress.done.fetch_add(1, Ordering::SeqCst) + 1;
        progress.observe(done);
    }
}

/// SIGTERM, then wait for the exit. Returns how long it took.
fn stop(child: &mut std::process::Child, what: &str) -> Result<Duration, SoakError> {
    let t0 = Instant::now();
    let pid = i32::try_from(child.id()).map_err(|_| SoakError::AgentGone("pid".into()))?;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(t0.elapsed()),
            Ok(None) if t0.elapsed() < Duration::from_secs(120) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                return Err(SoakError::AgentGone(format!(
                    "{what}: did not exit within 120s of SIGTERM"
                )));
            }
            Err(e) => return Err(SoakError::Io(format!("{what}: waiting"), e)),
        }
    }
}

/// Starts the agent again on the same state dir; exec → `/healthz` 200.
fn restart(env: &Env, port: u16) -> Result<(Duration, u64, std::process::Child), SoakError> {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let t0 = Instant::now();
    let mut child = Command::new(agent_bin())
        .args(["agent", "--config", "agent.toml"])
        .current_dir(env.dir.path())
        .env("TOURNIQUET_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| SoakError::Io("starting the agent again".into(), e))?;
    loop {
        if http_get_status(&url) == Some(200) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(SoakError::AgentGone(format!(
                "exited with {status} while starting on the soaked state dir"
            )));
        }
        if t0.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            return Err(SoakError::AgentGone(
                "not ready 300s after a restart".into(),
            ));
        }
    }
    let ready = t0.elapsed();
    let rss = rss_kib(child.id());
    Ok((ready, rss, child))
}

fn run(args: Args) -> Result<Value, SoakError> {
    let env = Env::new();
    let state_dir = match &args.state_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| SoakError::Io(format!("creating {}", d.display()), e))?;
            std::fs::canonicalize(d)
                .map_err(|e| SoakError::Io(format!("resolving {}", d.display()), e))?
        }
        None => env.path("state"),
    };
    let port = free_port()?;
    let state_toml = serde_json::to_string(&state_dir.display().to_string())
        .map_err(|e| SoakError::Usage(e.to_string()))?;
    let mut config = env
        .default_config()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace(
            "state_dir = \"state\"",
            &format!("state_dir = {state_toml}"),
        );
    if args.retention {
        config.push_str(&format!(
            "\n[retention]\naudit_segment_bytes = {AUDIT_SEGMENT_BYTES}\naudit_segments = {AUDIT_SEGMENTS}\nreceipts_count = {RECEIPTS_COUNT}\n"
        ));
    }
    env.write_config(&config);
    let bin = agent_bin();
    std::env::set_var("TOURNIQUET_BIN", &bin);
    let fs = fs_kind(&state_dir);
    if !args.json {
        println!("agent:     {}", bin.display());
        println!("state dir: {} ({fs})", state_dir.display());
        println!(
            "work dir:  {} ({})",
            env.dir.path().display(),
            fs_kind(env.dir.path())
        );
        if args.retention {
            println!(
                "retention: audit_segment_bytes = {AUDIT_SEGMENT_BYTES}, audit_segments = {AUDIT_SEGMENTS}, receipts_count = {RECEIPTS_COUNT}"
            );
        } else {
            println!("retention: none (--no-retention)");
        }
        println!(
            "driving {} flag toggles with {} client(s)",
            args.commands, args.clients
        );
    }
    // A config the agent refuses is reported as such, not as a crash.
    let check = Command::new(&bin)
        .args(["agent", "--config", "agent.toml", "--check"])
        .current_dir(env.dir.path())
        .output()
        .map_err(|e| SoakError::Io(format!("running {}", bin.display()), e))?;
    if !check.status.success() {
        let why = String::from_utf8_lossy(&check.stderr).trim().to_string();
        let hint = if args.retention && why.contains("retention") {
            " (this agent predates [retention]; run with --no-retention)"
        } else {
            ""
        };
        return Err(SoakError::Config(format!("{why}{hint}")));
    }
    let mut agent = Agent::spawn(
        env.dir.path(),
        &["agent", "--config", "agent.toml"],
        &[("TOURNIQUET_LOG", "warn")],
    );
    let pid = agent.child.id();
    let signer =
        Arc::new(Signer::load(&env.key("alice").path).map_err(|e| SoakError::Sign(e.to_string()))?);
    let started = Instant::now();
    let first = Sample {
        commands: 0,
        elapsed_s: 0.0,
        rss_kib: rss_kib(pid),
        fds: open_fds(pid),
        state: state_usage(&state_dir),
        per_s: 0.0,
    };
    if !args.json {
        first.print();
    }
    let progress = Arc::new(Progress {
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        started,
        pid,
        state_dir: state_dir.clone(),
        every: args.every,
        quiet: args.json,
        samples: Mutex::new(vec![first]),
        max_state: Mutex::new(StateUsage::default()),
        last_mark: Mutex::new((0, started)),
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.clients.clamp(1, 2))
        .enable_all()
        .build()
        .map_err(|e| SoakError::Io("starting the async runtime".into(), e))?;
    let base = agent.url.clone();
    let last_receipt_bytes = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..args.clients {
            tasks.push(tokio::spawn(client(
                base.clone(),
                args.commands,
                signer.clone(),
                progress.clone(),
            )));
        }
        for t in tasks {
            t.await
                .map_err(|e| SoakError::Http(format!("client task: {e}")))??;
        }
        // One receipt's size, as the agent serves it: for the bound.
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(http_err)?;
        let hotfixes: Value = http
            .get(format!("{base}/v1/hotfixes"))
            .send()
            .await
            .map_err(http_err)?
            .json()
            .await
            .map_err(http_err)?;
        let mut bytes = 0u64;
        if let Some(id) = hotfixes["hotfixes"][0]["id"].as_str() {
            let rec: Value = http
                .get(format!("{base}/v1/commands/{id}"))
                .send()
                .await
                .map_err(http_err)?
                .json()
                .await
                .map_err(http_err)?;
            bytes = serde_json::to_vec(&rec["receipt"])
                .map(|v| v.len() as u64)
                .unwrap_or(0);
        }
        Ok::<u64, SoakError>(bytes)
    })?;
    let elapsed = started.elapsed();
    if let Ok(Some(status)) = agent.child.try_wait() {
        return Err(SoakError::AgentGone(format!(
            "exited with {status} during the soak"
        )));
    }
    let end_usage = state_usage(&state_dir);
    let end_rss = rss_kib(pid);

    let stopped = stop(&mut agent.child, "the soaked agent")?;
    drop(agent);
    let (ready, rss_after_restart, mut again) = restart(&env, port)?;
    let after_restart = state_usage(&state_dir);
    stop(&mut again, "the restarted agent")?;

    let samples = progress
        .samples
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    let max_state = progress.max_state.lock().map(|m| *m).unwrap_or_default();
    let max_state = if end_usage.total.bytes > max_state.total.bytes {
        end_usage
    } else {
        max_state
    };
    // The first interval is warm-up; growth is measured from its end.
    let warm = samples.get(1).map(|s| s.rss_kib);
    let rss_max_after_warm = samples.iter().skip(1).map(|s| s.rss_kib).max();
    let growth = warm.map(|w| end_rss as i64 - w as i64);
    let max_growth = warm
        .zip(rss_max_after_warm)
        .map(|(w, m)| m as i64 - w as i64);
    let audit_bound = (AUDIT_SEGMENTS + 2) * AUDIT_SEGMENT_BYTES;
    let receipts_bound = RECEIPTS_COUNT * last_receipt_bytes;
    let bound = args.retention.then(|| {
        json!({
            "bytes": audit_bound + receipts_bound,
            "audit_bytes": audit_bound,
            "receipts_bytes": receipts_bound,
            "receipt_bytes": last_receipt_bytes,
            "note": "audit: (audit_segments + the active segment + one segment of slack) × audit_segment_bytes; receipts: receipts_count × one receipt as served (plus one receipt segment of slack, not counted); the journal is not counted",
        })
    });
    let per_s = args.commands as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(json!({
        "agent": bin.display().to_string(),
        "state_dir": state_dir.display().to_string(),
        "filesystem": fs,
        "commands": args.commands,
        "clients": args.clients,
        "elapsed_s": elapsed.as_secs_f64(),
        "commands_per_s": per_s,
        "retention": args.retention.then(|| json!({
            "audit_segment_bytes": AUDIT_SEGMENT_BYTES,
            "audit_segments": AUDIT_SEGMENTS,
            "receipts_count": RECEIPTS_COUNT,
        })),
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        "rss_kib": {
            "start": samples.first().map(|s| s.rss_kib),
            "after_first_interval": warm,
            "end": end_rss,
            "growth_after_first_interval": growth,
            "max_growth_after_first_interval": max_growth,
        },
        "state": {
            "end": usage_json(&end_usage),
            "max": usage_json(&max_state),
            "after_restart": usage_json(&after_restart),
            "retention_bound": bound,
        },
        "stop_ms": stopped.as_secs_f64() * 1000.0,
        "restart_ready_ms": ready.as_secs_f64() * 1000.0,
        "rss_after_restart_kib": rss_after_restart,
    }))
}

fn print_summary(s: &Value) {
    let kib = |v: &Value| v.as_i64().map(|k| format!("{:.1} MiB", k as f64 / 1024.0));
    let rss = &s["rss_kib"];
    println!();
    println!(
        "{} commands in {:.1} s: {:.1} commands/s ({} client(s), state dir on {})",
        s["commands"],
        s["elapsed_s"].as_f64().unwrap_or(0.0),
        s["commands_per_s"].as_f64().unwrap_or(0.0),
        s["clients"],
        s["filesystem"].as_str().unwrap_or("?"),
    );
    println!(
        "RSS: {} at start, {} after the first interval, {} at the end; growth after the first interval {} (max {})",
        kib(&rss["start"]).unwrap_or_default(),
        kib(&rss["after_first_interval"]).unwrap_or_else(|| "-".into()),
        kib(&rss["end"]).unwrap_or_default(),
        kib(&rss["growth_after_first_interval"]).unwrap_or_else(|| "-".into()),
        kib(&rss["max_growth_after_first_interval"]).unwrap_or_else(|| "-".into()),
    );
    let st = &s["state"];
    let b = |v: &Value| mib(v.as_u64().unwrap_or(0));
    println!(
        "state dir: max {:.1} MiB (audit {:.1}, receipts {:.1}, journal {:.1}; {} files), end {:.1} MiB, after restart {:.1} MiB",
        b(&st["max"]["bytes"]),
        b(&st["max"]["audit_bytes"]),
        b(&st["max"]["receipts_bytes"]),
        b(&st["max"]["journal_bytes"]),
        st["max"]["files"],
        b(&st["end"]["bytes"]),
        b(&st["after_restart"]["bytes"]),
    );
    match st["retention_bound"].as_object() {
        Some(bound) => println!(
            "retention bound: {:.1} MiB (audit {:.1} + receipts {:.1} at {} bytes a receipt)",
            b(&bound["bytes"]),
            b(&bound["audit_bytes"]),
            b(&bound["receipts_bytes"]),
            bound["receipt_bytes"],
        ),
        None => println!("retention bound: none (run without [retention])"),
    }
    println!(
        "stop (SIGTERM → exit): {:.0} ms; restart on the soaked state dir (exec → /healthz 200): {:.0} ms, RSS then {}",
        s["stop_ms"].as_f64().unwrap_or(0.0),
        s["restart_ready_ms"].as_f64().unwrap_or(0.0),
        kib(&s["rss_after_restart_kib"]).unwrap_or_default(),
    );
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tourniquet-soak: {e}");
            std::process::exit(2);
        }
    };
    let json_out = args.json;
    match run(args) {
        Ok(summary) if json_out => println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        ),
        Ok(summary) => print_summary(&summary),
        Err(e) => {
            eprintln!("tourniquet-soak: {e}");
            std::process::exit(1);
        }
    }
}
