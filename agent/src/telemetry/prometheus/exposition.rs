//! The scraped text, flattened into series: histograms and summaries become
//! the `NAME_bucket{le}` and `NAME{quantile}` series PromQL selects, so the
//! math never sees the parser's types.

use std::collections::BTreeMap;

use crate::trust::glob::glob_match;

/// Largest exposition read; a bigger one makes the sample unreadable.
pub const MAX_EXPOSITION_BYTES: usize = 8 * 1024 * 1024;

/// One series of a scrape: a sample line, with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    /// `name{a="x",b="y"}`, labels sorted: the series' identity.
    pub(super) fn key(&self) -> String {
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

    pub(super) fn matches(&self, metric: &str, matchers: &BTreeMap<String, String>) -> bool {
        self.name == metric
            && matchers.iter().all(|(k, pattern)| {
                glob_match(
                    pattern,
                    self.labels.get(k).map(String::as_str).unwrap_or(""),
                )
            })
    }
}

pub(super) fn format_bound(v: f64) -> String {
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
