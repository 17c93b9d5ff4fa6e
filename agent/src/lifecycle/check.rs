//! Pure checks and planning: everything decided about a command before
//! anything changes. The checks read only the policy, the config and the
//! records; planning reads before-states from providers but changes
//! nothing.

use tourniquet_providers::ProviderError;

use super::Lifecycle;
use crate::command::payload::{Guard, Payload, Target, HALT_OP, REVERT_OP};
use crate::command::rejection::{Reason, Rejection};
use crate::lifecycle::record::{ActionRecord, CommandRecord, State};
use crate::telemetry;
use crate::trust::glob::glob_match;
use crate::trust::policy::Policy;

/// Why planning stopped.
pub(super) enum PlanError {
    Rejected(Rejection),
    Failed(String),
}

/// The refusal of a revert whose target is no longer in force. A
/// superseded target names the command that took its effect over: that
/// is the one whose revert undoes what is in force now.
fn not_in_force(target: &str, original: &CommandRecord) -> Rejection {
    match original
        .related
        .as_deref()
        .filter(|_| original.state == State::Superseded)
    {
        Some(by) => Rejection::new(
            Reason::InvalidAction,
            format!("command {target} was superseded by {by}; revert that one instead"),
        )
        .with_superseded_by(by),
        None => Rejection::new(
            Reason::InvalidAction,
            format!(
                "command {target} is {}, not in force; nothing to revert",
                original.state.as_str()
            ),
        ),
    }
}

impl Lifecycle {
    pub(super) fn effective_guard(&self, payload: &Payload) -> Option<Guard> {
        payload.guard.clone().or_else(|| {
            payload
                .actions
                .iter()
                .filter_map(|a| a.resource.as_ref())
                .filter_map(|r| self.resources.get(r))
                .find_map(|r| r.default_guard.clone())
        })
    }

    /// Targeting, resources, permissions and action shape. Pure: no I/O.
    pub(super) fn check_command(
        &self,
        p: &Payload,
        signers: &[crate::trust::policy::TrustedSigner],
        policy: &Policy,
    ) -> Result<(), Rejection> {
        self.check_target(&p.target)?;
        if p.actions.iter().any(|a| a.op == HALT_OP) {
            return Err(Rejection::new(
                Reason::InvalidAction,
                "halt stops a fleet rollout: send it over NATS (tourniquet halt ID --send nats://…)",
            ));
        }
        self.check_actions(p, signers, policy)
    }

    /// Whether this agent is one the target names.
    pub fn check_target(&self, t: &Target) -> Result<(), Rejection> {
        if !t.agents.is_empty() && !t.agents.iter().any(|a| a == &self.identity.id) {
            return Err(Rejection::new(
                Reason::NotTargeted,
                format!("agent {} is not in target.agents", self.identity.id),
            ));
        }
        for (k, pattern) in &t.labels {
            match self.identity.labels.get(k) {
                Some(v) if glob_match(pattern, v) => {}
                Some(v) => {
                    return Err(Rejection::new(
                        Reason::NotTargeted,
                        format!("label {k}={v} does not match {pattern:?}"),
                    ))
                }
                None => {
                    return Err(Rejection::new(
                        Reason::NotTargeted,
                        format!("this agent has no label {k:?}"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn check_actions(
        &self,
        p: &Payload,
        signers: &[crate::trust::policy::TrustedSigner],
        policy: &Policy,
    ) -> Result<(), Rejection> {
        let reverts = p.actions.iter().filter(|a| a.op == REVERT_OP).count();
        if reverts > 0 && p.actions.len() > 1 {
            return Err(Rejection::new(
                Reason::InvalidAction,
                "revert must be the only action of its command",
            ));
        }
        for a in &p.actions {
            if let Some(target) = a.revert_target() {
                let Some(original) = self.record(target) else {
                    return Err(Rejection::new(
                        Reason::InvalidAction,
                        format!("command {target} is not known to this agent"),
                    ));
                };
                if !original.is_active() {
                    return Err(not_in_force(target, &original));
                }
                for r in original.actions.iter().map(|a| a.resource.as_str()) {
                    policy.authorize(REVERT_OP, r, signers)?;
                }
                continue;
            }
            let name = a.resource.as_deref().unwrap_or_default();
            let Some(resource) = self.resources.get(name) else {
                return Err(Rejection::new(
                    Reason::UnknownResource,
                    format!("this agent declares no resource {name:?}"),
                ));
            };
            policy.authorize(&a.op, name, signers)?;
            resource
                .provider
                .validate(&a.spec())
                .map_err(|e| Rejection::new(Reason::InvalidAction, format!("{name}: {e}")))?;
            if p.hold.is_some() && !resource.provider.reversible(&a.op) {
                return Err(Rejection::new(
                    Reason::InvalidAction,
                    format!(
                        "{} on {name} cannot be reverted, so it cannot be held",
                        a.op
                    ),
                ));
            }
        }
        if let Some(g) = p.guard.as_ref() {
            for probe in g.probes.iter().chain(g.checks.iter().map(|c| &c.probe)) {
                if !self.probes.contains(probe) {
                    return Err(Rejection::new(
                        Reason::InvalidAction,
                        format!("guard names probe {probe:?}, which this agent does not declare"),
                    ));
                }
            }
            let checks = telemetry::effective_checks(g, |p| self.probes.get(p).map(|c| c.unit()));
            if let Some(p) = g
                .probes
                .iter()
                .find(|p| !checks.iter().any(|c| &c.probe == *p))
            {
                return Err(Rejection::new(
                    Reason::InvalidAction,
                    format!("guard probe {p:?} is not a ratio; give it a check (max, min, max_increase or max_decrease)"),
                ));
            }
        }
        Ok(())
    }

    /// Captures before-states and intended after-states.
    pub(super) async fn plan(&self, rec: &mut CommandRecord, p: &Payload) -> Result<(), PlanError> {
        rec.actions.clear();
        if let Some(target) = p.actions.first().and_then(|a| a.revert_target()) {
            let original = self.record(target).ok_or_else(|| {
                PlanError::Rejected(Rejection::new(
                    Reason::InvalidAction,
                    format!("command {target} is not known"),
                ))
            })?;
            // Checked again under the locks: a command that took the
            // resources over while this revert waited for them leaves
            // nothing here to revert.
            if !original.is_active() {
                return Err(PlanError::Rejected(not_in_force(target, &original)));
            }
            rec.related = Some(target.to_string());
            for a in original.actions.iter().filter(|a| a.applied && !a.reverted) {
                rec.actions.push(ActionRecord {
                    resource: a.resource.clone(),
                    op: REVERT_OP.into(),
                    params: a.params.clone(),
                    before: a.after.clone(),
                    planned: a.before.clone(),
                    after: None,
                    reversible: false,
                    applied: false,
                    reverted: false,
                    error: None,
                    change: None,
                });
            }
            return Ok(());
        }
        let active = self.active();
        for a in &p.actions {
            let name = a.resource.clone().unwrap_or_default();
            let Some(resource) = self.resources.get(&name) else {
                return Err(PlanError::Rejected(Rejection::new(
                    Reason::UnknownResource,
                    format!("this agent declares no resource {name:?}"),
                )));
            };
            let spec = a.spec();
            let mut before = resource
                .provider
                .snapshot(&spec)
                .await
                .map_err(|e| match e {
                    ProviderError::Invalid(m) => PlanError::Rejected(Rejection::new(
                        Reason::InvalidAction,
                        format!("{name}: {m}"),
                    )),
                    other => PlanError::Failed(format!("{name}: reading before-state: {other}")),
                })?;
            // A newer hotfix on the same thing takes over the older one's
            // before-state, so reverting it restores what was there first.
            let key = resource.provider.state_key(&spec);
            for other in &active {
                for oa in other
                    .actions
                    .iter()
                    .filter(|oa| oa.resource == name && oa.applied && !oa.reverted)
                {
                    let other_spec = tourniquet_providers::ActionSpec {
                        op: oa.op.clone(),
                        params: oa.params.clone(),
                    };
                    if resource.provider.state_key(&other_spec) == key {
                        if let Some(b) = &oa.before {
                            before = b.clone();
                        }
                    }
                }
            }
            let planned = resource.provider.plan(&spec, &before).map_err(|e| {
                PlanError::Rejected(Rejection::new(
                    Reason::InvalidAction,
                    format!("{name}: {e}"),
                ))
            })?;
            rec.actions.push(ActionRecord {
                resource: name,
                op: a.op.clone(),
                params: a.params.clone(),
                before: Some(before),
                planned: Some(planned),
                after: None,
                reversible: resource.provider.reversible(&a.op),
                applied: false,
                reverted: false,
                error: None,
                change: None,
            });
        }
        Ok(())
    }
}
