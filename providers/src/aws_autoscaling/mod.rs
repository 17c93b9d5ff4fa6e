//! `aws-autoscaling`: `asg.cap {max, desired?}` lowers an Auto Scaling
//! group's MaxSize, and its DesiredCapacity where that would exceed the new
//! max, to stop a runaway scale-out (or the bill of one).
//!
//! API: <https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_UpdateAutoScalingGroup.html>:
//! MinSize <= DesiredCapacity <= MaxSize must hold. We check that ourselves
//! before calling, rather than rely on the service to refuse.
//!
//! Revert restores min, max and desired as they were.

mod config;
mod declare;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

pub use config::AutoScalingConfig;
pub use declare::KIND;

use crate::aws_common::{self, Aws, Tries};
use crate::{ActionSpec, OpParams, Provider, ProviderError, State};

pub const OP: &str = "asg.cap";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapParams {
    max: u32,
    #[serde(default)]
    desired: Option<u32>,
}

impl OpParams for CapParams {
    const FIELDS: &'static [&'static str] = &["max", "desired"];
}

/// A group's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    min: i32,
    max: i32,
    desired: i32,
}

impl Size {
    fn to_json(self, group: &str) -> Value {
        json!({"group": group, "min": self.min, "max": self.max, "desired": self.desired})
    }

    fn from_json(v: &Value) -> Result<Size, ProviderError> {
        let get = |k: &str| {
            v[k].as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| {
                    ProviderError::Failed(format!("the recorded before-state has no {k}"))
                })
        };
        Ok(Size {
            min: get("min")?,
            max: get("max")?,
            desired: get("desired")?,
        })
    }
}

/// The runtime of one `aws-autoscaling` resource.
pub struct AutoScaling {
    config: AutoScalingConfig,
    aws: Aws,
    client: OnceCell<aws_sdk_autoscaling::Client>,
}

impl AutoScaling {
    pub fn new(config: AutoScalingConfig) -> Self {
        let aws = Aws::new(config.client_settings());
        AutoScaling {
            config,
            aws,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_autoscaling::Client {
        self.client
            .get_or_init(|| async { aws_sdk_autoscaling::Client::new(self.aws.sdk_config().await) })
            .await
    }

    fn target(&self) -> String {
        format!("Auto Scaling group {}", self.config.group)
    }

    fn parse(&self, action: &ActionSpec) -> Result<CapParams, ProviderError> {
        if action.op != OP {
            return Err(ProviderError::Invalid(format!(
                "an aws-autoscaling resource does not support op {:?} (it supports {OP})",
                action.op
            )));
        }
        let p: CapParams = action.parse_params()?;
        if i32::try_from(p.max).is_err() {
            return Err(ProviderError::Invalid(format!("{OP}: max: too large")));
        }
        if let Some(d) = p.desired {
            if d > p.max {
                return Err(ProviderError::Invalid(format!(
                    "{OP}: desired ({d}) is above max ({})",
                    p.max
                )));
            }
        }
        Ok(p)
    }

    /// The size the cap gives a group of size `now`, or why it cannot.
    fn capped(p: &CapParams, now: Size) -> Result<Size, ProviderError> {
        let invalid = |m: String| ProviderError::Invalid(format!("{OP}: {m}"));
        let max = p.max as i32;
        if max < now.min {
            return Err(invalid(format!(
                "max ({max}) is below the group's MinSize ({})",
                now.min
            )));
        }
        if max > now.max {
            return Err(invalid(format!(
                "max ({max}) is above the group's MaxSize ({}); a cap only lowers it",
                now.max
            )));
        }
        let desired = match p.desired {
            Some(d) => {
                let d = d as i32;
                if d < now.min {
                    return Err(invalid(format!(
                        "desired ({d}) is below the group's MinSize ({})",
                        now.min
                    )));
                }
                d
            }
            None => now.desired.min(max),
        };
        Ok(Size {
            min: now.min,
            max,
            desired,
        })
    }

    async fn size(&self, tries: &mut Tries) -> Result<Size, ProviderError> {
        let client = self.client().await;
        let g = &self.config.group;
        let out = aws_common::call(
            self.aws.settings(),
            tries,
            "autoscaling:DescribeAutoScalingGroups",
            &self.target(),
            || {
                client
                    .describe_auto_scaling_groups()
                    .auto_scaling_group_names(g)
                    .send()
            },
        )
        .await?;
        let group = out
            .auto_scaling_groups()
            .iter()
            .find(|a| a.auto_scaling_group_name() == Some(g.as_str()))
            .ok_or_else(|| ProviderError::Invalid(format!("{} does not exist", self.target())))?;
        let field = |v: Option<i32>, name: &str| {
            v.ok_or_else(|| {
                ProviderError::Failed(format!("{}: AWS answered no {name}", self.target()))
            })
        };
        Ok(Size {
            min: field(group.min_size(), "MinSize")?,
            max: field(group.max_size(), "MaxSize")?,
            desired: field(group.desired_capacity(), "DesiredCapacity")?,
        })
    }

    async fn resize(&self, tries: &mut Tries, to: Size) -> Result<(), ProviderError> {
        if to.desired > to.max || to.desired < to.min || to.min > to.max {
            return Err(ProviderError::Failed(format!(
                "{}: refusing min {} / desired {} / max {}: MinSize <= DesiredCapacity <= MaxSize must hold",
                self.target(),
                to.min,
                to.desired,
                to.max
            )));
        }
        let client = self.client().await;
        aws_common::call(
            self.aws.settings(),
            tries,
            "autoscaling:UpdateAutoScalingGroup",
            &self.target(),
            || {
                client
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(&self.config.group)
                    .min_size(to.min)
                    .max_size(to.max)
                    .desired_capacity(to.desired)
                    .send()
            },
        )
        .await?;
        Ok(())
    }

    /// Resizes a group now of size `now` to `to` (if they differ) and
    /// reads the result back.
    async fn resize_and_read(
        &self,
        mut tries: Tries,
        now: Size,
        to: Size,
    ) -> Result<State, ProviderError> {
        if now != to {
            self.resize(&mut tries, to).await?;
        }
        let after = self.size(&mut tries).await?;
        let mut v = after.to_json(&self.config.group);
        v["tries"] = tries.to_json();
        Ok(v)
    }
}

#[async_trait]
impl Provider for AutoScaling {
    fn kind(&self) -> &'static str {
        "aws-autoscaling"
    }

    fn validate(&self, action: &ActionSpec) -> Result<(), ProviderError> {
        self.parse(action).map(|_| ())
    }

    fn state_key(&self, _action: &ActionSpec) -> String {
        "size".into()
    }

    async fn snapshot(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let p = self.parse(action)?;
        let now = self.size(&mut Tries::default()).await?;
        Self::capped(&p, now)?;
        Ok(now.to_json(&self.config.group))
    }

    fn plan(&self, action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let p = self.parse(action)?;
        let before = Size::from_json(before)?;
        Ok(Self::capped(&p, before)?.to_json(&self.config.group))
    }

    async fn apply(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let p = self.parse(action)?;
        let mut tries = Tries::default();
        let now = self.size(&mut tries).await?;
        let to = Self::capped(&p, now)?;
        self.resize_and_read(tries, now, to).await
    }

    async fn revert(&self, _action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let to = Size::from_json(before)?;
        let mut tries = Tries::default();
        let now = self.size(&mut tries).await?;
        let after = self.resize_and_read(tries, now, to).await?;
        tracing::info!(group = %self.config.group, tries = %after["tries"], "group size restored");
        Ok(after)
    }

    fn reversible(&self, op: &str) -> bool {
        KIND.reversible(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_lower_max_and_desired_within_min() {
        let now = Size {
            min: 2,
            max: 10,
            desired: 8,
        };
        let p = |max, desired| CapParams { max, desired };
        assert_eq!(
            AutoScaling::capped(&p(4, None), now).unwrap(),
            Size {
                min: 2,
                max: 4,
                desired: 4
            }
        );
        assert_eq!(AutoScaling::capped(&p(9, None), now).unwrap().desired, 8);
        assert_eq!(AutoScaling::capped(&p(4, Some(3)), now).unwrap().desired, 3);
        for bad in [p(1, None), p(11, None), p(4, Some(1))] {
            assert!(matches!(
                AutoScaling::capped(&bad, now),
                Err(ProviderError::Invalid(_))
            ));
        }
    }
}
