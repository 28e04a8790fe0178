//! Prometheus metrics (`GET /metrics`). Names:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `reactor_rows_handled_total` | handler | rows whose effect was done |
//! | `reactor_rows_failed_total` | handler | failed attempts |
//! | `reactor_rows_dead_total` | handler | rows that went dead |
//! | `reactor_handler_duration_seconds` | handler | one attempt (leased) or one batch (SQL) |
//! | `reactor_notify_to_start_seconds` | handler | notification received → work started |
//! | `reactor_backlog` | handler | pending rows the last sweep found |
//! | `reactor_listener_reconnects_total` | | listener connections lost |
//! | `reactor_provider_requests_total` | op, outcome | provider calls |
//! | `reactor_webhook_deliveries_total` | outcome | webhook deliveries |
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .expect("static buckets are valid");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (then ours just stays unused).
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
