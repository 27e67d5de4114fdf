//! Prometheus metrics (via `prometheus-client`): what the admin listener serves at `/metrics`,
//! as OpenMetrics text or, for scrapers that do not ask for it, classic Prometheus text 0.0.4.
//!
//! Owns the registry and the handles the request path updates. Updating a metric never blocks
//! and never allocates while deciding: label values are `&'static str`. The per-upstream
//! families are keyed by tool name (one small allocation per forwarded call, beside a network
//! round trip) and never by URL, which may carry a token.

use std::sync::OnceLock;

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

/// One upstream, by tool name: never its URL, which may hold a token.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamCallLabels {
    tool: String,
    /// The answer's status class (`2xx`…) or the error kind (`timeout`, `upstream_busy`, …).
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A shadow disagreement: what was enforced and what the candidate would have decided.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    decision: &'static str,
    reason: &'static str,
    shadow_decision: &'static str,
    shadow_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
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
    /// Each (decision, reason) series' counter, once it exists: the family's lookup (a lock
    /// and a hash of the labels) is paid once per series instead of once per decision. A
    /// series still appears in the exposition only after its first decision.
    decision_counters: [[OnceLock<Counter>; ReasonCode::ALL.len()]; 3],
    decision_duration: Histogram,
    pub audit_append_duration: Histogram,
    pub audit_fsync_duration: Histogram,
    pub audit_batch_size: Histogram,
    pub audit_write_failures: Counter,
    pub checkpoint_size: Gauge,
    pub checkpoint_failures: Counter,
    pub in_flight: Gauge,
    pub profiles_loaded: Gauge,
    notifications: Family<OutcomeLabels, Counter>,
    /// ESCALATE record written → notification accepted by the receiver.
    pub notification_latency: Histogram,
    /// Key files (JWKS, PEM) that changed but could not be loaded; the old keys stay in use.
    pub auth_key_reload_failures: Counter,
    /// Bearer tokens accepted from the verified-token cache, without a signature check.
    pub auth_token_cache_hits: Counter,
    /// Changed listener certificate, key or client CA files that could not be loaded.
    pub tls_reload_failures: Counter,
    /// TLS handshakes on the execution listener that failed (bad client certificate, timeout).
    pub tls_handshake_failures: Counter,
    pub ledger_up: Gauge,
    pub ledger_spend_duration: Histogram,
    pub ledger_failures: Counter,
    upstream_calls: Family<UpstreamCallLabels, Counter>,
    upstream_duration: HistogramFamily<ToolLabels>,
    upstream_in_flight: Family<ToolLabels, Gauge>,
    upstream_client_cert_reload_failures: Family<ToolLabels, Counter>,
    pub tools_without_upstream: Gauge,
    shadow_agreements: Counter,
    shadow_disagreements: Family<TransitionLabels, Counter>,
    pub shadow_unavailable: Counter,
}

/// Latency buckets from 25 µs to about 0.8 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_025, 2.0, 16)
}

/// Tool call buckets from 1 ms to about 65 s: tools are slower than deciding, and an upstream
/// timeout may be minutes.
fn upstream_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
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
            "Time from request received to decision recorded, audit write included; in proxy mode the tool's time is not (see ecl_upstream_duration_seconds)",
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
        let notifications = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "ecl_escalation_notifications",
            "Escalation notification attempts by outcome: delivered, retried (an attempt failed), refused (4xx), expired (given up), dropped (queue full)",
            notifications.clone(),
        );
        let notification_latency = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register(
            "ecl_escalation_notification_seconds",
            "Time from an ESCALATE's record written to its notification accepted, retries included",
            notification_latency.clone(),
        );
        let auth_key_reload_failures = Counter::default();
        registry.register(
            "ecl_auth_key_reload_failures",
            "Changed caller key files (JWKS, PEM) that could not be loaded; the previous keys stay in use",
            auth_key_reload_failures.clone(),
        );
        let auth_token_cache_hits = Counter::default();
        registry.register(
            "ecl_auth_token_cache_hits",
            "Bearer tokens accepted from the verified-token cache, without a signature check",
            auth_token_cache_hits.clone(),
        );
        let tls_reload_failures = Counter::default();
        registry.register(
            "ecl_tls_reload_failures",
            "Changed listener certificate, key or client CA files that could not be loaded; the previous ones stay in use",
            tls_reload_failures.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "ecl_tls_handshake_failures",
            "TLS handshakes on the execution listener that failed (client certificate refused, timeout, not TLS)",
            tls_handshake_failures.clone(),
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
        let upstream_calls = Family::<UpstreamCallLabels, Counter>::default();
        registry.register(
            "ecl_upstream_calls",
            "Proxy mode: calls to tools, by tool name and outcome (status class such as 2xx, or the error kind)",
            upstream_calls.clone(),
        );
        let upstream_duration: HistogramFamily<ToolLabels> =
            Family::new_with_constructor(upstream_histogram);
        registry.register(
            "ecl_upstream_duration_seconds",
            "Proxy mode: time from sending a call to its tool to the whole answer read, by tool name",
            upstream_duration.clone(),
        );
        let upstream_in_flight = Family::<ToolLabels, Gauge>::default();
        registry.register(
            "ecl_upstream_in_flight",
            "Proxy mode: calls waiting on each tool now (bounded by its max_concurrent)",
            upstream_in_flight.clone(),
        );
        let upstream_client_cert_reload_failures = Family::<ToolLabels, Counter>::default();
        registry.register(
            "ecl_upstream_client_cert_reload_failures",
            "Proxy mode: changed upstream client certificate or key files that could not be loaded, by tool name; the certificate in use stays",
            upstream_client_cert_reload_failures.clone(),
        );
        let tools_without_upstream = Gauge::default();
        registry.register(
            "ecl_tools_without_upstream",
            "Proxy mode: tools a loaded profile allows that have no upstream (their ALLOWs are recorded with outcome no_upstream)",
            tools_without_upstream.clone(),
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
            decision_counters: Default::default(),
            decision_duration,
            audit_append_duration,
            audit_fsync_duration,
            audit_batch_size,
            audit_write_failures,
            checkpoint_size,
            checkpoint_failures,
            in_flight,
            profiles_loaded,
            notifications,
            notification_latency,
            auth_key_reload_failures,
            auth_token_cache_hits,
            tls_reload_failures,
            tls_handshake_failures,
            ledger_up,
            ledger_spend_duration,
            ledger_failures,
            upstream_calls,
            upstream_duration,
            upstream_in_flight,
            upstream_client_cert_reload_failures,
            tools_without_upstream,
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

    /// One finished call to `tool`'s upstream. A call never sent (`no_upstream`,
    /// `upstream_busy`, …) is counted but has no duration to observe.
    pub fn upstream_called(&self, tool: &str, outcome: &'static str, took: Option<f64>) {
        self.upstream_calls
            .get_or_create(&UpstreamCallLabels {
                tool: tool.to_owned(),
                outcome,
            })
            .inc();
        if let Some(seconds) = took {
            self.upstream_duration
                .get_or_create(&ToolLabels {
                    tool: tool.to_owned(),
                })
                .observe(seconds);
        }
    }

    /// Counts one replacement of `tool`'s client certificate files that did not load.
    pub fn upstream_client_cert_reload_failed(&self, tool: &str) {
        self.upstream_client_cert_reload_failures
            .get_or_create(&ToolLabels {
                tool: tool.to_owned(),
            })
            .inc();
    }

    /// Counts a call waiting on `tool` until the returned guard is dropped.
    pub fn upstream_waiting(&self, tool: &str) -> UpstreamInFlight {
        let gauge = self
            .upstream_in_flight
            .get_or_create(&ToolLabels {
                tool: tool.to_owned(),
            })
            .clone();
        gauge.inc();
        UpstreamInFlight(gauge)
    }

    pub fn decided(&self, decision: DecisionType, reason: ReasonCode, seconds: f64) {
        let labels = || DecisionLabels {
            decision: decision.as_str(),
            reason: reason.as_str(),
        };
        match self
            .decision_counters
            .get(decision as usize)
            .and_then(|by_reason| by_reason.get(reason as usize))
        {
            Some(slot) => {
                slot.get_or_init(|| self.decisions.get_or_create(&labels()).clone())
                    .inc();
            }
            // Unreachable while the array is sized by the enums; counted all the same.
            None => {
                self.decisions.get_or_create(&labels()).inc();
            }
        }
        self.decision_duration.observe(seconds);
    }

    /// The OpenMetrics text exposition.
    /// Counts one escalation notification outcome (see `crate::notify`).
    pub fn notification(&self, outcome: &'static str) {
        self.notifications
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// The classic Prometheus text exposition (format 0.0.4).
    pub fn encode_classic(&self) -> String {
        to_classic(&self.encode())
    }
}

/// Rewrites OpenMetrics text as classic Prometheus text 0.0.4, which `prometheus-client` does
/// not write: a counter family is named after its `_total` sample, an info family becomes a
/// gauge named `_info`, and `# UNIT`, `# EOF`, `_created` samples and exemplars go.
fn to_classic(openmetrics: &str) -> String {
    let mut types = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
        }
    }
    let family = |name: &str| -> (String, &'static str) {
        match types.get(name).copied() {
            Some("counter") => (format!("{name}_total"), "counter"),
            Some("info") => (format!("{name}_info"), "gauge"),
            Some("gauge") => (name.to_owned(), "gauge"),
            Some("histogram") => (name.to_owned(), "histogram"),
            Some("summary") => (name.to_owned(), "summary"),
            _ => (name.to_owned(), "untyped"),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // OpenMetrics also escapes `"` in help text; the classic format does not.
            let help = help.replace("\\\"", "\"");
            out.push_str(&format!("# HELP {} {help}\n", family(name).0));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(name, _)| name);
            let (name, kind) = family(name);
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: OpenMetrics only.
        } else if !line.is_empty() {
            let sample = line.split_once(" # ").map_or(line, |(sample, _)| sample);
            let name = sample.split(['{', ' ']).next().unwrap_or("");
            if name.ends_with("_created") {
                continue;
            }
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// Counts a call waiting on a tool until dropped.
pub struct UpstreamInFlight(Gauge);

impl Drop for UpstreamInFlight {
    fn drop(&mut self) {
        self.0.dec();
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

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 16: not every scraper reads OpenMetrics; the classic text names counter and info
    // families after their samples.
    #[test]
    fn classic_text_renames_counter_and_info_families() {
        let metrics = Metrics::new(&Runtime::current());
        metrics.decided(DecisionType::Allow, ReasonCode::Ok, 0.001);
        metrics.upstream_called("email.send", "2xx", Some(0.2));
        let open = metrics.encode();
        assert!(open.contains("# TYPE ecl_decisions counter\n"), "{open}");
        assert!(open.ends_with("# EOF\n"));
        let classic = metrics.encode_classic();
        for line in [
            "# HELP ecl_decisions_total Decisions answered, by decision type and reason code.",
            "# TYPE ecl_decisions_total counter",
            "ecl_decisions_total{decision=\"ALLOW\",reason=\"OK\"} 1",
            "# TYPE ecl_build_info gauge",
            "# TYPE ecl_decision_duration_seconds histogram",
            "ecl_decision_duration_seconds_count 1",
            "# TYPE ecl_upstream_calls_total counter",
            "ecl_upstream_calls_total{tool=\"email.send\",outcome=\"2xx\"} 1",
            "ecl_upstream_duration_seconds_count{tool=\"email.send\"} 1",
            "# TYPE ecl_requests_in_flight gauge",
        ] {
            assert!(
                classic.lines().any(|l| l == line),
                "missing `{line}` in\n{classic}"
            );
        }
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
        // Every sample belongs to the family its `# TYPE` line names.
        let mut family = String::new();
        for line in classic.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap_or("").to_owned();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "`{line}` outside `{family}`");
            }
        }
    }

    #[test]
    fn classic_text_unescapes_quotes_in_help_only() {
        let text = "# HELP x A \\\"quoted\\\" word\n# TYPE x gauge\nx{a=\"\\\"\"} 1\n# EOF\n";
        assert_eq!(
            to_classic(text),
            "# HELP x A \"quoted\" word\n# TYPE x gauge\nx{a=\"\\\"\"} 1\n"
        );
    }
}
