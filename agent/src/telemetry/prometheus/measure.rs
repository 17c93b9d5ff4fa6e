//! One sample of a `prometheus` probe: scrape once or twice, reduce the
//! selected series to the probe's value, and say why when there is none.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::exposition::format_bound;
use super::{
    bucket_increases, bucket_quantile, increase, parse_exposition, PrometheusMeasure,
    PrometheusProbeConfig, Series, MAX_DETAIL_SERIES, MAX_EXPOSITION_BYTES,
};
use crate::command::payload::Timestamp;
use crate::telemetry::{round6, ProbeSample};

/// The probe's value from two scrapes `seconds` apart (a gauge reads only
/// `second`): (value, note, detail).
pub fn evaluate(
    cfg: &PrometheusProbeConfig,
    first: &[Series],
    second: &[Series],
    seconds: f64,
) -> (Option<f64>, Option<String>, Value) {
    let window_s = round6(seconds);
    match cfg.measure {
        PrometheusMeasure::Gauge => {
            let matching: Vec<&Series> = second
                .iter()
                .filter(|s| s.matches(&cfg.metric, &cfg.labels))
                .collect();
            let sum: f64 = matching.iter().map(|s| s.value).sum();
            let detail = json!({
                "metric": cfg.metric,
                "series": matching.len(),
                "sum": if sum.is_finite() { Some(round6(sum)) } else { None },
                "values": matching.iter().take(MAX_DETAIL_SERIES).map(|s| json!({"series": s.key(), "value": s.value})).collect::<Vec<_>>(),
            });
            if matching.is_empty() {
                (None, Some(no_series(&cfg.metric, &cfg.labels)), detail)
            } else if !sum.is_finite() {
                (
                    None,
                    Some(format!("the selected series sum to {sum}")),
                    detail,
                )
            } else {
                (Some(round6(sum)), None, detail)
            }
        }
        PrometheusMeasure::CounterRate => {
            let inc = increase(first, second, &cfg.metric, &cfg.labels);
            let mut detail = inc.detail(&cfg.metric);
            detail["window_s"] = json!(window_s);
            if inc.series == 0 {
                return (None, Some(no_series(&cfg.metric, &cfg.labels)), detail);
            }
            if seconds <= 0.0 {
                return (
                    None,
                    Some("the scrapes were not apart in time".into()),
                    detail,
                );
            }
            (Some(round6(inc.total / seconds)), None, detail)
        }
        PrometheusMeasure::Ratio => {
            let Some(den) = &cfg.denominator else {
                return (
                    None,
                    Some("ratio without a denominator".into()),
                    Value::Null,
                );
            };
            let n = increase(first, second, &cfg.metric, &cfg.labels);
            let d = increase(first, second, &den.metric, &den.labels);
            let detail = json!({
                "window_s": window_s,
                "numerator": n.detail(&cfg.metric),
                "denominator": d.detail(&den.metric),
            });
            if d.series == 0 {
                return (
                    None,
                    Some(format!(
                        "denominator: {}",
                        no_series(&den.metric, &den.labels)
                    )),
                    detail,
                );
            }
            if d.total <= 0.0 {
                return (
                    None,
                    Some(format!(
                        "no traffic: the denominator did not increase in {window_s}s"
                    )),
                    detail,
                );
            }
            // A counter series is often created at its first increment:
            // no numerator series yet means none happened.
            let note = (n.series == 0).then(|| {
                format!(
                    "numerator: {}; counted as 0",
                    no_series(&cfg.metric, &cfg.labels)
                )
            });
            if n.total > d.total {
                let why = format!(
                    "the numerator rose more than the denominator ({} > {}): it must count a subset of the same events",
                    round6(n.total),
                    round6(d.total)
                );
                return (None, Some(why), detail);
            }
            (Some(round6(n.total / d.total)), note, detail)
        }
        PrometheusMeasure::HistogramQuantile => {
            let q = cfg.quantile.unwrap_or(0.99);
            let (buckets, series, resets) =
                bucket_increases(first, second, &cfg.metric, &cfg.labels);
            let observations = buckets.last().filter(|b| b.0 == f64::INFINITY).map(|b| b.1);
            let detail = json!({
                "metric": format!("{}_bucket", cfg.metric),
                "quantile": q,
                "window_s": window_s,
                "series": series,
                "resets": resets,
                "observations": observations.map(round6),
                "buckets": buckets.iter().take(64).map(|(le, n)| json!({"le": format_bound(*le), "increase": round6(*n)})).collect::<Vec<_>>(),
            });
            if series == 0 {
                return (
                    None,
                    Some(no_series(&format!("{}_bucket", cfg.metric), &cfg.labels)),
                    detail,
                );
            }
            match observations {
                None => (
                    None,
                    Some("the histogram has no le=\"+Inf\" bucket".into()),
                    detail,
                ),
                Some(o) if o <= 0.0 => (
                    None,
                    Some(format!("no traffic: no observations in {window_s}s")),
                    detail,
                ),
                Some(_) => match bucket_quantile(q, &buckets) {
                    Some(v) if v.is_finite() => (Some(round6(v)), None, detail),
                    Some(v) => (None, Some(format!("quantile {q} is {v}")), detail),
                    None => (None, Some("fewer than two buckets".into()), detail),
                },
            }
        }
    }
}

fn no_series(metric: &str, labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        format!("no series named {metric}")
    } else {
        let m: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        format!("no series match {metric}{{{}}}", m.join(","))
    }
}

/// Fetches and parses one exposition; the time is when it was read.
async fn scrape(
    client: &reqwest::Client,
    cfg: &PrometheusProbeConfig,
) -> Result<(Vec<Series>, Instant, usize), String> {
    let started = Instant::now();
    let resp = client
        .get(&cfg.url)
        .timeout(cfg.timeout.0)
        .header(
            reqwest::header::ACCEPT,
            "text/plain;version=0.0.4;q=1.0,*/*;q=0.1",
        )
        .send()
        .await
        .map_err(|e| format!("unreachable: {}", crate::telemetry::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!(
            "{} answered HTTP {}",
            cfg.url,
            resp.status().as_u16()
        ));
    }
    let body =
        crate::telemetry::read_body_limited(resp, MAX_EXPOSITION_BYTES, "the exposition").await?;
    // The exposition's moment: halfway through the request.
    let at = started + started.elapsed() / 2;
    let series = parse_exposition(&String::from_utf8_lossy(&body))?;
    Ok((series, at, body.len()))
}

/// Takes one window: one scrape for a gauge, else two scrapes `window` (or
/// the configured window) apart.
pub async fn measure(
    client: &reqwest::Client,
    name: &str,
    cfg: &PrometheusProbeConfig,
    window: Option<Duration>,
) -> ProbeSample {
    let unit = cfg.unit();
    let failed = |why: String, scrape: u32| ProbeSample {
        detail: json!({"url": cfg.url, "scrape": scrape}),
        ..ProbeSample::missing(name, unit, why)
    };
    let (first, first_at, first_bytes) = if cfg.two_scrapes() {
        match scrape(client, cfg).await {
            Ok((s, at, bytes)) => {
                tokio::time::sleep(window.unwrap_or(cfg.window.0)).await;
                (s, Some(at), bytes)
            }
            Err(why) => return failed(why, 1),
        }
    } else {
        (Vec::new(), None, 0)
    };
    let (second, second_at, second_bytes) = match scrape(client, cfg).await {
        Ok(s) => s,
        Err(why) => return failed(why, if cfg.two_scrapes() { 2 } else { 1 }),
    };
    let seconds = first_at
        .map(|a| second_at.duration_since(a).as_secs_f64())
        .unwrap_or(0.0);
    let (value, note, mut detail) = evaluate(cfg, &first, &second, seconds);
    if let Value::Object(map) = &mut detail {
        map.insert("scraped_series".into(), json!(second.len()));
        map.insert("scraped_bytes".into(), json!(first_bytes.max(second_bytes)));
    }
    ProbeSample {
        probe: name.to_string(),
        at: Timestamp::now(),
        value,
        unit,
        note,
        detail,
    }
}
