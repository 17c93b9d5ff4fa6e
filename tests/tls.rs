//! The API over TLS and mTLS (rustls), with certificates made at test time,
//! and the refusal to serve plain HTTP on a non-loopback address.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tourniquet_e2e::*;

/// A CA and the certificates it issued, written as PEM files in the test
/// dir: `ca.pem`, `server.pem`/`server-key.pem`, `client.pem`/`client-key.pem`.
struct Pki {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(env: &Env, prefix: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("tourniquet test CA {prefix}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = params.self_signed(&ca_key).expect("ca cert");
        std::fs::write(env.path(&format!("{prefix}ca.pem")), ca_cert.pem()).expect("ca.pem");
        Pki { ca_cert, ca_key }
    }

    /// Issues a leaf certificate and writes `NAME.pem` and `NAME-key.pem`.
    fn issue(&self, env: &Env, name: &str, sans: &[&str], eku: ExtendedKeyUsagePurpose) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign leaf");
        std::fs::write(env.path(&format!("{name}.pem")), cert.pem()).expect("cert pem");
        std::fs::write(env.path(&format!("{name}-key.pem")), key.serialize_pem()).expect("key pem");
    }
}

/// The standard PKI: CA, a server cert for 127.0.0.1/localhost, a client cert.
fn pki(env: &Env) -> Pki {
    let pki = Pki::new(env, "");
    pki.issue(
        env,
        "server",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    pki.issue(
        env,
        "client",
        &["operator.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    pki
}

/// The default config with `[api]` replaced.
fn config_with_api(env: &Env, api: &str) -> String {
    let cfg = env.default_config();
    let old = "[api]\nlisten = \"127.0.0.1:0\"\n";
    assert!(cfg.contains(old), "the harness config changed: {cfg}");
    cfg.replacen(old, &format!("[api]\n{api}\n"), 1)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A reqwest client trusting `ca.pem`, optionally presenting a client cert.
fn client(env: &Env, identity: Option<&str>) -> reqwest::Client {
    let ca = std::fs::read(env.path("ca.pem")).expect("ca.pem");
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca cert"));
    if let Some(name) = identity {
        let mut pem = std::fs::read(env.path(&format!("{name}.pem"))).expect("cert");
        pem.extend(std::fs::read(env.path(&format!("{name}-key.pem"))).expect("key"));
        b = b.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    b.build().expect("client")
}

/// GET URL; Ok(status) or the error chain as text.
fn get(rt: &tokio::runtime::Runtime, c: &reqwest::Client, url: &str) -> Result<u16, String> {
    rt.block_on(async {
        let resp = c
            .get(url)
            .send()
            .await
            .map_err(|e| tourniquet::telemetry::error_chain(&e))?;
        let status = resp.status().as_u16();
        // Reading the body surfaces an alert the server sends after the
        // handshake (TLS 1.3 client-auth failures arrive that way).
        resp.bytes()
            .await
            .map_err(|e| tourniquet::telemetry::error_chain(&e))?;
        Ok(status)
    })
}

/// Waits until `GET /healthz` answers 200 over TLS with this client.
fn wait_ready(rt: &tokio::runtime::Runtime, c: &reqwest::Client, url: &str) {
    let health = format!("{url}/healthz");
    wait_for(
        &format!("{health} to answer 200 over TLS"),
        Duration::from_secs(20),
        || matches!(get(rt, c, &health), Ok(200)).then_some(()),
    );
}

fn flag_set(env: &Env, variant: &str, url: &str, conn: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "flag",
        "set",
        "checkout-flags",
        "new_flow",
        variant,
        "--reason",
        "INC-7: checkout 500s",
        "--key",
        "alice_ed25519",
        "--send",
        url,
    ];
    args.extend_from_slice(conn);
    env.cli(&args)
}

#[test]
fn the_cli_sends_over_tls_and_trusts_only_the_given_ca() {
    let env = Env::new();
    pki(&env);
    env.write_config(&config_with_api(
        &env,
        "listen = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"",
    ));
    let agent = env.start();
    assert!(agent.url.starts_with("https://127.0.0.1:"), "{}", agent.url);
    let rt = runtime();
    wait_ready(&rt, &client(&env, None), &agent.url);

    // Without --cacert the agent's certificate is not trusted.
    let (code, out, err) = flag_set(&env, "off", &agent.url, &[]);
    assert_ne!(
        code, 0,
        "an untrusted certificate was accepted:\n{out}\n{err}"
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the error must say the certificate is not trusted: {err}"
    );
    assert_eq!(env.variant("new_flow"), "on");

    // Plain HTTP to the TLS port gets no answer.
    let plain = agent.url.replacen("https://", "http://", 1);
    assert_ne!(
        http_get_status(&format!("{plain}/healthz")),
        Some(200),
        "the TLS port answered plain HTTP"
    );

    // With it, the command goes through and the receipt comes back.
    let (code, out, err) = flag_set(&env, "off", &agent.url, &["--cacert", "ca.pem"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(env.variant("new_flow"), "off");

    // `status` speaks TLS too.
    let (code, out, err) = env.cli(&["status", "--agent", &agent.url, "--cacert", "ca.pem"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("new_flow"), "{out}");
}

#[test]
fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let env = Env::new();
    pki(&env);
    // A second CA whose client certificate the agent must not accept.
    let rogue = Pki::new(&env, "rogue-");
    rogue.issue(
        &env,
        "rogue-client",
        &["mallory.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    env.write_config(&config_with_api(
        &env,
        "listen = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\nclient_ca = \"ca.pem\"",
    ));
    let agent = env.start();
    assert!(agent.url.starts_with("https://"), "{}", agent.url);
    let rt = runtime();
    wait_ready(&rt, &client(&env, Some("client")), &agent.url);
    let health = format!("{}/healthz", agent.url);

    // No client certificate: refused.
    let res = get(&rt, &client(&env, None), &health);
    assert!(res.is_err(), "a client without a certificate got {res:?}");
    // A certificate from another CA: refused.
    let res = get(&rt, &client(&env, Some("rogue-client")), &health);
    assert!(
        res.is_err(),
        "a client with a rogue certificate got {res:?}"
    );

    let (code, out, err) = flag_set(&env, "off", &agent.url, &["--cacert", "ca.pem"]);
    assert_ne!(code, 0, "no client cert, yet sent:\n{out}\n{err}");
    let (code, out, err) = flag_set(
        &env,
        "off",
        &agent.url,
        &[
            "--cacert",
            "ca.pem",
            "--client-cert",
            "rogue-client.pem",
            "--client-key",
            "rogue-client-key.pem",
        ],
    );
    assert_ne!(code, 0, "a rogue client cert was accepted:\n{out}\n{err}");
    assert_eq!(env.variant("new_flow"), "on");

    let (code, out, err) = flag_set(
        &env,
        "off",
        &agent.url,
        &[
            "--cacert",
            "ca.pem",
            "--client-cert",
            "client.pem",
            "--client-key",
            "client-key.pem",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(env.variant("new_flow"), "off");
}

/// A child process killed on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the agent, returns it and its stdout lines up to the end of its
/// banner (the `agent key:` line). Panics if it exits first.
fn spawn_banner(env: &Env) -> (Proc, Vec<String>) {
    let mut child = Command::new(bin())
        .args(["agent", "--config", "agent.toml"])
        .current_dir(env.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let end = line.trim_start().starts_with("agent key:");
                lines.push(line);
                if end {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("agent exited with {status}:\n{}", lines.join("\n"));
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("no complete banner:\n{}", lines.join("\n"));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent closed stdout:\n{}", lines.join("\n"));
            }
        }
    }
    // Keep draining so the agent never blocks on a full pipe.
    std::thread::spawn(move || for _ in rx {});
    (Proc(child), lines)
}

fn listen_port(lines: &[String], scheme: &str) -> u16 {
    let url = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("listens:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no listens line:\n{}", lines.join("\n")));
    let rest = url
        .strip_prefix(&format!("{scheme}://0.0.0.0:"))
        .unwrap_or_else(|| panic!("expected {scheme}://0.0.0.0:PORT, got {url}"));
    rest.parse().expect("port")
}

#[test]
fn a_non_loopback_listener_needs_tls_or_insecure() {
    let env = Env::new();

    // Plain HTTP on 0.0.0.0: refused at start, naming the field.
    env.write_config(&config_with_api(&env, "listen = \"0.0.0.0:0\""));
    let mut child = Command::new(bin())
        .args(["agent", "--config", "agent.toml"])
        .current_dir(env.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent kept running on 0.0.0.0 without TLS or insecure = true");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "started on 0.0.0.0 without TLS");
    assert!(err.contains("api.listen"), "{err}");
    assert!(
        err.contains("insecure"),
        "the message must name the way out: {err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listens:"),
        "it listened anyway"
    );
    let (code, _, err) = env.cli(&["agent", "--config", "agent.toml", "--check"]);
    assert_ne!(code, 0, "--check passed a non-loopback plain listener");
    assert!(err.contains("api.listen"), "{err}");

    // insecure = true: starts, and warns.
    env.write_config(&config_with_api(
        &env,
        "listen = \"0.0.0.0:0\"\ninsecure = true",
    ));
    let (child, lines) = spawn_banner(&env);
    let port = listen_port(&lines, "http");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("WARNING") && l.contains("non-loopback") && l.contains("TLS")),
        "no WARNING line in the banner:\n{}",
        lines.join("\n")
    );
    let health = format!("http://127.0.0.1:{port}/healthz");
    wait_for("healthz on 0.0.0.0", Duration::from_secs(10), || {
        http_get_status(&health).filter(|s| *s == 200)
    });
    drop(child);

    // TLS on 0.0.0.0: starts without the warning.
    pki(&env);
    env.write_config(&config_with_api(
        &env,
        "listen = \"0.0.0.0:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"",
    ));
    let (child, lines) = spawn_banner(&env);
    let port = listen_port(&lines, "https");
    assert!(
        !lines.iter().any(|l| l.starts_with("WARNING")),
        "a TLS listener warned:\n{}",
        lines.join("\n")
    );
    let rt = runtime();
    wait_ready(
        &rt,
        &client(&env, None),
        &format!("https://127.0.0.1:{port}"),
    );
    drop(child);
}
