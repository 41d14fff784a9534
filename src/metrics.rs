//! Prometheus metrics and the health endpoints, served over HTTP.
//!
//! `/metrics` is the Prometheus text format: request counts and latency by operation, errors
//! by errno, the replication queue, remote health and the metadata cache. `/healthz` answers
//! 200 while the daemon runs and the mount answers a stat; `/readyz` answers 200 once the
//! mount is live and the journal replayed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::replication::health::Health;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrnoLabel {
    errno: String,
}

/// Figures read from the replicator and the cache when Prometheus scrapes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub queue_ops: u64,
    pub queue_bytes: u64,
    pub oldest_pending: Duration,
    pub health: Option<Health>,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

type SnapshotSource = Box<dyn Fn() -> Snapshot + Send + Sync>;

pub struct Metrics {
    registry: Mutex<Registry>,
    operations: Family<OpLabel, Counter>,
    durations: Family<OpLabel, Histogram>,
    errors: Family<ErrnoLabel, Counter>,
    queue_ops: Gauge,
    queue_bytes: Gauge,
    oldest_pending: Gauge<f64, AtomicU64>,
    remote_health: Gauge,
    cache_hits: Counter,
    cache_misses: Counter,
    daemon_restarts: Gauge,
    /// Cache counts already added to the counters, so each scrape adds the difference.
    cache_seen: Mutex<(u64, u64)>,
    source: Mutex<Option<SnapshotSource>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let metrics = Metrics {
            registry: Mutex::new(Registry::with_prefix("dualfs")),
            operations: Family::default(),
            durations: Family::new_with_constructor(|| {
                // 10 us to about 84 s.
                Histogram::new(exponential_buckets(0.00001, 4.0, 12))
            }),
            errors: Family::default(),
            queue_ops: Gauge::default(),
            queue_bytes: Gauge::default(),
            oldest_pending: Gauge::default(),
            remote_health: Gauge::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            daemon_restarts: Gauge::default(),
            cache_seen: Mutex::new((0, 0)),
            source: Mutex::new(None),
            ready: AtomicBool::new(false),
        };
        {
            let mut registry = metrics.registry.lock();
            registry.register(
                "operations",
                "FUSE requests served, by operation",
                metrics.operations.clone(),
            );
            registry.register(
                "operation_duration_seconds",
                "Time to serve a FUSE request, by operation",
                metrics.durations.clone(),
            );
            registry.register(
                "errors",
                "FUSE requests answered with an error, by errno",
                metrics.errors.clone(),
            );
            registry.register(
                "replication_queue_ops",
                "Changes the remote still lacks",
                metrics.queue_ops.clone(),
            );
            registry.register(
                "replication_queue_bytes",
                "Bytes of file data the remote still lacks (known ranges)",
                metrics.queue_bytes.clone(),
            );
            registry.register(
                "replication_oldest_pending_seconds",
                "Age of the oldest change the remote still lacks",
                metrics.oldest_pending.clone(),
            );
            registry.register(
                "remote_health",
                "Remote health: 0 up, 1 degraded, 2 down",
                metrics.remote_health.clone(),
            );
            registry.register(
                "cache_hits",
                "Metadata cache lookups answered from the cache",
                metrics.cache_hits.clone(),
            );
            registry.register(
                "cache_misses",
                "Metadata cache lookups that went to a backing tree",
                metrics.cache_misses.clone(),
            );
            registry.register(
                "daemon_restarts",
                "Times the serving daemon was started again on this mount's live FUSE connection, after a crash or for a takeover",
                metrics.daemon_restarts.clone(),
            );
        }
        metrics
    }

    pub fn set_daemon_restarts(&self, restarts: u64) {
        self.daemon_restarts.set(restarts as i64);
    }

    /// Sets where scrapes read the queue, health and cache figures from.
    pub fn set_source(&self, source: impl Fn() -> Snapshot + Send + Sync + 'static) {
        *self.source.lock() = Some(Box::new(source));
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Starts timing one request; the count and duration are recorded when the guard drops.
    pub fn time(&self, op: &'static str) -> RequestTimer<'_> {
        RequestTimer {
            metrics: self,
            op,
            started: Instant::now(),
        }
    }

    pub fn record_error(&self, errno: i32) {
        let name = nix::errno::Errno::from_raw(errno).to_string();
        let name = name.split(':').next().unwrap_or("unknown").to_string();
        self.errors.get_or_create(&ErrnoLabel { errno: name }).inc();
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        if let Some(source) = self.source.lock().as_ref() {
            let snapshot = source();
            self.queue_ops.set(snapshot.queue_ops as i64);
            self.queue_bytes.set(snapshot.queue_bytes as i64);
            self.oldest_pending
                .set(snapshot.oldest_pending.as_secs_f64());
            self.remote_health.set(match snapshot.health {
                Some(Health::Up) | None => 0,
                Some(Health::Degraded) => 1,
                Some(Health::Down) => 2,
            });
            let mut seen = self.cache_seen.lock();
            self.cache_hits
                .inc_by(snapshot.cache_hits.saturating_sub(seen.0));
            self.cache_misses
                .inc_by(snapshot.cache_misses.saturating_sub(seen.1));
            *seen = (
                snapshot.cache_hits.max(seen.0),
                snapshot.cache_misses.max(seen.1),
            );
        }
        let mut text = String::new();
        encode(&mut text, &self.registry.lock()).expect("writing to a String cannot fail");
        text
    }
}

pub struct RequestTimer<'a> {
    metrics: &'a Metrics,
    op: &'static str,
    started: Instant,
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        let label = OpLabel { op: self.op };
        self.metrics.operations.get_or_create(&label).inc();
        self.metrics
            .durations
            .get_or_create(&label)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` from a background thread.
/// Listens on `addr` for the metrics endpoints, which `serve` handles later. Binding first
/// lets a daemon fail on a port in use before it opens its journal.
pub fn bind(addr: SocketAddr) -> anyhow::Result<tiny_http::Server> {
    tiny_http::Server::http(addr).map_err(|err| {
        anyhow::anyhow!(
            "cannot listen on {addr} for metrics: {err}; pass another --metrics-addr or --metrics-addr off"
        )
    })
}

/// Serves /metrics, /healthz and /readyz on a listener from [`bind`].
pub fn serve(
    server: tiny_http::Server,
    metrics: Arc<Metrics>,
    mountpoint: PathBuf,
) -> anyhow::Result<()> {
    let addr = server.server_addr().to_string();
    let bound = server
        .server_addr()
        .to_ip()
        .map_or_else(|| addr.to_string(), |a| a.to_string());
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, body) = match request.url() {
                    "/metrics" => (200, metrics.render()),
                    "/healthz" => health(&mountpoint),
                    "/readyz" if metrics.ready.load(Ordering::Acquire) => (200, "ready\n".into()),
                    "/readyz" => (503, "not ready: mounting or replaying the journal\n".into()),
                    _ => (404, "not found; try /metrics, /healthz or /readyz\n".into()),
                };
                let response = tiny_http::Response::from_string(body).with_status_code(status);
                if let Err(err) = request.respond(response) {
                    tracing::debug!(%err, "metrics client went away");
                }
            }
        })?;
    Ok(())
}

/// Checks that the mount answers a stat within two seconds, on a thread of its own so a
/// stuck mount cannot stall the HTTP server.
fn health(mountpoint: &std::path::Path) -> (u16, String) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let path = mountpoint.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("health-check".into())
        .spawn(move || {
            let _ = tx.send(std::fs::metadata(&path).map(|_| ()));
        });
    if spawned.is_err() {
        return (503, "cannot start the health check\n".into());
    }
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(Ok(())) => (200, "ok\n".into()),
        Ok(Err(err)) => (503, format!("the mount does not answer: {err}\n")),
        Err(_) => (503, "the mount did not answer within 2 s\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_includes_request_and_queue_metrics() {
        let metrics = Metrics::new();
        drop(metrics.time("lookup"));
        metrics.record_error(libc::ENOENT);
        metrics.set_source(|| Snapshot {
            queue_ops: 3,
            queue_bytes: 4096,
            oldest_pending: Duration::from_millis(1500),
            health: Some(Health::Down),
            cache_hits: 7,
            cache_misses: 2,
        });
        let text = metrics.render();
        assert!(
            text.contains("dualfs_operations_total{op=\"lookup\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dualfs_operation_duration_seconds_count{op=\"lookup\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dualfs_errors_total{errno=\"ENOENT\"} 1"),
            "{text}"
        );
        assert!(text.contains("dualfs_replication_queue_ops 3"), "{text}");
        assert!(
            text.contains("dualfs_replication_oldest_pending_seconds 1.5"),
            "{text}"
        );
        assert!(text.contains("dualfs_remote_health 2"), "{text}");
        assert!(text.contains("dualfs_cache_hits_total 7"), "{text}");

        // A second scrape adds only what changed.
        let text = metrics.render();
        assert!(text.contains("dualfs_cache_hits_total 7"), "{text}");
    }
}
