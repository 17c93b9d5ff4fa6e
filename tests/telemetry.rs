//! The `prometheus` and `promql` probes end to end: a real service with
//! real Prometheus metrics under load from the test, the real agent
//! guarding real commands with them, and a real Prometheus server for the
//! fleet-level `promql` probe. Receipts must carry the numbers.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tourniquet_e2e::metrics_service::{drive_load, Failure, Load, MetricsService};
use tourniquet_e2e::*;

/// The service fails `percent`% of `/work` while `new_flow` is `variant`.
fn service(env: &Env, variant: &str, percent: u64) -> MetricsService {
    MetricsService::start(
        env.path("flags.json"),
        Failure {
            flag: "new_flow".into(),
            variant: variant.into(),
            percent,
        },
    )
}

/// Load until stopped, and traffic already seen by the service, so every
/// window the agent samples has requests in it.
fn load(svc: &MetricsService) -> Load {
    let load = drive_load(svc.port, 20_000, Duration::from_millis(3));
    wait_for(
        "the service to see traffic",
        Duration::from_secs(10),
        || (svc.served() >= 20).then_some(()),
    );
    load
}

/// The `[probes.*]` blocks for the service.
fn probes(svc: &MetricsService) -> String {
    let url = svc.url("/metrics");
    format!(
        r#"
[probes.svc-5xx]
kind = "prometheus"
url = "{url}"
metric = "http_requests_total"
labels = {{ code = "5*" }}
measure = "ratio"
denominator = {{ metric = "http_requests_total" }}
window = "1s"

[probes.svc-p99]
kind = "prometheus"
url = "{url}"
metric = "http_request_duration_seconds"
measure = "histogram_quantile"
quantile = 0.99
window = "1s"

[probes.svc-rps]
kind = "prometheus"
url = "{url}"
metric = "http_requests_total"
measure = "counter_rate"
window = "1s"

[probes.svc-failing]
kind = "prometheus"
url = "{url}"
metric = "work_failure_percent"
measure = "gauge"
"#
    )
}

/// Signs and sends `actions` with `guard`;
/// returns the settled record.
fn guarded_flag_set(env: &Env, agent: &Agent, actions: Value, guard: Value) -> Value {
    let mut p = payload(actions);
    p["guard"] = guard;
    let (status, resp) = post_command(agent, &sign(&p, &[env.key("alice")]));
    assert_eq!(status, 202, "{resp}");
    wait_settled(agent, resp["id"].as_str().expect("id"))
}

fn ratio_guard() -> Value {
    json!({
        "probes": ["svc-5xx"],
        "bake": "3s",
        "before": "2s",
        "checks": [{"probe": "svc-5xx", "max_increase": "0.5%"}],
    })
}

fn sample<'a>(set: &'a Value, probe: &str) -> &'a Value {
    set.as_array()
        .and_then(|a| a.iter().find(|s| s["probe"] == probe))
        .unwrap_or_else(|| panic!("no sample of {probe} in {set:#}"))
}

fn value(sample: &Value) -> f64 {
    sample["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("no value: {sample:#}"))
}

fn assert_near(what: &str, got: f64, want: f64, tolerance: f64, rec: &Value) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: {got} is not {want} ± {tolerance}\n{:#}",
        rec["telemetry"]
    );
}

#[test]
fn a_fix_shown_by_the_service_error_ratio_is_kept() {
    let env = Env::new();
    // 30% of /work fails while new_flow is on: turning it off is the fix.
    let svc = service(&env, "on", 30);
    env.write_config(&format!("{}{}", env.default_config(), probes(&svc)));
    let agent = env.start();
    let mut load = load(&svc);

    let rec = guarded_flag_set(&env, &agent, set_new_flow("off"), ratio_guard());
    load.stop();
    assert_eq!(rec["state"], "kept", "{rec:#}");
    assert_eq!(env.variant("new_flow"), "off");
    let t = &rec["telemetry"];
    let before = sample(&t["before"], "svc-5xx");
    assert_eq!(before["unit"], "ratio");
    assert_near("before", value(before), 0.30, 0.05, &rec);
    // Both scrapes' series are in the detail: 200s and 500s.
    assert_eq!(before["detail"]["denominator"]["series"], 2, "{before:#}");
    assert!(
        before["detail"]["denominator"]["increase"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let after = sample(&t["after"], "svc-5xx");
    assert_near("after", value(after), 0.0, 0.02, &rec);
    assert_eq!(t["verdict"], "pass", "{t:#}");
    assert_eq!(t["early_abort"], false);
    let check = &t["checks"][0];
    assert_eq!(check["probe"], "svc-5xx");
    assert_eq!(check["check"], "max_increase");
    assert_eq!(check["threshold"], "0.5%");
    assert_eq!(check["unit"], "ratio");
    assert_eq!(check["verdict"], "pass");
    assert!(!check["samples"].as_array().unwrap().is_empty());
}

#[test]
fn a_hotfix_that_raises_the_error_ratio_is_rolled_back_early() {
    let env = Env::new();
    // The service fails while new_flow is off: the "hotfix" breaks it.
    let svc = service(&env, "off", 30);
    env.write_config(&format!("{}{}", env.default_config(), probes(&svc)));
    let agent = env.start();
    let _load = load(&svc);

    let rec = guarded_flag_set(&env, &agent, set_new_flow("off"), ratio_guard());
    assert_eq!(rec["state"], "rolled_back", "{rec:#}");
    assert_eq!(env.variant("new_flow"), "on", "the flag is back");
    let t = &rec["telemetry"];
    assert_eq!(t["verdict"], "breach", "{t:#}");
    assert_eq!(t["early_abort"], true, "{t:#}");
    let before = sample(&t["before"], "svc-5xx");
    assert_eq!(value(before), 0.0, "no 500s before: {before:#}");
    assert_near(
        "after",
        value(sample(&t["after"], "svc-5xx")),
        0.30,
        0.1,
        &rec,
    );
    assert_eq!(t["checks"][0]["verdict"], "breach");
    for v in t["checks"][0]["samples"].as_array().unwrap() {
        assert!(v.as_f64().unwrap() > 0.1, "every round breached: {t:#}");
    }
    assert_eq!(rec["actions"][0]["reverted"], true);
}

#[test]
fn latency_quantile_rate_and_gauge_probes_report_numbers() {
    let env = Env::new();
    let svc = service(&env, "on", 30);
    env.write_config(&format!("{}{}", env.default_config(), probes(&svc)));
    let agent = env.start();
    let _load = load(&svc);

    let rec = guarded_flag_set(
        &env,
        &agent,
        set_new_flow("off"),
        json!({
            "probes": ["svc-p99", "svc-rps", "svc-failing"],
            "bake": "2s",
            "before": "1s",
            "checks": [
                {"probe": "svc-p99", "max": "5s"},
                {"probe": "svc-rps", "min": "1"},
                {"probe": "svc-failing", "max": "100"},
            ],
        }),
    );
    assert_eq!(rec["state"], "kept", "{rec:#}");
    let t = &rec["telemetry"];
    assert_eq!(t["verdict"], "pass", "{t:#}");

    // p99 of /work, which takes a few ms: above 0, and at most the
    // highest finite bucket bound (1s), as histogram_quantile answers.
    for set in ["before", "after"] {
        let p99 = sample(&t[set], "svc-p99");
        assert_eq!(p99["unit"], "seconds");
        let v = value(p99);
        assert!(v > 0.0 && v <= 1.0, "{set} p99 {v}s: {p99:#}");
        assert!(p99["detail"]["observations"].as_f64().unwrap() > 0.0);
        assert_eq!(p99["detail"]["quantile"], 0.99);

        let rps = sample(&t[set], "svc-rps");
        assert_eq!(rps["unit"], "number");
        assert!(value(rps) > 1.0, "{set}: {rps:#}");
    }
    // The gauge: the service's failure share, 30 before the fix, 0 after.
    let failing_before = sample(&t["before"], "svc-failing");
    assert_eq!(failing_before["unit"], "number");
    assert_eq!(value(failing_before), 30.0, "{failing_before:#}");
    assert_eq!(value(sample(&t["after"], "svc-failing")), 0.0);
}

#[test]
fn unreadable_prometheus_probes_are_inconclusive_never_a_pass() {
    let env = Env::new();
    let svc = service(&env, "on", 30);
    // A metrics endpoint nobody listens on.
    let closed = free_port();
    let extra = format!(
        r#"
[probes.svc-down]
kind = "prometheus"
url = "http://127.0.0.1:{closed}/metrics"
metric = "http_requests_total"
measure = "gauge"
timeout = "500ms"

[probes.svc-teapots]
kind = "prometheus"
url = "{}"
metric = "http_requests_total"
labels = {{ code = "418" }}
measure = "gauge"
"#,
        svc.url("/metrics")
    );
    env.write_config(&format!("{}{}{extra}", env.default_config(), probes(&svc)));
    let agent = env.start();
    // A few requests, so the series exist, then none: no traffic.
    let mut load = drive_load(svc.port, 10, Duration::from_millis(1));
    wait_for("the last request", Duration::from_secs(10), || {
        (svc.served() >= 10).then_some(())
    });
    load.stop();

    let rec = guarded_flag_set(
        &env,
        &agent,
        set_new_flow("off"),
        json!({
            "probes": ["svc-5xx", "svc-p99", "svc-down", "svc-teapots"],
            "bake": "1s",
            "before": "1s",
            "on_inconclusive": "rollback",
            "checks": [
                {"probe": "svc-p99", "max": "5s"},
                {"probe": "svc-down", "max": "1000"},
                {"probe": "svc-teapots", "max": "1000"},
            ],
        }),
    );
    let t = &rec["telemetry"];
    assert_eq!(t["verdict"], "inconclusive", "{t:#}");
    assert_eq!(
        rec["state"], "rolled_back",
        "on_inconclusive = rollback: {rec:#}"
    );
    assert_eq!(env.variant("new_flow"), "on");
    for set in ["before", "after"] {
        let note = |probe: &str| {
            let s = sample(&t[set], probe);
            assert!(s["value"].is_null(), "{set} {probe}: {s:#}");
            s["note"].as_str().unwrap_or_default().to_string()
        };
        let n = note("svc-5xx");
        assert!(n.contains("no traffic"), "{n}");
        let n = note("svc-p99");
        assert!(n.contains("no traffic"), "{n}");
        let n = note("svc-down");
        assert!(n.contains("unreachable"), "{n}");
        let n = note("svc-teapots");
        assert!(n.contains("no series match"), "{n}");
    }
    for c in t["checks"].as_array().unwrap() {
        assert_eq!(c["verdict"], "inconclusive", "{c:#}");
    }
}

/// A real Prometheus server scraping one target every second. Killed on
/// drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        require_tool(
            "prometheus",
            "apt-get install --no-install-recommends prometheus (scripts/setup does)",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: svc\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let ready = format!("{}/-/ready", p.url);
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", p.log());
            }
            http_get_status(&ready).filter(|s| *s == 200)
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result list.
    fn query(&self, q: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/query?query={}", self.url, urlencode(q));
        http_request("GET", &url, b"")
            .and_then(|(_, b)| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits until `q` answers one sample satisfying `pred`.
    fn wait_value(&self, what: &str, q: &str, pred: impl Fn(f64) -> bool) -> f64 {
        wait_for(what, Duration::from_secs(60), || {
            match self.query(q).as_slice() {
                [one] => one["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|v| pred(*v)),
                _ => None,
            }
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const FLEET_5XX: &str =
    r#"sum(rate(http_requests_total{code="500"}[5s])) / sum(rate(http_requests_total[5s]))"#;

fn promql_probe(name: &str, prom: &Prometheus, query: &str, unit: &str) -> String {
    format!(
        "\n[probes.{name}]\nkind = \"promql\"\nurl = \"{}\"\nquery = '{query}'\nunit = \"{unit}\"\ntimeout = \"3s\"\n",
        prom.url
    )
}

#[test]
fn a_promql_probe_reads_the_fleet_error_ratio_from_prometheus() {
    let env = Env::new();
    // 30% of /work fails while new_flow is on; off is the fix.
    let svc = service(&env, "on", 30);
    let _load = load(&svc);
    let prom = Prometheus::start(svc.port);
    prom.wait_value(
        "prometheus to scrape the service",
        r#"up{job="svc"}"#,
        |v| v == 1.0,
    );
    // Enough scrapes for a 5s rate, before the guard reads it.
    prom.wait_value("a fleet error ratio", FLEET_5XX, |v| v > 0.2);

    let config = format!(
        "{}{}{}{}",
        env.default_config(),
        promql_probe("fleet-5xx", &prom, FLEET_5XX, "ratio"),
        promql_probe(
            "fleet-by-code",
            &prom,
            "sum by (code) (rate(http_requests_total[5s]))",
            "number"
        ),
        promql_probe("fleet-nothing", &prom, r#"up{job="nope"}"#, "number"),
    );
    env.write_config(&config);
    let agent = env.start();
    let rec = guarded_flag_set(
        &env,
        &agent,
        set_new_flow("off"),
        json!({
            "probes": ["fleet-5xx"],
            "bake": "2s",
            "checks": [{"probe": "fleet-5xx", "max_increase": "1%"}],
        }),
    );
    assert_eq!(rec["state"], "kept", "{rec:#}");
    let t = &rec["telemetry"];
    assert_eq!(t["verdict"], "pass", "{t:#}");
    let before = sample(&t["before"], "fleet-5xx");
    assert_eq!(before["unit"], "ratio");
    assert_near("fleet before", value(before), 0.30, 0.1, &rec);
    assert_eq!(before["detail"]["result_type"], "vector");
    assert_eq!(before["detail"]["series"], 1);
    assert_eq!(before["detail"]["query"], FLEET_5XX);
    // Once fixed, the 5s rate can only fall.
    let after = value(sample(&t["after"], "fleet-5xx"));
    assert!(after <= value(before) + 0.01, "{t:#}");

    // Two series (200 and 500) or none cannot be judged.
    let rec = guarded_flag_set(
        &env,
        &agent,
        json!([{"resource": "checkout-flags", "op": "flag.set", "flag": "dark_mode", "variant": "on"}]),
        json!({
            "probes": ["fleet-by-code", "fleet-nothing"],
            "bake": "1s",
            "checks": [
                {"probe": "fleet-by-code", "max": "1000"},
                {"probe": "fleet-nothing", "max": "1000"},
            ],
        }),
    );
    let t = &rec["telemetry"];
    assert_eq!(t["verdict"], "inconclusive", "{t:#}");
    let by_code = sample(&t["before"], "fleet-by-code");
    assert!(by_code["value"].is_null(), "{by_code:#}");
    assert!(
        by_code["note"].as_str().unwrap().contains("2 series"),
        "{by_code:#}"
    );
    assert_eq!(by_code["detail"]["metrics"].as_array().unwrap().len(), 2);
    let nothing = sample(&t["before"], "fleet-nothing");
    assert!(nothing["value"].is_null(), "{nothing:#}");
    assert!(nothing["note"].as_str().unwrap().contains("no series"));
}
