//! Counters for `GET /metrics`, in the Prometheus text format.
//!
//! One [`Metrics`] lives as long as the service (a reload keeps it), owned by the recovery
//! coordinator, which sees every probe verdict, restart and recovery outcome.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::probe::Verdict;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    unit: String,
    /// systemd's job result, or `refused` when the restart call itself failed.
    result: String,
}

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    probes: Family<OutcomeLabel, Counter>,
    recoveries: Family<OutcomeLabel, Counter>,
    restarts: Family<RestartLabels, Counter>,
    recovery_seconds: Histogram,
    in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let probes = Family::<OutcomeLabel, Counter>::default();
        let recoveries = Family::<OutcomeLabel, Counter>::default();
        let restarts = Family::<RestartLabels, Counter>::default();
        // From 0.5 s to about 17 min: a Galaxy restart takes from seconds to minutes.
        let recovery_seconds = Histogram::new(exponential_buckets(0.5, 2.0, 12));
        let in_flight = Gauge::default();

        let mut registry = Registry::with_prefix("galaxyctl");
        registry.register(
            "probes",
            "Probes of Galaxy, by verdict (online, refused, unhealthy, broken)",
            probes.clone(),
        );
        registry.register(
            "recoveries",
            "Recoveries that ended, by outcome (online, unavailable)",
            recoveries.clone(),
        );
        registry.register(
            "restarts",
            "Unit restarts asked of systemd, by unit and job result",
            restarts.clone(),
        );
        registry.register(
            "recovery_duration_seconds",
            "How long recoveries took, from start to outcome",
            recovery_seconds.clone(),
        );
        registry.register(
            "recoveries_in_flight",
            "Recoveries under way (0 or 1)",
            in_flight.clone(),
        );
        Metrics {
            registry,
            probes,
            recoveries,
            restarts,
            recovery_seconds,
            in_flight,
        }
    }

    pub fn probed(&self, verdict: &Verdict) {
        let outcome = match verdict {
            Verdict::Online { .. } => "online",
            Verdict::Refused { .. } => "refused",
            Verdict::Unhealthy { .. } => "unhealthy",
            Verdict::Broken { .. } => "broken",
        };
        self.probes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn recovery_started(&self) {
        self.in_flight.inc();
    }

    pub fn recovery_ended(&self, online: bool, duration: Duration) {
        self.in_flight.dec();
        let outcome = if online { "online" } else { "unavailable" };
        self.recoveries
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.recovery_seconds.observe(duration.as_secs_f64());
    }

    /// A recovery that ended without an outcome (its task died).
    pub fn recovery_abandoned(&self) {
        self.in_flight.dec();
    }

    pub fn restarted(&self, unit: &str, result: &str) {
        self.restarts
            .get_or_create(&RestartLabels {
                unit: unit.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// The text exposition, as Prometheus scrapes it.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_exposition() {
        let metrics = Metrics::new();
        metrics.probed(&Verdict::Online { status: 200 });
        metrics.probed(&Verdict::Online { status: 302 });
        metrics.recovery_started();
        metrics.restarted("galaxy.service", "done");
        metrics.recovery_ended(true, Duration::from_secs(3));
        let text = metrics.encode();
        assert!(
            text.contains("galaxyctl_probes_total{outcome=\"online\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("galaxyctl_restarts_total{unit=\"galaxy.service\",result=\"done\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("galaxyctl_recoveries_total{outcome=\"online\"} 1"),
            "{text}"
        );
        assert!(text.contains("galaxyctl_recoveries_in_flight 0"), "{text}");
        assert!(
            text.contains("galaxyctl_recovery_duration_seconds_count 1"),
            "{text}"
        );
    }
}
