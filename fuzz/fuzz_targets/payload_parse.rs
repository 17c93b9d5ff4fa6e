//! The command payload, parsed from the bytes the signatures cover, and
//! the values the agent derives from a parsed payload straight away: action
//! specs and descriptions, revert and halt targets, and the fleet wave an
//! agent is in and when that wave starts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tourniquet::fleet::{wave_of, wave_start};
use tourniquet::payload::Payload;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Payload::parse(data) else {
        return;
    };
    for action in &p.actions {
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
