//! What an operator writes under `[probes.NAME]` for a `prometheus` probe,
//! and the checks that refuse a probe that could never measure anything.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::command::payload::HumanDuration;
use crate::telemetry::Unit;

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
        crate::telemetry::check_probe_url(&self.url)?;
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

    pub(super) fn two_scrapes(&self) -> bool {
        self.measure != PrometheusMeasure::Gauge
    }
}
