//! A real `nats-server` with JetStream for fleet tests: its own ephemeral
//! loopback port and store dir, restartable on the same port and store to
//! test reconnects, and killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{require_tool, wait_for, Agent, FLAGS};

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: TempDir,
    /// An extra config file (`-c`), e.g. with users and permissions.
    config: Option<PathBuf>,
    envs: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server on a port it picks itself (`-p -1`), and reads the
    /// port back from its log.
    pub fn start() -> NatsServer {
        NatsServer::start_with(None, &[])
    }

    /// Starts a server that also reads `config` text (written beside a copy
    /// of the files in `include_files`, so `include` lines resolve), with
    /// `envs` in its environment.
    pub fn start_with_config(
        config: &str,
        include_files: &[&Path],
        envs: &[(&str, &str)],
    ) -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        for f in include_files {
            let name = f.file_name().expect("file name");
            std::fs::copy(f, dir.join(name)).expect("copy include");
        }
        let path = dir.join("nats-server.conf");
        std::fs::write(&path, config).expect("config");
        NatsServer::start_with(Some(path), envs)
    }

    fn start_with(config: Option<PathBuf>, envs: &[(&str, &str)]) -> NatsServer {
        require_tool(
            "nats-server",
            "run scripts/setup (apt-get install nats-server)",
        );
        let store = tempfile::tempdir().expect("tempdir");
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, port) = spawn(store.path(), None, config.as_deref(), &envs);
        NatsServer {
            child: Some(child),
            port,
            store,
            config,
            envs,
        }
    }

    /// The URL with a user and password in it.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        let (child, _) = spawn(
            self.store.path(),
            Some(self.port),
            self.config.as_deref(),
            &self.envs,
        );
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(
    store: &Path,
    port: Option<u16>,
    config: Option<&Path>,
    envs: &[(String, String)],
) -> (Child, u16) {
    let port_arg = port.map(|p| p.to_string()).unwrap_or_else(|| "-1".into());
    let mut cmd = Command::new("nats-server");
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nats-server");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Keep draining so the server never blocks on a full pipe.
                continue;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut found = None;
    let mut ready = false;
    while !(ready && found.is_some()) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("nats-server did not become ready:\n{}", seen.join("\n")));
        if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
            found = rest.trim().rsplit(':').next().and_then(|p| p.parse().ok());
        }
        if line.contains("Server is ready") {
            ready = true;
        }
        seen.push(line);
    }
    (child, found.expect("port"))
}

/// One fleet agent in its own directory: flags file, shared policy, and an
/// agent config that joins `fleet` on the server, with its API on an
/// ephemeral loopback port for assertions.
pub struct FleetAgent {
    pub id: String,
    pub dir: TempDir,
    pub agent: Option<Agent>,
    config: String,
}

impl FleetAgent {
    pub fn new(id: &str, labels: &str, policy: &str, nats_url: &str, fleet: &str) -> FleetAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("flags.json"), FLAGS).expect("flags");
        std::fs::write(dir.path().join("policy.toml"), policy).expect("policy");
        let config = format!(
            r#"[agent]
id = "{id}"
labels = {{ {labels} }}
state_dir = "state"
policy = "policy.toml"

[api]
listen = "127.0.0.1:0"

[nats]
url = "{nats_url}"
fleet = "{fleet}"
max_reconnect_delay = "1s"
heartbeat = "1s"

[resources.checkout-flags]
kind = "flags-file"
path = "flags.json"
"#
        );
        std::fs::write(dir.path().join("agent.toml"), &config).expect("config");
        FleetAgent {
            id: id.to_string(),
            dir,
            agent: None,
            config,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config(&self) -> &str {
        &self.config
    }

    pub fn start(&mut self) -> &Agent {
        let agent = Agent::spawn(self.dir.path(), &["agent", "--config", "agent.toml"], &[]);
        self.agent = Some(agent);
        self.agent.as_ref().expect("agent")
    }

    pub fn stop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.stop();
        }
    }

    /// The `defaultVariant` of a flag in this agent's flags file.
    pub fn variant(&self, flag: &str) -> String {
        let bytes = std::fs::read(self.path("flags.json")).expect("flags");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("flags json");
        v["flags"][flag]["defaultVariant"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The last command-stream sequence this agent has handled.
    pub fn cursor(&self) -> u64 {
        std::fs::read(self.path("state/nats/cursor.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["last_seq"].as_u64())
            .unwrap_or(0)
    }

    /// Receipts waiting in the spool for NATS to come back.
    pub fn spooled(&self) -> usize {
        std::fs::read_dir(self.path("state/nats/spool"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits until this agent has handled the stream up to `seq`.
    pub fn wait_cursor(&self, seq: u64) {
        wait_for(
            &format!("{} to handle stream seq {seq}", self.id),
            Duration::from_secs(20),
            || (self.cursor() >= seq).then_some(()),
        );
    }
}
