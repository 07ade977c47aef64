//! `GET /metrics`: the forge's metrics in the Prometheus text format, for
//! an admin token or, without one, on the `--metrics-listen` address.
//!
//! Two kinds of series. Events are counted where they happen, in the
//! process-wide [`Metrics`] ([`metrics()`]): lifecycle latencies
//! (`forge_sandbox_operation_seconds{operation}`), execs
//! (`forge_exec_seconds`), egress bytes, git pushes. States are read when
//! scraped ([`Metrics::render`]): sandboxes by state and backend, the
//! create queue, memory committed against what may be, webhook deliveries
//! and pipeline runs by outcome (from their tables, so they survive a
//! restart). The names and labels are the contract: dashboards rely on
//! them.

use std::sync::OnceLock;
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::server::AppState;

/// Latency buckets of lifecycle operations and execs, in seconds: from a
/// millisecond (an exec of `true`) to two minutes (a pause to disk of a
/// large VM on a slow disk).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// The forge's metrics.
pub struct Metrics {
    registry: Registry,
    /// Lifecycle operations by `operation` (create, fork, pause, resume,
    /// destroy) and `outcome` (ok, error).
    operations: HistogramVec,
    execs: HistogramVec,
    egress_bytes: IntCounterVec,
    pushes: IntCounter,
    sandboxes: IntGaugeVec,
    queue: IntGauge,
    memory: IntGaugeVec,
    deliveries: IntGaugeVec,
    runs: IntGaugeVec,
    /// One scrape at a time: each resets and sets the state gauges.
    scrape: tokio::sync::Mutex<()>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let operations = HistogramVec::new(
            HistogramOpts::new(
                "forge_sandbox_operation_seconds",
                "How long sandbox lifecycle operations took",
            )
            .buckets(BUCKETS.to_vec()),
            &["operation", "outcome"],
        )
        .expect("a valid histogram");
        let execs = HistogramVec::new(
            HistogramOpts::new(
                "forge_exec_seconds",
                "How long execs took, from request to exit (streamed ones until their stream starts)",
            )
            .buckets(BUCKETS.to_vec()),
            &["mode"],
        )
        .expect("a valid histogram");
        let egress_bytes = IntCounterVec::new(
            Opts::new(
                "forge_egress_bytes_total",
                "Bytes through the sandboxes' egress proxy",
            ),
            &["direction"],
        )
        .expect("a valid counter");
        let pushes = IntCounter::new("forge_git_pushes_total", "Pushes that updated a ref")
            .expect("a valid counter");
        let sandboxes = IntGaugeVec::new(
            Opts::new("forge_sandboxes", "Sandboxes by state and backend"),
            &["state", "backend"],
        )
        .expect("a valid gauge");
        let queue = IntGauge::new(
            "forge_sandbox_queue_depth",
            "Creates and forks waiting for room under the caps",
        )
        .expect("a valid gauge");
        let memory = IntGaugeVec::new(
            Opts::new(
                "forge_sandbox_memory_mib",
                "Memory given to live sandboxes (committed) and the most they may be given together (available)",
            ),
            &["kind"],
        )
        .expect("a valid gauge");
        let deliveries = IntGaugeVec::new(
            Opts::new(
                "forge_webhook_deliveries",
                "Webhook deliveries by outcome (pending, delivered, failed)",
            ),
            &["outcome"],
        )
        .expect("a valid gauge");
        let runs = IntGaugeVec::new(
            Opts::new("forge_pipeline_runs", "Pipeline runs by outcome"),
            &["outcome"],
        )
        .expect("a valid gauge");
        for collector in [
            Box::new(operations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(execs.clone()),
            Box::new(egress_bytes.clone()),
            Box::new(pushes.clone()),
            Box::new(sandboxes.clone()),
            Box::new(queue.clone()),
            Box::new(memory.clone()),
            Box::new(deliveries.clone()),
            Box::new(runs.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric is registered once");
        }
        Metrics {
            registry,
            operations,
            execs,
            egress_bytes,
            pushes,
            sandboxes,
            queue,
            memory,
            deliveries,
            runs,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// Records how long `operation` took since `started`, and whether it
    /// succeeded.
    pub fn operation<T, E>(&self, operation: &str, started: Instant, result: &Result<T, E>) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.operations
            .with_label_values(&[operation, outcome])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records an exec (`mode`: `collected` or `streamed`).
    pub fn exec(&self, mode: &str, started: Instant) {
        self.execs
            .with_label_values(&[mode])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts bytes through the egress proxy.
    pub fn egress(&self, bytes_out: u64, bytes_in: u64) {
        self.egress_bytes
            .with_label_values(&["out"])
            .inc_by(bytes_out);
        self.egress_bytes
            .with_label_values(&["in"])
            .inc_by(bytes_in);
    }

    /// Counts a push that updated refs.
    pub fn push(&self) {
        self.pushes.inc();
    }

    /// Every series, the states read now, in the text format.
    pub async fn render(&self, state: &AppState) -> anyhow::Result<String> {
        let _one_at_a_time = self.scrape.lock().await;
        let store = &state.store;
        self.sandboxes.reset();
        for (vm_state, backend, count) in store.count_vms_by_state().await? {
            self.sandboxes
                .with_label_values(&[vm_state.as_str(), backend.as_str()])
                .set(count);
        }
        self.queue.set(state.sandboxes.queued() as i64);
        let (_, committed) = store.live_vm_usage().await?;
        self.memory.with_label_values(&["committed"]).set(committed);
        let available = state.sandboxes.limits().max_live_mem_mib;
        if available != u64::MAX {
            self.memory
                .with_label_values(&["available"])
                .set(i64::try_from(available).unwrap_or(i64::MAX));
        }
        self.deliveries.reset();
        for (outcome, count) in store.count_deliveries_by_state().await? {
            self.deliveries.with_label_values(&[&outcome]).set(count);
        }
        self.runs.reset();
        for (outcome, count) in store.count_runs_by_state().await? {
            self.runs.with_label_values(&[&outcome]).set(count);
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8(out)?)
    }
}
