//! `agent.toml`: parsed, paths resolved and every resource and probe
//! declaration checked, as at start and on `--check`. Relative paths are
//! resolved against a scratch directory the parser never writes to.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tourniquet::config::AgentConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for base in [tourniquet_fuzz::scratch_dir(), Path::new("")] {
        let Ok(cfg) = AgentConfig::from_toml(text, "agent.toml", base) else {
            continue;
        };
        let _ = cfg.agent_id();
        for r in cfg.resources.values() {
            let _ = r.provider.kind();
            let _ = r.provider.detail();
        }
        // What the fleet transport does with the URL at start.
        if let Some(nats) = &cfg.nats {
            let _ = tourniquet::transport::nats::fleet::split_userinfo(&nats.url);
            let _ = tourniquet::transport::nats::fleet::redact_url(&nats.url);
        }
    }
});
