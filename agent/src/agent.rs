//! `tourniquet agent`: wires config, state, policy, providers and transports
//! together, recovers what a crash left unsettled, and serves.
//!
//! Start-up does only what readiness needs (bind, load, recover in the
//! background), so the agent is answering within milliseconds of exec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::command::envelope::sha256_hex;
use crate::command::payload::Timestamp;
use crate::config::{AgentConfig, Lint, Severity};
use crate::lifecycle::clock::SystemClock;
use crate::lifecycle::store::Store;
use crate::lifecycle::{Identity, Lifecycle, Resource};
use crate::telemetry::Probes;
use crate::transport;
use crate::trust::policy::{Policy, PolicyError};

/// Why the agent did not start, or `--check` refused its config. Each
/// variant names what the operator must fix and keeps the cause.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}: {source} (the policy is required)", path.display())]
    PolicyRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("agent.state_dir: {} is a symlink; the agent never follows one there (point state_dir at the real directory)", .0.display())]
    StateDirSymlink(PathBuf),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("resources.{name}: {source}")]
    Resource {
        name: String,
        #[source]
        source: tourniquet_providers::ProviderError,
    },
    #[error(transparent)]
    Store(#[from] crate::lifecycle::store::StoreError),
    #[error("inbox {}: {source}", path.display())]
    Inbox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The API's TLS settings; the message names the file.
    #[error("{0}")]
    Tls(String),
    #[error("api.listen {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {}: {source}", dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    /// Joining the fleet over NATS; the message names what failed.
    #[error("{0}")]
    Nats(String),
}

/// Loads the policy, naming the file in any error.
pub fn load_policy(path: &Path) -> Result<(Policy, String), StartError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartError::PolicyRead {
        path: path.to_path_buf(),
        source,
    })?;
    let policy = Policy::from_toml(&text, &path.display().to_string())?;
    Ok((policy, sha256_hex(text.as_bytes())))
}

/// What `agent --check` found in a config that loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    /// The config file, as named on the command line.
    pub config: String,
    pub resources: usize,
    pub probes: usize,
    /// The policy's one-line summary.
    pub policy: String,
    /// What parses but cannot work; see [`crate::config::LintCode`].
    pub lints: Vec<Lint>,
}

impl CheckReport {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.lints.iter().filter(|l| l.severity == severity).count()
    }

    /// The line `--check` prints when the agent would start.
    pub fn summary(&self) -> String {
        let warnings = match self.warnings() {
            0 => String::new(),
            n => format!(" ({n} warning(s))"),
        };
        format!(
            "config ok: {} resource(s), {} probe(s); policy ok: {}{warnings}",
            self.resources, self.probes, self.policy
        )
    }

    /// The one-line reason `--check` exits 1 with, when a lint is an error.
    pub fn failure(&self) -> Option<String> {
        match self.errors() {
            0 => None,
            n => Some(format!(
                "{}: {n} error(s) and {} warning(s); the agent would not work as configured (fix the errors above)",
                self.config,
                self.warnings()
            )),
        }
    }
}

/// `--check`: validate the config and its policy, build nothing, and lint
/// what parses but cannot work. `origin` names the config file.
pub fn check(cfg: &AgentConfig, origin: &str) -> Result<CheckReport, StartError> {
    let (policy, _) = load_policy(&cfg.agent.policy)?;
    let state_dir = &cfg.agent.state_dir;
    if std::fs::symlink_metadata(state_dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(StartError::StateDirSymlink(state_dir.clone()));
    }
    // Building a provider also refuses a managed file that is a symlink
    // unless its resource says `follow_symlinks = true`.
    for (name, r) in &cfg.resources {
        r.provider.build().map_err(|source| StartError::Resource {
            name: name.clone(),
            source,
        })?;
    }
    let lints = cfg.lint(
        &policy,
        origin,
        &cfg.agent.policy.display().to_string(),
        Timestamp::now(),
    );
    Ok(CheckReport {
        config: origin.to_string(),
        resources: cfg.resources.len(),
        probes: cfg.probes.len(),
        policy: policy.summary(),
        lints,
    })
}

/// An agent's lifecycle built from its config, before any transport runs.
pub struct Built {
    pub lc: Arc<Lifecycle>,
    pub agent_id: String,
    pub policy_sha: String,
    pub policy_summary: String,
    pub created_key: bool,
    /// The exclusive hold on the state dir: keep it for as long as the
    /// agent runs, or a second agent could start on the same journal.
    pub state_lock: crate::state::StateLock,
}

/// Opens the state dir, key, policy, providers, journal and audit log.
/// `run` serves what this builds; the fleet bench builds thousands in one
/// process and attaches only the NATS transport.
pub fn build(cfg: &AgentConfig) -> Result<Built, StartError> {
    // First of all: nothing in the state dir (journal, audit log, key) is
    // opened or created before this agent holds it alone.
    let state_dir = cfg.agent.state_dir.clone();
    let state_lock = crate::state::lock_state_dir(&state_dir)?;
    let agent_id = cfg.agent_id();
    let (key, created_key) = crate::state::load_or_create_agent_key(&state_dir, &agent_id)?;
    let (policy, policy_sha) = load_policy(&cfg.agent.policy)?;
    let policy_summary = policy.summary();

    let mut resources = BTreeMap::new();
    for (name, r) in &cfg.resources {
        let provider = r.provider.build().map_err(|source| StartError::Resource {
            name: name.clone(),
            source,
        })?;
        resources.insert(
            name.clone(),
            Resource {
                provider,
                default_guard: r.guard.clone(),
                on_drift: r.on_drift,
            },
        );
    }
    let (store, opened) = Store::open(&state_dir, cfg.retention.limits(), Timestamp::now())?;
    if opened.skipped_lines > 0 || opened.torn_bytes > 0 {
        tracing::warn!(
            lines = opened.skipped_lines,
            torn_bytes = opened.torn_bytes,
            "journal had broken lines; skipped, and recorded in the audit log"
        );
    }
    let identity = Identity {
        id: agent_id.clone(),
        labels: cfg.agent.labels.clone(),
        key,
    };
    let lc = Lifecycle::new(
        identity,
        policy,
        policy_sha.clone(),
        resources,
        Probes::new(cfg.probes.clone()),
        store,
        Arc::new(SystemClock),
    );
    Ok(Built {
        lc,
        agent_id,
        policy_sha,
        policy_summary,
        created_key,
        state_lock,
    })
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(cfg: AgentConfig, dev_mode: bool) -> Result<(), StartError> {
    let Built {
        lc,
        agent_id,
        policy_sha,
        policy_summary,
        created_key,
        state_lock: _state_lock,
    } = build(&cfg)?;
    let state_dir = cfg.agent.state_dir.clone();

    // Taken before any transport starts: what arrives from now on is live.
    let pending = lc.unsettled();

    // The inbox exists before the agent says it is ready, so a sender that
    // saw the banner or a healthy /healthz can always drop a file into it;
    // files dropped before the watch starts are picked up when it does.
    if let Some(inbox) = &cfg.inbox {
        crate::state::create_private_dir(&inbox.dir).map_err(|source| StartError::Inbox {
            path: inbox.dir.clone(),
            source,
        })?;
    }

    // Bind before anything slow so readiness is immediate.
    let listener = if cfg.api.enabled {
        let tls = transport::http::tls_acceptor(&cfg.api).map_err(StartError::Tls)?;
        let listen_error = |source| StartError::Listen {
            addr: cfg.api.listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(cfg.api.listen)
            .await
            .map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        Some((listener, tls, addr))
    } else {
        None
    };

    print_banner(
        &cfg,
        &agent_id,
        &lc,
        &policy_summary,
        created_key,
        dev_mode,
        listener.as_ref().map(|l| (l.2, l.1.is_some())),
    );
    if let Some((listener, tls, _)) = listener {
        tokio::spawn(transport::http::serve(lc.clone(), listener, tls));
    }
    // Watches are set up once the API answers: each costs a round trip to
    // the watcher's thread, and readiness must not wait for them. Each one
    // re-checks its file once it is in place, so nothing between loading
    // and watching is missed.
    let _policy_watch = watch_policy(lc.clone(), cfg.agent.policy.clone())?;
    let _drift_watches = watch_drift(&lc)?;
    // Recorded after the API is up: start-up fsyncs must not delay readiness.
    lc.audit_event(
        "agent_started",
        json!({"agent": agent_id, "version": env!("CARGO_PKG_VERSION"), "policy_sha256": policy_sha}),
    );

    // Before recovery settles anything, so receipts of recovered fleet
    // commands are published too.
    if let Some(nats) = &cfg.nats {
        transport::nats::start(lc.clone(), nats.clone(), &state_dir)
            .await
            .map_err(StartError::Nats)?;
    }
    {
        let lc = lc.clone();
        tokio::spawn(async move { lc.recover(pending).await });
    }
    if let Some(inbox) = &cfg.inbox {
        let lc = lc.clone();
        let dir = inbox.dir.clone();
        tokio::spawn(async move {
            if let Err(e) = transport::inbox::run(lc, dir).await {
                tracing::error!(error = %e, "inbox stopped");
            }
        });
    }
    {
        let lc = lc.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                lc.prune();
            }
        });
    }
    {
        // While the state dir refuses writes, try it every second; the
        // agent recovers by itself when the disk does.
        let lc = lc.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                lc.store().check_space();
                lc.heal_storage().await;
                lc.store().release_idle();
            }
        });
    }

    wait_for_shutdown().await;
    lc.flush_unverified_summary();
    lc.audit_event("agent_stopped", json!({"agent": agent_id}));
    lc.flush().await;
    Ok(())
}

fn print_banner(
    cfg: &AgentConfig,
    agent_id: &str,
    lc: &Lifecycle,
    policy_summary: &str,
    created_key: bool,
    dev_mode: bool,
    api: Option<(std::net::SocketAddr, bool)>,
) {
    let mut out = String::new();
    if dev_mode {
        out.push_str(
            "WARNING: DEV TRUST. Running on the embedded default: the policy trusts a local operator key\n\
             WARNING: at .tourniquet/operator_ed25519 for every op. Never run this mode in production;\n\
             WARNING: use `tourniquet agent --config agent.toml` with a real policy.\n",
        );
    }
    out.push_str(&format!(
        "tourniquet agent {agent_id} (v{}){}\n",
        env!("CARGO_PKG_VERSION"),
        if created_key {
            ", agent key created"
        } else {
            ""
        }
    ));
    out.push_str(&format!(
        "  trusts:   {} ({policy_summary})\n",
        cfg.agent.policy.display()
    ));
    for (name, r) in &cfg.resources {
        let detail = r.provider.detail();
        out.push_str(&format!(
            "  manages:  {name} ({} {detail})\n",
            r.provider.kind()
        ));
    }
    if let Some((addr, tls)) = api {
        out.push_str(&format!(
            "  listens:  {}://{addr}\n",
            if tls { "https" } else { "http" }
        ));
        if !addr.ip().is_loopback() && !tls {
            out.push_str("WARNING: the API listens on a non-loopback address without TLS (insecure = true)\n");
        }
    }
    if let Some(n) = &cfg.nats {
        out.push_str(&format!(
            "  fleet:    {} on {} (subject {})\n",
            n.fleet,
            crate::transport::nats::fleet::redact_url(&n.url),
            crate::transport::nats::fleet::command_subject(&n.fleet)
        ));
    }
    if let Some(i) = &cfg.inbox {
        out.push_str(&format!("  inbox:    {}\n", i.dir.display()));
    }
    out.push_str(&format!("  state:    {}\n", cfg.agent.state_dir.display()));
    out.push_str(&format!(
        "  agent key: {}\n",
        crate::command::envelope::fingerprint(lc.identity().key.public_key().key_data())
    ));
    print!("{out}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Reloads the policy whenever its file changes, across any number of
/// atomic renames. A broken edit keeps the last good policy.
fn watch_policy(
    lc: Arc<Lifecycle>,
    path: std::path::PathBuf,
) -> Result<notify::RecommendedWatcher, StartError> {
    let dir = transport::watch::parent_dir(&path);
    let (watcher, mut events) =
        transport::watch::watch_dir(&dir).map_err(|source| StartError::Watch { dir, source })?;
    let name = path.file_name().map(|n| n.to_owned());
    tokio::spawn(async move {
        // An edit between the first load and the watch is caught here.
        reload_policy_if_changed(&lc, &path);
        while let Some(p) = events.recv().await {
            if p.file_name() == name.as_deref() {
                reload_policy_if_changed(&lc, &path);
            }
        }
    });
    Ok(watcher)
}

/// Watches every local resource for drift: a file by its directory (so
/// renames never blind the watch), anything else by a periodic snapshot.
fn watch_drift(lc: &Arc<Lifecycle>) -> Result<Vec<notify::RecommendedWatcher>, StartError> {
    let mut watchers = Vec::new();
    for (name, res) in lc.resources() {
        let name = name.clone();
        match res.provider.watched_path() {
            Some(path) => {
                let dir = transport::watch::parent_dir(path);
                let file = path.file_name().map(|n| n.to_owned());
                let (watcher, mut events) = transport::watch::watch_dir(&dir)
                    .map_err(|source| StartError::Watch { dir, source })?;
                watchers.push(watcher);
                let lc = lc.clone();
                tokio::spawn(async move {
                    // A change between start-up and the watch is caught here.
                    lc.check_drift(&name).await;
                    while let Some(p) = events.recv().await {
                        if p.file_name() == file.as_deref() {
                            lc.check_drift(&name).await;
                        }
                    }
                });
            }
            None => {
                let lc = lc.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(30));
                    loop {
                        tick.tick().await;
                        lc.check_drift(&name).await;
                    }
                });
            }
        }
    }
    Ok(watchers)
}

fn reload_policy_if_changed(lc: &Lifecycle, path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let sha = sha256_hex(text.as_bytes());
    if sha == lc.policy_sha256() {
        return;
    }
    match Policy::from_toml(&text, &path.display().to_string()) {
        Ok(policy) => {
            tracing::info!(sha256 = %sha, "policy reloaded");
            lc.replace_policy(policy, sha);
        }
        Err(e) => {
            tracing::error!(error = %e, "policy edit rejected; keeping the last good policy");
            lc.audit_event(
                "policy_rejected",
                json!({"sha256": sha, "error": e.to_string()}),
            );
        }
    }
}

async fn wait_for_shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn start_errors_keep_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("policy.toml");
        let err = load_policy(&missing).map(drop).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: No such file or directory (os error 2) (the policy is required)",
                missing.display()
            )
        );
        assert!(err
            .source()
            .is_some_and(|c| c.downcast_ref::<std::io::Error>().is_some()));

        std::fs::write(&missing, "version = 1\nmax_ttl = \"30m\"\n").unwrap();
        let cfg = AgentConfig::from_toml(
            "[agent]\nstate_dir = \"state\"\npolicy = \"policy.toml\"\n[resources.f]\nkind = \"flags-file\"\npath = \"link.json\"\n",
            "agent.toml",
            dir.path(),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("elsewhere.json"),
            dir.path().join("link.json"),
        )
        .unwrap();
        let err = check(&cfg, "agent.toml").map(drop).unwrap_err();
        assert!(err.to_string().starts_with("resources.f: "), "{err}");
        assert!(
            err.source().is_some_and(|c| c
                .downcast_ref::<tourniquet_providers::ProviderError>()
                .is_some()),
            "{err:?}"
        );
    }
}
