//! Logins under attack: a bound on concurrent password verifications (Argon2 takes memory per verification),
//! exponential backoff per source address and per user name after failures, and rate-limited failure logs.
//!
//! The failure table is bounded ([`MAX_TRACKED`] sources and names); when it is full, entries past the failure
//! window go first, then the least recently failed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meshgate_edge_agent::process::LogBudget;
use tokio::sync::Semaphore;

use crate::config::AuthConfig;

/// Source addresses and user names remembered for backoff at most.
pub const MAX_TRACKED: usize = 10_000;

/// Failure log lines written per second at most; the rest are counted and reported with the next one.
const LOG_LINES_PER_SECOND: u32 = 10;

/// Who failed: a source address or a user name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Throttles logins: see the module docs.
#[derive(Debug)]
pub struct LoginGuard {
    verifications: Semaphore,
    failures: Mutex<HashMap<Key, Failures>>,
    base: Duration,
    max: Duration,
    window: Duration,
    log: LogBudget,
}

impl LoginGuard {
    /// A guard with `[auth]`'s limits.
    pub fn new(config: &AuthConfig) -> LoginGuard {
        LoginGuard {
            verifications: Semaphore::new(config.max_concurrent_verifications.max(1)),
            failures: Mutex::new(HashMap::new()),
            base: Duration::from_millis(config.backoff_base_ms),
            max: Duration::from_millis(config.backoff_max_ms),
            window: Duration::from_secs(config.failure_window_secs),
            log: LogBudget::new(LOG_LINES_PER_SECOND),
        }
    }

    /// Waits for a verification slot; the permit frees it when dropped.
    pub async fn verification_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.verifications.acquire().await.ok()
    }

    /// How long to wait before answering a login from `addr` for `user`, given their recent failures.
    pub fn delay(&self, addr: Option<IpAddr>, user: Option<&str>, now: Instant) -> Duration {
        let Ok(table) = self.failures.lock() else { return Duration::ZERO };
        let count = |key: Key| {
            table.get(&key).filter(|f| now.saturating_duration_since(f.last) < self.window).map_or(0, |f| f.count)
        };
        let worst = addr.map_or(0, |a| count(Key::Addr(a))).max(user.map_or(0, |u| count(Key::User(u.into()))));
        backoff(self.base, self.max, worst)
    }

    /// Records a failed login.
    pub fn failed(&self, addr: Option<IpAddr>, user: Option<&str>, now: Instant) {
        let Ok(mut table) = self.failures.lock() else { return };
        let keys = addr.map(Key::Addr).into_iter().chain(user.map(|u| Key::User(u.to_string())));
        for key in keys {
            if !table.contains_key(&key) && table.len() >= MAX_TRACKED {
                self.make_room(&mut table, now);
            }
            let entry = table.entry(key).or_insert(Failures { count: 0, last: now });
            if now.saturating_duration_since(entry.last) >= self.window {
                entry.count = 0;
            }
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
        }
    }

    /// Forgets the failures of a source and a user that just logged in.
    pub fn succeeded(&self, addr: Option<IpAddr>, user: Option<&str>) {
        let Ok(mut table) = self.failures.lock() else { return };
        if let Some(a) = addr {
            table.remove(&Key::Addr(a));
        }
        if let Some(u) = user {
            table.remove(&Key::User(u.to_string()));
        }
    }

    fn make_room(&self, table: &mut HashMap<Key, Failures>, now: Instant) {
        table.retain(|_, f| now.saturating_duration_since(f.last) < self.window);
        if table.len() >= MAX_TRACKED
            && let Some(oldest) = table.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone())
        {
            table.remove(&oldest);
        }
    }

    /// Whether a failure log line may be written now; returns the lines suppressed since the last one.
    pub fn may_log(&self, now: Instant) -> Option<u64> {
        self.log.may_log(now)
    }
}

/// `base` doubled for each failure after the first, capped at `max`; nothing without failures.
fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => base.saturating_mul(1u32 << (n - 1).min(20)).min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> LoginGuard {
        LoginGuard::new(&AuthConfig {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            failure_window_secs: 60,
            ..AuthConfig::default()
        })
    }

    #[test]
    fn failures_double_the_delay_per_source_and_per_name_up_to_the_cap() {
        let g = guard();
        let (a, b) = (Some(IpAddr::from([10, 0, 0, 1])), Some(IpAddr::from([10, 0, 0, 2])));
        let t = Instant::now();
        assert_eq!(g.delay(a, Some("d1"), t), Duration::ZERO);
        g.failed(a, Some("d1"), t);
        assert_eq!(g.delay(a, Some("other"), t), Duration::from_millis(100), "the source is slowed");
        assert_eq!(g.delay(b, Some("d1"), t), Duration::from_millis(100), "and the name, from any source");
        assert_eq!(g.delay(b, Some("other"), t), Duration::ZERO);
        for _ in 0..10 {
            g.failed(a, Some("d1"), t);
        }
        assert_eq!(g.delay(a, None, t), Duration::from_secs(1), "capped");
        assert_eq!(g.delay(a, None, t + Duration::from_secs(61)), Duration::ZERO, "forgiven after the window");
        g.succeeded(a, Some("d1"));
        assert_eq!(g.delay(a, Some("d1"), t), Duration::ZERO);
    }

    #[test]
    fn the_table_stays_bounded() {
        let g = guard();
        let t = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 50) {
            g.failed(Some(IpAddr::from(i.to_be_bytes())), None, t + Duration::from_micros(u64::from(i)));
        }
        assert!(g.failures.lock().unwrap().len() <= MAX_TRACKED);
    }

    #[test]
    fn failure_logs_are_rate_limited_and_count_what_they_left_out() {
        let g = guard();
        let t = Instant::now();
        for _ in 0..LOG_LINES_PER_SECOND {
            assert_eq!(g.may_log(t), Some(0));
        }
        assert_eq!(g.may_log(t), None);
        assert_eq!(g.may_log(t), None);
        assert_eq!(g.may_log(t + Duration::from_secs(1)), Some(2));
    }
}
