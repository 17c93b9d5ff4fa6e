//! `tourniquet-bench`: measures the real agent binary from the outside.
//!
//! - ready: exec → first `200` from `/healthz`;
//! - apply: `POST /v1/commands` → the flags file renamed, on a warm agent
//!   without a guard (a flag flipped back and forth);
//! - idle RSS after 10 s;
//! - binary size.
//!
//! Run with `scripts/bench` (a release build). Prints medians and p99s, and
//! `--json` for scripts. These are measurements, never assertions.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tourniquet_e2e::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn pct(sorted: &[f64], p: u32) -> f64 {
    tourniquet::telemetry::percentile(sorted, p).unwrap_or(f64::NAN)
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    json!({"n": v.len(), "p50": pct(&v, 50), "p99": pct(&v, 99), "min": v[0], "max": v[v.len() - 1]})
}

fn config_on(env: &Env, port: u16) {
    env.write_config(
        &env.default_config()
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    );
}

/// exec → `/healthz` 200, polling as fast as connect allows.
fn measure_ready(env: &Env, runs: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let port = free_port();
        config_on(env, port);
        let url = format!("http://127.0.0.1:{port}/healthz");
        let start = Instant::now();
        let mut child = Command::new(bin())
            .args(["agent", "--config", "agent.toml"])
            .current_dir(env.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        loop {
            if http_get_status(&url) == Some(200) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "agent never became ready"
            );
        }
        out.push(start.elapsed().as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
    }
    out
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// POST → rename of the flags file, timed by an inotify event in a second
/// thread, so neither the response nor a polling loop distorts it.
fn measure_apply(env: &Env, agent: &Agent, runs: usize) -> (Vec<f64>, Vec<f64>) {
    use notify::{EventKind, Watcher};
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let renamed_in = matches!(
                ev.kind,
                EventKind::Modify(notify::event::ModifyKind::Name(_)) | EventKind::Create(_)
            );
            if renamed_in
                && ev
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| n == "flags.json"))
            {
                let _ = tx.send(Instant::now());
            }
        }
    })
    .expect("watcher");
    watcher
        .watch(env.dir.path(), notify::RecursiveMode::NonRecursive)
        .expect("watch");
    let mut to_rename = Vec::new();
    let mut to_response = Vec::new();
    for i in 0..runs + 10 {
        let variant = if i % 2 == 0 { "off" } else { "on" };
        let body = sign(&payload(set_new_flow(variant)), &[env.key("alice")]);
        while rx.try_recv().is_ok() {}
        let url = format!("{}/v1/commands", agent.url);
        let start = Instant::now();
        let (status, body) = http_request("POST", &url, &body).expect("response");
        let responded = start.elapsed();
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
        let renamed = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("flags file renamed")
            - start;
        let id = serde_json::from_slice::<Value>(&body).expect("json")["id"]
            .as_str()
            .expect("id")
            .to_string();
        wait_settled(agent, &id);
        if i >= 10 {
            to_rename.push(renamed.as_secs_f64() * 1000.0);
            to_response.push(responded.as_secs_f64() * 1000.0);
        }
    }
    (to_rename, to_response)
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Sampling overhead: a guarded command baking with 3 http probes at 1 s
/// intervals; the agent's CPU share and RSS while it bakes. Then early
/// abort: how long from the breaching apply to the rollback.
fn measure_guard(bake_s: u64) -> Value {
    let env = Env::new();
    let healthy = FlagAwareService::start(env.path("flags.json"), "dark_mode", "never");
    let broken = FlagAwareService::start(env.path("flags.json"), "new_flow", "off");
    let mut config = env.default_config();
    for (i, svc) in [&healthy, &healthy, &healthy].iter().enumerate() {
        config.push_str(
            &svc.probe_config(&format!("p{i}"))
                .replace("interval = \"20ms\"", "interval = \"1s\""),
        );
    }
    config.push_str(&broken.probe_config("broken"));
    env.write_config(&config);
    let agent = env.start();
    let pid = agent.child.id();
    let mut p = payload(set_new_flow("on"));
    p["guard"] =
        json!({"probes": ["p0", "p1", "p2"], "bake": format!("{bake_s}s"), "interval": "1s"});
    let (status, body) = post_command(&agent, &sign(&p, &[env.key("alice")]));
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    wait_state(&agent, &id, |r| r["state"] == "baking");
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let mut rss_max = 0;
    let rec = wait_for("bake to finish", Duration::from_secs(bake_s + 60), || {
        rss_max = rss_max.max(rss_kib(pid).0);
        let (_, v) = get_json(&agent, &format!("/v1/commands/{id}?wait=1s"));
        (v["settled"] == json!(true)).then_some(v)
    });
    let cpu = cpu_seconds(pid) - cpu0;
    let wall = t0.elapsed().as_secs_f64();

    // Early abort: new_flow=off breaks the `broken` probe's service.
    let mut p = payload(set_new_flow("off"));
    p["guard"] = json!({"probes": ["broken"], "bake": "60s", "interval": "200ms"});
    let (_, body) = post_command(&agent, &sign(&p, &[env.key("alice")]));
    let id = body["id"].as_str().expect("id").to_string();
    let rb = wait_state(&agent, &id, |r| r["settled"] == json!(true));
    let at = |state: &str| {
        rb["timeline"]
            .as_array()
            .and_then(|t| t.iter().find(|e| e["state"] == state))
            .and_then(|e| e["at"].as_str())
            .and_then(|s| humantime::parse_rfc3339(s).ok())
    };
    let abort_ms = match (at("applied"), at("rolled_back")) {
        (Some(a), Some(r)) => r
            .duration_since(a)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0),
        _ => -1.0,
    };
    json!({
        "bake_s": bake_s,
        "kept_state": rec["state"],
        "cpu_percent_while_baking": cpu / wall * 100.0,
        "rss_kib_while_baking_max": rss_max,
        "early_abort": {"state": rb["state"], "applied_to_rolled_back_ms": abort_ms, "rounds": rb["telemetry"]["rounds"].as_array().map(Vec::len)},
    })
}

fn main() {
    let json_out = std::env::args().any(|a| a == "--json");
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 50 } else { 300 };
    let env = Env::new();
    let bin_path = bin();
    eprintln!("benchmarking {}", bin_path.display());

    let ready = measure_ready(&env, if quick { 5 } else { 30 });

    let port = free_port();
    config_on(&env, port);
    let agent = env.start();
    let (rename, response) = measure_apply(&env, &agent, runs);
    drop(agent);

    // Idle: a fresh agent with an empty journal.
    let env = Env::new();
    let agent = env.start();
    let idle_wait = if quick { 2 } else { 10 };
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(idle_wait) {
        std::thread::park_timeout(Duration::from_secs(idle_wait) - settle.elapsed());
    }
    let (rss, hwm) = rss_kib(agent.child.id());
    drop(agent);

    let guard = measure_guard(if quick { 3 } else { 20 });

    let size = std::fs::metadata(&bin_path).map(|m| m.len()).unwrap_or(0);
    let report = json!({
        "binary": bin_path.display().to_string(),
        "binary_bytes": size,
        "ready_ms": summary(ready),
        "apply_post_to_rename_ms": summary(rename),
        "apply_post_to_202_ms": summary(response),
        "idle_rss_kib": rss,
        "idle_wait_s": idle_wait,
        "peak_rss_kib": hwm,
        "guard": guard,
    });
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return;
    }
    let line = |name: &str, v: &Value| {
        println!(
            "{name:<28} p50 {:>8.3} ms   p99 {:>8.3} ms   (n={}, min {:.3}, max {:.3})",
            v["p50"].as_f64().unwrap_or(0.0),
            v["p99"].as_f64().unwrap_or(0.0),
            v["n"],
            v["min"].as_f64().unwrap_or(0.0),
            v["max"].as_f64().unwrap_or(0.0)
        );
    };
    line("ready (exec → /healthz)", &report["ready_ms"]);
    line("apply (POST → renamed)", &report["apply_post_to_rename_ms"]);
    line("apply (POST → 202)", &report["apply_post_to_202_ms"]);
    println!(
        "{:<28} {} KiB after {idle_wait}s (peak {hwm} KiB)",
        "idle RSS", rss
    );
    println!(
        "{:<28} {:.1} MiB ({size} bytes)",
        "binary size",
        size as f64 / 1048576.0
    );
    let g = &report["guard"];
    println!(
        "{:<28} {:.2}% CPU, max RSS {} KiB (3 http probes at 1s, {}s bake)",
        "baking overhead",
        g["cpu_percent_while_baking"].as_f64().unwrap_or(0.0),
        g["rss_kib_while_baking_max"],
        g["bake_s"]
    );
    println!(
        "{:<28} {:.0} ms from applied to rolled back ({} rounds)",
        "early abort",
        g["early_abort"]["applied_to_rolled_back_ms"]
            .as_f64()
            .unwrap_or(-1.0),
        g["early_abort"]["rounds"]
    );
}
