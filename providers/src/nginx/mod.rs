//! `nginx`: emergency deny lists and brownouts through one managed include.
//!
//! Ops:
//! - `nginx.deny {cidrs}`: requests from these networks get 403.
//! - `nginx.brownout {paths, status?, retry_after?}`: requests under these
//!   path prefixes get `status` (default 503) with `Retry-After`
//!   (default 60 seconds), so non-critical features shed load.
//!
//! The include is rendered from the set of active entries and nothing else.
//! The set lives in the file itself, as one JSON comment marker per entry,
//! so it survives agent restarts and is readable by the operator. Each
//! change is: write atomically, `nginx -t`, reload, verify with real
//! requests. A failed test or verification restores the previous file
//! (and reload), and the action fails with nginx's own message.
//!
//! Entries are identified by their canonical rule, so the state an action
//! snapshots is only "is my entry in force": another hotfix on the same
//! include is never mistaken for drift, and a revert removes exactly this
//! action's entry and re-renders.

mod config;
mod declare;
mod rules;

use std::fs;
use std::io;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Mutex;

pub use config::{NginxConfig, NginxProbe, NginxVerifyConfig};
pub use declare::{BROWNOUT, DENY, KIND};
pub use rules::{check_path, parse_cidr};
use rules::{parse_include, BrownoutParams, DenyParams, Include, Rule, GENERATION_PATH};

use crate::{ActionSpec, ManagedFile, OpParams, Provider, ProviderError, State};

/// The runtime of one `nginx` resource.
pub struct Nginx {
    config: NginxConfig,
    /// The include as written, checked at start: never a symlink unless
    /// the config allows it, and then the link's target as it was at start.
    include: ManagedFile,
    client: reqwest::Client,
    /// Serialises render-test-reload cycles.
    lock: Mutex<()>,
}

impl OpParams for DenyParams {
    const FIELDS: &'static [&'static str] = &["cidrs"];
}

impl OpParams for BrownoutParams {
    const FIELDS: &'static [&'static str] = &["paths", "status", "retry_after"];
}

fn parse_rule(action: &ActionSpec) -> Result<Rule, ProviderError> {
    let rule = match action.op.as_str() {
        "nginx.deny" => Rule::deny(action.parse_params::<DenyParams>()?),
        "nginx.brownout" => Rule::brownout(action.parse_params::<BrownoutParams>()?),
        other => {
            return Err(ProviderError::Invalid(format!(
                "an nginx resource does not support op {other:?} (it supports nginx.deny and nginx.brownout)"
            )))
        }
    };
    rule.map_err(|e| ProviderError::Invalid(format!("{}: {e}", action.op)))
}

fn rule_state(rule: &Rule, present: bool) -> State {
    let mut v = serde_json::to_value(rule).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("entry".into(), Value::String(rule.id()));
        o.insert("present".into(), Value::Bool(present));
    }
    v
}

fn present_in(state: &State) -> Result<bool, ProviderError> {
    state
        .get("present")
        .and_then(Value::as_bool)
        .ok_or_else(|| ProviderError::Failed("recorded state has no \"present\"".into()))
}

/// A random token: the generation check's URL must not be guessable from
/// outside, or anyone could tell reloads apart.
fn new_generation() -> String {
    let mut bytes = [0u8; 16];
    let read = fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !read {
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default(),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Last lines of a command's output, trimmed for an error message.
fn tail(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(10);
    lines[start..].join("; ")
}

impl Nginx {
    /// Refuses an `include` that is a symlink unless `follow_symlinks` is
    /// set.
    pub fn new(config: NginxConfig) -> Result<Self, ProviderError> {
        let include = ManagedFile::resolve(&config.include, config.follow_symlinks)
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        let client = reqwest::Client::builder()
            // Every check on a fresh connection: a kept-alive one may still
            // be served by an old worker after a reload.
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ProviderError::http("building the HTTP client", e))?;
        Ok(Nginx {
            config,
            include,
            client,
            lock: Mutex::new(()),
        })
    }

    /// The file's bytes (None if missing) and what they hold.
    fn read(&self) -> Result<(Option<Vec<u8>>, rules::Parsed), ProviderError> {
        let path = self.include.path();
        let bytes = match self.include.read() {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(ProviderError::io(format!("reading {}", path.display()), e)),
        };
        let text = String::from_utf8_lossy(bytes.as_deref().unwrap_or_default());
        let parsed = parse_include(&text)
            .map_err(|e| ProviderError::Failed(format!("{}: {e}", path.display())))?;
        Ok((bytes, parsed))
    }

    async fn run(&self, what: &str, argv: &[String]) -> Result<(), String> {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("{what}: cannot run {}: {e}", argv[0]))?;
        let out = tokio::time::timeout(self.config.command_timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                format!(
                    "{what}: {} did not finish within {}",
                    argv.join(" "),
                    humantime::format_duration(self.config.command_timeout)
                )
            })?
            .map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let mut msg = tail(&out.stderr);
        if msg.is_empty() {
            msg = tail(&out.stdout);
        }
        Err(format!("{what} failed ({}): {msg}", out.status))
    }

    /// Puts back the previous bytes (or removes a file that did not exist).
    fn restore(&self, old: &Option<Vec<u8>>) -> Result<(), String> {
        let path = self.include.path();
        match old {
            Some(bytes) => self.include.replace(bytes, 0o644, true),
            None => self.include.remove(),
        }
        .map_err(|e| format!("restoring {}: {e}", path.display()))
    }

    /// Best effort after a failure: previous file back, tested and
    /// reloaded. Returns what went wrong on the way, for the message.
    async fn roll_back(&self, old: &Option<Vec<u8>>) -> String {
        if let Err(e) = self.restore(old) {
            return format!("; {e}");
        }
        if let Err(e) = self.run("nginx -t", &self.config.test_argv()).await {
            return format!("; the restored include fails too: {e}");
        }
        match self.run("reload", &self.config.reload_argv()).await {
            Ok(()) => "; the previous include is restored and reloaded".into(),
            Err(e) => format!("; the previous include is restored but {e}"),
        }
    }

    /// Renders `include`, writes it, tests, reloads and verifies. On any
    /// failure the previous file is back and the error says why.
    async fn commit(
        &self,
        old: Option<Vec<u8>>,
        mut include: Include,
    ) -> Result<(), ProviderError> {
        include.generation = new_generation();
        let text = include.render();
        let path = self.include.path();
        self.include
            .replace(text.as_bytes(), 0o644, true)
            .map_err(|e| ProviderError::io(format!("writing {}", path.display()), e))?;
        if let Err(e) = self.run("nginx -t", &self.config.test_argv()).await {
            // nginx never saw the new file: putting the old one back is all.
            let undo = match self.restore(&old) {
                Ok(()) => "; the previous include is restored".to_string(),
                Err(r) => format!("; {r}"),
            };
            return Err(ProviderError::Failed(format!("{e}{undo}")));
        }
        if let Err(e) = self.run("reload", &self.config.reload_argv()).await {
            let undo = self.roll_back(&old).await;
            return Err(ProviderError::Failed(format!("{e}{undo}")));
        }
        if let Err(e) = self.verify(&include).await {
            let undo = self.roll_back(&old).await;
            return Err(ProviderError::Failed(format!(
                "verifying the reload: {e}{undo}"
            )));
        }
        Ok(())
    }

    /// Polls until the new include is live and every check holds at once.
    async fn verify(&self, include: &Include) -> Result<(), String> {
        let Some(v) = &self.config.verify else {
            return Ok(());
        };
        let base = v.url.trim_end_matches('/');
        // (path, expected status, expected Retry-After)
        let mut checks: Vec<(String, u16, Option<u32>)> = vec![(
            format!("{GENERATION_PATH}{}", include.generation),
            204,
            None,
        )];
        for rule in &include.entries {
            if let Rule::Brownout { paths, .. } = rule {
                for p in paths {
                    let (s, ra) = include.brownout_for(p).unwrap_or((0, 0));
                    checks.push((p.clone(), s, Some(ra)));
                }
            }
        }
        for p in &v.probes {
            match include.brownout_for(&p.path) {
                Some((s, ra)) => checks.push((p.path.clone(), s, Some(ra))),
                None => checks.push((p.path.clone(), p.status, None)),
            }
        }
        let deadline = Instant::now() + v.timeout;
        // When every check first passed in a row of rounds. nginx starts
        // the new workers, then keeps the old ones accepting for a moment
        // (about 100ms) before telling them to stop, so one good round is
        // not proof: the answers must hold for `stable_for`.
        let mut good_since: Option<Instant> = None;
        loop {
            let mut failed = None;
            for (path, status, retry_after) in &checks {
                if let Err(e) = self.check(base, v, path, *status, *retry_after).await {
                    failed = Some(e);
                    break;
                }
            }
            match failed {
                None => {
                    let since = *good_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= v.stable_for {
                        return Ok(());
                    }
                }
                Some(e) => {
                    good_since = None;
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "not as intended after {}: {e}",
                            humantime::format_duration(v.timeout)
                        ));
                    }
                }
            }
            if Instant::now() >= deadline + v.stable_for {
                return Err("the answers did not hold steady".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn check(
        &self,
        base: &str,
        v: &NginxVerifyConfig,
        path: &str,
        status: u16,
        retry_after: Option<u32>,
    ) -> Result<(), String> {
        let url = format!("{base}{path}");
        let mut req = self.client.get(&url);
        if let Some(h) = &v.host {
            req = req.header(reqwest::header::HOST, h);
        }
        let shown = if path.starts_with(GENERATION_PATH) {
            format!("{GENERATION_PATH}… (the new include's marker)")
        } else {
            path.to_string()
        };
        let resp = req.send().await.map_err(|e| format!("GET {shown}: {e}"))?;
        let got = resp.status().as_u16();
        if got != status {
            return Err(format!("GET {shown} answered {got}, not {status}"));
        }
        if let Some(ra) = retry_after {
            let header = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            if header != ra.to_string() {
                return Err(format!(
                    "GET {shown} answered Retry-After {header:?}, not {ra}"
                ));
            }
        }
        Ok(())
    }

    /// Adds or removes one entry and commits the result.
    async fn change(&self, rule: &Rule, present: bool) -> Result<State, ProviderError> {
        let _guard = self.lock.lock().await;
        let (old, parsed) = self.read()?;
        let mut include = parsed.include;
        if present {
            include.insert(rule.clone());
        } else {
            include.remove(&rule.id());
        }
        // Always written and reloaded, even when the set is unchanged: a
        // crash between a write and its reload must not leave nginx behind.
        self.commit(old, include).await?;
        Ok(rule_state(rule, present))
    }
}

#[async_trait]
impl Provider for Nginx {
    fn kind(&self) -> &'static str {
        "nginx"
    }

    fn validate(&self, action: &ActionSpec) -> Result<(), ProviderError> {
        parse_rule(action).map(|_| ())
    }

    fn state_key(&self, action: &ActionSpec) -> String {
        match parse_rule(action) {
            Ok(rule) => format!("entry:{}", rule.id()),
            Err(_) => format!("op:{}", action.op),
        }
    }

    async fn snapshot(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let rule = parse_rule(action)?;
        let (_, parsed) = self.read()?;
        let present = parsed.intact && parsed.include.contains(&rule.id());
        Ok(rule_state(&rule, present))
    }

    fn plan(&self, action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let rule = parse_rule(action)?;
        present_in(before)?;
        Ok(rule_state(&rule, true))
    }

    async fn apply(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let rule = parse_rule(action)?;
        self.change(&rule, true).await
    }

    async fn revert(&self, action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let rule = parse_rule(action)?;
        let present = present_in(before)?;
        if before.get("entry").and_then(Value::as_str) != Some(rule.id().as_str()) {
            return Err(ProviderError::Failed(format!(
                "recorded state is not of entry {}",
                rule.id()
            )));
        }
        self.change(&rule, present).await
    }

    fn reversible(&self, op: &str) -> bool {
        KIND.reversible(op)
    }

    fn watched_path(&self) -> Option<&std::path::Path> {
        Some(self.include.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn spec(op: &str, params: Value) -> ActionSpec {
        ActionSpec {
            op: op.into(),
            params: params.as_object().cloned().unwrap_or_else(Map::new),
        }
    }

    /// A provider whose test and reload are `true`, so the file logic can
    /// be tested without nginx (tests/edge.rs runs the real one).
    fn provider(dir: &tempfile::TempDir, test: &str) -> Nginx {
        Nginx::new(NginxConfig {
            include: dir.path().join("hotfixes.conf"),
            follow_symlinks: false,
            binary: "nginx".into(),
            conf: None,
            prefix: None,
            error_log: None,
            test_command: Some(vec!["sh".into(), "-c".into(), test.into()]),
            reload_command: Some(vec!["true".into()]),
            command_timeout: Duration::from_secs(10),
            verify: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn apply_and_revert_add_and_remove_exactly_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir, "true");
        let deny = spec("nginx.deny", json!({"cidrs": ["10.0.0.0/8"]}));
        let brown = spec(
            "nginx.brownout",
            json!({"paths": ["/search"], "retry_after": 30}),
        );
        p.validate(&deny).unwrap();
        p.validate(&brown).unwrap();
        assert_ne!(p.state_key(&deny), p.state_key(&brown));

        let before_deny = p.snapshot(&deny).await.unwrap();
        assert_eq!(before_deny["present"], false);
        assert_eq!(p.plan(&deny, &before_deny).unwrap()["present"], true);
        let after = p.apply(&deny).await.unwrap();
        assert_eq!(after, p.snapshot(&deny).await.unwrap());
        let before_brown = p.snapshot(&brown).await.unwrap();
        p.apply(&brown).await.unwrap();
        // The deny's snapshot is untouched by the other hotfix: no drift.
        assert_eq!(p.snapshot(&deny).await.unwrap(), after);

        let text = fs::read_to_string(&p.config.include).unwrap();
        assert!(text.contains("deny 10.0.0.0/8;"), "{text}");
        assert!(text.contains("return 503;"), "{text}");

        p.revert(&deny, &before_deny).await.unwrap();
        let text = fs::read_to_string(&p.config.include).unwrap();
        assert!(!text.contains("deny 10.0.0.0/8;"), "{text}");
        assert!(text.contains("return 503;"), "{text}");
        // Idempotent.
        p.revert(&deny, &before_deny).await.unwrap();
        p.revert(&brown, &before_brown).await.unwrap();
        let parsed = parse_include(&fs::read_to_string(&p.config.include).unwrap()).unwrap();
        assert!(parsed.include.entries.is_empty());
    }

    #[tokio::test]
    async fn a_failed_test_restores_the_previous_include_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(
            &dir,
            "echo 'nginx: [emerg] unexpected \"}\" in hotfixes.conf:9' >&2; exit 1",
        );
        fs::write(&p.config.include, "").unwrap();
        let err = p
            .apply(&spec("nginx.deny", json!({"cidrs": ["192.0.2.0/24"]})))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unexpected \"}\""), "{msg}");
        assert!(msg.contains("restored"), "{msg}");
        assert_eq!(fs::read(&p.config.include).unwrap(), b"");
    }

    #[tokio::test]
    async fn injection_attempts_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir, "true");
        for (op, params) in [
            (
                "nginx.deny",
                json!({"cidrs": ["10.0.0.0/8; } server { listen 81; "]}),
            ),
            ("nginx.deny", json!({"cidrs": ["10.0.0.0/8\nallow all"]})),
            ("nginx.deny", json!({"cidrs": ["all"]})),
            ("nginx.deny", json!({"cidrs": "10.0.0.0/8"})),
            ("nginx.deny", json!({"cidrs": ["10.0.0.0/8"], "raw": "x"})),
            (
                "nginx.brownout",
                json!({"paths": ["/a\") { return 200; } #"]}),
            ),
            ("nginx.brownout", json!({"paths": ["/a\nreturn 200;"]})),
            ("nginx.brownout", json!({"paths": ["/a'"]})),
            ("nginx.brownout", json!({"paths": ["/$host"]})),
            ("nginx.brownout", json!({"paths": ["/{a}"]})),
            ("nginx.brownout", json!({"paths": ["/a"], "status": 200})),
            (
                "nginx.brownout",
                json!({"paths": ["/a"], "status": "503; }"}),
            ),
            (
                "nginx.brownout",
                json!({"paths": ["/a"], "retry_after": -1}),
            ),
            (
                "nginx.brownout",
                json!({"paths": ["/a"], "retry_after": "1; }"}),
            ),
            ("nginx.purge", json!({})),
        ] {
            let a = spec(op, params.clone());
            assert!(
                matches!(p.validate(&a), Err(ProviderError::Invalid(_))),
                "{op} {params} was accepted"
            );
        }
        assert!(!p.config.include.exists());
    }

    #[tokio::test]
    async fn a_file_the_agent_did_not_write_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir, "true");
        fs::write(&p.config.include, "deny 10.0.0.1;\n").unwrap();
        let a = spec("nginx.deny", json!({"cidrs": ["10.0.0.0/8"]}));
        assert!(matches!(
            p.snapshot(&a).await,
            Err(ProviderError::Failed(_))
        ));
        assert!(p.apply(&a).await.is_err());
        assert_eq!(
            fs::read_to_string(&p.config.include).unwrap(),
            "deny 10.0.0.1;\n"
        );
    }

    #[tokio::test]
    async fn a_hand_edit_reads_as_not_in_force_and_apply_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir, "true");
        let a = spec("nginx.deny", json!({"cidrs": ["10.0.0.0/8"]}));
        let after = p.apply(&a).await.unwrap();
        let text = fs::read_to_string(&p.config.include).unwrap();
        fs::write(&p.config.include, text.replace("deny 10.0.0.0/8;\n", "")).unwrap();
        assert_eq!(p.snapshot(&a).await.unwrap()["present"], false);
        p.apply(&a).await.unwrap();
        assert_eq!(p.snapshot(&a).await.unwrap(), after);
    }
}
