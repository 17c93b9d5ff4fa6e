//! PromQL's arithmetic over two scrapes: `increase` with counter resets,
//! and `histogram_quantile`. Pure functions of the series, so each rule
//! (a reset counts from zero, buckets are made monotonic) is tested alone.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Series, MAX_DETAIL_SERIES};
use crate::telemetry::round6;

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
    pub(super) fn detail(&self, metric: &str) -> Value {
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
