//! Polling until a condition holds or a deadline passes (the VMMs offer nothing to block on).

use std::time::{Duration, Instant};

/// How often [`wait_until`] checks.
pub const POLL: Duration = Duration::from_millis(5);

/// Calls `done` every [`POLL`] until it returns true (then true) or `deadline` passes (then
/// false, after one last check).
pub fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_when_done_or_at_the_deadline() {
        let mut calls = 0;
        assert!(wait_until(Instant::now() + Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        let started = Instant::now();
        assert!(!wait_until(started + Duration::from_millis(20), || false));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
