//! The HTTP endpoints: /metrics, /healthz and /readyz.

mod common;

use common::{http_get as get, Mount};

#[test]
fn endpoints_report_health_and_metrics() {
    let mut mount = Mount::start_with_args(&["--metrics-addr", "127.0.0.1:0"]);
    let addr = mount.metrics_addr();

    std::fs::write(mount.path().join("counted.txt"), b"x").unwrap();
    let _ = std::fs::metadata(mount.path().join("absent"));
    mount.wait_synced();

    let (status, body) = get(&addr, "/healthz");
    assert_eq!(status, 200, "/healthz: {body}");
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(status, 200, "/readyz: {body}");

    let (status, body) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    for expected in [
        "dualfs_operations_total{op=\"create\"}",
        "dualfs_operation_duration_seconds_bucket{le=",
        "dualfs_errors_total{errno=\"ENOENT\"}",
        "dualfs_replication_queue_ops 0",
        "dualfs_replication_queue_bytes",
        "dualfs_replication_oldest_pending_seconds",
        "dualfs_remote_health 0",
        "dualfs_cache_hits_total",
        "dualfs_cache_misses_total",
    ] {
        assert!(
            body.contains(expected),
            "/metrics lacks {expected}:\n{body}"
        );
    }

    let (status, _) = get(&addr, "/nothing");
    assert_eq!(status, 404);
}
