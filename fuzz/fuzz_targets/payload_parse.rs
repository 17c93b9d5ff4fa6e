//! The command payload, parsed from the bytes the signatures cover, and
//! the values the agent derives from a parsed payload straight away: action
//! specs and descriptions, revert and halt targets, and the fleet wave an
//! agent is in and when that wave starts.
//!
//! An accepted payload must also keep two promises, checked here with
//! rules written apart from the parser's: its id is a canonical ULID (the
//! replay set must not see one command under two spellings), and no text a
//! reviewer reads holds a control, bidi-formatting or zero-width character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tourniquet::transport::nats::fleet::{wave_of, wave_start};
use tourniquet::command::payload::Payload;

const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters that make a terminal show other text than was signed.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

fn assert_visible(field: &str, text: &str) {
    assert!(!text.contains(hidden), "{field} {text:?} was accepted");
}

fn assert_visible_value(field: &str, v: &Value) {
    match v {
        Value::String(s) => assert_visible(field, s),
        Value::Array(items) => items.iter().for_each(|i| assert_visible_value(field, i)),
        Value::Object(m) => m.iter().for_each(|(k, v)| {
            assert_visible(field, k);
            assert_visible_value(field, v);
        }),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Payload::parse(data) else {
        return;
    };
    assert!(
        p.id.len() == 26
            && p.id.chars().all(|c| CROCKFORD.contains(c))
            && p.id.as_bytes()[0] <= b'7',
        "id {:?} is not a canonical ULID",
        p.id
    );
    assert_visible("issuer", &p.issuer);
    assert_visible("reason", &p.reason);
    if let Some(t) = &p.ticket {
        assert_visible("ticket", t);
    }
    for (k, v) in &p.target.labels {
        assert_visible("target.labels", k);
        assert_visible("target.labels", v);
    }
    for a in &p.target.agents {
        assert_visible("target.agents", a);
    }
    for action in &p.actions {
        assert_visible("op", &action.op);
        if let Some(r) = &action.resource {
            assert_visible("resource", r);
        }
        for (k, v) in &action.params {
            assert_visible("param", k);
            assert_visible_value("param", v);
        }
        let _ = action.spec();
        let _ = action.describe();
        let _ = action.revert_target();
        let _ = action.halt_target();
    }
    let _ = p.issued_at.until(p.expires);
    if let Some(rollout) = &p.rollout {
        for agent in ["checkout-eu-1", "edge-7"] {
            assert!(
                wave_of(&p, agent).is_some_and(|w| w < rollout.waves.len()),
                "a command with a rollout puts every agent in one of its waves"
            );
        }
        for wave in 0..rollout.waves.len() {
            let _ = wave_start(&p, wave);
        }
    }
    let _ = p.to_json();
});
