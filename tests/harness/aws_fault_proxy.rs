//! A small HTTP proxy in front of the AWS emulator that injects the faults
//! the emulator cannot: throttling, 5xx, access denials, refused
//! connections and hangs, for chosen requests and a chosen number of times.
//!
//! Each client connection carries one request: the proxy reads it whole,
//! matches it against the rules (a substring of `METHOD PATH`, the
//! `X-Amz-Target` header or the body, so a rule can name any AWS operation
//! whatever its protocol), and either answers with the fault or forwards it
//! upstream with `Connection: close` and relays the answer.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a matching request gets instead of the emulator's answer.
#[derive(Debug, Clone)]
pub enum Fault {
    /// A canned HTTP answer.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Reads the request and never answers.
    Hang,
    /// Closes the connection without answering.
    Close,
}

impl Fault {
    /// A JSON-protocol AWS error (Secrets Manager, WAFv2, Lambda).
    pub fn json_error(status: u16, code: &str) -> Fault {
        Fault::Respond {
            status,
            headers: vec![
                ("Content-Type".into(), "application/x-amz-json-1.1".into()),
                ("x-amzn-ErrorType".into(), code.into()),
                ("x-amzn-RequestId".into(), "fault-proxy".into()),
            ],
            body: format!(
                r#"{{"__type":"{code}","message":"injected by the test's fault proxy"}}"#
            ),
        }
    }

    /// A query/XML-protocol AWS error (Auto Scaling, CloudFront).
    pub fn xml_error(status: u16, code: &str) -> Fault {
        Fault::Respond {
            status,
            headers: vec![("Content-Type".into(), "text/xml".into())],
            body: format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected by the test's fault proxy</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
            ),
        }
    }
}

struct Rule {
    needle: String,
    fault: Fault,
    /// How many more requests it catches; `None`: every one.
    left: Option<u32>,
}

#[derive(Default)]
struct Shared {
    rules: Vec<Rule>,
    /// One line per request seen: `METHOD PATH OPERATION`, and `FAULT`
    /// when a rule answered it.
    log: Vec<String>,
}

/// A running proxy. Stops on drop (hung connections are dropped too).
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port, forwarding to `upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                let accept = async {
                    loop {
                        let Ok((conn, _)) = listener.accept().await else {
                            continue;
                        };
                        let state = state.clone();
                        tokio::spawn(async move {
                            let _ = serve(conn, upstream, state).await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        FaultProxy {
            port,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers the next `times` requests containing `needle` with `fault`
    /// (`None`: all of them).
    pub fn inject(&self, needle: &str, fault: Fault, times: Option<u32>) {
        self.lock().rules.push(Rule {
            needle: needle.to_string(),
            fault,
            left: times,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// Every request seen so far, one line each.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// How many requests containing `needle` were answered with a fault.
    pub fn faults_for(&self, needle: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|l| l.ends_with(" FAULT") && l.contains(needle))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request: head and Content-Length body.
async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, body)))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn serve(
    mut conn: TcpStream,
    upstream: u16,
    shared: Arc<Mutex<Shared>>,
) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut conn).await? else {
        return Ok(());
    };
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // The operation: the JSON protocols' X-Amz-Target header, or the
    // query protocol's `Action=` form field (REST protocols: the path).
    let text = String::from_utf8_lossy(&body).into_owned();
    let target = header(&head, "x-amz-target")
        .map(str::to_string)
        .or_else(|| {
            text.split('&')
                .find(|kv| kv.starts_with("Action="))
                .map(str::to_string)
        })
        .unwrap_or_default();
    let summary = format!("{method} {path} {target}");
    let haystack = format!("{summary}\n{text}");
    let fault = {
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        let hit = s
            .rules
            .iter_mut()
            .find(|r| r.left != Some(0) && haystack.contains(&r.needle));
        let fault = hit.map(|r| {
            if let Some(n) = r.left.as_mut() {
                *n -= 1;
            }
            r.fault.clone()
        });
        s.log.push(format!(
            "{summary}{}",
            if fault.is_some() { " FAULT" } else { "" }
        ));
        fault
    };
    match fault {
        Some(Fault::Close) => Ok(()),
        Some(Fault::Hang) => {
            // Hold the connection open until the proxy stops.
            std::future::pending::<()>().await;
            Ok(())
        }
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => {
            let mut out = format!("HTTP/1.1 {status} Injected\r\n");
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ));
            conn.write_all(out.as_bytes()).await?;
            conn.shutdown().await
        }
        None => {
            let mut up = TcpStream::connect(("127.0.0.1", upstream)).await?;
            let mut forwarded = String::new();
            for line in head.trim_end().lines() {
                if line
                    .split_once(':')
                    .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
                {
                    continue;
                }
                forwarded.push_str(line);
                forwarded.push_str("\r\n");
            }
            forwarded.push_str("Connection: close\r\n\r\n");
            up.write_all(forwarded.as_bytes()).await?;
            up.write_all(&body).await?;
            let mut answer = Vec::new();
            up.read_to_end(&mut answer).await?;
            conn.write_all(&with_connection_close(&answer)).await?;
            conn.shutdown().await
        }
    }
}

/// The upstream answer with `Connection: close`, so the client never tries
/// to reuse a connection this proxy is about to close.
fn with_connection_close(answer: &[u8]) -> Vec<u8> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return answer.to_vec();
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let mut out = String::new();
    for line in head.lines() {
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&answer[end + 4..]);
    bytes
}
