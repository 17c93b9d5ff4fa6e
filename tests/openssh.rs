//! Interoperability with stock OpenSSH: signatures made by `ssh-keygen -Y
//! sign` are accepted, `--key FILE.pub` signs through a real `ssh-agent`,
//! co-signing meets a two-person rule, and `ssh-keygen -Y verify` checks the
//! agent's receipts.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tourniquet::command::envelope::{COMMAND_PAYLOAD_TYPE, RECEIPT_PAYLOAD_TYPE};
use tourniquet_e2e::*;

fn require_openssh() {
    require_tool("ssh-keygen", "apt-get install openssh-client");
}

fn require_ssh_agent() {
    require_tool("ssh-agent", "apt-get install openssh-client");
    require_tool("ssh-add", "apt-get install openssh-client");
}

/// Runs `program ARGS` in the test dir with extra environment variables
/// and, optionally, bytes on stdin.
fn run_in(
    env: &Env,
    program: &OsStr,
    args: &[&str],
    envs: &[(&str, &OsStr)],
    stdin: Option<&[u8]>,
) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(env.dir.path())
        .env_remove("TOURNIQUET_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program:?}: {e}"));
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(bytes).expect("write stdin");
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait {program:?}: {e}"))
}

/// The tourniquet CLI; returns the raw output (stdout may be binary).
fn tq(env: &Env, args: &[&str]) -> Output {
    run_in(env, bin().as_os_str(), args, &[], None)
}

fn tq_env(env: &Env, args: &[&str], envs: &[(&str, &OsStr)]) -> Output {
    run_in(env, bin().as_os_str(), args, envs, None)
}

fn ssh_keygen(env: &Env, args: &[&str], stdin: Option<&[u8]>) -> Output {
    run_in(env, OsStr::new("ssh-keygen"), args, &[], stdin)
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts exit 0 and returns stdout as text.
fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn payload_id(env: &Env, file: &str) -> String {
    let v: Value =
        serde_json::from_slice(&std::fs::read(env.path(file)).expect("payload")).expect("json");
    v["id"].as_str().expect("id").to_string()
}

fn flag_state(env: &Env, flag: &str) -> String {
    let v: Value = serde_json::from_slice(&env.flags_bytes()).expect("flags json");
    v["flags"][flag]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `tourniquet new flag.set checkout-flags new_flow=VARIANT -o FILE`.
fn new_flag_set(env: &Env, variant: &str, reason: &str, file: &str) {
    ok(
        "tourniquet new",
        &tq(
            env,
            &[
                "new",
                "flag.set",
                "--resource",
                "checkout-flags",
                "--param",
                "flag=new_flow",
                "--param",
                &format!("variant={variant}"),
                "--reason",
                reason,
                "-o",
                file,
            ],
        ),
    );
}

/// `tourniquet sign FILE --pae > OUT`, byte for byte.
fn write_pae(env: &Env, file: &str, out: &str) -> Vec<u8> {
    let res = tq(env, &["sign", file, "--pae"]);
    ok("tourniquet sign --pae", &res);
    std::fs::write(env.path(out), &res.stdout).expect("write pae");
    res.stdout
}

// (a) ------------------------------------------------------------------

#[test]
fn an_envelope_signed_by_ssh_keygen_is_applied() {
    require_openssh();
    let env = Env::new();
    let agent = env.start();

    new_flag_set(&env, "off", "INC-1", "cmd.json");
    let pae = write_pae(&env, "cmd.json", "cmd.pae");
    assert!(
        pae.starts_with(
            format!(
                "DSSEv1 {} {COMMAND_PAYLOAD_TYPE} ",
                COMMAND_PAYLOAD_TYPE.len()
            )
            .as_bytes()
        ),
        "--pae is not the DSSE PAE of a command: {}",
        text(&pae)
    );
    assert!(
        pae.ends_with(&std::fs::read(env.path("cmd.json")).expect("payload")),
        "the PAE must end with the payload bytes exactly"
    );

    ok(
        "ssh-keygen -Y sign",
        &ssh_keygen(
            &env,
            &[
                "-Y",
                "sign",
                "-n",
                "tourniquet-command",
                "-f",
                "alice_ed25519",
                "cmd.pae",
            ],
            None,
        ),
    );
    assert!(env.path("cmd.pae.sig").exists(), "ssh-keygen wrote no .sig");

    ok(
        "tourniquet sign --sig",
        &tq(
            &env,
            &["sign", "cmd.json", "--sig", "cmd.pae.sig", "-o", "env.json"],
        ),
    );
    let envelope: Value =
        serde_json::from_slice(&std::fs::read(env.path("env.json")).expect("env")).expect("json");
    assert_eq!(envelope["payloadType"], json!(COMMAND_PAYLOAD_TYPE));
    assert_eq!(envelope["signatures"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        envelope["signatures"][0]["keyid"],
        json!(env.key("alice").fingerprint),
        "keyid must name alice's key"
    );

    // The envelope checks out offline too.
    ok(
        "tourniquet verify",
        &tq(&env, &["verify", "env.json", "--policy", "policy.toml"]),
    );

    assert_eq!(env.variant("new_flow"), "on");
    let sent = tq(&env, &["send", "env.json", "--to", &agent.url]);
    ok("tourniquet send", &sent);
    let id = payload_id(&env, "cmd.json");
    let rec = wait_settled(&agent, &id);
    assert_eq!(rec["state"], json!("kept"), "{rec:#}");
    assert_eq!(env.variant("new_flow"), "off");
    let signers: Vec<&str> = rec["signers"]
        .as_array()
        .expect("signers")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(signers, ["alice"], "{rec:#}");
}

#[test]
fn a_signature_in_another_namespace_is_refused() {
    require_openssh();
    let env = Env::new();
    let agent = env.start();

    new_flag_set(&env, "off", "INC-1", "cmd.json");
    write_pae(&env, "cmd.json", "cmd.pae");
    ok(
        "ssh-keygen -Y sign -n file",
        &ssh_keygen(
            &env,
            &["-Y", "sign", "-n", "file", "-f", "alice_ed25519", "cmd.pae"],
            None,
        ),
    );

    // The CLI refuses to attach it, and says what to do instead.
    let res = tq(
        &env,
        &["sign", "cmd.json", "--sig", "cmd.pae.sig", "-o", "env.json"],
    );
    let err = text(&res.stderr);
    assert_eq!(code(&res), 1, "stderr: {err}");
    assert!(
        err.contains("namespace") && err.contains("\"file\"") && err.contains("tourniquet-command"),
        "the message must name the wrong and the expected namespace: {err}"
    );
    assert!(!env.path("env.json").exists(), "no envelope may be written");

    // Built by hand, the agent refuses it as a bad signature.
    let payload = std::fs::read(env.path("cmd.json")).expect("payload");
    let armored = std::fs::read_to_string(env.path("cmd.pae.sig")).expect("sig");
    let body = serde_json::to_vec(&json!({
        "payloadType": COMMAND_PAYLOAD_TYPE,
        "payload": base64::engine::general_purpose::STANDARD.encode(&payload),
        "signatures": [{"keyid": env.key("alice").fingerprint, "sig": armored}],
    }))
    .expect("json");
    let before = env.flags_bytes();
    let (status, resp) = post_command(&agent, &body);
    assert_eq!(status, 401, "{resp:#}");
    assert_eq!(resp["reason"], json!("bad_signature"), "{resp:#}");
    assert_eq!(
        env.flags_bytes(),
        before,
        "a refused command changed the flags"
    );

    // The same bytes with the right namespace do go through: only the
    // namespace was wrong.
    std::fs::remove_file(env.path("cmd.pae.sig")).expect("rm sig");
    ok(
        "ssh-keygen -Y sign",
        &ssh_keygen(
            &env,
            &[
                "-Y",
                "sign",
                "-n",
                "tourniquet-command",
                "-f",
                "alice_ed25519",
                "cmd.pae",
            ],
            None,
        ),
    );
    let res = tq(
        &env,
        &["sign", "cmd.json", "--sig", "cmd.pae.sig", "-o", "env.json"],
    );
    ok("tourniquet sign --sig (right namespace)", &res);
}

// (b) ------------------------------------------------------------------

/// A foreground `ssh-agent` on its own socket in the test dir; killed on
/// drop.
struct SshAgent {
    child: Child,
    socket: PathBuf,
}

impl SshAgent {
    fn start(env: &Env) -> SshAgent {
        require_ssh_agent();
        let socket = env.path("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .current_dir(env.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ssh-agent");
        let mut agent = SshAgent { child, socket };
        let sock = agent.socket.clone();
        let child = &mut agent.child;
        wait_for("ssh-agent socket", Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("ssh-agent exited with {status} before listening");
            }
            sock.exists().then_some(())
        });
        agent
    }

    fn envs(&self) -> Vec<(&'static str, &OsStr)> {
        vec![("SSH_AUTH_SOCK", self.socket.as_os_str())]
    }

    fn add(&self, env: &Env, key: &str) {
        // ssh-agent creates its socket before it listens on it: a refused
        // first connection means "not yet", so retry until a deadline.
        let out = wait_for(
            "ssh-add to reach ssh-agent",
            Duration::from_secs(10),
            || {
                let out = run_in(env, OsStr::new("ssh-add"), &[key], &self.envs(), None);
                let refused =
                    !out.status.success() && text(&out.stderr).contains("Connection refused");
                (!refused).then_some(out)
            },
        );
        ok(&format!("ssh-add {key}"), &out);
        let listed = run_in(env, OsStr::new("ssh-add"), &["-l"], &self.envs(), None);
        let listed = ok("ssh-add -l", &listed);
        let fp = &env
            .keys
            .iter()
            .find(|k| k.path.ends_with(key))
            .expect("key")
            .fingerprint;
        assert!(listed.contains(fp.as_str()), "{key} not listed: {listed}");
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_pub_key_signs_through_a_running_ssh_agent() {
    require_openssh();
    let env = Env::new();
    let ssh = SshAgent::start(&env);
    ssh.add(&env, "alice_ed25519");
    let agent = env.start();

    let res = tq_env(
        &env,
        &[
            "flag",
            "set",
            "checkout-flags",
            "new_flow",
            "off",
            "--reason",
            "INC-2",
            "--key",
            "alice_ed25519.pub",
            "--send",
            &agent.url,
            "--json",
        ],
        &ssh.envs(),
    );
    let out = ok("tourniquet flag set --key alice_ed25519.pub", &res);
    assert_eq!(env.variant("new_flow"), "off");

    // The agent credits alice: the signature came from her key in ssh-agent.
    let rec: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rec["state"], json!("kept"), "{rec:#}");
    let signers: Vec<(&str, &str)> = rec["signers"]
        .as_array()
        .expect("signers")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default(),
                s["fingerprint"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        signers,
        [("alice", env.key("alice").fingerprint.as_str())],
        "{rec:#}"
    );
}

#[test]
fn a_pub_key_not_loaded_in_ssh_agent_fails_clearly() {
    require_openssh();
    let env = Env::new();
    let ssh = SshAgent::start(&env);
    ssh.add(&env, "alice_ed25519");
    let agent = env.start();
    let before = env.flags_bytes();

    // bob's key is not in the agent.
    let res = tq_env(
        &env,
        &[
            "flag",
            "set",
            "checkout-flags",
            "new_flow",
            "off",
            "--reason",
            "INC-2",
            "--key",
            "bob_ed25519.pub",
            "--send",
            &agent.url,
        ],
        &ssh.envs(),
    );
    let err = text(&res.stderr);
    assert_ne!(code(&res), 0, "signing with an unloaded key succeeded");
    assert_eq!(code(&res), 1, "stderr: {err}");
    assert!(
        err.contains("ssh-agent") && err.contains("loaded"),
        "the message must say the key is not loaded in ssh-agent: {err}"
    );

    // Without SSH_AUTH_SOCK at all, the message says so.
    let res = Command::new(bin())
        .args([
            "flag",
            "set",
            "checkout-flags",
            "new_flow",
            "off",
            "--reason",
            "INC-2",
            "--key",
            "alice_ed25519.pub",
            "-o",
            "nosock.json",
        ])
        .current_dir(env.dir.path())
        .env_remove("TOURNIQUET_KEY")
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("run tourniquet");
    let err = text(&res.stderr);
    assert_eq!(code(&res), 1, "stderr: {err}");
    assert!(err.contains("SSH_AUTH_SOCK"), "{err}");
    assert!(!env.path("nosock.json").exists());

    assert_eq!(
        env.flags_bytes(),
        before,
        "a failed signing changed the flags"
    );
}

// (c) ------------------------------------------------------------------

#[test]
fn co_signing_meets_the_two_person_rule() {
    require_openssh();
    let env = Env::new();
    let agent = env.start();

    ok(
        "tourniquet new flag.state",
        &tq(
            &env,
            &[
                "new",
                "flag.state",
                "--resource",
                "locked-flags",
                "--param",
                "flag=new_flow",
                "--param",
                "state=DISABLED",
                "--reason",
                "x",
                "-o",
                "p.json",
            ],
        ),
    );
    ok(
        "tourniquet sign --key alice",
        &tq(
            &env,
            &["sign", "p.json", "--key", "alice_ed25519", "-o", "e.json"],
        ),
    );
    std::fs::copy(env.path("e.json"), env.path("e1.json")).expect("copy");

    // One signature is not enough.
    let res = tq(&env, &["verify", "e1.json", "--policy", "policy.toml"]);
    let out = format!("{}{}", text(&res.stdout), text(&res.stderr));
    assert_eq!(code(&res), 2, "{out}");
    assert!(out.contains("quorum_not_met"), "{out}");

    let res = tq(&env, &["send", "e.json", "--to", &agent.url]);
    let err = text(&res.stderr);
    assert_eq!(code(&res), 2, "stderr: {err}");
    assert!(
        err.contains("403") && err.contains("quorum_not_met"),
        "{err}"
    );
    assert_eq!(flag_state(&env, "new_flow"), "ENABLED");

    // Co-sign in place: bob adds his signature to the same envelope.
    let res = tq(&env, &["sign", "e.json", "--key", "bob_ed25519"]);
    ok("tourniquet sign e.json --key bob", &res);
    let e: Value =
        serde_json::from_slice(&std::fs::read(env.path("e.json")).expect("e.json")).expect("json");
    let keyids: Vec<&str> = e["signatures"]
        .as_array()
        .expect("signatures")
        .iter()
        .filter_map(|s| s["keyid"].as_str())
        .collect();
    assert_eq!(
        keyids,
        [
            env.key("alice").fingerprint.as_str(),
            env.key("bob").fingerprint.as_str()
        ],
        "co-signing must append to the envelope in place"
    );
    let e1: Value =
        serde_json::from_slice(&std::fs::read(env.path("e1.json")).expect("e1")).expect("json");
    assert_eq!(
        e["payload"], e1["payload"],
        "co-signing changed the payload"
    );

    let res = tq(&env, &["verify", "e.json", "--policy", "policy.toml"]);
    let out = ok("tourniquet verify (co-signed)", &res);
    assert!(out.contains("alice") && out.contains("bob"), "{out}");

    let res = tq(&env, &["send", "e.json", "--to", &agent.url]);
    ok("tourniquet send (co-signed)", &res);
    let rec = wait_settled(&agent, &payload_id(&env, "p.json"));
    assert_eq!(rec["state"], json!("kept"), "{rec:#}");
    assert_eq!(flag_state(&env, "new_flow"), "DISABLED");

    // Signing twice with the same key does not make a quorum.
    ok(
        "tourniquet sign e1.json --key alice (again)",
        &tq(&env, &["sign", "e1.json", "--key", "alice_ed25519"]),
    );
    let res = tq(&env, &["verify", "e1.json", "--policy", "policy.toml"]);
    assert_eq!(
        code(&res),
        2,
        "two signatures by one key passed the two-person rule: {}",
        text(&res.stdout)
    );
}

// (d) ------------------------------------------------------------------

#[test]
fn ssh_keygen_verifies_a_receipt() {
    require_openssh();
    let env = Env::new();
    let agent = env.start();

    let (s, identity) = get_json(&agent, "/v1/identity");
    assert_eq!(s, 200, "{identity:#}");
    let agent_key = identity["public_key"]
        .as_str()
        .expect("public_key")
        .to_string();
    assert!(agent_key.starts_with("ssh-ed25519 "), "{agent_key}");

    let (s, resp) = post_command(
        &agent,
        &sign(&payload(set_new_flow("off")), &[env.key("alice")]),
    );
    assert_eq!(s, 202, "{resp:#}");
    let id = resp["id"].as_str().expect("id").to_string();
    let rec = wait_settled(&agent, &id);
    assert_eq!(rec["state"], json!("kept"), "{rec:#}");
    let receipt = &rec["receipt"];
    assert_eq!(
        receipt["payloadType"],
        json!(RECEIPT_PAYLOAD_TYPE),
        "{rec:#}"
    );

    // The API shows the receipt stored in the state dir.
    let stored_name = rec["receipts"]
        .as_array()
        .and_then(|r| r.last())
        .and_then(Value::as_str)
        .expect("receipt name");
    let stored: Value = tourniquet::lifecycle::store::read_receipt(&env.path("state"), stored_name)
        .expect("stored receipt");
    assert_eq!(&stored, receipt);

    std::fs::write(
        env.path("receipt.json"),
        serde_json::to_vec_pretty(receipt).expect("json"),
    )
    .expect("write receipt");
    let pae = write_pae(&env, "receipt.json", "receipt.pae");
    assert!(pae.starts_with(
        format!(
            "DSSEv1 {} {RECEIPT_PAYLOAD_TYPE} ",
            RECEIPT_PAYLOAD_TYPE.len()
        )
        .as_bytes()
    ));
    let armored = ok(
        "tourniquet sign --export-sig 0",
        &tq(&env, &["sign", "receipt.json", "--export-sig", "0"]),
    );
    assert!(
        armored.starts_with("-----BEGIN SSH SIGNATURE-----"),
        "{armored}"
    );
    std::fs::write(env.path("receipt.sig"), &armored).expect("write sig");
    std::fs::write(
        env.path("allowed_signers"),
        format!("agent@tourniquet namespaces=\"tourniquet-receipt\" {agent_key}\n"),
    )
    .expect("allowed_signers");

    let verify = |pae: &[u8]| {
        ssh_keygen(
            &env,
            &[
                "-Y",
                "verify",
                "-f",
                "allowed_signers",
                "-I",
                "agent@tourniquet",
                "-n",
                "tourniquet-receipt",
                "-s",
                "receipt.sig",
            ],
            Some(pae),
        )
    };
    let good = verify(&pae);
    let out = ok("ssh-keygen -Y verify", &good);
    assert!(
        out.contains("Good \"tourniquet-receipt\" signature"),
        "{out}"
    );

    // One flipped byte and stock ssh-keygen says no.
    let mut tampered = pae.clone();
    let i = tampered.len() - 10;
    tampered[i] ^= 0x01;
    let bad = verify(&tampered);
    assert_ne!(
        code(&bad),
        0,
        "ssh-keygen accepted a tampered receipt: {}",
        text(&bad.stdout)
    );

    // A receipt signature is not a command signature: the namespace binds.
    let wrong_ns = ssh_keygen(
        &env,
        &[
            "-Y",
            "verify",
            "-f",
            "allowed_signers",
            "-I",
            "agent@tourniquet",
            "-n",
            "tourniquet-command",
            "-s",
            "receipt.sig",
        ],
        Some(&pae),
    );
    assert_ne!(code(&wrong_ns), 0, "verified under the command namespace");

    // And tourniquet's own offline check agrees.
    let res = tq(&env, &["verify", "receipt.json", "--agent-key", &agent_key]);
    let out = ok("tourniquet verify --agent-key", &res);
    assert!(out.contains("receipt ok") && out.contains(&id), "{out}");

    // … with the key given as a .pub file too.
    std::fs::write(env.path("agent.pub"), format!("{agent_key}\n")).expect("agent.pub");
    ok(
        "tourniquet verify --agent-key agent.pub",
        &tq(
            &env,
            &["verify", "receipt.json", "--agent-key", "agent.pub"],
        ),
    );

    // A tampered receipt, or another key, is invalid (exit 5).
    let mut forged = receipt.clone();
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = text(
        &b64.decode(forged["payload"].as_str().expect("payload"))
            .expect("b64"),
    );
    assert!(body.contains("\"kept\""), "{body}");
    forged["payload"] = json!(b64.encode(body.replacen("\"kept\"", "\"keps\"", 1)));
    std::fs::write(
        env.path("forged.json"),
        serde_json::to_vec_pretty(&forged).expect("json"),
    )
    .expect("forged");
    let res = tq(&env, &["verify", "forged.json", "--agent-key", &agent_key]);
    assert_eq!(code(&res), 5, "stderr: {}", text(&res.stderr));
    let res = tq(
        &env,
        &[
            "verify",
            "receipt.json",
            "--agent-key",
            &env.key("alice").public,
        ],
    );
    assert_eq!(code(&res), 5, "stderr: {}", text(&res.stderr));
}
