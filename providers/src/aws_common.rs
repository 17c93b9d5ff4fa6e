//! What the AWS providers share: how a client is configured and how one
//! AWS call is made.
//!
//! Credentials and region come from the SDK's standard chain (environment,
//! profile, IMDS, web identity); a resource may pin its region and an
//! `endpoint_url` (a private endpoint, or an emulator in tests).
//!
//! The SDK has no default operation or read timeout, so a hung endpoint
//! would hang a command forever: every client gets connect, read and
//! attempt timeouts here, and [`call`] bounds the whole call as well.
//!
//! Retries are ours, not the SDK's, so that each one is counted and the
//! count reaches the receipt (`tries`, per IAM action): only throttling,
//! 5xx, timeouts and connection failures are retried, with bounded
//! exponential backoff and full jitter. Errors are mapped to messages an
//! operator can act on; an access denial names the IAM action that is
//! missing. No AWS error carries a secret value, and no call here reads one.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::{ConfigError, ProviderError};

/// The first backoff; each retry doubles it, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// The longest single backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a resource's clients reach AWS. Each AWS provider config carries
/// these fields (flat, beside its own).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub connect_timeout: Duration,
    pub attempt_timeout: Duration,
    pub operation_timeout: Duration,
    pub max_attempts: u32,
}

pub(crate) fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
pub(crate) fn default_attempt_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(crate) fn default_operation_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(crate) fn default_max_attempts() -> u32 {
    4
}

/// Declares an AWS resource's config struct: its own fields, then the
/// client settings every AWS kind shares, written once here. (A flattened
/// `ClientSettings` would be shorter, but serde's `flatten` does not work
/// with `deny_unknown_fields`, and a misspelt field must fail the config.)
macro_rules! aws_resource_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// The AWS region. Default: the standard chain (`AWS_REGION`, the
            /// profile, IMDS).
            #[serde(default)]
            pub region: Option<String>,
            /// Another endpoint: a VPC endpoint, or an emulator in tests.
            /// Default: the service's endpoint for the region.
            #[serde(default)]
            pub endpoint_url: Option<String>,
            /// How long connecting may take. Default: 3s.
            #[serde(
                default = "crate::aws_common::default_connect_timeout",
                with = "crate::duration"
            )]
            pub connect_timeout: std::time::Duration,
            /// How long one try of a call may take. Default: 10s.
            #[serde(
                default = "crate::aws_common::default_attempt_timeout",
                with = "crate::duration"
            )]
            pub attempt_timeout: std::time::Duration,
            /// How long one call may take, retries included. Default: 30s.
            #[serde(
                default = "crate::aws_common::default_operation_timeout",
                with = "crate::duration"
            )]
            pub operation_timeout: std::time::Duration,
            /// Tries per call when throttled, on 5xx and on timeouts. Default: 4.
            #[serde(default = "crate::aws_common::default_max_attempts")]
            pub max_attempts: u32,
        }

        impl $name {
            /// How this resource's clients reach AWS.
            pub fn client_settings(&self) -> crate::aws_common::ClientSettings {
                crate::aws_common::ClientSettings {
                    region: self.region.clone(),
                    endpoint_url: self.endpoint_url.clone(),
                    connect_timeout: self.connect_timeout,
                    attempt_timeout: self.attempt_timeout,
                    operation_timeout: self.operation_timeout,
                    max_attempts: self.max_attempts,
                }
            }
        }
    };
}
pub(crate) use aws_resource_config;

impl ClientSettings {
    /// Config-time checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(r) = &self.region {
            if r.is_empty()
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(ConfigError::field(
                    "region",
                    format!("{r:?} is not an AWS region name"),
                ));
            }
        }
        if let Some(u) = &self.endpoint_url {
            let url = reqwest::Url::parse(u)
                .map_err(|e| ConfigError::field("endpoint_url", e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https")
                || url.host_str().is_none()
                || url.query().is_some()
            {
                return Err(ConfigError::field(
                    "endpoint_url",
                    "must be an http(s):// URL without a query",
                ));
            }
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("attempt_timeout", self.attempt_timeout),
            ("operation_timeout", self.operation_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::field(name, "must be more than zero"));
            }
        }
        if self.operation_timeout < self.attempt_timeout {
            return Err(ConfigError::field(
                "operation_timeout",
                "must be at least attempt_timeout",
            ));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(ConfigError::field(
                "max_attempts",
                "must be between 1 and 10",
            ));
        }
        Ok(())
    }

    /// What the banner shows.
    pub fn describe(&self) -> String {
        let region = self
            .region
            .as_deref()
            .unwrap_or("region from the AWS chain");
        match &self.endpoint_url {
            Some(u) => format!("{region}, endpoint {u}"),
            None => region.to_string(),
        }
    }
}

/// The SDK config of one resource, loaded on first use: building a
/// provider (and `--check`) touches no credentials and no network.
pub struct Aws {
    settings: ClientSettings,
    config: OnceCell<SdkConfig>,
}

impl Aws {
    pub fn new(settings: ClientSettings) -> Aws {
        Aws {
            settings,
            config: OnceCell::new(),
        }
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The shared SDK config, with the timeouts every client must have and
    /// the SDK's own retries off (see [`call`]).
    pub async fn sdk_config(&self) -> &SdkConfig {
        self.config
            .get_or_init(|| async {
                let s = &self.settings;
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(s.connect_timeout)
                    .read_timeout(s.attempt_timeout)
                    .operation_attempt_timeout(s.attempt_timeout)
                    .operation_timeout(s.attempt_timeout)
                    .build();
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .timeout_config(timeouts)
                    .retry_config(RetryConfig::disabled());
                if let Some(r) = &s.region {
                    loader = loader.region(Region::new(r.clone()));
                }
                if let Some(u) = &s.endpoint_url {
                    loader = loader.endpoint_url(u.clone());
                }
                loader.load().await
            })
            .await
    }
}

/// Tries per IAM action during one snapshot, apply or revert.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tries(BTreeMap<&'static str, u32>);

impl Tries {
    fn bump(&mut self, action: &'static str) {
        *self.0.entry(action).or_default() += 1;
    }

    /// `{"lambda:UpdateAlias": 3, …}`, for the state a provider returns.
    pub fn to_json(&self) -> Value {
        json!(self.0)
    }
}

/// Why an AWS call failed, after its retries.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The agent's identity lacks the IAM permission.
    #[error("{action} on {target}: access denied ({code}): the agent's AWS identity needs the IAM permission {action} on this resource (infra/aws/iam-policy.json grants it); AWS said: {message}")]
    AccessDenied {
        action: &'static str,
        target: String,
        code: String,
        message: String,
    },
    /// AWS answered with an error that retrying does not fix.
    #[error("{action} on {target}: {code}: {message}")]
    Service {
        action: &'static str,
        target: String,
        code: String,
        message: String,
        status: u16,
    },
    /// The SDK's credential chain found no credentials: retrying does not
    /// help, and the operator needs to know where the SDK looked.
    #[error("{action} on {target}: no AWS credentials: the SDK's default chain tried {} and none had any; give the agent's service an identity (instance profile, web identity role, AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)", tried_list(.tried))]
    NoCredentials {
        action: &'static str,
        target: String,
        /// The providers of the chain, in the order tried (`Environment`, `Profile`, …).
        tried: Vec<String>,
    },
    /// Throttled, 5xx, timed out or unreachable on every try.
    #[error("{action} on {target}: {why} (gave up after {tries} tries)")]
    Exhausted {
        action: &'static str,
        target: String,
        why: String,
        tries: u32,
    },
}

impl AwsError {
    /// The AWS error code, if AWS answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::AccessDenied { code, .. } | AwsError::Service { code, .. } => Some(code),
            AwsError::Exhausted { .. } | AwsError::NoCredentials { .. } => None,
        }
    }

    /// A "no such thing" answer: the action names something that is not
    /// there, which is the command's fault, not AWS's.
    pub fn is_not_found(&self) -> bool {
        self.code().is_some_and(|c| {
            matches!(
                c,
                "ResourceNotFoundException"
                    | "WAFNonexistentItemException"
                    | "NoSuchDistribution"
                    | "NoSuchInvalidation"
            )
        })
    }
}

fn tried_list(tried: &[String]) -> String {
    if tried.is_empty() {
        "no provider".into()
    } else {
        tried.join(", ")
    }
}

/// The providers the SDK's credential chain tried, when a call failed for
/// want of credentials. The SDK's chain error is not a type this crate can
/// name (it lives in aws-credential-types), so its text is read: "no
/// credentials found in chain. Attempted:" and one "  NAME: why" line per
/// provider.
fn credential_chain_tried(e: &(dyn std::error::Error + 'static)) -> Option<Vec<String>> {
    let mut source = Some(e);
    while let Some(err) = source {
        let text = err.to_string();
        if let Some(rest) = text.strip_prefix("no credentials found in chain. Attempted:") {
            return Some(
                rest.lines()
                    .filter_map(|l| l.trim().split_once(':').map(|(name, _)| name.to_string()))
                    .filter(|name| !name.is_empty())
                    .collect(),
            );
        }
        if text.starts_with("no providers were configured in the chain") {
            return Some(Vec::new());
        }
        source = err.source();
    }
    None
}

/// How one failed try is handled.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    /// Worth another try: why.
    Retry(String),
    /// Final.
    Fail,
}

/// Error codes AWS uses for throttling across services.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

fn is_access_denied(code: &str) -> bool {
    matches!(
        code,
        "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation"
    )
}

fn classify(status: Option<u16>, code: Option<&str>) -> Class {
    if let Some(c) = code.filter(|c| THROTTLING_CODES.contains(c)) {
        return Class::Retry(format!("throttled ({c})"));
    }
    match status {
        Some(429) => Class::Retry("throttled (HTTP 429)".into()),
        Some(s) if s >= 500 => Class::Retry(format!(
            "AWS answered HTTP {s}{}",
            code.map(|c| format!(" ({c})")).unwrap_or_default()
        )),
        _ => Class::Fail,
    }
}

/// The backoff before try `attempt + 1`: full jitter over an exponentially
/// growing, capped window.
fn backoff(attempt: u32) -> Duration {
    let window = BASE_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    let nanos = window.as_nanos() as u64;
    Duration::from_nanos(if nanos == 0 { 0 } else { random_u64() % nanos })
}

/// A random number from the standard library's per-process hash keys; good
/// enough to spread retries, and no dependency.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect()
}

/// Makes one AWS call: `f` builds and sends the request, again for each
/// retry. `action` is the IAM action the call needs (`lambda:UpdateAlias`),
/// used for counting and in errors; `target` names the resource in errors.
pub async fn call<T, E, Fut>(
    settings: &ClientSettings,
    tries: &mut Tries,
    action: &'static str,
    target: &str,
    mut f: impl FnMut() -> Fut,
) -> Result<T, AwsError>
where
    Fut: Future<Output = Result<T, SdkError<E>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let deadline = tokio::time::Instant::now() + settings.operation_timeout;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        tries.bump(action);
        let why = match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Err(_) => format!(
                "no answer within the operation timeout ({})",
                humantime::format_duration(settings.operation_timeout)
            ),
            Ok(Err(e)) => {
                if let Some(tried) = credential_chain_tried(&e) {
                    return Err(AwsError::NoCredentials {
                        action,
                        target: target.to_string(),
                        tried,
                    });
                }
                let status = e.raw_response().map(|r| r.status().as_u16());
                let code = e.code().map(str::to_string);
                let message = one_line(e.message().unwrap_or_default());
                match (&e, classify(status, code.as_deref())) {
                    (_, Class::Retry(why)) => format!("{why}: {message}"),
                    (SdkError::ServiceError(_), Class::Fail) => {
                        let code = code.unwrap_or_else(|| "UnknownError".into());
                        let target = target.to_string();
                        return Err(if is_access_denied(&code) || status == Some(403) {
                            AwsError::AccessDenied {
                                action,
                                target,
                                code,
                                message,
                            }
                        } else {
                            AwsError::Service {
                                action,
                                target,
                                code,
                                message,
                                status: status.unwrap_or(0),
                            }
                        });
                    }
                    (SdkError::TimeoutError(_), _) => format!(
                        "no answer within the attempt timeout ({})",
                        humantime::format_duration(settings.attempt_timeout)
                    ),
                    (SdkError::DispatchFailure(d), _) if d.is_timeout() => format!(
                        "no answer within the attempt timeout ({})",
                        humantime::format_duration(settings.attempt_timeout)
                    ),
                    (SdkError::DispatchFailure(d), _) if d.is_io() || d.is_other() => {
                        format!(
                            "cannot reach AWS: {}",
                            one_line(&DisplayErrorContext(&e).to_string())
                        )
                    }
                    (SdkError::ResponseError(_), _) => format!(
                        "unreadable answer: {}",
                        one_line(&DisplayErrorContext(&e).to_string())
                    ),
                    // Construction failures and user errors (no region, no
                    // credentials) do not get better by retrying.
                    _ => {
                        return Err(AwsError::Service {
                            action,
                            target: target.to_string(),
                            code: "ClientError".into(),
                            message: one_line(&DisplayErrorContext(&e).to_string()),
                            status: 0,
                        })
                    }
                }
            }
        };
        let wait = backoff(attempt);
        let out_of_time = tokio::time::Instant::now() + wait >= deadline;
        if attempt >= settings.max_attempts || out_of_time {
            return Err(AwsError::Exhausted {
                action,
                target: target.to_string(),
                why,
                tries: attempt,
            });
        }
        tracing::warn!(action, target, attempt, wait_ms = wait.as_millis() as u64, why = %why, "AWS call failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

/// Maps a "does not exist" answer to `Invalid` (the command names what is
/// not there) and everything else to `Failed`.
pub fn not_found_is_invalid(e: AwsError, what: impl FnOnce() -> String) -> ProviderError {
    if e.is_not_found() {
        ProviderError::Invalid(what())
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_5xx_are_retried_client_errors_are_not() {
        assert!(matches!(
            classify(Some(400), Some("ThrottlingException")),
            Class::Retry(_)
        ));
        assert!(matches!(
            classify(Some(400), Some("Throttling")),
            Class::Retry(_)
        ));
        assert!(matches!(classify(Some(429), None), Class::Retry(_)));
        assert!(matches!(
            classify(Some(503), Some("ServiceUnavailable")),
            Class::Retry(_)
        ));
        assert_eq!(
            classify(Some(400), Some("ValidationException")),
            Class::Fail
        );
        assert_eq!(
            classify(Some(403), Some("AccessDeniedException")),
            Class::Fail
        );
    }

    #[test]
    fn backoff_stays_inside_its_growing_window() {
        for attempt in 1..20 {
            let window = BASE_BACKOFF
                .saturating_mul(1u32 << attempt.min(16))
                .min(MAX_BACKOFF);
            assert!(backoff(attempt) < window.max(Duration::from_nanos(1)));
        }
    }

    #[test]
    fn settings_are_checked() {
        let good = ClientSettings {
            region: Some("eu-central-1".into()),
            endpoint_url: Some("http://127.0.0.1:5000".into()),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            max_attempts: 3,
        };
        assert!(good.validate().is_ok());
        for bad in [
            ClientSettings {
                region: Some("EU Central".into()),
                ..good.clone()
            },
            ClientSettings {
                endpoint_url: Some("ftp://x".into()),
                ..good.clone()
            },
            ClientSettings {
                max_attempts: 0,
                ..good.clone()
            },
            ClientSettings {
                operation_timeout: Duration::from_secs(1),
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    /// An error that reads like the SDK's credential chain error, wrapped
    /// as the SDK wraps it (dispatch failure, then credentials not loaded).
    #[derive(Debug)]
    struct Wrapped(&'static str, Option<Box<Wrapped>>);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|w| w as _)
        }
    }

    #[test]
    fn missing_credentials_name_the_chain_that_was_tried() {
        let chain = Wrapped(
            "dispatch failure",
            Some(Box::new(Wrapped(
                "the credential provider was not enabled",
                Some(Box::new(Wrapped(
                    "no credentials found in chain. Attempted:\n  Environment: the credential provider was not enabled: environment variable not set\n  Profile: the credential provider was not enabled\n  Ec2InstanceMetadata: the credential provider was not enabled",
                    None,
                ))),
            ))),
        );
        let tried = credential_chain_tried(&chain).expect("a credentials error");
        assert_eq!(tried, ["Environment", "Profile", "Ec2InstanceMetadata"]);
        let e = AwsError::NoCredentials {
            action: "autoscaling:DescribeAutoScalingGroups",
            target: "Auto Scaling group web".into(),
            tried,
        };
        let line = e.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("no AWS credentials: the SDK's default chain tried Environment, Profile, Ec2InstanceMetadata"),
            "{line}"
        );
        assert!(credential_chain_tried(&Wrapped("connection refused", None)).is_none());
    }

    #[test]
    fn access_denied_names_the_iam_action() {
        let e = AwsError::AccessDenied {
            action: "lambda:UpdateAlias",
            target: "function checkout alias live".into(),
            code: "AccessDeniedException".into(),
            message: "not authorized".into(),
        };
        assert!(e
            .to_string()
            .contains("needs the IAM permission lambda:UpdateAlias"));
    }
}
