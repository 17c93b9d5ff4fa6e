//! Test harness: runs the real `tourniquet` binary in a temp directory with
//! its own keys, policy, flags file and an ephemeral loopback port.
//!
//! Nothing here fakes the agent: tests talk to it over HTTP, drop files in
//! its inbox, read the files it writes, and kill it to test recovery.

pub mod aws;
pub mod aws_fault_proxy;
pub mod edge;
pub mod metrics_service;
pub mod nats;
pub mod store;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use tourniquet::api::{self, CommandAnswer, Hotfixes, Identity};
use tourniquet::command::envelope::{self, Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};
use tourniquet::trust::keys::{self, Signer};

/// The flags file every test starts from.
pub const FLAGS: &str = r#"{
  "flags": {
    "new_flow": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
    "dark_mode": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}
  }
}
"#;

/// The `tourniquet` binary under test: `$TOURNIQUET_BIN`, or the one built
/// beside this test executable.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TOURNIQUET_BIN") {
        let p = PathBuf::from(p);
        // Tests run the binary from temp dirs, so a relative path must be made absolute.
        return std::fs::canonicalize(&p).unwrap_or(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // Test executables live in target/<profile>/deps, binaries one level up.
    let dir = exe.parent().expect("exe dir");
    let path = [
        dir.join("tourniquet"),
        dir.parent()
            .map(|d| d.join("tourniquet"))
            .unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| dir.join("tourniquet"));
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p tourniquet` (scripts/test does)",
        path.display()
    );
    path
}

/// Polls `cond` until it returns Some or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An operator key in the test dir.
pub struct OperatorKey {
    pub name: String,
    pub path: PathBuf,
    pub public: String,
    pub fingerprint: String,
}

impl OperatorKey {
    pub fn signer(&self) -> Signer {
        Signer::load(&self.path).expect("load key")
    }
}

/// A test directory: keys, policy, config, flags file.
pub struct Env {
    pub dir: TempDir,
    pub keys: Vec<OperatorKey>,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Env {
    /// A fresh directory with the standard flags file and keys `alice`,
    /// `bob` (both `sre`) and `mallory` (not in the policy).
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("flags.json"), FLAGS).expect("flags");
        let mut env = Env {
            dir,
            keys: Vec::new(),
        };
        for name in ["alice", "bob", "mallory"] {
            env.add_key(name);
        }
        env.write_policy(&env.default_policy());
        env.write_config(&env.default_config());
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn add_key(&mut self, name: &str) -> &OperatorKey {
        let path = self.path(&format!("{name}_ed25519"));
        let public = keys::generate_keypair(&path, &format!("{name}@example.com")).expect("keygen");
        self.keys.push(OperatorKey {
            name: name.to_string(),
            path,
            public: public.to_openssh().expect("openssh"),
            fingerprint: envelope::fingerprint(public.key_data()),
        });
        self.keys.last().expect("key")
    }

    pub fn key(&self, name: &str) -> &OperatorKey {
        self.keys
            .iter()
            .find(|k| k.name == name)
            .expect("no such key")
    }

    /// alice and bob hold `sre`; `flag.*` needs one, `flag.state` on
    /// `locked-*` needs two; `revert` needs one.
    pub fn default_policy(&self) -> String {
        format!(
            r#"version = 1
max_ttl = "30m"
clock_skew = "2m"

[keys.alice]
public_key = "{}"
roles = ["sre"]

[keys.bob]
public_key = "{}"
roles = ["sre"]

[[rules]]
ops = ["flag.state"]
resources = ["locked-*"]
roles = ["sre"]
threshold = 2

[[rules]]
ops = ["flag.*", "revert"]
resources = ["*"]
roles = ["sre"]
threshold = 1
"#,
            self.key("alice").public,
            self.key("bob").public
        )
    }

    pub fn default_config(&self) -> String {
        r#"[agent]
id = "test-agent"
labels = { env = "test", region = "eu-central-1" }
state_dir = "state"
policy = "policy.toml"

[api]
listen = "127.0.0.1:0"

[inbox]
dir = "inbox"

[resources.checkout-flags]
kind = "flags-file"
path = "flags.json"

[resources.locked-flags]
kind = "flags-file"
path = "flags.json"
"#
        .to_string()
    }

    pub fn write_policy(&self, text: &str) {
        tourniquet_providers_write(&self.path("policy.toml"), text);
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.path("agent.toml"), text).expect("config");
    }

    pub fn flags_bytes(&self) -> Vec<u8> {
        std::fs::read(self.path("flags.json")).expect("flags")
    }

    /// The `defaultVariant` of a flag in the flags file.
    pub fn variant(&self, flag: &str) -> String {
        let v: Value = serde_json::from_slice(&self.flags_bytes()).expect("flags json");
        v["flags"][flag]["defaultVariant"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn audit_entries(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("state/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `tourniquet revert ID --reason R --key KEY_ed25519 --send URL EXTRA…`.
    pub fn revert_cli(
        &self,
        id: &str,
        reason: &str,
        key: &str,
        url: &str,
        extra: &[&str],
    ) -> (i32, String, String) {
        let key = format!("{key}_ed25519");
        let mut args = vec![
            "revert", id, "--reason", reason, "--key", &key, "--send", url,
        ];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    /// Runs the CLI in the test dir; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("TOURNIQUET_KEY")
            .output()
            .expect("run tourniquet");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the agent on `agent.toml`.
    pub fn start(&self) -> Agent {
        self.start_with(&[])
    }

    /// Starts the agent with extra environment variables.
    pub fn start_with(&self, envs: &[(&str, &str)]) -> Agent {
        Agent::spawn(self.dir.path(), &["agent", "--config", "agent.toml"], envs)
    }
}

fn tourniquet_providers_write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A running agent process. Killed on drop.
pub struct Agent {
    pub child: Child,
    pub url: String,
    /// The start banner.
    pub stdout: String,
    /// Kept so the agent's stdout pipe stays open for later output.
    stdout_rx: mpsc::Receiver<String>,
    stderr_rx: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
}

impl Agent {
    /// Spawns `tourniquet ARGS` in `dir` and waits until it prints where it
    /// listens and `/healthz` answers.
    pub fn spawn(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("TOURNIQUET_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn agent");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = String::new();
        let mut url = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        // Read the whole banner: it ends with the agent key line.
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    banner.push_str(&line);
                    banner.push('\n');
                    if let Some(rest) = line.trim().strip_prefix("listens:") {
                        url = Some(rest.trim().to_string());
                    }
                    if line.trim().starts_with("agent key:") && url.is_some() {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let err: Vec<String> = erx.try_iter().collect();
                        panic!(
                            "agent exited with {status} before listening:\n{banner}\n{}",
                            err.join("\n")
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "agent did not print its banner:\n{banner}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = child.wait();
                    let err: Vec<String> = erx.try_iter().collect();
                    panic!(
                        "agent closed stdout before listening:\n{banner}\n{}",
                        err.join("\n")
                    );
                }
            }
        }
        let agent = Agent {
            child,
            url: url.unwrap_or_default(),
            stdout: banner,
            stdout_rx: rx,
            stderr_rx: erx,
            stderr: Vec::new(),
        };
        if agent.url.starts_with("http://") {
            let health = format!("{}/healthz", agent.url);
            wait_for("healthz", Duration::from_secs(10), || {
                http_get_status(&health).filter(|s| *s == 200)
            });
        }
        agent
    }

    /// What the agent printed to stdout after its banner.
    pub fn later_stdout(&self) -> String {
        self.stdout_rx.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Everything the agent logged so far.
    pub fn logs(&mut self) -> String {
        self.stderr.extend(self.stderr_rx.try_iter());
        self.stderr.join("\n")
    }

    /// Waits for the process to exit (after an injected abort).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for("agent to exit", timeout, || child.try_wait().ok().flatten())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.wait_exit(Duration::from_secs(10));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain blocking HTTP/1.1 GET over loopback, for readiness polling
/// without an async runtime.
pub fn http_get_status(url: &str) -> Option<u16> {
    http_request("GET", url, b"").map(|(s, _)| s)
}

/// A minimal blocking HTTP/1.1 client for plain-http loopback tests.
pub fn http_request(method: &str, url: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(70)))
        .ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    // An oversize body may be cut off by the server mid-write; the answer
    // still matters.
    let _ = stream.write_all(body);
    let mut resp = Vec::new();
    let _ = stream.read_to_end(&mut resp);
    let text_end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&resp[..text_end]).into_owned();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = resp[text_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Some((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// POSTs an envelope; returns (status, JSON body).
pub fn post_command(agent: &Agent, body: &[u8]) -> (u16, Value) {
    let (s, b) = http_request("POST", &format!("{}/v1/commands", agent.url), body)
        .expect("POST /v1/commands");
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// GETs a JSON endpoint.
pub fn get_json(agent: &Agent, path: &str) -> (u16, Value) {
    let (s, b) = http_request("GET", &format!("{}{path}", agent.url), b"").expect("GET");
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// Reads an agent's answer as its API type, failing the test with the body
/// when it does not fit: a renamed or missing field shows here.
pub fn read_answer<T: serde::de::DeserializeOwned>(what: &str, body: &Value) -> T {
    T::deserialize(body)
        .unwrap_or_else(|e| panic!("{what}: the answer does not read ({e}): {body:#}"))
}

/// `GET /v1/commands/{id}` as the API type; `None` when the agent has no
/// such command (404).
pub fn command(agent: &Agent, id: &str) -> Option<CommandAnswer> {
    let path = api::command_path(id);
    match get_json(agent, &path) {
        (200, body) => Some(read_answer(&path, &body)),
        (404, _) => None,
        (status, body) => panic!("GET {path}: {status} {body}"),
    }
}

/// `GET /v1/hotfixes` as the API type.
pub fn hotfixes(agent: &Agent) -> Hotfixes {
    match get_json(agent, api::HOTFIXES_PATH) {
        (200, body) => read_answer(api::HOTFIXES_PATH, &body),
        (status, body) => panic!("GET {}: {status} {body}", api::HOTFIXES_PATH),
    }
}

/// `GET /v1/identity` as the API type.
pub fn identity(agent: &Agent) -> Identity {
    match get_json(agent, api::IDENTITY_PATH) {
        (200, body) => read_answer(api::IDENTITY_PATH, &body),
        (status, body) => panic!("GET {}: {status} {body}", api::IDENTITY_PATH),
    }
}

/// Waits until the command settles (kept, rolled back, reverted, …).
pub fn wait_settled(agent: &Agent, id: &str) -> Value {
    wait_state(agent, id, |r| {
        read_answer::<CommandAnswer>(&format!("command {id}"), r).settled()
    })
}

/// [`wait_settled`], as the API type.
pub fn wait_settled_answer(agent: &Agent, id: &str) -> CommandAnswer {
    read_answer(&format!("command {id}"), &wait_settled(agent, id))
}

/// Waits until the command's record satisfies `pred`.
pub fn wait_state(agent: &Agent, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(&format!("command {id}"), Duration::from_secs(60), || {
        let (s, v) = get_json(agent, &format!("/v1/commands/{id}?wait=2s"));
        (s == 200 && pred(&v)).then_some(v)
    })
}

/// A payload with sane defaults; edit the JSON for hostile variants.
pub fn payload(actions: Value) -> Value {
    let now = std::time::SystemTime::now();
    json!({
        "id": ulid::Ulid::new().to_string(),
        "issuer": "alice@example.com",
        "issued_at": humantime::format_rfc3339_seconds(now).to_string(),
        "expires": humantime::format_rfc3339_seconds(now + Duration::from_secs(600)).to_string(),
        "reason": "INC-1: checkout 500s",
        "target": {},
        "actions": actions,
    })
}

/// The standard action: `flag.set checkout-flags new_flow=off`.
pub fn set_new_flow(variant: &str) -> Value {
    json!([{"resource": "checkout-flags", "op": "flag.set", "flag": "new_flow", "variant": variant}])
}

/// Signs raw payload bytes with each signer.
pub fn sign_bytes(payload: &[u8], signers: &[&OperatorKey]) -> Envelope {
    let mut env = Envelope::new(COMMAND_PAYLOAD_TYPE, payload);
    for k in signers {
        let sig = k
            .signer()
            .sign(
                COMMAND_NAMESPACE,
                &envelope::pae(COMMAND_PAYLOAD_TYPE, payload),
            )
            .expect("sign");
        env.add_signature(&sig).expect("add sig");
    }
    env
}

/// Signs a payload value with each signer and returns the envelope bytes.
pub fn sign(payload: &Value, signers: &[&OperatorKey]) -> Vec<u8> {
    let bytes = serde_json::to_vec(payload).expect("payload json");
    serde_json::to_vec(&sign_bytes(&bytes, signers)).expect("envelope json")
}

/// Checks that `name` is on PATH, failing with install advice if not.
pub fn require_tool(name: &str, install: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is required for this test and is not installed: {install}"
    );
}

/// A tiny real HTTP service whose health depends on the flags file: it
/// answers 500 while `flag` has `bad_variant`, 200 otherwise. Guards probe
/// it to see a change help or hurt.
pub struct FlagAwareService {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FlagAwareService {
    pub fn start(flags_path: PathBuf, flag: &str, bad_variant: &str) -> FlagAwareService {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind service");
        let port = listener.local_addr().expect("addr").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let flag = flag.to_string();
        let bad = bad_variant.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let variant = std::fs::read(&flags_path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|v| {
                        v["flags"][&flag]["defaultVariant"]
                            .as_str()
                            .map(String::from)
                    })
                    .unwrap_or_default();
                let (code, text) = if variant == bad {
                    (500, "failing")
                } else {
                    (200, "ok")
                };
                let resp = format!(
                    "HTTP/1.1 {code} {text}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = s.write_all(resp.as_bytes());
            }
        });
        FlagAwareService { port, stop }
    }

    /// The `[probes.NAME]` block for this service.
    pub fn probe_config(&self, name: &str) -> String {
        format!(
            "\n[probes.{name}]\nkind = \"http\"\nurl = \"http://127.0.0.1:{}/health\"\nsamples = 3\ninterval = \"20ms\"\n",
            self.port
        )
    }
}

impl Drop for FlagAwareService {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}
