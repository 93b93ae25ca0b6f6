//! The operator's own metrics: reconciles by outcome, errors by kind, reconcile duration.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<OutcomeLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    duration: Histogram,
    pub leader: Gauge,
    /// Whether this replica is serving (ready): it holds the lease, or runs without election.
    pub ready: Arc<AtomicBool>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            leader: Gauge::default(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let registry = registry.sub_registry_with_prefix("pleiades_operator");
        registry.register("reconciles", "Reconciles by outcome", metrics.reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciles by kind of error", metrics.errors.clone());
        registry.register("reconcile_duration_seconds", "Time one reconcile takes", metrics.duration.clone());
        registry.register("leader", "1 while this replica holds the leader lease", metrics.leader.clone());
        metrics
    }

    pub fn observe_reconcile(&self, took: Duration, error: Option<&'static str>) {
        self.duration.observe(took.as_secs_f64());
        let outcome = if error.is_some() { "error" } else { "ok" };
        self.reconciles.get_or_create(&OutcomeLabels { outcome }).inc();
        if let Some(kind) = error {
            self.errors.get_or_create(&KindLabels { kind }).inc();
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_metric_the_dashboard_queries_exists() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.observe_reconcile(Duration::from_millis(3), None);
        metrics.observe_reconcile(Duration::from_millis(3), Some("server"));
        let mut exposition = String::new();
        prometheus_client::encoding::text::encode(&mut exposition, &registry).unwrap();
        let dashboard = include_str!("../../charts/pleiades-operator/dashboards/pleiades.json");
        let mut queried = 0;
        for (start, _) in dashboard.match_indices("pleiades_operator_") {
            let name: String =
                dashboard[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            assert!(exposition.contains(&format!("\n{name}")), "the dashboard queries {name}:\n{exposition}");
            queried += 1;
        }
        assert!(queried >= 2);
    }
}
