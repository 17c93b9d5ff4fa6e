//! The `prometheus` probe: scrapes the local service's own Prometheus text
//! exposition (its `/metrics`) and reduces the series it selects to one
//! number, the way a PromQL expression over the same series would:
//!
//! | `measure`            | like PromQL                                             | unit    |
//! | -------------------- | ------------------------------------------------------- | ------- |
//! | `counter_rate`       | `sum(rate(metric{labels}[window]))`                     | number  |
//! | `ratio`              | `sum(rate(metric{labels}[w])) / sum(rate(den{..}[w]))`  | ratio   |
//! | `gauge`              | `sum(metric{labels})`                                   | number  |
//! | `histogram_quantile` | `histogram_quantile(q, sum by (le) (rate(metric_bucket{labels}[w])))` | seconds |
//!
//! Rate-based measures scrape twice, `window` apart, and use the increase
//! between the two scrapes over the seconds between them. A counter that
//! went down was reset (the service restarted) and counts from zero; a
//! series that appears only in the second scrape was born in the window
//! and counts from zero too.
//!
//! The exposition is parsed by the `prometheus-parse` crate. It reads the
//! classic text format (and the OpenMetrics text that `prometheus-client`
//! writes); label values holding `,` `=` or `}`, and metric names with `:`,
//! are outside what it parses.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use super::{round6, ProbeSample, Unit};
use crate::command::payload::{HumanDuration, Timestamp};
use crate::trust::glob::glob_match;

/// Largest exposition read; a bigger one makes the sample unreadable.
pub const MAX_EXPOSITION_BYTES: usize = 8 * 1024 * 1024;

/// Most series listed by name in a sample's detail.
const MAX_DETAIL_SERIES: usize = 20;

/// A `prometheus` probe.
///
/// ```toml
/// [probes.checkout-5xx]
/// kind = "prometheus"
/// url = "http://127.0.0.1:8080/metrics"
/// metric = "http_requests_total"
/// labels = { code = "5*" }
/// measure = "ratio"
/// denominator = { metric = "http_requests_total" }
/// window = "10s"
///
/// [probes.checkout-p99]
/// kind = "prometheus"
/// url = "http://127.0.0.1:8080/metrics"
/// metric = "http_request_duration_seconds"
/// measure = "histogram_quantile"
/// quantile = 0.99
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusProbeConfig {
    /// An http(s) URL of the local service's metrics endpoint, e.g.
    /// `http://127.0.0.1:8080/metrics`.
    pub url: String,
    /// The metric to read: a counter (`http_requests_total`), a gauge, or
    /// for `histogram_quantile` the histogram's name without `_bucket`.
    pub metric: String,
    /// Label matchers, label name → value. A value matches exactly, or as
    /// a glob when it holds `*` or `?` (`code = "5*"`). A label the series
    /// lacks reads as `""`. Every series that matches is summed.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How the selected series become the probe's value.
    pub measure: PrometheusMeasure,
    /// For `ratio` only, and required there: the series whose increase
    /// divides the metric's, e.g. every request.
    #[serde(default)]
    pub denominator: Option<SeriesSelector>,
    /// For `histogram_quantile` only, and required there: the quantile,
    /// e.g. `0.99`; above 0, at most 1.
    #[serde(default)]
    pub quantile: Option<f64>,
    /// Time between the two scrapes of a rate-based measure. A guard's
    /// `before` replaces it for the before-window. Unused by `gauge`.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// Per-scrape timeout; a timed-out scrape makes the sample unreadable.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

/// A metric name and label matchers, for a ratio's denominator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesSelector {
    /// The counter to read.
    pub metric: String,
    /// Label matchers, as for the probe's own `labels`. Default: every
    /// series of the metric.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What a `prometheus` probe reports as its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrometheusMeasure {
    /// Increase of the selected counters per second over the window.
    CounterRate,
    /// Increase of the selected counters / increase of the denominator's,
    /// over the window: an error ratio. No denominator increase (no
    /// traffic) cannot be judged.
    Ratio,
    /// Sum of the selected series' current values, from one scrape.
    Gauge,
    /// The `quantile` of the observations made in the window, from the
    /// histogram's bucket increases, interpolated linearly within a
    /// bucket, in seconds.
    HistogramQuantile,
}

fn default_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

/// Whether `name` is a metric name the exposition parser reads.
fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate_selector(
    field: &str,
    metric: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), (String, String)> {
    if metric.contains(':') {
        return Err((
            format!("{field}metric"),
            format!(
                "{metric:?}: names with ':' are recording rules; query them with a `promql` probe"
            ),
        ));
    }
    if !valid_metric_name(metric) {
        return Err((
            format!("{field}metric"),
            format!("{metric:?} is not a metric name ([A-Za-z_][A-Za-z0-9_]*)"),
        ));
    }
    for name in labels.keys() {
        if !valid_metric_name(name) {
            return Err((
                format!("{field}labels"),
                format!("{name:?} is not a label name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
    }
    Ok(())
}

impl PrometheusProbeConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, why: String| Err((f.to_string(), why));
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return err("url", "must be an http:// or https:// URL".into());
        }
        if reqwest::Url::parse(&self.url).is_err() {
            return err("url", format!("{:?} does not parse", self.url));
        }
        validate_selector("", &self.metric, &self.labels)?;
        match (self.measure, &self.denominator) {
            (PrometheusMeasure::Ratio, None) => {
                return err(
                    "denominator",
                    "measure = \"ratio\" needs a denominator = { metric = \"...\" }".into(),
                )
            }
            (PrometheusMeasure::Ratio, Some(d)) => {
                validate_selector("denominator.", &d.metric, &d.labels)?
            }
            (_, Some(_)) => {
                return err(
                    "denominator",
                    "only measure = \"ratio\" takes a denominator".into(),
                )
            }
            (_, None) => {}
        }
        match (self.measure, self.quantile) {
            (PrometheusMeasure::HistogramQuantile, None) => {
                return err(
                    "quantile",
                    "measure = \"histogram_quantile\" needs a quantile, e.g. 0.99".into(),
                )
            }
            (PrometheusMeasure::HistogramQuantile, Some(q)) => {
                if !(q > 0.0 && q <= 1.0) {
                    return err(
                        "quantile",
                        format!("{q} is not above 0 and at most 1 (0.99 is the p99)"),
                    );
                }
                if self.metric.ends_with("_bucket") {
                    return err(
                        "metric",
                        format!(
                            "name the histogram without `_bucket`: {:?}",
                            self.metric.trim_end_matches("_bucket")
                        ),
                    );
                }
                if self.labels.contains_key("le") {
                    return err(
                        "labels",
                        "`le` is the bucket bound: every bucket is read".into(),
                    );
                }
            }
            (_, Some(_)) => {
                return err(
                    "quantile",
                    "only measure = \"histogram_quantile\" takes a quantile".into(),
                )
            }
            (_, None) => {}
        }
        if self.window.0 < Duration::from_millis(100) || self.window.0 > Duration::from_secs(600) {
            return err("window", "must be 100ms to 10m".into());
        }
        if self.timeout.0.is_zero() {
            return err("timeout", "must be above zero".into());
        }
        Ok(())
    }

    pub fn unit(&self) -> Unit {
        match self.measure {
            PrometheusMeasure::Ratio => Unit::Ratio,
            PrometheusMeasure::HistogramQuantile => Unit::Seconds,
            PrometheusMeasure::CounterRate | PrometheusMeasure::Gauge => Unit::Number,
        }
    }

    fn two_scrapes(&self) -> bool {
        self.measure != PrometheusMeasure::Gauge
    }
}

/// One series of a scrape: a sample line, with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    /// `name{a="x",b="y"}`, labels sorted: the series' identity.
    fn key(&self) -> String {
        if self.labels.is_empty() {
            return self.name.clone();
        }
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }

    fn matches(&self, metric: &str, matchers: &BTreeMap<String, String>) -> bool {
        self.name == metric
            && matchers.iter().all(|(k, pattern)| {
                glob_match(
                    pattern,
                    self.labels.get(k).map(String::as_str).unwrap_or(""),
                )
            })
    }
}

fn format_bound(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Parses a text exposition into flat series: a histogram's buckets become
/// `NAME_bucket` series with an `le` label, a summary's quantiles series
/// with a `quantile` label, as they are written.
pub fn parse_exposition(text: &str) -> Result<Vec<Series>, String> {
    use prometheus_parse::{Scrape, Value as PV};
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .map_err(|e| format!("unparsable exposition: {e}"))?;
    let mut out = Vec::with_capacity(scrape.samples.len());
    for s in scrape.samples {
        let labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match s.value {
            PV::Counter(v) | PV::Gauge(v) | PV::Untyped(v) => out.push(Series {
                name: s.metric,
                labels,
                value: v,
            }),
            PV::Histogram(buckets) => {
                let name = format!("{}_bucket", s.metric);
                for b in buckets {
                    let mut labels = labels.clone();
                    labels.insert("le".into(), format_bound(b.less_than));
                    out.push(Series {
                        name: name.clone(),
                        labels,
                        value: b.count,
                    });
                }
            }
            PV::Summary(quantiles) => {
                for q in quantiles {
                    let mut labels = labels.clone();
                    labels.insert("quantile".into(), format_bound(q.quantile));
                    out.push(Series {
                        name: s.metric.clone(),
                        labels,
                        value: q.count,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The increase of the series a selector matches between two scrapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Increase {
    /// Sum of every matching series' increase.
    pub total: f64,
    /// Matching series in the second scrape.
    pub series: usize,
    /// Series that went down (a counter reset), counted from zero.
    pub resets: usize,
    /// Series absent from the first scrape, counted from zero.
    pub new_series: usize,
    /// Per series: (key, first value, second value), bounded.
    pub raw: Vec<(String, Option<f64>, f64)>,
}

impl Increase {
    fn detail(&self, metric: &str) -> Value {
        json!({
            "metric": metric,
            "series": self.series,
            "increase": round6(self.total),
            "resets": self.resets,
            "new_series": self.new_series,
            "values": self.raw.iter().map(|(k, a, b)| json!({"series": k, "first": a, "second": b})).collect::<Vec<_>>(),
        })
    }
}

/// One series' increase: a value that went down was reset and counts
/// from zero (as PromQL's `increase` does).
fn series_increase(first: Option<f64>, second: f64) -> (f64, bool) {
    match first {
        Some(a) if second < a => (second, true),
        Some(a) => (second - a, false),
        None => (second, false),
    }
}

/// The summed increase of the series matching `metric{matchers}`.
pub fn increase(
    first: &[Series],
    second: &[Series],
    metric: &str,
    matchers: &BTreeMap<String, String>,
) -> Increase {
    let before: BTreeMap<String, f64> = first
        .iter()
        .filter(|s| s.matches(metric, matchers))
        .map(|s| (s.key(), s.value))
        .collect();
    let mut out = Increase::default();
    for s in second.iter().filter(|s| s.matches(metric, matchers)) {
        if !s.value.is_finite() {
            continue;
        }
        let key = s.key();
        let prev = before.get(&key).copied().filter(|v| v.is_finite());
        let (inc, reset) = series_increase(prev, s.value);
        out.series += 1;
        out.total += inc;
        out.resets += usize::from(reset);
        out.new_series += usize::from(prev.is_none());
        if out.raw.len() < MAX_DETAIL_SERIES {
            out.raw.push((key, prev, s.value));
        }
    }
    out
}

/// The increase of each bucket bound of a histogram, summed across the
/// matching series (`sum by (le) (increase(NAME_bucket[w]))`), sorted by
/// bound; and how many bucket series matched.
pub fn bucket_increases(
    first: &[Series],
    second: &[Series],
    histogram: &str,
    matchers: &BTreeMap<String, String>,
) -> (Vec<(f64, f64)>, usize, usize) {
    let name = format!("{histogram}_bucket");
    let before: BTreeMap<String, f64> = first
        .iter()
        .filter(|s| s.matches(&name, matchers))
        .map(|s| (s.key(), s.value))
        .collect();
    let mut by_bound: Vec<(f64, f64)> = Vec::new();
    let (mut series, mut resets) = (0, 0);
    for s in second.iter().filter(|s| s.matches(&name, matchers)) {
        let Some(bound) = s
            .labels
            .get("le")
            .and_then(|le| le.trim().parse::<f64>().ok())
        else {
            continue;
        };
        if bound.is_nan() || !s.value.is_finite() {
            continue;
        }
        let (inc, reset) = series_increase(before.get(&s.key()).copied(), s.value);
        series += 1;
        resets += usize::from(reset);
        match by_bound.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, total)) => *total += inc,
            None => by_bound.push((bound, inc)),
        }
    }
    by_bound.sort_by(|a, b| a.0.total_cmp(&b.0));
    (by_bound, series, resets)
}

/// PromQL's `histogram_quantile` over cumulative bucket counts sorted by
/// bound: linear interpolation within the bucket holding the rank; the
/// `+Inf` bucket answers with the highest finite bound. `None` when there
/// is nothing to rank (no `+Inf` bucket, fewer than two buckets, no
/// observations).
pub fn bucket_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if q.is_nan() || buckets.len() < 2 || buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
        return None;
    }
    // Bucket increases of series reset at different moments can dip; the
    // cumulative counts must not (as in Prometheus' ensureMonotonic).
    let mut counts: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    let mut max = 0.0f64;
    for &(bound, count) in buckets {
        max = max.max(count);
        counts.push((bound, max));
    }
    let observations = counts[counts.len() - 1].1;
    if observations <= 0.0 {
        return None;
    }
    let mut rank = q.clamp(0.0, 1.0) * observations;
    let last = counts.len() - 1;
    let b = counts[..last]
        .iter()
        .position(|c| c.1 >= rank)
        .unwrap_or(last);
    if b == last {
        return Some(counts[last - 1].0);
    }
    if b == 0 && counts[0].0 <= 0.0 {
        return Some(counts[0].0);
    }
    let (bucket_end, mut count) = counts[b];
    let mut bucket_start = 0.0;
    if b > 0 {
        bucket_start = counts[b - 1].0;
        count -= counts[b - 1].1;
        rank -= counts[b - 1].1;
    }
    if count <= 0.0 {
        return Some(bucket_start);
    }
    Some(bucket_start + (bucket_end - bucket_start) * (rank / count))
}

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
        .map_err(|e| format!("unreachable: {}", super::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!(
            "{} answered HTTP {}",
            cfg.url,
            resp.status().as_u16()
        ));
    }
    let body = super::read_body_limited(resp, MAX_EXPOSITION_BYTES, "the exposition").await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> PrometheusProbeConfig {
        toml::from_str(toml_text).expect("probe config")
    }

    const BASE: &str = "url = \"http://127.0.0.1:8080/metrics\"\n";

    fn exposition(ok: u64, err: u64, buckets: &[(&str, u64)]) -> Vec<Series> {
        let mut text = String::from(
            "# HELP http_requests Requests.\n# TYPE http_requests counter\n\
             # HELP http_request_duration_seconds Latency.\n# TYPE http_request_duration_seconds histogram\n",
        );
        text.push_str(&format!(
            "http_requests_total{{code=\"200\",path=\"/work\"}} {ok}\n"
        ));
        if err > 0 {
            text.push_str(&format!(
                "http_requests_total{{code=\"500\",path=\"/work\"}} {err}\n"
            ));
        }
        let total = buckets.last().map(|b| b.1).unwrap_or(0);
        text.push_str(&format!(
            "http_request_duration_seconds_sum {}\n",
            total as f64 * 0.01
        ));
        text.push_str(&format!("http_request_duration_seconds_count {total}\n"));
        for (le, n) in buckets {
            text.push_str(&format!(
                "http_request_duration_seconds_bucket{{le=\"{le}\"}} {n}\n"
            ));
        }
        text.push_str("# EOF\n");
        parse_exposition(&text).expect("parse")
    }

    #[test]
    fn parses_the_text_format() {
        let s = exposition(7, 3, &[("0.1", 4), ("+Inf", 10)]);
        let ok = s
            .iter()
            .find(|s| s.name == "http_requests_total" && s.labels["code"] == "200")
            .unwrap();
        assert_eq!(ok.value, 7.0);
        assert_eq!(ok.labels["path"], "/work");
        let inf = s
            .iter()
            .find(|s| s.name == "http_request_duration_seconds_bucket" && s.labels["le"] == "+Inf")
            .unwrap();
        assert_eq!(inf.value, 10.0);
        assert!(s
            .iter()
            .any(|s| s.name == "http_request_duration_seconds_count" && s.value == 10.0));
        // No TYPE line: buckets stay plain series with their le label.
        let plain = parse_exposition("x_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 3\n").unwrap();
        assert_eq!(
            bucket_increases(&[], &plain, "x", &BTreeMap::new()).0,
            vec![(1.0, 2.0), (f64::INFINITY, 3.0)]
        );
    }

    #[test]
    fn ratio_of_increases_with_globs() {
        let c = cfg(&format!(
            "{BASE}metric = \"http_requests_total\"\nlabels = {{ code = \"5*\" }}\nmeasure = \"ratio\"\n\
             denominator = {{ metric = \"http_requests_total\" }}\n"
        ));
        c.validate().unwrap();
        assert_eq!(c.unit(), Unit::Ratio);
        let a = exposition(100, 10, &[]);
        let b = exposition(170, 40, &[]);
        let (v, note, detail) = evaluate(&c, &a, &b, 2.0);
        assert_eq!(v, Some(0.3), "30 errors in 100 requests");
        assert_eq!(note, None);
        assert_eq!(detail["denominator"]["series"], 2);
        assert_eq!(detail["numerator"]["increase"], 30.0);
    }

    #[test]
    fn ratio_without_error_series_is_zero_and_without_traffic_is_none() {
        let c = cfg(&format!(
            "{BASE}metric = \"http_requests_total\"\nlabels = {{ code = \"5*\" }}\nmeasure = \"ratio\"\n\
             denominator = {{ metric = \"http_requests_total\" }}\n"
        ));
        let (v, note, _) = evaluate(&c, &exposition(10, 0, &[]), &exposition(20, 0, &[]), 1.0);
        assert_eq!(v, Some(0.0));
        assert!(note.unwrap().contains("counted as 0"));
        let (v, note, _) = evaluate(&c, &exposition(10, 2, &[]), &exposition(10, 2, &[]), 1.0);
        assert_eq!(v, None, "no traffic is inconclusive, never a pass");
        assert!(note.unwrap().contains("no traffic"));
        let (v, note, _) = evaluate(&c, &[], &[], 1.0);
        assert_eq!(v, None);
        assert!(note.unwrap().contains("no series"));
        // A numerator that is not a subset of the denominator is a
        // misconfiguration, not an error ratio of 1.
        let c = cfg(&format!(
            "{BASE}metric = \"http_requests_total\"\nmeasure = \"ratio\"\n\
             denominator = {{ metric = \"http_requests_total\", labels = {{ code = \"200\" }} }}\n"
        ));
        let (v, note, _) = evaluate(&c, &exposition(10, 0, &[]), &exposition(12, 5, &[]), 1.0);
        assert_eq!(v, None);
        assert!(note.unwrap().contains("subset"));
    }

    #[test]
    fn counter_reset_counts_from_zero() {
        let c = cfg(&format!(
            "{BASE}metric = \"http_requests_total\"\nmeasure = \"counter_rate\"\n"
        ));
        assert_eq!(c.unit(), Unit::Number);
        // The service restarted: 200s went 500 → 30, 500s 50 → 10.
        let (v, _, detail) = evaluate(&c, &exposition(500, 50, &[]), &exposition(30, 10, &[]), 4.0);
        assert_eq!(v, Some(10.0), "(30 + 10) / 4s");
        assert_eq!(detail["resets"], 2);
        // A series born in the window counts from zero.
        let (v, _, detail) = evaluate(&c, &exposition(10, 0, &[]), &exposition(14, 4, &[]), 2.0);
        assert_eq!(v, Some(4.0), "(4 + 4) / 2s");
        assert_eq!(detail["new_series"], 1);
        let (v, _, _) = evaluate(&c, &exposition(10, 0, &[]), &exposition(10, 0, &[]), 2.0);
        assert_eq!(v, Some(0.0), "a counter that did not move is a rate of 0");
    }

    #[test]
    fn gauge_sums_matching_series() {
        let c = cfg(&format!("{BASE}metric = \"queue_depth\"\nlabels = {{ queue = \"pay*\" }}\nmeasure = \"gauge\"\n"));
        c.validate().unwrap();
        let s = parse_exposition(
            "# TYPE queue_depth gauge\nqueue_depth{queue=\"payments\"} 3\nqueue_depth{queue=\"payouts\"} 4.5\n\
             queue_depth{queue=\"email\"} 100\n",
        )
        .unwrap();
        let (v, _, detail) = evaluate(&c, &[], &s, 0.0);
        assert_eq!(v, Some(7.5));
        assert_eq!(detail["series"], 2);
        let (v, note, _) = evaluate(&c, &[], &[], 0.0);
        assert_eq!(v, None);
        assert!(note
            .unwrap()
            .contains("no series match queue_depth{queue=\"pay*\"}"));
    }

    #[test]
    fn bucket_quantile_interpolates_like_promql() {
        let b = [
            (0.1, 50.0),
            (0.2, 90.0),
            (0.4, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // Rank 50 sits at the top of the first bucket.
        assert_eq!(bucket_quantile(0.5, &b), Some(0.1));
        // Rank 70: 20 of the 40 in (0.1, 0.2].
        assert!((bucket_quantile(0.7, &b).unwrap() - 0.15).abs() < 1e-12);
        // Rank 99: 9 of the 10 in (0.2, 0.4].
        assert!((bucket_quantile(0.99, &b).unwrap() - 0.38).abs() < 1e-12);
        // Rank 25 in the first bucket interpolates from 0.
        assert!((bucket_quantile(0.25, &b).unwrap() - 0.05).abs() < 1e-12);
        // A rank in +Inf answers with the highest finite bound.
        let tail = [(0.1, 5.0), (f64::INFINITY, 10.0)];
        assert_eq!(bucket_quantile(0.99, &tail), Some(0.1));
        assert_eq!(
            bucket_quantile(0.99, &[(0.1, 0.0), (f64::INFINITY, 0.0)]),
            None,
            "no observations"
        );
        assert_eq!(
            bucket_quantile(0.99, &[(0.1, 3.0), (0.2, 3.0)]),
            None,
            "no +Inf bucket"
        );
    }

    #[test]
    fn histogram_quantile_uses_bucket_deltas() {
        let c = cfg(&format!(
            "{BASE}metric = \"http_request_duration_seconds\"\nmeasure = \"histogram_quantile\"\nquantile = 0.9\n"
        ));
        c.validate().unwrap();
        assert_eq!(c.unit(), Unit::Seconds);
        // Before: 1000 fast requests. In the window: 10 more, 5 of them slow.
        let a = exposition(
            0,
            0,
            &[("0.01", 1000), ("0.1", 1000), ("1", 1000), ("+Inf", 1000)],
        );
        let b = exposition(
            0,
            0,
            &[("0.01", 1005), ("0.1", 1005), ("1", 1010), ("+Inf", 1010)],
        );
        let (v, _, detail) = evaluate(&c, &a, &b, 1.0);
        // Rank 9 of 10: 4 of the 5 in (0.1, 1] → 0.1 + 0.9 * 4/5.
        assert!((v.unwrap() - 0.82).abs() < 1e-9, "{v:?}");
        assert_eq!(detail["observations"], 10.0);
        assert_eq!(detail["series"], 4);
        // Cumulative totals would say p90 is in the first bucket.
        let (v, note, _) = evaluate(&c, &a, &a, 1.0);
        assert_eq!(v, None, "no observations in the window");
        assert!(note.unwrap().contains("no traffic"));
        // A reset histogram counts from zero.
        let r = exposition(0, 0, &[("0.01", 2), ("0.1", 4), ("1", 4), ("+Inf", 4)]);
        let (v, _, detail) = evaluate(&c, &a, &r, 1.0);
        assert!((v.unwrap() - 0.082).abs() < 1e-9, "{v:?}");
        assert_eq!(detail["resets"], 4);
    }

    #[test]
    fn validation_names_the_field() {
        let field = |t: &str| cfg(&format!("{BASE}{t}")).validate().unwrap_err().0;
        assert_eq!(
            field("metric = \"x\"\nmeasure = \"ratio\"\n"),
            "denominator"
        );
        assert_eq!(
            field("metric = \"x\"\nmeasure = \"ratio\"\ndenominator = { metric = \"a-b\" }\n"),
            "denominator.metric"
        );
        assert_eq!(
            field("metric = \"x\"\nmeasure = \"histogram_quantile\"\n"),
            "quantile"
        );
        assert_eq!(
            field("metric = \"x\"\nmeasure = \"histogram_quantile\"\nquantile = 99.0\n"),
            "quantile"
        );
        assert_eq!(
            field("metric = \"x_bucket\"\nmeasure = \"histogram_quantile\"\nquantile = 0.9\n"),
            "metric"
        );
        assert_eq!(
            field("metric = \"x\"\nmeasure = \"gauge\"\nquantile = 0.9\n"),
            "quantile"
        );
        assert_eq!(
            field("metric = \"job:errors:rate5m\"\nmeasure = \"gauge\"\n"),
            "metric"
        );
        assert_eq!(
            field("metric = \"x\"\nmeasure = \"gauge\"\nlabels = { \"a b\" = \"1\" }\n"),
            "labels"
        );
        assert_eq!(
            field("metric = \"x\"\nmeasure = \"counter_rate\"\nwindow = \"1ms\"\n"),
            "window"
        );
        let e = cfg("url = \"ftp://x\"\nmetric = \"x\"\nmeasure = \"gauge\"\n")
            .validate()
            .unwrap_err();
        assert_eq!(e.0, "url");
        assert!(toml::from_str::<PrometheusProbeConfig>(&format!(
            "{BASE}metric = \"x\"\nmeasure = \"gauge\"\nwindw = \"1s\"\n"
        ))
        .is_err());
    }
}
