//! Prometheus metrics (OpenMetrics text, via `prometheus-client`): what the admin listener
//! serves at `/metrics`.
//!
//! Owns the registry and the handles the request path updates. Updating a metric never blocks
//! and never allocates on the hot path: label values are `&'static str`.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::decision::{Decision, DecisionType, ReasonCode, Runtime};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    reason: &'static str,
}

/// A shadow disagreement: what was enforced and what the candidate would have decided.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    decision: &'static str,
    reason: &'static str,
    shadow_decision: &'static str,
    shadow_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    build: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    decision_duration: Histogram,
    pub audit_append_duration: Histogram,
    pub audit_fsync_duration: Histogram,
    pub audit_batch_size: Histogram,
    pub audit_write_failures: Counter,
    pub checkpoint_size: Gauge,
    pub checkpoint_failures: Counter,
    pub in_flight: Gauge,
    pub profiles_loaded: Gauge,
    pub ledger_up: Gauge,
    pub ledger_spend_duration: Histogram,
    pub ledger_failures: Counter,
    shadow_agreements: Counter,
    shadow_disagreements: Family<TransitionLabels, Counter>,
    pub shadow_unavailable: Counter,
}

/// Latency buckets from 25 µs to about 0.8 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_025, 2.0, 16)
}

impl Metrics {
    pub fn new(runtime: &Runtime) -> Metrics {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "ecl_decisions",
            "Decisions answered, by decision type and reason code",
            decisions.clone(),
        );
        let decision_duration = Histogram::new(latency_buckets());
        registry.register(
            "ecl_decision_duration_seconds",
            "Time from request received to decision answered, audit write included",
            decision_duration.clone(),
        );
        let audit_append_duration = Histogram::new(latency_buckets());
        registry.register(
            "ecl_audit_append_duration_seconds",
            "Time from handing a record to the audit writer to its acknowledgement (queue, write and sync)",
            audit_append_duration.clone(),
        );
        let audit_fsync_duration = Histogram::new(latency_buckets());
        registry.register(
            "ecl_audit_fsync_duration_seconds",
            "Duration of each fdatasync of the audit log",
            audit_fsync_duration.clone(),
        );
        let audit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "ecl_audit_batch_size",
            "Records written per audit batch (group commit)",
            audit_batch_size.clone(),
        );
        let audit_write_failures = Counter::default();
        registry.register(
            "ecl_audit_write_failures",
            "Decisions refused because their audit record could not be written",
            audit_write_failures.clone(),
        );
        let checkpoint_size = Gauge::default();
        registry.register(
            "ecl_audit_checkpoint_size",
            "Tree size (records) of the newest signed checkpoint; stays 0 while checkpoints are off",
            checkpoint_size.clone(),
        );
        let checkpoint_failures = Counter::default();
        registry.register(
            "ecl_audit_checkpoint_failures",
            "Due checkpoints not signed because the records could not be made durable, and failed appends to the checkpoints file (both retried)",
            checkpoint_failures.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "ecl_requests_in_flight",
            "Execution requests being read, decided or recorded",
            in_flight.clone(),
        );
        let profiles_loaded = Gauge::default();
        registry.register(
            "ecl_profiles_loaded",
            "Profile versions loaded and cached",
            profiles_loaded.clone(),
        );
        let ledger_up = Gauge::default();
        registry.register(
            "ecl_approval_ledger_up",
            "1 when the single-use ledger answered its last spend or probe, 0 when it did not (approved calls are denied); absent without approvals.single_use",
            ledger_up.clone(),
        );
        let ledger_spend_duration = Histogram::new(latency_buckets());
        registry.register(
            "ecl_approval_ledger_spend_duration_seconds",
            "Time to spend one approval token in the single-use ledger",
            ledger_spend_duration.clone(),
        );
        let ledger_failures = Counter::default();
        registry.register(
            "ecl_approval_ledger_failures",
            "Spends the single-use ledger could not answer (each became a DENY)",
            ledger_failures.clone(),
        );
        let shadow_agreements = Counter::default();
        registry.register(
            "ecl_shadow_agreements",
            "Requests the shadow candidate profile decided like the enforced one (same type and reason)",
            shadow_agreements.clone(),
        );
        let shadow_disagreements = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "ecl_shadow_disagreements",
            "Requests the shadow candidate decided differently, by enforced and candidate decision and reason; each is recorded in the audit log's `shadow` member",
            shadow_disagreements.clone(),
        );
        let shadow_unavailable = Counter::default();
        registry.register(
            "ecl_shadow_unavailable",
            "Requests not evaluated in shadow because their candidate profile is missing or invalid (answers are unaffected)",
            shadow_unavailable.clone(),
        );
        registry.register(
            "ecl_build",
            "Version and build of this gate",
            Info::new(BuildLabels {
                version: runtime.version,
                build: runtime.build,
            }),
        );
        Metrics {
            registry,
            decisions,
            decision_duration,
            audit_append_duration,
            audit_fsync_duration,
            audit_batch_size,
            audit_write_failures,
            checkpoint_size,
            checkpoint_failures,
            in_flight,
            profiles_loaded,
            ledger_up,
            ledger_spend_duration,
            ledger_failures,
            shadow_agreements,
            shadow_disagreements,
            shadow_unavailable,
        }
    }

    /// Counts one shadow comparison: an agreement, or the transition from `enforced` to
    /// `candidate`.
    pub fn shadow_compared(&self, enforced: &Decision, candidate: &Decision) {
        if enforced.decision_type == candidate.decision_type && enforced.reason == candidate.reason
        {
            self.shadow_agreements.inc();
        } else {
            self.shadow_disagreements
                .get_or_create(&TransitionLabels {
                    decision: enforced.decision_type.as_str(),
                    reason: enforced.reason.as_str(),
                    shadow_decision: candidate.decision_type.as_str(),
                    shadow_reason: candidate.reason.as_str(),
                })
                .inc();
        }
    }

    pub fn decided(&self, decision: DecisionType, reason: ReasonCode, seconds: f64) {
        self.decisions
            .get_or_create(&DecisionLabels {
                decision: decision.as_str(),
                reason: reason.as_str(),
            })
            .inc();
        self.decision_duration.observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Counts a request as in flight until dropped.
pub struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    pub fn enter(gauge: &'a Gauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Feeds the audit writer's batches and syncs into the metrics.
#[derive(Debug, Clone)]
pub struct AuditMetrics {
    fsync_duration: Histogram,
    batch_size: Histogram,
    checkpoint_size: Gauge,
    checkpoint_failures: Counter,
}

impl Metrics {
    /// The observer to hand the audit writer, so its work shows up here.
    pub fn audit_observer(&self) -> AuditMetrics {
        AuditMetrics {
            fsync_duration: self.audit_fsync_duration.clone(),
            batch_size: self.audit_batch_size.clone(),
            checkpoint_size: self.checkpoint_size.clone(),
            checkpoint_failures: self.checkpoint_failures.clone(),
        }
    }
}

impl crate::audit::AuditObserver for AuditMetrics {
    fn batch_committed(&self, records: usize) {
        self.batch_size.observe(records as f64);
    }

    fn synced(&self, took: std::time::Duration) {
        self.fsync_duration.observe(took.as_secs_f64());
    }

    fn checkpoint_signed(&self, size: u64) {
        self.checkpoint_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    fn checkpoint_failed(&self) {
        self.checkpoint_failures.inc();
    }
}
