//! An AWS emulator for the AWS providers' e2e tests: `moto_server` from the
//! project's `.venv` (scripts/setup-aws installs it), started per test on an
//! ephemeral loopback port and stopped on drop, and boto3 from the same
//! venv as a second, independent client to seed resources and read state
//! back.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::{http_get_status, wait_for};

/// The fake credentials every test uses; the emulator checks none.
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_SESSION_TOKEN", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
    (
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/aws-credentials",
    ),
];

/// The region resources are created in.
pub const REGION: &str = "us-east-1";

/// A program in the project's `.venv/bin`.
pub fn venv_bin(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(".venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup (it creates .venv with moto[server] and boto3)",
        path.display()
    );
    path
}

/// A running `moto_server`. Killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Starts `moto_server -p 0` and waits until `GET /moto-api/` answers.
    pub fn start() -> Moto {
        let mut child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moto_server");
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut seen = Vec::new();
        let port = wait_for(
            "moto_server to print its port",
            Duration::from_secs(60),
            || {
                while let Ok(line) = rx.try_recv() {
                    if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1) {
                        return rest.trim().parse::<u16>().ok();
                    }
                    seen.push(line);
                }
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("moto_server exited with {status}:\n{}", seen.join("\n"));
                }
                None
            },
        );
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
        let moto = Moto { child, port };
        let api = format!("{}/moto-api/", moto.url());
        wait_for("moto_server to answer", Duration::from_secs(30), || {
            http_get_status(&api).filter(|s| *s == 200)
        });
        moto
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the emulator now (a test of AWS going away).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs a boto3 script against this emulator; see [`boto3`].
    pub fn boto3(&self, script: &str) -> Value {
        boto3(&self.url(), script)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `script` in the venv's python with boto3 pointed at `endpoint`.
/// The script has `c(service)` for a client and `out(value)` to return
/// JSON; it fails the test if it raises.
pub fn boto3(endpoint: &str, script: &str) -> Value {
    let prelude = r#"
import io, json, os, sys, zipfile
import boto3
E = os.environ["MOTO_ENDPOINT"]
def c(service):
    return boto3.client(service, endpoint_url=E, region_name=os.environ["AWS_DEFAULT_REGION"])
def out(value):
    print(json.dumps(value, default=str))
def zip_bytes():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n    return 'ok'\n")
    return buf.getvalue()
"#;
    let mut child = Command::new(venv_bin("python"))
        .args(["-"])
        .env("MOTO_ENDPOINT", endpoint)
        .env("AWS_DEFAULT_REGION", REGION)
        .envs(AWS_ENV.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{prelude}\n{script}\n").as_bytes())
        .expect("write script");
    let out = child.wait_with_output().expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "boto3 script failed:\n{script}\n{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}

/// The common client fields of an AWS resource block, pointed at
/// `endpoint` with timeouts short enough for tests.
pub fn client_fields(endpoint: &str) -> String {
    format!(
        "region = \"{REGION}\"\nendpoint_url = \"{endpoint}\"\nconnect_timeout = \"2s\"\nattempt_timeout = \"5s\"\noperation_timeout = \"20s\"\nmax_attempts = 4\n"
    )
}
