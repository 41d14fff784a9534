//! The health of the remote tree: up, degraded or down.
//!
//! Failures that say the remote is unreachable (EIO, ESTALE, ENOTCONN, timeouts, a call that
//! hangs) move it from up to degraded and, after `DOWN_AFTER` in a row or one hung call, to
//! down. While down, changes are not waited for and remote reads are skipped; a probe brings
//! it back up. Errors that prove the remote answers (ENOSPC, EACCES, ...) only degrade it: the
//! operation stays queued and is retried, but reads continue.

use std::fmt;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use parking_lot::{Condvar, Mutex};

/// Consecutive unreachable-type failures that mark the remote down.
const DOWN_AFTER: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    Degraded,
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Degraded => "degraded",
            Health::Down => "down",
        })
    }
}

/// The failure of one remote call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The call returned this errno.
    Errno(Errno),
    /// The call did not return within its deadline.
    Timeout,
}

impl Failure {
    /// Returns whether the failure means the remote cannot be reached, as opposed to an error
    /// the remote returned.
    pub fn is_unreachable(self) -> bool {
        match self {
            Failure::Timeout => true,
            Failure::Errno(errno) => matches!(
                errno,
                Errno::EIO
                    | Errno::ESTALE
                    | Errno::ENOTCONN
                    | Errno::ETIMEDOUT
                    | Errno::EHOSTDOWN
                    | Errno::EHOSTUNREACH
                    | Errno::ENETUNREACH
                    | Errno::ECONNREFUSED
                    | Errno::ECONNRESET
            ),
        }
    }
}

struct State {
    health: Health,
    consecutive_failures: u32,
    /// Failures since the last transition, reported on the next one.
    failures_since_change: u64,
    since: Instant,
}

pub struct RemoteHealth {
    state: Mutex<State>,
    /// Signalled when the remote comes back up.
    recovered: Condvar,
}

impl Default for RemoteHealth {
    fn default() -> Self {
        RemoteHealth::new()
    }
}

impl RemoteHealth {
    pub fn new() -> RemoteHealth {
        RemoteHealth {
            state: Mutex::new(State {
                health: Health::Up,
                consecutive_failures: 0,
                failures_since_change: 0,
                since: Instant::now(),
            }),
            recovered: Condvar::new(),
        }
    }

    pub fn get(&self) -> Health {
        self.state.lock().health
    }

    pub fn is_down(&self) -> bool {
        self.get() == Health::Down
    }

    pub fn record_success(&self) {
        let mut state = self.state.lock();
        state.consecutive_failures = 0;
        if state.health != Health::Up {
            Self::transition(&mut state, Health::Up, "remote answered");
            drop(state);
            self.recovered.notify_all();
        }
    }

    pub fn record_failure(&self, failure: Failure) {
        let mut state = self.state.lock();
        state.failures_since_change += 1;
        if !failure.is_unreachable() {
            if state.health == Health::Up {
                Self::transition(&mut state, Health::Degraded, &failure_text(failure));
            }
            return;
        }

        state.consecutive_failures += 1;
        let next = if failure == Failure::Timeout || state.consecutive_failures >= DOWN_AFTER {
            Health::Down
        } else {
            Health::Degraded
        };
        if next != state.health && !(state.health == Health::Down && next == Health::Degraded) {
            Self::transition(&mut state, next, &failure_text(failure));
        }
    }

    fn transition(state: &mut State, to: Health, reason: &str) {
        let from = state.health;
        tracing::warn!(
            %from,
            %to,
            reason,
            failures = state.failures_since_change,
            after = ?state.since.elapsed(),
            "remote health changed"
        );
        state.health = to;
        state.failures_since_change = 0;
        state.since = Instant::now();
    }

    /// Blocks while the remote is down, up to `timeout`.
    pub fn wait_while_down(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        while state.health == Health::Down {
            if self.recovered.wait_until(&mut state, deadline).timed_out() {
                return;
            }
        }
    }
}

fn failure_text(failure: Failure) -> String {
    match failure {
        Failure::Errno(errno) => errno.to_string(),
        Failure::Timeout => "a call timed out".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_eio_marks_down_and_success_recovers() {
        let health = RemoteHealth::new();
        health.record_failure(Failure::Errno(Errno::EIO));
        assert_eq!(health.get(), Health::Degraded);
        for _ in 1..DOWN_AFTER {
            health.record_failure(Failure::Errno(Errno::EIO));
        }
        assert_eq!(health.get(), Health::Down);
        health.record_success();
        assert_eq!(health.get(), Health::Up);
    }

    #[test]
    fn timeout_marks_down_at_once() {
        let health = RemoteHealth::new();
        health.record_failure(Failure::Timeout);
        assert_eq!(health.get(), Health::Down);
    }

    #[test]
    fn full_remote_only_degrades() {
        let health = RemoteHealth::new();
        for _ in 0..10 {
            health.record_failure(Failure::Errno(Errno::ENOSPC));
        }
        assert_eq!(health.get(), Health::Degraded);
    }

    #[test]
    fn down_does_not_drop_back_to_degraded() {
        let health = RemoteHealth::new();
        health.record_failure(Failure::Timeout);
        health.record_failure(Failure::Errno(Errno::EIO));
        assert_eq!(health.get(), Health::Down);
    }
}
