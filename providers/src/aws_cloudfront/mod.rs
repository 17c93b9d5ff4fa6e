//! `aws-cloudfront`: `cdn.purge {paths}` creates a CloudFront invalidation
//! and waits until it has completed, logging its progress, so a receipt
//! that says "purged" means the edge no longer serves the old objects.
//!
//! API: <https://docs.aws.amazon.com/cloudfront/latest/APIReference/API_CreateInvalidation.html>
//! and `GetInvalidation`, whose `Status` is `InProgress` until it is
//! `Completed`. Paths start with `/` and may end in one `*` wildcard.
//! The caller reference is made once per apply, so a retried create is the
//! same invalidation, not a second one.
//!
//! A purge cannot be undone: the op is not reversible, which the lifecycle
//! states in the plan and the receipt (and it refuses a `hold`).

mod config;
mod declare;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

pub use config::CloudFrontConfig;
pub use declare::KIND;

use crate::aws_common::{self, Aws, Tries};
use crate::purge::{Accepts, Cache, Purge};
use crate::{ProviderError, State};

/// The runtime of one `aws-cloudfront` resource.
pub struct CloudFront {
    config: CloudFrontConfig,
    aws: Aws,
    client: OnceCell<aws_sdk_cloudfront::Client>,
}

impl CloudFront {
    pub fn new(config: CloudFrontConfig) -> Self {
        let aws = Aws::new(config.client_settings());
        CloudFront {
            config,
            aws,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_cloudfront::Client {
        self.client
            .get_or_init(|| async { aws_sdk_cloudfront::Client::new(self.aws.sdk_config().await) })
            .await
    }

    fn target(&self) -> String {
        format!("distribution {}", self.config.distribution_id)
    }

    fn caller_reference(paths: &[String]) -> String {
        let digest = Sha256::digest(paths.join("\n").as_bytes());
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("tourniquet-{hex}-{nanos}")
    }
}

/// The paths of a purge: CloudFront invalidates by path only.
fn paths(p: &Purge) -> &[String] {
    p.target.items()
}

#[async_trait]
impl Cache for CloudFront {
    fn kind(&self) -> &'static str {
        "aws-cloudfront"
    }

    fn accepts(&self) -> Accepts {
        Accepts {
            by: &["paths"],
            soft: false,
            wildcard: true,
        }
    }

    fn idle(&self, p: &Purge) -> State {
        json!({"distribution": self.config.distribution_id, "paths": paths(p), "invalidated": false})
    }

    fn planned(&self, p: &Purge) -> State {
        json!({
            "distribution": self.config.distribution_id,
            "paths": paths(p),
            "invalidated": true,
            "calls": ["cloudfront:CreateInvalidation", "cloudfront:GetInvalidation (until Completed)"],
        })
    }

    async fn purge(&self, p: &Purge) -> Result<State, ProviderError> {
        let paths = paths(p).to_vec();
        let client = self.client().await;
        let dist = &self.config.distribution_id;
        let mut tries = Tries::default();
        let batch = InvalidationBatch::builder()
            .paths(
                Paths::builder()
                    .quantity(paths.len() as i32)
                    .set_items(Some(paths.clone()))
                    .build()
                    .map_err(|e| {
                        ProviderError::Failed(format!("building the invalidation: {e}"))
                    })?,
            )
            .caller_reference(Self::caller_reference(&paths))
            .build()
            .map_err(|e| ProviderError::Failed(format!("building the invalidation: {e}")))?;
        let created = aws_common::call(
            self.aws.settings(),
            &mut tries,
            "cloudfront:CreateInvalidation",
            &self.target(),
            || {
                client
                    .create_invalidation()
                    .distribution_id(dist)
                    .invalidation_batch(batch.clone())
                    .send()
            },
        )
        .await?;
        let inv = created.invalidation().ok_or_else(|| {
            ProviderError::Failed(format!(
                "{}: CreateInvalidation answered no invalidation",
                self.target()
            ))
        })?;
        let id = inv.id().to_string();
        let mut status = inv.status().to_string();
        tracing::info!(distribution = %dist, invalidation = %id, status = %status, "invalidation created");
        let started = tokio::time::Instant::now();
        let mut polls = 0u32;
        // AWS documents `Completed`; compare without case so a differently
        // cased status (as the emulator's) still ends the wait.
        while !status.eq_ignore_ascii_case("Completed") {
            let waited = started.elapsed();
            if waited >= self.config.wait_timeout {
                return Err(ProviderError::Failed(format!(
                    "{}: invalidation {id} is still {status} after {}; it goes on at CloudFront",
                    self.target(),
                    humantime::format_duration(self.config.wait_timeout)
                )));
            }
            tokio::time::sleep(
                self.config
                    .poll_interval
                    .min(self.config.wait_timeout - waited),
            )
            .await;
            polls += 1;
            let got = aws_common::call(
                self.aws.settings(),
                &mut tries,
                "cloudfront:GetInvalidation",
                &self.target(),
                || {
                    client
                        .get_invalidation()
                        .distribution_id(dist)
                        .id(&id)
                        .send()
                },
            )
            .await?;
            status = got
                .invalidation()
                .map(|i| i.status().to_string())
                .unwrap_or_default();
            tracing::info!(
                distribution = %dist,
                invalidation = %id,
                status = %status,
                waited_s = Duration::as_secs(&started.elapsed()),
                "waiting for the invalidation"
            );
        }
        tracing::info!(distribution = %dist, invalidation = %id, polls, "invalidation completed");
        Ok(json!({
            "distribution": dist,
            "paths": paths,
            "invalidated": true,
            "invalidation_id": id,
            "status": status,
            "polls": polls,
            "tries": tries.to_json(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::purge::{Purger, PURGE_OP};
    use crate::{ActionSpec, Provider};

    #[test]
    fn paths_take_one_trailing_wildcard() {
        let cf = Purger(CloudFront::new(CloudFrontConfig {
            distribution_id: "E2QWRUHAPOMQZL".into(),
            wait_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            region: None,
            endpoint_url: None,
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(1),
            operation_timeout: Duration::from_secs(1),
            max_attempts: 1,
        }));
        let spec = |paths: serde_json::Value| ActionSpec {
            op: PURGE_OP.into(),
            params: json!({ "paths": paths })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        assert!(cf
            .validate(&spec(json!(["/index.html", "/static/*", "/*"])))
            .is_ok());
        for bad in [
            json!([]),
            json!(["index.html"]),
            json!(["/a*b"]),
            json!(["/a b"]),
        ] {
            assert!(cf.validate(&spec(bad.clone())).is_err(), "{bad}");
        }
        assert!(!cf.reversible(PURGE_OP));
    }
}
