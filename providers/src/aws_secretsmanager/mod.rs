//! `aws-secretsmanager`: `secret.rollback {to_version?}` moves the
//! AWSCURRENT staging label back to the version labelled AWSPREVIOUS, or to
//! a named version, so a bad rotation is undone without anyone touching the
//! secret value.
//!
//! API: <https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_UpdateSecretVersionStage.html>.
//! Moving AWSCURRENT needs `RemoveFromVersionId` (the version that has it),
//! and Secrets Manager then moves AWSPREVIOUS to that version by itself.
//! The before-state is the version ids and their staging labels from
//! `DescribeSecret`; the agent never reads a value, so none can reach a
//! state, a receipt or a log.
//!
//! Revert moves AWSCURRENT back, then AWSPREVIOUS if it was elsewhere.
//! One limit: without `to_version`, apply picks "the AWSPREVIOUS version"
//! when it runs, so a crash after the move and before the journal records
//! it would, on recovery, move the label once more; give `to_version` where
//! that matters.

mod config;
mod declare;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

pub use config::SecretsManagerConfig;
pub use declare::KIND;

use crate::aws_common::{self, Aws, Tries};
use crate::{ActionSpec, OpParams, Provider, ProviderError, State};

pub const OP: &str = "secret.rollback";
const CURRENT: &str = "AWSCURRENT";
const PREVIOUS: &str = "AWSPREVIOUS";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackParams {
    #[serde(default)]
    to_version: Option<String>,
}

impl OpParams for RollbackParams {
    const FIELDS: &'static [&'static str] = &["to_version"];
}

/// Version ids and their staging labels: the before and after state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Stages(BTreeMap<String, Vec<String>>);

impl Stages {
    fn holder(&self, stage: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, s)| s.iter().any(|x| x == stage))
            .map(|(v, _)| v.as_str())
    }

    fn to_json(&self) -> Value {
        json!({
            "versions": self.0,
            "current": self.holder(CURRENT),
            "previous": self.holder(PREVIOUS),
        })
    }

    fn from_json(v: &Value) -> Result<Stages, ProviderError> {
        let versions: BTreeMap<String, Vec<String>> = serde_json::from_value(v["versions"].clone())
            .map_err(|e| {
                ProviderError::Failed(format!("the recorded before-state is unreadable: {e}"))
            })?;
        Ok(Stages(versions))
    }

    /// Moves `stage` to `to`, taking it off every other version.
    fn moved(&self, stage: &str, to: &str) -> Stages {
        let mut out = self.0.clone();
        for stages in out.values_mut() {
            stages.retain(|s| s != stage);
        }
        out.entry(to.to_string())
            .or_default()
            .push(stage.to_string());
        for stages in out.values_mut() {
            stages.sort();
        }
        Stages(out)
    }

    /// What moving AWSCURRENT to `to` yields on AWS.
    fn after_rollback(&self, to: &str) -> Stages {
        match self.holder(CURRENT) {
            Some(cur) if cur != to => self.moved(PREVIOUS, cur).moved(CURRENT, to),
            _ => self.clone(),
        }
    }
}

/// The runtime of one `aws-secretsmanager` resource.
pub struct SecretsManager {
    config: SecretsManagerConfig,
    aws: Aws,
    client: OnceCell<aws_sdk_secretsmanager::Client>,
}

impl SecretsManager {
    pub fn new(config: SecretsManagerConfig) -> Self {
        let aws = Aws::new(config.client_settings());
        SecretsManager {
            config,
            aws,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_secretsmanager::Client {
        self.client
            .get_or_init(|| async {
                aws_sdk_secretsmanager::Client::new(self.aws.sdk_config().await)
            })
            .await
    }

    fn target(&self) -> String {
        format!("secret {}", self.config.secret_id)
    }

    fn parse(&self, action: &ActionSpec) -> Result<RollbackParams, ProviderError> {
        if action.op != OP {
            return Err(ProviderError::Invalid(format!(
                "an aws-secretsmanager resource does not support op {:?} (it supports {OP})",
                action.op
            )));
        }
        let p: RollbackParams = action.parse_params()?;
        if let Some(v) = &p.to_version {
            if v.is_empty()
                || v.len() > 64
                || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(ProviderError::Invalid(format!(
                    "{OP}: to_version: {:?} is not a Secrets Manager version id",
                    v.chars().take(64).collect::<String>()
                )));
            }
        }
        Ok(p)
    }

    async fn stages(&self, tries: &mut Tries) -> Result<Stages, ProviderError> {
        let client = self.client().await;
        let id = &self.config.secret_id;
        let out = aws_common::call(
            self.aws.settings(),
            tries,
            "secretsmanager:DescribeSecret",
            &self.target(),
            || client.describe_secret().secret_id(id).send(),
        )
        .await
        .map_err(|e| {
            aws_common::not_found_is_invalid(e, || format!("secret {id} does not exist"))
        })?;
        let mut map = BTreeMap::new();
        for (version, stages) in out.version_ids_to_stages().into_iter().flatten() {
            let mut stages = stages.clone();
            stages.sort();
            map.insert(version.clone(), stages);
        }
        Ok(Stages(map))
    }

    /// The version AWSCURRENT moves to, checked against `stages`.
    fn rollback_target(p: &RollbackParams, stages: &Stages) -> Result<String, ProviderError> {
        let invalid = |m: String| ProviderError::Invalid(format!("{OP}: {m}"));
        let current = stages
            .holder(CURRENT)
            .ok_or_else(|| invalid("the secret has no AWSCURRENT version".into()))?;
        let to = match &p.to_version {
            Some(v) => {
                if !stages.0.contains_key(v) {
                    return Err(invalid(format!(
                        "the secret has no version {v} with a staging label"
                    )));
                }
                v.clone()
            }
            None => stages
                .holder(PREVIOUS)
                .ok_or_else(|| {
                    invalid("the secret has no AWSPREVIOUS version to roll back to".into())
                })?
                .to_string(),
        };
        if to == current {
            return Err(invalid(format!("version {to} is already AWSCURRENT")));
        }
        Ok(to)
    }

    /// Moves `stage` from whichever version has it to `to` (`None`: only
    /// takes it off).
    async fn move_stage(
        &self,
        tries: &mut Tries,
        stage: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<(), ProviderError> {
        let client = self.client().await;
        aws_common::call(
            self.aws.settings(),
            tries,
            "secretsmanager:UpdateSecretVersionStage",
            &self.target(),
            || {
                client
                    .update_secret_version_stage()
                    .secret_id(&self.config.secret_id)
                    .version_stage(stage)
                    .set_remove_from_version_id(from.map(str::to_string))
                    .set_move_to_version_id(to.map(str::to_string))
                    .send()
            },
        )
        .await?;
        Ok(())
    }

    fn with_tries(stages: &Stages, tries: &Tries) -> State {
        let mut v = stages.to_json();
        v["tries"] = tries.to_json();
        v
    }
}

#[async_trait]
impl Provider for SecretsManager {
    fn kind(&self) -> &'static str {
        "aws-secretsmanager"
    }

    fn validate(&self, action: &ActionSpec) -> Result<(), ProviderError> {
        self.parse(action).map(|_| ())
    }

    fn state_key(&self, _action: &ActionSpec) -> String {
        format!("stage:{CURRENT}")
    }

    async fn snapshot(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let p = self.parse(action)?;
        let stages = self.stages(&mut Tries::default()).await?;
        Self::rollback_target(&p, &stages)?;
        Ok(stages.to_json())
    }

    fn plan(&self, action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let p = self.parse(action)?;
        let stages = Stages::from_json(before)?;
        let to = Self::rollback_target(&p, &stages)?;
        Ok(stages.after_rollback(&to).to_json())
    }

    async fn apply(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let p = self.parse(action)?;
        let mut tries = Tries::default();
        let stages = self.stages(&mut tries).await?;
        let to = Self::rollback_target(&p, &stages)?;
        let from = stages.holder(CURRENT).map(str::to_string);
        self.move_stage(&mut tries, CURRENT, from.as_deref(), Some(&to))
            .await?;
        let after = self.stages(&mut tries).await?;
        Ok(Self::with_tries(&after, &tries))
    }

    async fn revert(&self, _action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let want = Stages::from_json(before)?;
        let mut tries = Tries::default();
        let mut now = self.stages(&mut tries).await?;
        for stage in [CURRENT, PREVIOUS] {
            let (want_at, now_at) = (want.holder(stage), now.holder(stage));
            if want_at == now_at {
                continue;
            }
            if let Some(v) = want_at {
                if !now.0.contains_key(v) {
                    return Err(ProviderError::Failed(format!(
                        "cannot move {stage} back: version {v} no longer has any staging label"
                    )));
                }
            }
            self.move_stage(&mut tries, stage, now_at, want_at).await?;
            now = self.stages(&mut tries).await?;
        }
        tracing::info!(secret = %self.config.secret_id, tries = %tries.to_json(), "secret stages restored");
        Ok(Self::with_tries(&now, &tries))
    }

    fn reversible(&self, op: &str) -> bool {
        KIND.reversible(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(pairs: &[(&str, &[&str])]) -> Stages {
        Stages(
            pairs
                .iter()
                .map(|(v, s)| (v.to_string(), s.iter().map(|x| x.to_string()).collect()))
                .collect(),
        )
    }

    #[test]
    fn rollback_moves_current_to_previous_and_previous_follows() {
        let s = stages(&[("a", &["AWSPREVIOUS"]), ("b", &["AWSCURRENT"])]);
        let p = RollbackParams { to_version: None };
        let to = SecretsManager::rollback_target(&p, &s).unwrap();
        assert_eq!(to, "a");
        let after = s.after_rollback(&to);
        assert_eq!(after.holder(CURRENT), Some("a"));
        assert_eq!(after.holder(PREVIOUS), Some("b"));
    }

    #[test]
    fn impossible_rollbacks_are_invalid() {
        let only = stages(&[("b", &["AWSCURRENT"])]);
        let none = RollbackParams { to_version: None };
        assert!(matches!(
            SecretsManager::rollback_target(&none, &only),
            Err(ProviderError::Invalid(_))
        ));
        let missing = RollbackParams {
            to_version: Some("zzz".into()),
        };
        assert!(matches!(
            SecretsManager::rollback_target(&missing, &only),
            Err(ProviderError::Invalid(_))
        ));
        let same = RollbackParams {
            to_version: Some("b".into()),
        };
        assert!(matches!(
            SecretsManager::rollback_target(&same, &only),
            Err(ProviderError::Invalid(_))
        ));
    }
}
