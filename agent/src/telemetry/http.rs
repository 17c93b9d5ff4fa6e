//! The `http` probe: N requests to a URL, spaced by an interval. Its value is
//! the error ratio (a request fails on a connection error, an unexpected
//! status, or an answer slower than `slow`), or a latency percentile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::{percentile, round6, ProbeSample, Unit, MAX_RAW_SAMPLES};
use crate::command::payload::{HumanDuration, Timestamp};

/// An `http` probe.
///
/// ```toml
/// [probes.checkout-health]
/// kind = "http"
/// url = "http://127.0.0.1:8080/healthz"
/// samples = 5
/// interval = "200ms"
/// headers = { Host = "checkout.internal" }
/// expect_status = [200, 204]
/// slow = "300ms"
/// measure = "error_ratio"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbeConfig {
    /// An http(s) URL of the local service, e.g. its health endpoint.
    pub url: String,
    /// Requests per sample window.
    #[serde(default = "default_samples")]
    pub samples: u32,
    /// Pause between requests.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Per-request timeout; a timed-out request counts as a failure.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Statuses that count as success. Default: any 2xx or 3xx.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// A successful answer slower than this counts as a failure.
    #[serde(default)]
    pub slow: Option<HumanDuration>,
    /// The probe's value.
    #[serde(default)]
    pub measure: HttpMeasure,
}

/// What an `http` probe reports as its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpMeasure {
    /// Failed requests / requests.
    #[default]
    ErrorRatio,
    /// Median latency of answered requests, in seconds.
    P50,
    /// 99th-percentile latency of answered requests, in seconds.
    P99,
}

fn default_samples() -> u32 {
    5
}
fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

impl HttpProbeConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, why: String| Err((f.to_string(), why));
        crate::telemetry::check_probe_url(&self.url)?;
        if self.samples == 0 || self.samples > 1000 {
            return err("samples", "must be 1 to 1000".into());
        }
        for s in &self.expect_status {
            if !(100..=599).contains(s) {
                return err("expect_status", format!("{s} is not an HTTP status"));
            }
        }
        for (k, v) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                return err("headers", format!("{k:?} is not a valid header"));
            }
        }
        Ok(())
    }

    pub fn unit(&self) -> Unit {
        match self.measure {
            HttpMeasure::ErrorRatio => Unit::Ratio,
            HttpMeasure::P50 | HttpMeasure::P99 => Unit::Seconds,
        }
    }

    fn is_success(&self, status: u16) -> bool {
        if self.expect_status.is_empty() {
            (200..400).contains(&status)
        } else {
            self.expect_status.contains(&status)
        }
    }
}

/// Takes one window. With `window`, the requests are spread over it.
pub async fn measure(
    client: &reqwest::Client,
    name: &str,
    cfg: &HttpProbeConfig,
    window: Option<Duration>,
) -> ProbeSample {
    let n = cfg.samples.max(1);
    let interval = match window {
        Some(w) if n > 1 => w / (n - 1),
        _ => cfg.interval.0,
    };
    let mut latencies_ms = Vec::with_capacity(n as usize);
    let mut statuses: BTreeMap<String, u32> = BTreeMap::new();
    let (mut failed, mut unreachable, mut slow) = (0u32, 0u32, 0u32);
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let mut req = client.get(&cfg.url).timeout(cfg.timeout.0);
        for (k, v) in &cfg.headers {
            req = req.header(k, v);
        }
        let start = Instant::now();
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Drain the body so the connection can be reused.
                let _ = resp.bytes().await;
                let elapsed = start.elapsed();
                latencies_ms.push(elapsed.as_secs_f64() * 1000.0);
                *statuses.entry(status.to_string()).or_default() += 1;
                let too_slow = cfg.slow.is_some_and(|s| elapsed > s.0);
                if too_slow {
                    slow += 1;
                }
                if !cfg.is_success(status) || too_slow {
                    failed += 1;
                }
            }
            Err(_) => {
                unreachable += 1;
                failed += 1;
            }
        }
    }
    let raw: Vec<f64> = latencies_ms
        .iter()
        .take(MAX_RAW_SAMPLES)
        .map(|m| round6(*m))
        .collect();
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    let p50 = percentile(&latencies_ms, 50);
    let p99 = percentile(&latencies_ms, 99);
    let error_ratio = f64::from(failed) / f64::from(n);
    let (value, note) = match cfg.measure {
        _ if unreachable == n => (
            None,
            Some(format!("unreachable: 0 of {n} requests answered")),
        ),
        HttpMeasure::ErrorRatio => (Some(round6(error_ratio)), None),
        HttpMeasure::P50 => (p50.map(|v| round6(v / 1000.0)), None),
        HttpMeasure::P99 => (p99.map(|v| round6(v / 1000.0)), None),
    };
    ProbeSample {
        probe: name.to_string(),
        at: Timestamp::now(),
        value,
        unit: cfg.unit(),
        note,
        detail: json!({
            "requests": n,
            "ok": n - failed,
            "failed": failed,
            "unreachable": unreachable,
            "slow": slow,
            "statuses": statuses,
            "p50_ms": p50.map(round6),
            "p99_ms": p99.map(round6),
            "latencies_ms": raw,
        }),
    }
}
