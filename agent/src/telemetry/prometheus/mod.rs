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

mod config;
mod exposition;
mod math;
mod measure;

pub use config::{PrometheusMeasure, PrometheusProbeConfig, SeriesSelector};
pub use exposition::{parse_exposition, Series, MAX_EXPOSITION_BYTES};
pub use math::{bucket_increases, bucket_quantile, increase, Increase};
pub use measure::{evaluate, measure};

/// Most series listed by name in a sample's detail.
const MAX_DETAIL_SERIES: usize = 20;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::telemetry::Unit;

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
