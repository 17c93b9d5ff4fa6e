//! Human output: short, aligned, and saying what changed first.

use serde_json::Value;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// A state value like `{"flag":"x","state":"ENABLED","defaultVariant":"on"}`
/// shown compactly.
fn state_text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Object(o) => {
            if let (Some(var), Some(st)) = (o.get("defaultVariant"), o.get("state")) {
                let var = var.as_str().unwrap_or("");
                if st == "DISABLED" {
                    return format!("{var} (DISABLED)");
                }
                return var.to_string();
            }
            serde_json::to_string(v).unwrap_or_default()
        }
        other => other.to_string(),
    }
}

/// A probe value in its unit: ratios as %, seconds as ms.
fn value_text(v: Option<f64>, unit: &str) -> String {
    match (v, unit) {
        (None, _) => "n/a".into(),
        (Some(x), "ratio") => format!("{:.2}%", x * 100.0),
        (Some(x), "seconds") => format!("{:.1}ms", x * 1000.0),
        (Some(x), _) => format!("{x:.3}"),
    }
}

/// One probe sample: its value, plus the http detail when there is one.
fn sample_text(v: &Value) -> String {
    let value = value_text(v.get("value").and_then(Value::as_f64), s(v, "unit"));
    let d = v.get("detail").unwrap_or(&Value::Null);
    let extra = match (
        d.get("ok").and_then(Value::as_u64),
        d.get("requests").and_then(Value::as_u64),
    ) {
        (Some(ok), Some(n)) => {
            let p99 = d
                .get("p99_ms")
                .and_then(Value::as_f64)
                .map(|x| format!(", p99 {x:.1}ms"))
                .unwrap_or_default();
            format!(" ({ok}/{n} ok{p99})")
        }
        _ => String::new(),
    };
    let note = v
        .get("note")
        .and_then(Value::as_str)
        .map(|n| format!(" [{n}]"))
        .unwrap_or_default();
    format!("{value}{extra}{note}")
}

/// One command record (as GET /v1/commands/ID returns it).
pub fn record(r: &Value) -> String {
    let mut out = String::new();
    let state = s(r, "state");
    let id = s(r, "id");
    let decision = if r.get("reason").is_some_and(|x| !x.is_null()) {
        "rejected"
    } else {
        "accepted"
    };
    out.push_str(&format!("{state:<12} {id}\n"));
    let signers: Vec<String> = r
        .get("signers")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|x| s(x, "name").to_string()).collect())
        .unwrap_or_default();
    out.push_str(&format!(
        "  decision:  {decision}{}\n",
        if signers.is_empty() {
            String::new()
        } else {
            format!(" (signed by {})", signers.join(", "))
        }
    ));
    if let Some(reason) = r.get("reason").and_then(Value::as_str) {
        out.push_str(&format!("  reason:    {reason}: {}\n", s(r, "message")));
    }
    if let Some(p) = r.get("payload").filter(|p| !p.is_null()) {
        out.push_str(&format!(
            "  asked by:  {} — {}\n",
            s(p, "issuer"),
            s(p, "reason")
        ));
    }
    for a in r
        .get("actions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let after = if r
            .get("payload")
            .and_then(|p| p.get("dry_run"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            a.get("planned")
        } else {
            a.get("after")
        };
        let flag = a
            .get("params")
            .and_then(|p| p.get("flag"))
            .and_then(Value::as_str)
            .map(|f| format!(" {f}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  change:    {} {}{flag}: {} → {}{}\n",
            s(a, "resource"),
            s(a, "op"),
            state_text(a.get("before").unwrap_or(&Value::Null)),
            state_text(after.unwrap_or(&Value::Null)),
            if a.get("reverted").and_then(Value::as_bool) == Some(true) {
                " (reverted)"
            } else {
                ""
            }
        ));
    }
    if let Some(t) = r.get("telemetry").filter(|t| !t.is_null()) {
        let list = |k: &str| {
            t.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let (before, after) = (list("before"), list("after"));
        for b in &before {
            let name = s(b, "probe");
            let a = after.iter().find(|a| s(a, "probe") == name);
            out.push_str(&format!(
                "  probe:     {name}: before {} | after {}\n",
                sample_text(b),
                a.map(sample_text).unwrap_or_else(|| "-".into())
            ));
        }
        let checks = list("checks");
        if !checks.is_empty() {
            out.push_str(&format!(
                "  {:<16} {:<13} {:<10} {:>10} {:>10}  {}\n",
                "PROBE", "CHECK", "THRESHOLD", "BEFORE", "AFTER", "VERDICT"
            ));
            for c in &checks {
                let unit = s(c, "unit");
                out.push_str(&format!(
                    "  {:<16} {:<13} {:<10} {:>10} {:>10}  {}\n",
                    s(c, "probe"),
                    s(c, "check"),
                    s(c, "threshold"),
                    value_text(c.get("before").and_then(Value::as_f64), unit),
                    value_text(c.get("after").and_then(Value::as_f64), unit),
                    s(c, "verdict")
                ));
            }
        }
        if let Some(v) = t.get("verdict").and_then(Value::as_str) {
            let rounds = t
                .get("rounds")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0);
            let aborted = if t.get("early_abort").and_then(Value::as_bool) == Some(true) {
                ", aborted early"
            } else {
                ""
            };
            out.push_str(&format!(
                "  verdict:   {v} after {rounds} bake round(s){aborted}\n"
            ));
        }
    }
    if let Some(left) = r.get("hold_left_s").and_then(Value::as_u64) {
        if state == "kept" {
            out.push_str(&format!(
                "  hold:      {} left (reverts at {})\n",
                humantime::format_duration(std::time::Duration::from_secs(left)),
                s(r, "hold_until")
            ));
        }
    }
    if let Some(last) = r
        .get("timeline")
        .and_then(Value::as_array)
        .and_then(|t| t.last())
    {
        if let Some(note) = last.get("note").and_then(Value::as_str) {
            out.push_str(&format!("  note:      {note}\n"));
        }
    }
    out
}

/// The active hotfixes list.
pub fn hotfixes(body: &Value) -> String {
    let list = body
        .get("hotfixes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        return "no active hotfixes\n".into();
    }
    let mut out = format!(
        "{:<28} {:<10} {:<40} {}\n",
        "ID", "HOLD LEFT", "CHANGE", "REASON"
    );
    for h in list {
        let change: Vec<String> = h
            .get("actions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|a| {
                let flag = a
                    .get("params")
                    .and_then(|p| p.get("flag"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!(
                    "{} {} {flag} {}→{}",
                    s(a, "resource"),
                    s(a, "op"),
                    state_text(a.get("before").unwrap_or(&Value::Null)),
                    state_text(a.get("after").unwrap_or(&Value::Null))
                )
            })
            .collect();
        let left = h
            .get("hold_left_s")
            .and_then(Value::as_u64)
            .map(|l| humantime::format_duration(std::time::Duration::from_secs(l)).to_string())
            .unwrap_or_else(|| "none".into());
        out.push_str(&format!(
            "{:<28} {:<10} {:<40} {}\n",
            s(&h, "id"),
            left,
            change.join("; "),
            s(&h, "reason")
        ));
    }
    out
}
