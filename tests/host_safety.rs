//! Hostile neighbours on the same host, against the real binary and real
//! files. Tourniquet runs as root, so anyone who can write a managed
//! file's directory must not be able to steer its writes, and a second
//! agent must not be able to share a live agent's state dir.
//!
//! - Symlinks planted at every temp name older versions used (predictable:
//!   `.NAME.tmp.PID`, `.journal.jsonl.tmp`) and at the last-good copy
//!   point at a victim file; real changes go through and the victim stays
//!   byte-identical.
//! - A managed path that is itself a symlink is refused at `--check` and
//!   at start unless the resource says `follow_symlinks = true`.
//! - A second agent on a live state dir exits 1 naming the holder's pid,
//!   and the first agent's holds, journal and audit chain are untouched.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tourniquet_e2e::edge::NginxServer;
use tourniquet_e2e::*;

/// A file nobody asked Tourniquet to touch, and what it held.
struct Victim {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Victim {
    fn new(env: &Env) -> Victim {
        let path = env.path("victim.txt");
        let bytes = b"root:precious:do-not-touch\n".to_vec();
        fs::write(&path, &bytes).expect("victim");
        Victim { path, bytes }
    }

    /// Plants a symlink to the victim at `link`.
    fn plant(&self, link: &Path) {
        symlink(&self.path, link).unwrap_or_else(|e| panic!("planting {}: {e}", link.display()));
    }

    fn assert_untouched(&self, after: &str) {
        let now = fs::read(&self.path).expect("victim");
        assert!(
            now == self.bytes,
            "the victim was written through a planted symlink {after}; it now holds:\n{}",
            String::from_utf8_lossy(&now)
        );
    }
}

/// Temp names the agent's writers used before they were made safe:
/// `.NAME.tmp.PID`, for pids around the agent's (a neighbour can see the
/// pid, and plant for the next few restarts too).
fn old_temp_names(name: &str, pid: u32) -> Vec<String> {
    (pid.saturating_sub(3)..=pid + 3)
        .map(|p| format!(".{name}.tmp.{p}"))
        .collect()
}

/// Every planted link still a link to the victim: nothing replaced or
/// removed them, so nothing was written at those names.
fn assert_still_planted(links: &[PathBuf], victim: &Victim) {
    for l in links {
        assert_eq!(
            fs::read_link(l).ok().as_deref(),
            Some(victim.path.as_path()),
            "{} is no longer the planted link",
            l.display()
        );
    }
}

/// Runs `tourniquet ARGS` in `dir`, expecting it to exit by itself within
/// `timeout`; returns (exit code, stdout, stderr). An agent that starts
/// instead of exiting fails the test (and is killed).
fn run_to_exit(dir: &Path, args: &[&str], timeout: Duration) -> (i32, String, String) {
    let out_path = dir.join(format!("run-{}.out", ulid::Ulid::new()));
    let err_path = out_path.with_extension("err");
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn tourniquet");
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tourniquet {args:?} did not exit within {timeout:?}:\n{}\n{}",
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        fs::read_to_string(&out_path).unwrap_or_default(),
        fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// `tourniquet audit verify --state state` passes.
fn assert_audit_chain_ok(env: &Env) {
    let (code, out, err) = env.cli(&["audit", "verify", "--state", "state"]);
    assert_eq!(code, 0, "audit verify: {out}{err}");
}

/// Signs and sends `p` as alice; returns the settled record.
fn send(env: &Env, agent: &Agent, p: &Value) -> Value {
    let (status, body) = post_command(agent, &sign(p, &[env.key("alice")]));
    assert_eq!(status, 202, "{body}");
    wait_settled(agent, body["id"].as_str().expect("id"))
}

#[test]
fn symlinks_planted_at_old_temp_names_and_the_last_good_copy_are_never_followed() {
    let env = Env::new();
    let victim = Victim::new(&env);
    let mut agent = env.start();
    let pid = agent.child.id();

    // The next command's id is ours to choose, so its receipts' old temp
    // names are predictable too.
    let mut p = payload(set_new_flow("off"));
    let id = p["id"].as_str().expect("id").to_string();
    let mut links = Vec::new();
    for name in ["flags.json", ".flags.json.last-good"] {
        for t in old_temp_names(name, pid) {
            links.push(env.path(&t));
        }
    }
    let receipts = env.path("state/receipts");
    for n in 1..=3 {
        for state in ["applied", "kept", "rolled_back", "reverted", "failed"] {
            for t in old_temp_names(&format!("{id}.{n}.{state}.json"), pid) {
                links.push(receipts.join(t));
            }
        }
    }
    for l in &links {
        victim.plant(l);
    }
    // The last-good copy's own name: it must be replaced, not followed.
    let last_good = env.path(".flags.json.last-good");
    victim.plant(&last_good);

    let rec = send(&env, &agent, &p);
    assert_eq!(rec["state"], "kept", "{rec}");
    assert_eq!(env.variant("new_flow"), "off", "the flip happened");
    victim.assert_untouched("by a flag change");
    assert_still_planted(&links, &victim);
    assert!(
        !fs::symlink_metadata(&last_good)
            .expect("last-good copy")
            .file_type()
            .is_symlink(),
        "the last-good copy replaced the planted link"
    );
    assert_eq!(
        fs::read_to_string(&last_good).expect("last-good copy"),
        FLAGS,
        "the last-good copy holds the bytes before the change"
    );

    // And back, through a signed revert: every writer runs again.
    p = payload(json!([{"op": "revert", "command": id}]));
    let rec = send(&env, &agent, &p);
    assert_eq!(rec["state"], "kept", "{rec}");
    assert_eq!(env.variant("new_flow"), "on");
    victim.assert_untouched("by a revert");
    assert_still_planted(&links, &victim);

    // No temp file is left behind next to the flags file.
    let strays: Vec<String> = fs::read_dir(env.dir.path())
        .expect("test dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(strays.is_empty(), "temp files left behind: {strays:?}");
    agent.stop();
    assert_audit_chain_ok(&env);
}

#[test]
fn a_symlink_at_the_old_journal_temp_name_is_never_followed() {
    let env = Env::new();
    let victim = Victim::new(&env);
    let mut agent = env.start();
    let rec = send(&env, &agent, &payload(set_new_flow("off")));
    assert_eq!(rec["state"], "kept", "{rec}");
    agent.stop();
    // The journal now holds several lines for one command: the next start
    // compacts it, through a temp file that used to be `.journal.jsonl.tmp`.
    let planted = env.path("state/.journal.jsonl.tmp");
    victim.plant(&planted);
    let journal_before = fs::read(env.path("state/journal.jsonl")).expect("journal");
    assert!(!journal_before.is_empty());

    let mut agent = env.start();
    let (status, _) = get_json(&agent, "/healthz");
    assert_eq!(status, 200);
    victim.assert_untouched("by journal compaction at start");
    agent.stop();
    assert_audit_chain_ok(&env);
}

/// alice may push `nginx.deny` and revert it.
fn nginx_policy(env: &Env) -> String {
    format!(
        r#"version = 1
max_ttl = "30m"
clock_skew = "2m"

[keys.alice]
public_key = "{}"
roles = ["security"]

[[rules]]
ops = ["nginx.deny", "revert"]
resources = ["*"]
roles = ["security"]
threshold = 1
"#,
        env.key("alice").public
    )
}

#[test]
fn symlinks_planted_at_the_old_nginx_include_temp_names_are_never_followed() {
    let env = Env::new();
    let nginx = NginxServer::start(&env.path("nginx"));
    env.write_policy(&nginx_policy(&env));
    env.write_config(&(env.default_config() + &nginx.resource_config("edge-nginx")));
    let victim = Victim::new(&env);
    let agent = env.start();
    let links: Vec<PathBuf> = old_temp_names("hotfixes.conf", agent.child.id())
        .into_iter()
        .map(|t| nginx.dir.join(t))
        .collect();
    for l in &links {
        victim.plant(l);
    }

    let deny = payload(json!([
        {"resource": "edge-nginx", "op": "nginx.deny", "cidrs": ["192.0.2.0/24"]}
    ]));
    let id = deny["id"].as_str().expect("id").to_string();
    let rec = send(&env, &agent, &deny);
    assert_eq!(rec["state"], "kept", "{rec}");
    let include = String::from_utf8(nginx.include_bytes()).expect("utf-8 include");
    assert!(include.contains("deny 192.0.2.0/24;"), "{include}");
    victim.assert_untouched("by an nginx include change");

    let rec = send(
        &env,
        &agent,
        &payload(json!([{"op": "revert", "command": id}])),
    );
    assert_eq!(rec["state"], "kept", "{rec}");
    let include = String::from_utf8(nginx.include_bytes()).expect("utf-8 include");
    assert!(!include.contains("192.0.2.0/24"), "{include}");
    victim.assert_untouched("by an nginx revert");
    assert_still_planted(&links, &victim);
}

/// The flags file moved into `releases/` with `flags.json` a symlink to
/// it, as a deploy tool might leave it.
fn symlinked_flags(env: &Env) -> PathBuf {
    let releases = env.path("releases");
    fs::create_dir(&releases).expect("releases dir");
    let real = releases.join("flags.json");
    fs::rename(env.path("flags.json"), &real).expect("move flags");
    symlink(&real, env.path("flags.json")).expect("flags symlink");
    real
}

#[test]
fn a_symlinked_flags_path_is_refused_unless_the_resource_follows_it() {
    let env = Env::new();
    let real = symlinked_flags(&env);
    // The path as the config resolves it, then the refusal and the fix.
    let refused = |err: &str| {
        err.lines().any(|l| {
            l.split_once("resources.checkout-flags: ").is_some_and(|(_, rest)| {
                rest.ends_with("flags.json is a symlink; Tourniquet refuses to write through it (set follow_symlinks = true to allow)")
            })
        })
    };

    let (code, out, err) = env.cli(&["agent", "--config", "agent.toml", "--check"]);
    assert_ne!(code, 0, "--check passed a symlinked flags path: {out}");
    assert!(refused(&err), "--check said: {out}{err}");

    // Start-up refuses it the same way, before touching anything.
    let (code, out, err) = run_to_exit(
        env.dir.path(),
        &["agent", "--config", "agent.toml"],
        Duration::from_secs(20),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(refused(&err), "start said: {out}{err}");
    assert!(!env.path("state/journal.jsonl").exists());

    // Allowed explicitly, on both resources that name the file.
    let config = env.default_config().replace(
        "path = \"flags.json\"\n",
        "path = \"flags.json\"\nfollow_symlinks = true\n",
    );
    assert_eq!(config.matches("follow_symlinks").count(), 2, "{config}");
    env.write_config(&config);
    let (code, out, err) = env.cli(&["agent", "--config", "agent.toml", "--check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("config ok"), "{out}");

    // The write lands in the link's target; the link stays a link.
    let agent = env.start();
    let rec = send(&env, &agent, &payload(set_new_flow("off")));
    assert_eq!(rec["state"], "kept", "{rec}");
    let doc: Value = serde_json::from_slice(&fs::read(&real).expect("target")).expect("json");
    assert_eq!(doc["flags"]["new_flow"]["defaultVariant"], "off");
    assert!(fs::symlink_metadata(env.path("flags.json"))
        .expect("link")
        .file_type()
        .is_symlink());
}

#[test]
fn a_second_agent_on_a_live_state_dir_exits_naming_the_pid_and_changes_nothing() {
    let env = Env::new();
    let first = env.start();
    let pid = first.child.id();
    let mut held = payload(set_new_flow("off"));
    held["hold"] = json!("1h");
    let id = held["id"].as_str().expect("id").to_string();
    let rec = send(&env, &first, &held);
    assert_eq!(rec["state"], "kept", "{rec}");
    assert!(rec["hold_until"].is_string(), "{rec}");
    assert_audit_chain_ok(&env);

    let snapshot = |name: &str| fs::read(env.path(&format!("state/{name}"))).expect(name);
    let journal = snapshot("journal.jsonl");
    let audit = snapshot("audit.jsonl");
    let receipts = fs::read_dir(env.path("state/receipts"))
        .expect("receipts")
        .count();

    // Same state dir, its own port (port 0 binds a fresh one).
    let second = env
        .default_config()
        .replace("dir = \"inbox\"", "dir = \"inbox2\"");
    fs::write(env.path("second.toml"), second).expect("second config");
    let (code, out, err) = run_to_exit(
        env.dir.path(),
        &["agent", "--config", "second.toml"],
        Duration::from_secs(20),
    );
    assert_eq!(code, 1, "{out}{err}");
    let expected =
        format!("is in use by another agent (pid {pid}); stop it first or use another state_dir");
    assert!(err.contains(&expected), "the second agent said: {out}{err}");
    assert!(err.contains("state dir "), "{err}");
    assert!(!out.contains("listens:"), "the second agent served: {out}");
    assert!(
        !env.path("inbox2").exists(),
        "the second agent got past the lock"
    );

    // The first agent's hold, journal, receipts and audit chain are as
    // they were, and it still serves.
    assert_eq!(snapshot("journal.jsonl"), journal);
    assert_eq!(snapshot("audit.jsonl"), audit);
    assert_eq!(
        fs::read_dir(env.path("state/receipts"))
            .expect("receipts")
            .count(),
        receipts
    );
    assert_eq!(env.variant("new_flow"), "off");
    let (status, rec) = get_json(&first, &format!("/v1/commands/{id}"));
    assert_eq!(status, 200);
    assert_eq!(rec["state"], "kept", "{rec}");
    assert!(rec["hold_until"].is_string(), "{rec}");
    assert_audit_chain_ok(&env);
    assert_eq!(
        fs::read_to_string(env.path("state/lock")).expect("lock file"),
        format!("{pid}\n")
    );

    // Once the first agent is gone the state dir is free again, and the
    // hold is still there to be kept.
    drop(first);
    let next = env.start();
    let (status, rec) = get_json(&next, &format!("/v1/commands/{id}"));
    assert_eq!(status, 200);
    assert_eq!(rec["state"], "kept", "{rec}");
    assert_eq!(env.variant("new_flow"), "off");
}
