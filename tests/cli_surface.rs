//! The CLI's surface as an operator meets it: one `--to` for every
//! destination (and `TOURNIQUET_TO` as its default), one-line errors with
//! a hint, exit 64 for usage errors, completions and manual pages, and a
//! quiet end when the reader of stdout goes away.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tourniquet_e2e::{bin, Agent, Env};

/// Runs the CLI in `dir` with `envs`, with no destination or key from the
/// environment of the test run itself.
fn cli(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("TOURNIQUET_TO")
        .env_remove("TOURNIQUET_KEY")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run tourniquet")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `(exit code, stdout, stderr)`, with a readable failure message.
fn run(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = cli(dir, args, envs);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// The embedded demo agent on a free port, in a fresh directory whose
/// `.tourniquet/operator_ed25519` is the dev key the CLI signs with.
fn demo_agent() -> (tempfile::TempDir, Agent) {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{}", closed_port());
    let agent = Agent::spawn(dir.path(), &["agent", "--listen", &addr], &[]);
    (dir, agent)
}

fn variant(dir: &Path, flag: &str) -> String {
    let flags: Value =
        serde_json::from_slice(&std::fs::read(dir.join(".tourniquet/flags.json")).expect("flags"))
            .expect("flags json");
    flags["flags"][flag]["defaultVariant"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn to_names_the_agent_for_send_status_and_revert_and_tourniquet_to_is_its_default() {
    let (dir, agent) = demo_agent();
    let d = dir.path();
    let url = agent.url.as_str();

    // -o composes and signs without sending, even with TOURNIQUET_TO set.
    let (code, _, err) = run(
        d,
        &[
            "flag",
            "set",
            "demo-flags",
            "new_checkout",
            "off",
            "--reason",
            "INC-1: checkout 500s",
            "--hold",
            "10m",
            "-o",
            "cmd.json",
        ],
        &[("TOURNIQUET_TO", url)],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(variant(d, "new_checkout"), "on", "-o must not send");

    // send --to: the agent applies it.
    let (code, out, err) = run(d, &["send", "cmd.json", "--to", url, "--json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).expect("send --json");
    let id = answer["id"].as_str().expect("id").to_string();
    assert_eq!(variant(d, "new_checkout"), "off");

    // status ID --to, and status with TOURNIQUET_TO (the agent is not on
    // the default port, so only the variable can have named it).
    let (code, out, err) = run(d, &["status", &id, "--to", url], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("new_checkout: on → off"), "{out}");
    let (code, out, err) = run(d, &["status"], &[("TOURNIQUET_TO", url)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
    // The old name still works.
    let (code, _, err) = run(d, &["status", &id, "--agent", url], &[]);
    assert_eq!(code, 0, "{err}");

    // revert --to undoes it.
    let (code, out, err) = run(
        d,
        &["revert", &id, "--reason", "INC-1 resolved", "--to", url],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(variant(d, "new_checkout"), "on");

    // An op verb with only TOURNIQUET_TO sends (and waits for the receipt).
    let (code, out, err) = run(
        d,
        &[
            "flag",
            "set",
            "demo-flags",
            "new_checkout",
            "off",
            "--reason",
            "INC-2",
        ],
        &[("TOURNIQUET_TO", url)],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("decision:  accepted"), "{out}");
    assert_eq!(variant(d, "new_checkout"), "off");
}

#[test]
fn an_unreachable_agent_is_one_line_with_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}", closed_port());
    let expected = format!(
        "tourniquet: no agent answers at {url} (connection refused): is 'tourniquet agent' running there?\n"
    );
    let (code, out, err) = run(dir.path(), &["status", "--to", &url], &[]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", expected.as_str())
    );

    // Sending: the same line, after signing with a real key.
    let key = dir.path().join("ci.key");
    let key = key.to_str().expect("utf-8 path");
    let (code, _, err) = run(dir.path(), &["keygen", "--out", key], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        dir.path(),
        &[
            "flag",
            "set",
            "demo-flags",
            "f",
            "off",
            "--reason",
            "r",
            "--to",
            &url,
        ],
        &[("TOURNIQUET_KEY", key)],
    );
    assert_eq!((code, err.as_str()), (1, expected.as_str()));

    // An unreadable key says how to get one.
    let (code, _, err) = run(
        dir.path(),
        &[
            "flag",
            "set",
            "demo-flags",
            "f",
            "off",
            "--reason",
            "r",
            "--key",
            "nope.key",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("nope.key")
            && err.contains("tourniquet keygen")
            && err.contains("TOURNIQUET_KEY"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let compose = |extra: &[&str]| {
        let mut args = vec!["flag", "set", "demo-flags", "f", "off"];
        args.extend_from_slice(extra);
        run(d, &args, &[])
    };
    for (what, (code, _, err)) in [
        ("unknown flag", run(d, &["status", "--bogus"], &[])),
        ("unknown command", run(d, &["bogus"], &[])),
        ("missing --reason", compose(&[])),
        (
            "bad duration",
            compose(&["--reason", "r", "--hold", "banana"]),
        ),
        (
            "bad destination",
            compose(&["--reason", "r", "--to", "ftp://x"]),
        ),
        ("bad id", run(d, &["revert", "nope", "--reason", "r"], &[])),
        (
            "send without a destination",
            run(d, &["send", "cmd.json"], &[]),
        ),
    ] {
        assert_eq!(code, 64, "{what}: {err}");
    }
    for args in [&["--help"][..], &["--version"], &["status", "--help"]] {
        let (code, out, err) = run(d, args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!out.is_empty(), "{args:?}");
    }
    let (_, out, _) = run(d, &["--help"], &[]);
    assert!(out.contains("64 usage"), "{out}");
}

#[test]
fn completions_and_manual_pages_come_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (code, out, err) = run(d, &["completions", "bash"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("flag"), "bash completion names no `flag`");
    assert!(out.contains("--to"), "bash completion names no `--to`");
    for shell in ["zsh", "fish"] {
        let (code, out, err) = run(d, &["completions", shell], &[]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains("tourniquet"), "{shell}");
    }
    let (code, out, err) = run(d, &["man"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with('.'),
        "not roff: {}",
        &out[..out.len().min(80)]
    );
    assert!(
        out.lines().any(|l| l.starts_with(".TH tourniquet 1")),
        "{out}"
    );
    let (code, _, err) = run(d, &["man", "--dir", "man1"], &[]);
    assert_eq!(code, 0, "{err}");
    for page in ["tourniquet.1", "tourniquet-send.1", "tourniquet-flag-set.1"] {
        assert!(d.join("man1").join(page).is_file(), "{page} missing");
    }
}

/// Runs `args` with stdout a pipe whose read end is already closed: the
/// first write fails with EPIPE, as under `| head` once head is done.
fn with_closed_stdout(args: &[&str]) -> Output {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors, which are then owned here.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let dir = tempfile::tempdir().expect("tempdir");
    Command::new(bin())
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("run tourniquet")
}

#[test]
fn a_closed_pipe_ends_quietly() {
    // `ops` prints with println!, `completions` writes its script whole.
    for args in [&["ops"][..], &["completions", "bash"], &["--help"]] {
        let out = with_closed_stdout(args);
        assert_eq!(
            (out.status.code(), text(&out.stderr)),
            (Some(0), String::new()),
            "{args:?}"
        );
    }
    // And through a real shell pipeline, as an operator types it.
    let out = Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            &format!("'{}' ops | head -n 1", bin().display()),
        ])
        .output()
        .expect("bash");
    assert_eq!(
        (out.status.code(), text(&out.stderr)),
        (Some(0), String::new())
    );
    assert_eq!(text(&out.stdout).lines().count(), 1);
}

#[test]
fn missing_aws_credentials_name_the_chain_that_was_tried() {
    let env = Env::new();
    env.write_config(&format!(
        "{}\n[resources.web-asg]\nkind = \"aws-autoscaling\"\ngroup = \"web\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{}\"\n",
        env.default_config(),
        closed_port()
    ));
    env.write_policy(&env.default_policy().replace(
        "ops = [\"flag.*\", \"revert\"]",
        "ops = [\"flag.*\", \"asg.*\", \"revert\"]",
    ));
    // No credentials anywhere the SDK looks, and no instance metadata.
    let agent = env.start_with(&[
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_SESSION_TOKEN", ""),
        ("AWS_PROFILE", ""),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        ),
    ]);
    let key = env.key("alice").path.to_str().expect("utf-8").to_string();
    let (code, out, err) = run(
        env.dir.path(),
        &[
            "asg", "cap", "web-asg", "--max", "4", "--reason", "INC-3", "--key", &key, "--to",
            &agent.url,
        ],
        &[],
    );
    assert_eq!(code, 3, "{out}{err}");
    let line = err.lines().last().unwrap_or_default();
    assert!(line.contains("no AWS credentials"), "{line}");
    assert!(
        line.contains("Environment")
            && line.contains("Profile")
            && line.contains("Ec2InstanceMetadata"),
        "{line}"
    );
    assert!(
        !line.contains("gave up after"),
        "credentials are not retried: {line}"
    );
}
