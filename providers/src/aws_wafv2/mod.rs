//! `aws-wafv2`: `waf.block {cidrs}` adds CIDRs to a WAFv2 IP set that a web
//! ACL rule blocks.
//!
//! API: <https://docs.aws.amazon.com/waf/latest/APIReference/API_UpdateIPSet.html>.
//! `UpdateIPSet` replaces the whole address list and takes the lock token
//! of the `GetIPSet` it is based on; when someone else changed the set in
//! between, it fails with `WAFOptimisticLockException`, and we read the set
//! again and retry on the fresh list. So nothing another writer added is
//! ever lost.
//!
//! Revert removes exactly the CIDRs this command added (those it named that
//! were not in the before-state), again on a fresh read, so entries that
//! others added since stay.

mod config;
mod declare;

use std::collections::BTreeSet;

use async_trait::async_trait;
use aws_sdk_wafv2::types::Scope;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

pub use config::{WafConfig, WafScope};
pub use declare::KIND;

use crate::aws_common::{self, Aws, AwsError, Tries};
use crate::{ActionSpec, OpParams, Provider, ProviderError, State};

pub const OP: &str = "waf.block";
/// The most CIDRs one action may add.
pub const MAX_CIDRS: usize = 256;
/// How many times a lost lock race is retried with a fresh read.
const MAX_LOCK_RETRIES: u32 = 5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockParams {
    cidrs: Vec<String>,
}

impl OpParams for BlockParams {
    const FIELDS: &'static [&'static str] = &["cidrs"];
}

/// Parses `a.b.c.d/n`, `x:y::/n` or a bare address (a host network) into
/// its canonical form, masked to the network address, as WAF wants it.
pub fn canonical_cidr(s: &str) -> Result<(String, bool), String> {
    match crate::cidr::canonical(s) {
        Ok(c) => Ok((c.text, c.ipv4)),
        Err(crate::cidr::CidrError::Everything { text }) => {
            Err(format!("{text:?} would block every address"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// An IP set as read: its addresses verbatim, and the lock token.
struct IpSet {
    addresses: Vec<String>,
    ipv4: bool,
    lock_token: String,
}

impl IpSet {
    /// Canonical forms of the addresses, for comparing; entries we cannot
    /// parse are kept verbatim and compared as they are.
    fn canonical(&self) -> BTreeSet<String> {
        self.addresses
            .iter()
            .map(|a| {
                canonical_cidr(a)
                    .map(|(c, _)| c)
                    .unwrap_or_else(|_| a.clone())
            })
            .collect()
    }
}

/// The runtime of one `aws-wafv2` resource.
pub struct Waf {
    config: WafConfig,
    aws: Aws,
    client: OnceCell<aws_sdk_wafv2::Client>,
}

impl Waf {
    pub fn new(config: WafConfig) -> Self {
        let aws = Aws::new(config.client_settings());
        Waf {
            config,
            aws,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_wafv2::Client {
        self.client
            .get_or_init(|| async { aws_sdk_wafv2::Client::new(self.aws.sdk_config().await) })
            .await
    }

    fn target(&self) -> String {
        format!(
            "IP set {} ({})",
            self.config.ip_set_name, self.config.ip_set_id
        )
    }

    fn scope(&self) -> Scope {
        match self.config.scope {
            WafScope::Regional => Scope::Regional,
            WafScope::Cloudfront => Scope::Cloudfront,
        }
    }

    /// The canonical CIDRs an action names, and whether they are IPv4.
    fn parse(&self, action: &ActionSpec) -> Result<Vec<(String, bool)>, ProviderError> {
        if action.op != OP {
            return Err(ProviderError::Invalid(format!(
                "an aws-wafv2 resource does not support op {:?} (it supports {OP})",
                action.op
            )));
        }
        let p: BlockParams = action.parse_params()?;
        if p.cidrs.is_empty() || p.cidrs.len() > MAX_CIDRS {
            return Err(ProviderError::Invalid(format!(
                "{OP}: cidrs: give between 1 and {MAX_CIDRS}"
            )));
        }
        let mut out: Vec<(String, bool)> = p
            .cidrs
            .iter()
            .map(|c| {
                canonical_cidr(c).map_err(|e| ProviderError::Invalid(format!("{OP}: cidrs: {e}")))
            })
            .collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn cidrs(&self, action: &ActionSpec) -> Result<Vec<String>, ProviderError> {
        Ok(self.parse(action)?.into_iter().map(|(c, _)| c).collect())
    }

    async fn read(&self, tries: &mut Tries) -> Result<IpSet, ProviderError> {
        let client = self.client().await;
        let c = &self.config;
        let out = aws_common::call(
            self.aws.settings(),
            tries,
            "wafv2:GetIPSet",
            &self.target(),
            || {
                client
                    .get_ip_set()
                    .name(&c.ip_set_name)
                    .scope(self.scope())
                    .id(&c.ip_set_id)
                    .send()
            },
        )
        .await
        .map_err(|e| {
            aws_common::not_found_is_invalid(e, || format!("{} does not exist", self.target()))
        })?;
        let set = out.ip_set().ok_or_else(|| {
            ProviderError::Failed(format!("{}: GetIPSet answered no set", self.target()))
        })?;
        Ok(IpSet {
            addresses: set.addresses().to_vec(),
            ipv4: set.ip_address_version().as_str() == "IPV4",
            lock_token: out.lock_token().unwrap_or_default().to_string(),
        })
    }

    /// Reads the set, lets `change` compute the new list, and writes it
    /// with the read's lock token; a lost race reads again. Returns the
    /// list written (or found unchanged) and how many races were lost.
    async fn update(
        &self,
        tries: &mut Tries,
        change: impl Fn(&IpSet) -> Option<Vec<String>>,
    ) -> Result<(Vec<String>, u32), ProviderError> {
        let client = self.client().await;
        let c = &self.config;
        let mut lost = 0;
        loop {
            let set = self.read(tries).await?;
            let Some(addresses) = change(&set) else {
                return Ok((set.addresses, lost));
            };
            let result = aws_common::call(
                self.aws.settings(),
                tries,
                "wafv2:UpdateIPSet",
                &self.target(),
                || {
                    client
                        .update_ip_set()
                        .name(&c.ip_set_name)
                        .scope(self.scope())
                        .id(&c.ip_set_id)
                        .set_addresses(Some(addresses.clone()))
                        .lock_token(&set.lock_token)
                        .send()
                },
            )
            .await;
            match result {
                Ok(_) => return Ok((addresses, lost)),
                Err(e @ AwsError::Service { .. })
                    if e.code() == Some("WAFOptimisticLockException") =>
                {
                    lost += 1;
                    if lost > MAX_LOCK_RETRIES {
                        return Err(ProviderError::Failed(format!(
                            "{}: the set kept changing under us ({lost} lock races lost): {e}",
                            self.target()
                        )));
                    }
                    tracing::info!(ip_set = %c.ip_set_name, lost, "WAF lock token was stale; reading the set again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[async_trait]
impl Provider for Waf {
    fn kind(&self) -> &'static str {
        "aws-wafv2"
    }

    fn validate(&self, action: &ActionSpec) -> Result<(), ProviderError> {
        self.parse(action).map(|_| ())
    }

    /// Each distinct CIDR list is its own hotfix: blocking other networks
    /// does not supersede an earlier block.
    fn state_key(&self, action: &ActionSpec) -> String {
        match self.cidrs(action) {
            Ok(c) => format!("block:{}", c.join(",")),
            Err(_) => format!("op:{}", action.op),
        }
    }

    async fn snapshot(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let cidrs = self.parse(action)?;
        let set = self.read(&mut Tries::default()).await?;
        if let Some((c, _)) = cidrs.iter().find(|(_, v4)| *v4 != set.ipv4) {
            return Err(ProviderError::Invalid(format!(
                "{OP}: {c} does not fit {}, which holds {} addresses",
                self.target(),
                if set.ipv4 { "IPv4" } else { "IPv6" }
            )));
        }
        Ok(json!({"ip_set": self.config.ip_set_name, "addresses": sorted(set.addresses)}))
    }

    fn plan(&self, action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let cidrs = self.cidrs(action)?;
        let existing = addresses_of(before);
        let canon: BTreeSet<String> = existing
            .iter()
            .map(|a| {
                canonical_cidr(a)
                    .map(|(c, _)| c)
                    .unwrap_or_else(|_| a.clone())
            })
            .collect();
        let added: Vec<String> = cidrs.into_iter().filter(|c| !canon.contains(c)).collect();
        let mut after = existing;
        after.extend(added.iter().cloned());
        Ok(json!({"ip_set": self.config.ip_set_name, "addresses": sorted(after), "added": added}))
    }

    async fn apply(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let cidrs = self.cidrs(action)?;
        let mut tries = Tries::default();
        let (addresses, lost) = self
            .update(&mut tries, |set| {
                let canon = set.canonical();
                let missing: Vec<&String> = cidrs.iter().filter(|c| !canon.contains(*c)).collect();
                if missing.is_empty() {
                    return None;
                }
                let mut next = set.addresses.clone();
                next.extend(missing.into_iter().cloned());
                Some(next)
            })
            .await?;
        Ok(json!({
            "ip_set": self.config.ip_set_name,
            "addresses": sorted(addresses),
            "lock_races_lost": lost,
            "tries": tries.to_json(),
        }))
    }

    async fn revert(&self, action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let had: BTreeSet<String> = addresses_of(before)
            .iter()
            .map(|a| {
                canonical_cidr(a)
                    .map(|(c, _)| c)
                    .unwrap_or_else(|_| a.clone())
            })
            .collect();
        let ours: BTreeSet<String> = self
            .cidrs(action)?
            .into_iter()
            .filter(|c| !had.contains(c))
            .collect();
        let mut tries = Tries::default();
        let (addresses, lost) = self
            .update(&mut tries, |set| {
                let keep: Vec<String> = set
                    .addresses
                    .iter()
                    .filter(|a| {
                        let c = canonical_cidr(a)
                            .map(|(c, _)| c)
                            .unwrap_or_else(|_| (*a).clone());
                        !ours.contains(&c)
                    })
                    .cloned()
                    .collect();
                (keep.len() != set.addresses.len()).then_some(keep)
            })
            .await?;
        tracing::info!(ip_set = %self.config.ip_set_name, tries = %tries.to_json(), "blocked CIDRs removed");
        Ok(json!({
            "ip_set": self.config.ip_set_name,
            "addresses": sorted(addresses),
            "lock_races_lost": lost,
            "tries": tries.to_json(),
        }))
    }

    fn reversible(&self, op: &str) -> bool {
        KIND.reversible(op)
    }
}

fn addresses_of(state: &Value) -> Vec<String> {
    state["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_canonical_networks() {
        assert_eq!(
            canonical_cidr("10.1.2.3/8").unwrap(),
            ("10.0.0.0/8".into(), true)
        );
        assert_eq!(
            canonical_cidr("192.0.2.7").unwrap(),
            ("192.0.2.7/32".into(), true)
        );
        assert_eq!(
            canonical_cidr("2001:db8::1/32").unwrap(),
            ("2001:db8::/32".into(), false)
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/08",
            "0.0.0.0/0",
            "evil.example/8",
            "10.0.0.0/8;",
        ] {
            assert!(canonical_cidr(bad).is_err(), "{bad}");
        }
    }
}
