use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

/// An nginx server whose emergency rules live in one managed include file.
///
/// The operator's config includes that file once, inside the `server` block
/// it protects and before the block's own `allow`/`deny` rules:
///
/// ```nginx
/// server {
///     listen 80;
///     include /etc/nginx/tourniquet/hotfixes.conf;
///     ...
/// }
/// ```
///
/// The include is the only file the agent ever writes. It must exist (empty
/// is fine) or be creatable; a non-empty file the agent did not write is
/// refused, never overwritten.
///
/// ```toml
/// [resources.edge-nginx]
/// kind = "nginx"
/// include = "/etc/nginx/tourniquet/hotfixes.conf"
/// # follow_symlinks = false                # a symlink at `include` is refused
/// conf = "/etc/nginx/nginx.conf"            # passed as `-c`
/// # reload_command = ["systemctl", "reload", "nginx"]
///
/// [resources.edge-nginx.verify]
/// url = "http://127.0.0.1:80"
/// host = "shop.example.com"
/// probes = [{ path = "/healthz", status = 200 }]
/// ```
///
/// Limits worth knowing: server-level `deny` rules are inherited only by
/// locations that have no `allow`/`deny` of their own, and brownouts answer
/// in the server's rewrite phase, before any location is chosen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxConfig {
    /// The managed include file.
    pub include: PathBuf,
    /// Whether `include` may be a symlink. Default false: a symlink there
    /// is refused at `--check` and at start, because anyone who can write
    /// its directory could point it at any file the agent (root) would
    /// then overwrite. With true, the link is resolved once, at start, and
    /// the agent writes the file it points at (by atomic rename in that
    /// file's directory); re-pointing the link takes a restart.
    #[serde(default)]
    pub follow_symlinks: bool,
    /// The nginx binary. Default: `nginx` on PATH.
    #[serde(default = "default_binary")]
    pub binary: PathBuf,
    /// The main config file, passed as `-c` to the default test and reload
    /// commands. Default: nginx's compiled-in path.
    #[serde(default)]
    pub conf: Option<PathBuf>,
    /// The prefix path, passed as `-p`.
    #[serde(default)]
    pub prefix: Option<PathBuf>,
    /// The startup error log, passed as `-e` (nginx 1.19.5 and later), for
    /// an nginx whose compiled-in log path the agent cannot open.
    #[serde(default)]
    pub error_log: Option<PathBuf>,
    /// The config test, as an argv (no shell). Default:
    /// `nginx [-p PREFIX] [-c CONF] [-e LOG] -t`. It must exit 0 only for a
    /// config nginx would load.
    #[serde(default)]
    pub test_command: Option<Vec<String>>,
    /// The reload, as an argv (no shell). Default:
    /// `nginx [-p PREFIX] [-c CONF] [-e LOG] -s reload`; under systemd use
    /// `["systemctl", "reload", "nginx"]`.
    #[serde(default)]
    pub reload_command: Option<Vec<String>>,
    /// How long the test or the reload may take. Default: 30s.
    #[serde(default = "default_command_timeout", with = "crate::duration")]
    pub command_timeout: Duration,
    /// How the agent checks, with real requests, that a reload is live and
    /// answers as intended. Without it the agent trusts the reload's exit
    /// status.
    #[serde(default)]
    pub verify: Option<NginxVerifyConfig>,
}

/// `[resources.NAME.verify]` of an nginx resource.
///
/// After each reload the agent polls, on fresh connections, until all of
/// these hold at once or `timeout` passes:
/// - a secret per-rendering URL under `/.well-known/tourniquet/` answers
///   204, so the new include is live;
/// - each path of each active brownout answers its status and Retry-After;
/// - each probe answers its `status`, or the brownout's if one covers it.
///
/// The checks must then keep passing for `stable_for`. On a timeout the
/// previous include is restored and reloaded, and the
/// action fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxVerifyConfig {
    /// The base URL of the server block that includes the file, as the
    /// agent reaches it, e.g. `http://127.0.0.1:80`.
    pub url: String,
    /// A Host header to send, when the server block is a virtual host.
    #[serde(default)]
    pub host: Option<String>,
    /// How long the new config may take to answer as intended. Default: 10s.
    #[serde(default = "default_verify_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// How long every check must keep passing, on fresh connections,
    /// before the reload counts as live: nginx lets its old workers accept
    /// for about 100ms after starting the new ones. Default: 300ms.
    #[serde(default = "default_stable_for", with = "crate::duration")]
    pub stable_for: Duration,
    /// Paths whose usual answers must survive every change.
    #[serde(default)]
    pub probes: Vec<NginxProbe>,
}

/// A path and the status it answers when no brownout covers it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxProbe {
    pub path: String,
    pub status: u16,
}

fn default_binary() -> PathBuf {
    PathBuf::from("nginx")
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_stable_for() -> Duration {
    Duration::from_millis(300)
}

fn default_verify_timeout() -> Duration {
    Duration::from_secs(10)
}

impl NginxConfig {
    /// Checks what can be checked without touching anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.include.file_name().is_none() {
            return Err(ConfigError::field(
                "include",
                format!("{} names no file", self.include.display()),
            ));
        }
        if self.binary.as_os_str().is_empty() {
            return Err(ConfigError::field("binary", "must not be empty"));
        }
        for (name, argv) in [
            ("test_command", &self.test_command),
            ("reload_command", &self.reload_command),
        ] {
            if argv
                .as_ref()
                .is_some_and(|a| a.is_empty() || a[0].is_empty())
            {
                return Err(ConfigError::field(name, "must name a program"));
            }
        }
        if self.command_timeout.is_zero() {
            return Err(ConfigError::field(
                "command_timeout",
                "must be more than zero",
            ));
        }
        if let Some(v) = &self.verify {
            let url = reqwest::Url::parse(&v.url)
                .map_err(|e| ConfigError::field("verify.url", e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::field("verify.url", "must be http or https"));
            }
            if let Some(h) = &v.host {
                if reqwest::header::HeaderValue::from_str(h).is_err() || h.is_empty() {
                    return Err(ConfigError::field("verify.host", "not a valid Host header"));
                }
            }
            if v.timeout.is_zero() {
                return Err(ConfigError::field(
                    "verify.timeout",
                    "must be more than zero",
                ));
            }
            for p in &v.probes {
                if !p.path.starts_with('/') {
                    return Err(ConfigError::field(
                        "verify.probes",
                        format!("{:?} must start with /", p.path),
                    ));
                }
                if !(100..=599).contains(&p.status) {
                    return Err(ConfigError::field(
                        "verify.probes",
                        format!("{} is not a status", p.status),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The path fields, for resolving relative paths against the config
    /// file. The binary counts only when it names a path, not a PATH lookup.
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut out = vec![&mut self.include];
        if self.binary.components().count() > 1 {
            out.push(&mut self.binary);
        }
        out.extend(
            [&mut self.conf, &mut self.prefix, &mut self.error_log]
                .into_iter()
                .flatten(),
        );
        out
    }

    fn nginx_argv(&self, tail: &[&str]) -> Vec<String> {
        let mut argv = vec![self.binary.to_string_lossy().into_owned()];
        for (flag, v) in [
            ("-p", &self.prefix),
            ("-c", &self.conf),
            ("-e", &self.error_log),
        ] {
            if let Some(v) = v {
                argv.push(flag.into());
                argv.push(v.to_string_lossy().into_owned());
            }
        }
        argv.extend(tail.iter().map(|s| s.to_string()));
        argv
    }

    /// The config test argv.
    pub fn test_argv(&self) -> Vec<String> {
        self.test_command
            .clone()
            .unwrap_or_else(|| self.nginx_argv(&["-t"]))
    }

    /// The reload argv.
    pub fn reload_argv(&self) -> Vec<String> {
        self.reload_command
            .clone()
            .unwrap_or_else(|| self.nginx_argv(&["-s", "reload"]))
    }
}
