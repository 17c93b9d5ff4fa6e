//! The `promql` probe: one instant query against a Prometheus-compatible
//! HTTP API (`GET {url}/api/v1/query?query=...`: Prometheus, Thanos Query,
//! Mimir, VictoriaMetrics), for fleet-level SLIs the local service cannot
//! see. The query must answer one number: a scalar, or an instant vector
//! of exactly one sample (aggregate with `sum(...)`); anything else, and
//! `NaN` or an infinity, cannot be judged.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::error_chain;
use super::{round6, ProbeSample, Unit};
use crate::command::payload::{HumanDuration, Timestamp};

/// Largest API answer read.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Most series' labels listed in a sample's detail.
const MAX_DETAIL_SERIES: usize = 5;

/// A `promql` probe.
///
/// ```toml
/// [probes.fleet-5xx]
/// kind = "promql"
/// url = "http://prometheus.internal:9090"
/// query = 'sum(rate(http_requests_total{job="checkout",code=~"5.."}[2m])) / sum(rate(http_requests_total{job="checkout"}[2m]))'
/// unit = "ratio"
/// timeout = "3s"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromqlProbeConfig {
    /// The API's base URL, e.g. `http://127.0.0.1:9090` (with any path
    /// prefix, e.g. `.../prometheus` for Mimir); `/api/v1/query` is
    /// appended.
    pub url: String,
    /// A PromQL expression answering one number: a scalar or a
    /// single-sample instant vector.
    pub query: String,
    /// What the answer means: `ratio`, `seconds` or `number`.
    #[serde(default = "default_unit")]
    pub unit: Unit,
    /// Request timeout; a timed-out query makes the sample unreadable.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_unit() -> Unit {
    Unit::Number
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

impl PromqlProbeConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, why: String| Err((f.to_string(), why));
        super::check_probe_url(&self.url)?;
        if self.query_url().is_err() {
            return err("url", format!("{:?} does not parse", self.url));
        }
        if self.query.trim().is_empty() {
            return err("query", "must not be empty".into());
        }
        if self.query.len() > 8192 {
            return err("query", "must be at most 8192 bytes".into());
        }
        if self.timeout.0.is_zero() {
            return err("timeout", "must be above zero".into());
        }
        Ok(())
    }

    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// `{url}/api/v1/query?query=...`.
    pub fn query_url(&self) -> Result<reqwest::Url, String> {
        let base = format!("{}/api/v1/query", self.url.trim_end_matches('/'));
        let mut url = reqwest::Url::parse(&base).map_err(|e| e.to_string())?;
        url.query_pairs_mut().append_pair("query", &self.query);
        Ok(url)
    }
}

/// A value as the API writes it: `"0.05"`, `"NaN"`, `"+Inf"`.
fn parse_value(v: &Value) -> Result<f64, String> {
    let text = v
        .as_str()
        .ok_or_else(|| format!("value {v} is not a string"))?;
    let n: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("value {text:?} is not a number"))?;
    if n.is_finite() {
        Ok(n)
    } else {
        Err(format!("the query answered {text}"))
    }
}

/// The probe's value from an API answer: (value, note, detail).
pub fn interpret(status: u16, body: &[u8]) -> (Option<f64>, Option<String>, Value) {
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        let why = if (200..300).contains(&status) {
            "the answer is not JSON".to_string()
        } else {
            format!("HTTP {status}")
        };
        return (None, Some(why), json!({"status": status}));
    };
    let mut detail = json!({"status": status});
    if let Some(w) = doc["warnings"].as_array().filter(|w| !w.is_empty()) {
        detail["warnings"] = json!(w.iter().take(MAX_DETAIL_SERIES).collect::<Vec<_>>());
    }
    if doc["status"] != "success" {
        let kind = doc["errorType"].as_str().unwrap_or("error");
        let msg = doc["error"].as_str().unwrap_or("no reason given");
        return (
            None,
            Some(format!("query failed ({kind}, HTTP {status}): {msg}")),
            detail,
        );
    }
    let data = &doc["data"];
    let result_type = data["resultType"].as_str().unwrap_or_default();
    detail["result_type"] = json!(result_type);
    let point = match result_type {
        "scalar" => &data["result"],
        "vector" => {
            let series = data["result"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            detail["series"] = json!(series.len());
            detail["metrics"] = json!(series
                .iter()
                .take(MAX_DETAIL_SERIES)
                .map(|s| &s["metric"])
                .collect::<Vec<_>>());
            match series {
                [one] => &one["value"],
                [] => return (None, Some("the query returned no series".into()), detail),
                many => {
                    let why = format!(
                        "the query returned {} series; it must return one (aggregate it, e.g. sum(...))",
                        many.len()
                    );
                    return (None, Some(why), detail);
                }
            }
        }
        other => {
            let why = format!(
                "resultType {other:?}: the query must return a scalar or an instant vector"
            );
            return (None, Some(why), detail);
        }
    };
    detail["raw"] = point[1].clone();
    detail["eval_time"] = point[0].clone();
    match parse_value(&point[1]) {
        Ok(v) => (Some(round6(v)), None, detail),
        Err(why) => (None, Some(why), detail),
    }
}

/// Runs the query once. An instant query has no window of its own: the
/// query's range selectors say how far back it looks.
pub async fn measure(
    client: &reqwest::Client,
    name: &str,
    cfg: &PromqlProbeConfig,
    _window: Option<Duration>,
) -> ProbeSample {
    let unit = cfg.unit();
    let url = match cfg.query_url() {
        Ok(u) => u,
        Err(e) => return ProbeSample::missing(name, unit, format!("bad url: {e}")),
    };
    let (value, note, mut detail) = match fetch(client, url, cfg.timeout.0).await {
        Ok((status, body)) => interpret(status, &body),
        Err(why) => (None, Some(why), Value::Null),
    };
    if !detail.is_object() {
        detail = json!({});
    }
    detail["query"] = json!(cfg.query);
    ProbeSample {
        probe: name.to_string(),
        at: Timestamp::now(),
        value,
        unit,
        note,
        detail,
    }
}

async fn fetch(
    client: &reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let resp = client
        .get(url)
        .timeout(timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("unreachable: {}", error_chain(&e)))?;
    let status = resp.status().as_u16();
    let body = super::read_body_limited(resp, MAX_RESPONSE_BYTES, "the answer").await?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(values: &[&str]) -> Vec<u8> {
        let result: Vec<Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"metric": {"instance": format!("node-{i}")}, "value": [1_700_000_000.5, v]}))
            .collect();
        serde_json::to_vec(
            &json!({"status": "success", "data": {"resultType": "vector", "result": result}}),
        )
        .unwrap()
    }

    #[test]
    fn one_sample_vector_or_scalar() {
        let (v, note, detail) = interpret(200, &vector(&["0.05"]));
        assert_eq!((v, note), (Some(0.05), None));
        assert_eq!(detail["series"], 1);
        assert_eq!(detail["raw"], "0.05");
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#;
        assert_eq!(interpret(200, scalar).0, Some(42.0));
    }

    #[test]
    fn zero_several_nan_and_inf_are_unreadable() {
        let (v, note, _) = interpret(200, &vector(&[]));
        assert_eq!(v, None);
        assert!(note.unwrap().contains("no series"));
        let (v, note, detail) = interpret(200, &vector(&["1", "2"]));
        assert_eq!(v, None);
        assert!(note.unwrap().contains("2 series"));
        assert_eq!(detail["metrics"].as_array().unwrap().len(), 2);
        for bad in ["NaN", "+Inf", "-Inf"] {
            let (v, note, _) = interpret(200, &vector(&[bad]));
            assert_eq!(v, None, "{bad}");
            assert!(note.unwrap().contains(bad));
        }
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(interpret(200, matrix).1.unwrap().contains("matrix"));
    }

    #[test]
    fn api_errors_are_unreadable_with_their_reason() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        let (v, note, _) = interpret(400, body);
        assert_eq!(v, None);
        let note = note.unwrap();
        assert!(
            note.contains("bad_data") && note.contains("parse error"),
            "{note}"
        );
        assert_eq!(
            interpret(502, b"<html>bad gateway</html>").1.as_deref(),
            Some("HTTP 502")
        );
    }

    #[test]
    fn config_and_url() {
        let c: PromqlProbeConfig = toml::from_str(
            "url = \"http://127.0.0.1:9090/prom/\"\nquery = 'sum(rate(x{code=~\"5..\"}[1m]))'\nunit = \"ratio\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.unit(), Unit::Ratio);
        let u = c.query_url().unwrap();
        assert_eq!(u.path(), "/prom/api/v1/query");
        assert_eq!(
            u.query_pairs().next().unwrap().1,
            "sum(rate(x{code=~\"5..\"}[1m]))"
        );
        let d: PromqlProbeConfig =
            toml::from_str("url = \"http://h:9090\"\nquery = \"up\"\n").unwrap();
        assert_eq!(d.unit(), Unit::Number);
        let e: PromqlProbeConfig =
            toml::from_str("url = \"http://h:9090\"\nquery = \" \"\n").unwrap();
        assert_eq!(e.validate().unwrap_err().0, "query");
        assert!(toml::from_str::<PromqlProbeConfig>(
            "url = \"http://h\"\nquery = \"up\"\nunit = \"bytes\"\n"
        )
        .is_err());
    }
}
