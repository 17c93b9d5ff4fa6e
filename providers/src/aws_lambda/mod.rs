//! `aws-lambda`: `lambda.alias {version, weights?}` repoints the alias
//! callers invoke (a rollback to a known-good version, or a weighted
//! canary), and `lambda.concurrency {reserved}` caps the function's reserved
//! concurrency, where 0 stops it being invoked at all.
//!
//! API: <https://docs.aws.amazon.com/lambda/latest/api/API_UpdateAlias.html>
//! (an alias routes to its version and at most one additional version,
//! whose weight is between 0 and 1) and
//! <https://docs.aws.amazon.com/lambda/latest/api/API_PutFunctionConcurrency.html>.
//!
//! Payloads carry no floats, so weights are strings: `"0.1"` or `"10%"`.
//! Revert restores the alias's version and routing exactly, and deletes
//! the concurrency setting when there was none before.

mod config;
mod declare;

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_sdk_lambda::types::AliasRoutingConfiguration;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

pub(crate) use config::check_name;
pub use config::LambdaConfig;
pub use declare::KIND;

use crate::aws_common::{self, Aws, Tries};
use crate::{ActionSpec, OpParams, Provider, ProviderError, State};

pub const ALIAS_OP: &str = "lambda.alias";
pub const CONCURRENCY_OP: &str = "lambda.concurrency";
/// Lambda routes an alias to at most two versions: its own and one more.
const MAX_ADDITIONAL_VERSIONS: usize = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasParams {
    version: String,
    #[serde(default)]
    weights: BTreeMap<String, String>,
}

impl OpParams for AliasParams {
    const FIELDS: &'static [&'static str] = &["version", "weights"];
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConcurrencyParams {
    reserved: u32,
}

impl OpParams for ConcurrencyParams {
    const FIELDS: &'static [&'static str] = &["reserved"];
}

/// A validated action.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Alias {
        version: String,
        weights: BTreeMap<String, f64>,
    },
    Concurrency {
        reserved: i32,
    },
}

/// The alias part of the state: where it points.
#[derive(Debug, Clone, PartialEq)]
struct AliasState {
    version: String,
    weights: BTreeMap<String, f64>,
}

impl AliasState {
    fn to_json(&self, alias: &str) -> Value {
        json!({"alias": alias, "version": self.version, "weights": self.weights})
    }

    fn from_json(v: &Value) -> Result<AliasState, ProviderError> {
        let bad = |e: String| {
            ProviderError::Failed(format!("the recorded before-state is unreadable: {e}"))
        };
        let version = v["version"]
            .as_str()
            .ok_or_else(|| bad("no version".into()))?
            .to_string();
        let weights =
            serde_json::from_value(v["weights"].clone()).map_err(|e| bad(e.to_string()))?;
        Ok(AliasState { version, weights })
    }
}

/// `"0.1"` or `"10%"` as a ratio.
fn parse_weight(text: &str) -> Option<f64> {
    let (num, scale) = match text.strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (text, 1.0),
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 6 {
        return None;
    }
    if num.contains('.') && frac.is_empty() {
        return None;
    }
    num.parse::<f64>().ok().map(|v| v / scale)
}

fn is_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit())
}

/// The runtime of one `aws-lambda` resource.
pub struct Lambda {
    config: LambdaConfig,
    aws: Aws,
    client: OnceCell<aws_sdk_lambda::Client>,
}

impl Lambda {
    pub fn new(config: LambdaConfig) -> Self {
        let aws = Aws::new(config.client_settings());
        Lambda {
            config,
            aws,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_lambda::Client {
        self.client
            .get_or_init(|| async { aws_sdk_lambda::Client::new(self.aws.sdk_config().await) })
            .await
    }

    fn target(&self) -> String {
        format!(
            "function {} alias {}",
            self.config.function, self.config.alias
        )
    }

    fn parse(&self, action: &ActionSpec) -> Result<Action, ProviderError> {
        let invalid = |m: String| ProviderError::Invalid(format!("{}: {m}", action.op));
        match action.op.as_str() {
            ALIAS_OP => {
                let p: AliasParams = action.parse_params()?;
                if !(is_version(&p.version) || p.version == "$LATEST") {
                    return Err(invalid(format!(
                        "version: {:?} is not a published version number or $LATEST",
                        p.version.chars().take(32).collect::<String>()
                    )));
                }
                if p.weights.len() > MAX_ADDITIONAL_VERSIONS {
                    return Err(invalid(format!(
                        "weights: an alias routes to at most {} versions: its version and one more",
                        MAX_ADDITIONAL_VERSIONS + 1
                    )));
                }
                let mut weights = BTreeMap::new();
                for (v, w) in &p.weights {
                    if !is_version(v) {
                        return Err(invalid(format!(
                            "weights: {:?} is not a published version number",
                            v.chars().take(32).collect::<String>()
                        )));
                    }
                    if *v == p.version {
                        return Err(invalid(format!(
                            "weights: version {v} is the alias's own version"
                        )));
                    }
                    if p.version == "$LATEST" {
                        return Err(invalid(
                            "weights: a weighted alias must point at a published version, not $LATEST".into(),
                        ));
                    }
                    let ratio = parse_weight(w).filter(|r| *r > 0.0).ok_or_else(|| {
                        invalid(format!(
                            "weights: {w:?} is not a weight like \"0.1\" or \"10%\" above zero"
                        ))
                    })?;
                    weights.insert(v.clone(), ratio);
                }
                if weights.values().sum::<f64>() >= 1.0 {
                    return Err(invalid(
                        "weights: the additional versions' weights must sum to under 1".into(),
                    ));
                }
                Ok(Action::Alias {
                    version: p.version,
                    weights,
                })
            }
            CONCURRENCY_OP => {
                let p: ConcurrencyParams = action.parse_params()?;
                let reserved = i32::try_from(p.reserved)
                    .map_err(|_| invalid("reserved: too large".into()))?;
                Ok(Action::Concurrency { reserved })
            }
            other => Err(ProviderError::Invalid(format!(
                "an aws-lambda resource does not support op {other:?} (it supports {ALIAS_OP}, {CONCURRENCY_OP})"
            ))),
        }
    }

    async fn alias_state(&self, tries: &mut Tries) -> Result<AliasState, ProviderError> {
        let client = self.client().await;
        let c = &self.config;
        let out = aws_common::call(
            self.aws.settings(),
            tries,
            "lambda:GetAlias",
            &self.target(),
            || {
                client
                    .get_alias()
                    .function_name(&c.function)
                    .name(&c.alias)
                    .send()
            },
        )
        .await
        .map_err(|e| {
            aws_common::not_found_is_invalid(e, || {
                format!("function {} has no alias {}", c.function, c.alias)
            })
        })?;
        Ok(AliasState {
            version: out.function_version().unwrap_or_default().to_string(),
            weights: weights_of(out.routing_config()),
        })
    }

    async fn check_version_exists(
        &self,
        tries: &mut Tries,
        version: &str,
    ) -> Result<(), ProviderError> {
        let client = self.client().await;
        let f = &self.config.function;
        aws_common::call(
            self.aws.settings(),
            tries,
            "lambda:GetFunctionConfiguration",
            &format!("function {f} version {version}"),
            || {
                client
                    .get_function_configuration()
                    .function_name(f)
                    .qualifier(version)
                    .send()
            },
        )
        .await
        .map_err(|e| {
            aws_common::not_found_is_invalid(e, || {
                format!("{ALIAS_OP}: function {f} has no version {version}")
            })
        })?;
        Ok(())
    }

    async fn reserved(&self, tries: &mut Tries) -> Result<Option<i32>, ProviderError> {
        let client = self.client().await;
        let f = &self.config.function;
        let out = aws_common::call(
            self.aws.settings(),
            tries,
            "lambda:GetFunctionConcurrency",
            &format!("function {f}"),
            || client.get_function_concurrency().function_name(f).send(),
        )
        .await
        .map_err(|e| {
            aws_common::not_found_is_invalid(e, || format!("function {f} does not exist"))
        })?;
        Ok(out.reserved_concurrent_executions())
    }

    async fn set_alias(
        &self,
        tries: &mut Tries,
        to: &AliasState,
    ) -> Result<AliasState, ProviderError> {
        let client = self.client().await;
        let c = &self.config;
        // An empty map clears a weighted routing; leaving it out would keep it.
        let routing = AliasRoutingConfiguration::builder()
            .set_additional_version_weights(Some(
                to.weights
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect::<HashMap<_, _>>(),
            ))
            .build();
        let out = aws_common::call(
            self.aws.settings(),
            tries,
            "lambda:UpdateAlias",
            &self.target(),
            || {
                client
                    .update_alias()
                    .function_name(&c.function)
                    .name(&c.alias)
                    .function_version(&to.version)
                    .routing_config(routing.clone())
                    .send()
            },
        )
        .await?;
        Ok(AliasState {
            version: out.function_version().unwrap_or_default().to_string(),
            weights: weights_of(out.routing_config()),
        })
    }

    async fn set_reserved(
        &self,
        tries: &mut Tries,
        reserved: Option<i32>,
    ) -> Result<Option<i32>, ProviderError> {
        let client = self.client().await;
        let f = &self.config.function;
        let target = format!("function {f}");
        match reserved {
            Some(n) => {
                let out = aws_common::call(
                    self.aws.settings(),
                    tries,
                    "lambda:PutFunctionConcurrency",
                    &target,
                    || {
                        client
                            .put_function_concurrency()
                            .function_name(f)
                            .reserved_concurrent_executions(n)
                            .send()
                    },
                )
                .await?;
                Ok(out.reserved_concurrent_executions())
            }
            None => {
                aws_common::call(
                    self.aws.settings(),
                    tries,
                    "lambda:DeleteFunctionConcurrency",
                    &target,
                    || client.delete_function_concurrency().function_name(f).send(),
                )
                .await?;
                Ok(None)
            }
        }
    }

    fn concurrency_json(&self, reserved: Option<i32>) -> Value {
        json!({"function": self.config.function, "reserved": reserved})
    }
}

fn weights_of(routing: Option<&AliasRoutingConfiguration>) -> BTreeMap<String, f64> {
    routing
        .and_then(|r| r.additional_version_weights())
        .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default()
}

fn with_tries(mut v: Value, tries: &Tries) -> Value {
    v["tries"] = tries.to_json();
    v
}

#[async_trait]
impl Provider for Lambda {
    fn kind(&self) -> &'static str {
        "aws-lambda"
    }

    fn validate(&self, action: &ActionSpec) -> Result<(), ProviderError> {
        self.parse(action).map(|_| ())
    }

    fn state_key(&self, action: &ActionSpec) -> String {
        match action.op.as_str() {
            CONCURRENCY_OP => "concurrency".into(),
            _ => format!("alias:{}", self.config.alias),
        }
    }

    async fn snapshot(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let mut tries = Tries::default();
        match self.parse(action)? {
            Action::Alias { version, weights } => {
                let now = self.alias_state(&mut tries).await?;
                for v in std::iter::once(&version).chain(weights.keys()) {
                    self.check_version_exists(&mut tries, v).await?;
                }
                Ok(now.to_json(&self.config.alias))
            }
            Action::Concurrency { .. } => {
                let reserved = self.reserved(&mut tries).await?;
                Ok(self.concurrency_json(reserved))
            }
        }
    }

    fn plan(&self, action: &ActionSpec, _before: &State) -> Result<State, ProviderError> {
        Ok(match self.parse(action)? {
            Action::Alias { version, weights } => {
                AliasState { version, weights }.to_json(&self.config.alias)
            }
            Action::Concurrency { reserved } => self.concurrency_json(Some(reserved)),
        })
    }

    async fn apply(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let mut tries = Tries::default();
        let after = match self.parse(action)? {
            Action::Alias { version, weights } => self
                .set_alias(&mut tries, &AliasState { version, weights })
                .await?
                .to_json(&self.config.alias),
            Action::Concurrency { reserved } => {
                let now = self.set_reserved(&mut tries, Some(reserved)).await?;
                self.concurrency_json(now)
            }
        };
        Ok(with_tries(after, &tries))
    }

    async fn revert(&self, action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let mut tries = Tries::default();
        let after = match self.parse(action)? {
            Action::Alias { .. } => {
                let want = AliasState::from_json(before)?;
                self.set_alias(&mut tries, &want)
                    .await?
                    .to_json(&self.config.alias)
            }
            Action::Concurrency { .. } => {
                let want = before["reserved"].as_i64().map(|n| n as i32);
                let now = self.set_reserved(&mut tries, want).await?;
                self.concurrency_json(now)
            }
        };
        tracing::info!(function = %self.config.function, op = %action.op, tries = %tries.to_json(), "lambda restored");
        Ok(with_tries(after, &tries))
    }

    fn reversible(&self, op: &str) -> bool {
        KIND.reversible(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn provider() -> Lambda {
        Lambda::new(LambdaConfig {
            function: "checkout".into(),
            alias: "live".into(),
            region: Some("eu-central-1".into()),
            endpoint_url: None,
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(1),
            operation_timeout: Duration::from_secs(2),
            max_attempts: 2,
        })
    }

    fn spec(op: &str, params: Value) -> ActionSpec {
        ActionSpec {
            op: op.into(),
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn weights_are_strings_that_sum_to_under_one() {
        let l = provider();
        assert_eq!(
            l.parse(&spec(
                ALIAS_OP,
                json!({"version": "3", "weights": {"2": "10%"}})
            ))
            .unwrap(),
            Action::Alias {
                version: "3".into(),
                weights: BTreeMap::from([("2".to_string(), 0.1)])
            }
        );
        for bad in [
            json!({"version": "3", "weights": {"2": "1"}}),
            json!({"version": "3", "weights": {"2": "100%"}}),
            json!({"version": "3", "weights": {"2": "0"}}),
            json!({"version": "3", "weights": {"2": "-0.1"}}),
            json!({"version": "3", "weights": {"3": "0.1"}}),
            json!({"version": "3", "weights": {"1": "0.1", "2": "0.1"}}),
            json!({"version": "$LATEST", "weights": {"2": "0.1"}}),
            json!({"version": "three"}),
            json!({"version": "3", "extra": true}),
        ] {
            assert!(
                matches!(
                    l.validate(&spec(ALIAS_OP, bad.clone())),
                    Err(ProviderError::Invalid(_))
                ),
                "{bad}"
            );
        }
        assert!(l
            .validate(&spec(CONCURRENCY_OP, json!({"reserved": 0})))
            .is_ok());
        assert!(l
            .validate(&spec(CONCURRENCY_OP, json!({"reserved": -1})))
            .is_err());
        assert!(l.validate(&spec("lambda.invoke", json!({}))).is_err());
    }

    #[test]
    fn the_two_ops_touch_different_state() {
        let l = provider();
        assert_ne!(
            l.state_key(&spec(ALIAS_OP, json!({}))),
            l.state_key(&spec(CONCURRENCY_OP, json!({})))
        );
    }
}
