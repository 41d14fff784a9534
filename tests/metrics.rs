//! The HTTP endpoints: /metrics, /healthz and /readyz.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::Mount;

/// Returns the address the daemon logged for its metrics server.
fn metrics_addr(mount: &Mount) -> String {
    for _ in 0..100 {
        let log = mount.log_tail();
        if let Some(line) = log.lines().find(|l| l.contains("serving /metrics")) {
            let addr = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("addr="))
                .expect("the log line names the address");
            return addr.to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!(
        "the daemon never logged its metrics address:\n{}",
        mount.log_tail()
    );
}

/// Sends one GET request and returns the status code and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics server");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("malformed response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn endpoints_report_health_and_metrics() {
    let mut mount = Mount::start_with_args(&["--metrics-addr", "127.0.0.1:0"]);
    let addr = metrics_addr(&mount);

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
