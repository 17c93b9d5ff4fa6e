//! Real edge servers for `tests/edge.rs`: an nginx and a varnishd started
//! per test from configs written under the test's temp dir, on ephemeral
//! loopback ports, and stopped when dropped. The system's own nginx and
//! Varnish (their configs, services and ports) are never touched.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wait_for;

/// Finds a system tool on PATH or in the sbin directories Debian installs
/// servers to; fails (never skips) with install advice when it is missing.
pub fn find_tool(name: &str, install: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is required for this test and is not installed: {install} (scripts/setup does)")
        })
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An HTTP answer: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 request on a fresh connection, optionally from a given
/// loopback source address (bound before connecting), so a test can be
/// "another client" such as 127.0.0.2.
pub fn request(
    method: &str,
    url: &str,
    source: Option<Ipv4Addr>,
    headers: &[(&str, &str)],
) -> Option<Answer> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let addr: SocketAddr = host.parse().ok()?;
    let mut stream = match source {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?,
        Some(src) => {
            let sock = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .ok()?;
            sock.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())
                .ok()?;
            sock.connect_timeout(&addr.into(), Duration::from_secs(5))
                .ok()?;
            sock.into()
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut resp = Vec::new();
    let _ = stream.read_to_end(&mut resp);
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&resp[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: resp[end + 4..].to_vec(),
    })
}

/// GET from the default source address.
pub fn get(url: &str) -> Option<Answer> {
    request("GET", url, None, &[])
}

/// GET from `source`, e.g. 127.0.0.2.
pub fn get_from(source: Ipv4Addr, url: &str) -> Option<Answer> {
    request("GET", url, Some(source), &[])
}

/// Sends SIGTERM to a child we started, waits, then kills it.
fn stop_child(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    for _ in 0..500 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A real nginx master (daemon off, so it is our child) serving static
/// files from `DIR/www` on a loopback port, with the managed include
/// `DIR/hotfixes.conf` inside its server block.
pub struct NginxServer {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub conf: PathBuf,
    pub include: PathBuf,
    pub port: u16,
    child: Child,
}

impl NginxServer {
    pub fn start(dir: &Path) -> NginxServer {
        let binary = find_tool("nginx", "apt-get install nginx");
        let dir = dir.to_path_buf();
        for sub in ["tmp", "www/search", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).expect("nginx dirs");
        }
        for (file, body) in [
            ("www/index.html", "home\n"),
            ("www/checkout.html", "checkout\n"),
            ("www/search/index.html", "search\n"),
            ("www/search/results.html", "results\n"),
        ] {
            std::fs::write(dir.join(file), body).expect("www");
        }
        let include = dir.join("hotfixes.conf");
        std::fs::write(&include, "").expect("include");
        let port = free_port();
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                r#"worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/logs/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        include {d}/hotfixes.conf;
        root {d}/www;
    }}
}}
"#
            ),
        )
        .expect("nginx.conf");
        let child = Command::new(&binary)
            .args(["-p"])
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let server = NginxServer {
            dir,
            binary,
            conf,
            include,
            port,
            child,
        };
        let url = server.url("/");
        wait_for("nginx to serve", Duration::from_secs(20), || {
            get(&url).filter(|a| a.status == 200)
        });
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The agent-config resource for this server. Verification probes the
    /// home page and the checkout page, which must keep answering 200.
    pub fn resource_config(&self, name: &str) -> String {
        let d = self.dir.display();
        format!(
            r#"
[resources.{name}]
kind = "nginx"
include = "{d}/hotfixes.conf"
binary = "{}"
conf = "{d}/nginx.conf"
prefix = "{d}"
error_log = "{d}/logs/error.log"

[resources.{name}.verify]
url = "http://127.0.0.1:{}"
timeout = "20s"
probes = [{{ path = "/", status = 200 }}, {{ path = "/checkout.html", status = 200 }}]
"#,
            self.binary.display(),
            self.port
        )
    }

    /// Breaks the main config on disk (as an operator's unfinished edit
    /// would) without reloading it: nginx keeps serving the loaded config,
    /// but every `nginx -t` fails from now on.
    pub fn break_main_config(&self) {
        let text = std::fs::read_to_string(&self.conf).expect("conf");
        let broken = text.replacen(
            "access_log off;",
            "access_log off;\n    no_such_directive on;",
            1,
        );
        std::fs::write(&self.conf, broken).expect("conf");
    }

    pub fn include_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.include).expect("include")
    }
}

impl Drop for NginxServer {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// A real varnishd (foreground, so it is our child) in front of a
/// [`Backend`], with the VCL the varnish provider documents: URL and host
/// copied onto objects for lurker-friendly bans, and PURGE/BAN for an ACL.
pub struct VarnishServer {
    pub dir: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub secret: PathBuf,
    pub varnishadm: PathBuf,
    child: Child,
}

impl VarnishServer {
    pub fn start(dir: &Path, backend_port: u16) -> VarnishServer {
        let varnishd = find_tool("varnishd", "apt-get install varnish");
        let varnishadm = find_tool("varnishadm", "apt-get install varnish");
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).expect("varnish dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, format!("{}\n", ulid::Ulid::new())).expect("secret");
        let vcl = dir.join("default.vcl");
        std::fs::write(
            &vcl,
            format!(
                r#"vcl 4.1;
import std;

backend default {{ .host = "127.0.0.1"; .port = "{backend_port}"; }}

acl purgers {{ "127.0.0.1"; }}

sub vcl_recv {{
    if (req.method == "PURGE" || req.method == "BAN") {{
        if (client.ip !~ purgers) {{ return (synth(405)); }}
    }}
    if (req.method == "PURGE") {{ return (purge); }}
    if (req.method == "BAN" && req.http.x-ban-url) {{
        if (std.ban("obj.http.x-host == " + req.http.host + " && obj.http.x-url ~ " + req.http.x-ban-url)) {{
            return (synth(200, "Banned"));
        }}
        return (synth(400, std.ban_error()));
    }}
    if (req.method == "BAN" && req.http.x-ban-key) {{
        if (std.ban("obj.http.x-host == " + req.http.host + " && obj.http.xkey ~ " + req.http.x-ban-key)) {{
            return (synth(200, "Banned"));
        }}
        return (synth(400, std.ban_error()));
    }}
}}

sub vcl_backend_response {{
    set beresp.http.x-url = bereq.url;
    set beresp.http.x-host = bereq.http.host;
}}

sub vcl_deliver {{
    unset resp.http.x-url;
    unset resp.http.x-host;
}}
"#
            ),
        )
        .expect("vcl");
        let port = free_port();
        let admin_port = free_port();
        let child = Command::new(&varnishd)
            .arg("-F")
            .arg("-n")
            .arg(dir.join("work"))
            .arg("-a")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-T")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("-S")
            .arg(&secret)
            .arg("-f")
            .arg(&vcl)
            .args(["-s", "malloc,32m"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start varnishd");
        let server = VarnishServer {
            dir,
            port,
            admin_port,
            secret,
            varnishadm,
            child,
        };
        // Ready when it answers at all (the VCL compiles first).
        let url = server.url("/.ready");
        wait_for("varnishd to serve", Duration::from_secs(60), || get(&url));
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A `varnish` resource purging through the admin port.
    pub fn admin_resource(&self, name: &str) -> String {
        format!(
            r#"
[resources.{name}]
kind = "varnish"
admin = {{ address = "127.0.0.1:{}", secret_file = "{}", varnishadm = "{}" }}
verify = {{ url = "http://127.0.0.1:{}" }}
"#,
            self.admin_port,
            self.secret.display(),
            self.varnishadm.display(),
            self.port
        )
    }

    /// A `varnish` resource purging through the VCL's PURGE/BAN endpoint.
    pub fn http_resource(&self, name: &str) -> String {
        format!(
            r#"
[resources.{name}]
kind = "varnish"
http = {{ url = "http://127.0.0.1:{0}" }}
verify = {{ url = "http://127.0.0.1:{0}" }}
"#,
            self.port
        )
    }
}

impl Drop for VarnishServer {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// A real HTTP origin that counts the requests it serves, per path. It
/// answers every GET with a cacheable body that names the hit number.
pub struct Backend {
    pub port: u16,
    hits: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let total = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, t, s) = (hits.clone(), total.clone(), stop.clone());
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (h, t) = (h.clone(), t.clone());
                        std::thread::spawn(move || serve_backend(stream, &h, &t));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            port,
            hits,
            total,
            stop,
        }
    }

    /// How many requests for `path` reached the origin.
    pub fn hits(&self, path: &str) -> u64 {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_backend(
    mut stream: TcpStream,
    hits: &Mutex<std::collections::BTreeMap<String, u64>>,
    total: &AtomicU64,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    // Keep-alive: Varnish reuses backend connections.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(e) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break e;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let n = {
            let mut h = hits.lock().expect("hits");
            let e = h.entry(path.clone()).or_insert(0);
            *e += 1;
            *e
        };
        total.fetch_add(1, Ordering::SeqCst);
        let body = format!("{path} hit {n}\n");
        // Surrogate keys: the first path segment, and "all".
        let key = path
            .trim_start_matches('/')
            .split(['/', '?'])
            .next()
            .unwrap_or_default();
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: public, max-age=3600\r\nxkey: {key} all\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// One request a [`HttpsApi`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

type Scripted = (u16, Vec<(String, String)>, String);

/// A local HTTPS API (rustls, with a test CA made by rcgen) standing in for
/// a CDN vendor's endpoint: it records every request and answers from a
/// script, then with a default answer. `DIR/api-ca.pem` is the CA to trust.
pub struct HttpsApi {
    pub port: u16,
    pub ca_file: PathBuf,
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<std::collections::VecDeque<Scripted>>>,
    stop: Arc<AtomicBool>,
}

impl HttpsApi {
    pub fn start(dir: &Path, default_status: u16, default_body: &str) -> HttpsApi {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.distinguished_name
            .push(DnType::CommonName, "tourniquet test CDN API CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let ca_file = dir.join("api-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("ca pem");
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("leaf");
        leaf.distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_cert = leaf
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .expect("sign leaf");
        // An explicit provider: with the AWS SDK in the build, rustls has
        // both ring and aws-lc-rs and cannot pick a process default.
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind api");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, st) = (requests.clone(), script.clone(), stop.clone());
        let default: Scripted = (default_status, Vec::new(), default_body.to_string());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (r, s, c, d) = (r.clone(), s.clone(), config.clone(), default.clone());
                        std::thread::spawn(move || serve_api(stream, c, &r, &s, &d));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HttpsApi {
            port,
            ca_file,
            requests,
            script,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Queues an answer for the next request.
    pub fn push(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        self.script.lock().expect("script").push_back((
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body.to_string(),
        ));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for HttpsApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_api(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    requests: &Mutex<Vec<Recorded>>,
    script: &Mutex<std::collections::VecDeque<Scripted>>,
    default: &Scripted,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(e) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break e;
        }
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    requests.lock().expect("requests").push(Recorded {
        method,
        path,
        headers,
        body,
    });
    let (status, extra, text) = script
        .lock()
        .expect("script")
        .pop_front()
        .unwrap_or_else(|| default.clone());
    let mut resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        text.len()
    );
    for (k, v) in extra {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    resp.push_str(&text);
    let _ = tls.write_all(resp.as_bytes());
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
