//! The agent's own Prometheus metrics. Labels are bounded (result, reason
//! code, outcome): never a command id, so cardinality stays flat however
//! many commands arrive.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// `accepted` or `rejected`.
    pub result: String,
    /// A rejection code, or `none`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// A resource name from the config: bounded by the config.
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

pub struct Metrics {
    registry: Registry,
    pub commands: Family<CommandLabels, Counter>,
    pub outcomes: Family<OutcomeLabels, Counter>,
    pub apply_seconds: Histogram,
    pub verify_seconds: Histogram,
    pub active_hotfixes: Gauge,
    pub rollbacks: Counter,
    pub receipt_backlog: Gauge,
    pub drifts: Family<ResourceLabels, Counter>,
    drift_total: std::sync::atomic::AtomicU64,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tourniquet");
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands received, by result and reason code",
            commands.clone(),
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "outcomes",
            "Commands that reached a final or kept state, by outcome",
            outcomes.clone(),
        );
        let apply_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "apply_seconds",
            "Time from journaled to applied",
            apply_seconds.clone(),
        );
        let verify_seconds = Histogram::new(exponential_buckets(0.00001, 2.0, 16));
        registry.register(
            "verify_seconds",
            "Time to verify an envelope and its payload",
            verify_seconds.clone(),
        );
        let active_hotfixes = Gauge::default();
        registry.register(
            "active_hotfixes",
            "Hotfixes applied and still in force",
            active_hotfixes.clone(),
        );
        let rollbacks = Counter::default();
        registry.register(
            "rollbacks",
            "Automatic rollbacks after a guard breach",
            rollbacks.clone(),
        );
        let receipt_backlog = Gauge::default();
        registry.register(
            "receipt_backlog",
            "Receipts not yet delivered to a fleet transport",
            receipt_backlog.clone(),
        );
        let drifts = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "drift_events",
            "Hotfixes found changed back behind the agent's back, by resource",
            drifts.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        Metrics {
            registry,
            commands,
            outcomes,
            apply_seconds,
            verify_seconds,
            active_hotfixes,
            rollbacks,
            receipt_backlog,
            drifts,
            drift_total: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn count_drift(&self, resource: &str) {
        self.drifts
            .get_or_create(&ResourceLabels {
                resource: resource.into(),
            })
            .inc();
        self.drift_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Drift events on every resource since start.
    pub fn drift_total(&self) -> u64 {
        self.drift_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn count_command(&self, reason: Option<&str>) {
        self.commands
            .get_or_create(&CommandLabels {
                result: if reason.is_some() {
                    "rejected"
                } else {
                    "accepted"
                }
                .into(),
                reason: reason.unwrap_or("none").into(),
            })
            .inc();
    }

    pub fn count_outcome(&self, outcome: &str) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
