//! The embedded default: `tourniquet agent` with no `--config` runs a
//! self-contained demo under `./.tourniquet/`, so a first-time user sees a
//! signed flag flip end to end in two commands. Only this mode creates a
//! trusted key on its own, and it says so loudly.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::AgentConfig;
use crate::trust::keys;

/// Where the embedded default keeps everything.
pub const DEFAULT_DIR: &str = ".tourniquet";
/// The dev operator key the CLI uses when no `--key` is given.
pub const DEV_KEY_NAME: &str = "operator_ed25519";

/// The default config, relative to the working directory.
pub const DEFAULT_CONFIG: &str = r#"
[agent]
id = "dev-agent"
labels = { env = "dev" }
state_dir = ".tourniquet/state"
policy = ".tourniquet/policy.toml"

[api]
listen = "127.0.0.1:7370"

[inbox]
dir = ".tourniquet/inbox"

[resources.demo-flags]
kind = "flags-file"
path = ".tourniquet/flags.json"
guard = { probes = ["self-health"], bake = "1s" }

[probes.self-health]
kind = "http"
url = "http://127.0.0.1:7370/healthz"
samples = 3
interval = "50ms"
"#;

/// The seeded demo flags file (flagd format).
pub const DEMO_FLAGS: &str = r#"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "new_checkout": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "on"
    },
    "search_v2": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "off"
    },
    "recommendations": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "on"
    },
    "checkout_banner": {
      "state": "DISABLED",
      "variants": { "sale": "Winter sale", "none": "" },
      "defaultVariant": "none"
    }
  }
}
"#;

/// The dev key path, if the default directory has one.
pub fn dev_key_path() -> PathBuf {
    Path::new(DEFAULT_DIR).join(DEV_KEY_NAME)
}

/// Points the demo's self-health probe at a moved API.
pub fn follow_listen(cfg: &mut AgentConfig, addr: std::net::SocketAddr) {
    if let Some(crate::config::ProbeConfig::Http(p)) = cfg.probes.get_mut("self-health") {
        p.url = format!("http://{addr}/healthz");
    }
}

/// What setting up the default created, for the start banner.
pub struct DevSetup {
    pub config: AgentConfig,
    pub created_key: bool,
}

/// Loads the embedded config, creating the dev key, its policy and the demo
/// flags file on first start.
pub fn prepare() -> Result<DevSetup, String> {
    let dir = Path::new(DEFAULT_DIR);
    crate::state::create_private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key_path = dir.join(DEV_KEY_NAME);
    let mut created_key = false;
    if !key_path.exists() {
        keys::generate_keypair(&key_path, "tourniquet-dev-operator").map_err(|e| e.to_string())?;
        created_key = true;
    }
    let public = fs::read_to_string(keys::pub_path(&key_path))
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let policy_path = dir.join("policy.toml");
    if created_key || !policy_path.exists() {
        let policy = format!(
            r#"# Dev trust, written by `tourniquet agent` in default mode. Do not use in production.
version = 1
max_ttl = "1h"
clock_skew = "2m"

[keys.dev]
public_key = "{}"
roles = ["dev"]

[[rules]]
ops = ["*"]
resources = ["*"]
roles = ["dev"]
threshold = 1
"#,
            public.trim()
        );
        tourniquet_providers::write_atomically(&policy_path, policy.as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", policy_path.display()))?;
    }
    let flags = dir.join("flags.json");
    if !flags.exists() {
        tourniquet_providers::write_atomically(&flags, DEMO_FLAGS.as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", flags.display()))?;
    }
    let config = AgentConfig::from_toml(DEFAULT_CONFIG, "<embedded default>", Path::new(""))
        .map_err(|e| e.to_string())?;
    Ok(DevSetup {
        config,
        created_key,
    })
}
