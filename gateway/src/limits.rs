//! `[limits]`: every depth, count, byte and rate budget a device can push against, named and configurable, and
//! the small checks that apply them (topic depth, a per-connection message rate).
//!
//! Each limit answers an attack listed in docs/security.md; each refusal is the protocol's own (MQTT 5 reason
//! codes, 3.1.1 SUBACK 0x80 or a close, AMQP connection.close, WebSocket nacks and close codes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The most levels (`/`-separated) a topic name or filter may have, on every protocol (EMQX's default).
    pub max_topic_levels: usize,
    /// The deepest nesting of AMQP field tables and arrays accepted (client properties, arguments, headers).
    pub max_table_depth: usize,
    /// The most bytes of messages queued for delivery, over all sessions (in flight included). Past it, new QoS 0
    /// deliveries are dropped and QoS 1/2 ones go only to sessions under their own `broker.max_queued_bytes`
    /// share of it; publishers are never refused for a subscriber's backlog.
    pub max_memory_bytes: u64,
    /// The most sessions the broker holds (connected or kept for an offline client).
    pub max_sessions: usize,
    /// The most sessions one user (one user name; anonymous devices count as one) may hold.
    pub max_sessions_per_user: usize,
    /// The most subscriptions one session may hold.
    pub max_subscriptions_per_session: usize,
    /// The most subscriptions in the broker, all sessions together.
    pub max_subscriptions: usize,
    /// Messages per second one connection (MQTT, AMQP or `cloudevents.json`) may publish (0: no limit). Past it
    /// the gateway stops reading the connection until the rate allows more: backpressure, never a disconnect.
    pub max_messages_per_second: u32,
    /// Messages a connection may publish at once above the rate before it is slowed (with a rate set).
    pub message_burst: u32,
    /// Publishes without acknowledgement (MQTT QoS 0, AMQP without confirms) one connection may have waiting for
    /// the spool's writer; past it the connection is not read until one is written. Its fair share of the
    /// ingest path: a flooding device cannot fill the queue in front of every other device's acknowledged ones.
    pub max_unconfirmed_per_connection: usize,
    /// Messages per second all connections of one user together may publish (0: no limit); enforced like
    /// `max_messages_per_second`, by not reading.
    pub max_messages_per_second_per_user: u32,
    /// Retained messages the broker keeps, all topics together; a retained publish past it is refused (MQTT 5
    /// QoS 1/2: 0x97) or delivered without being retained.
    pub max_retained_messages: usize,
    /// Bytes of retained messages the broker keeps, all topics together; the same answer past it.
    pub max_retained_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_topic_levels: 128,
            max_table_depth: 32,
            max_memory_bytes: 256 * 1024 * 1024,
            max_sessions: 100_000,
            max_sessions_per_user: 10_000,
            max_subscriptions_per_session: 1_000,
            max_subscriptions: 1_000_000,
            max_messages_per_second: 0,
            message_burst: 1_000,
            max_unconfirmed_per_connection: 256,
            max_messages_per_second_per_user: 0,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 * 1024 * 1024,
        }
    }
}

impl LimitsConfig {
    /// Checks the values: `Err((key, problem))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let checks: [(&str, bool); 8] = [
            ("max_retained_messages", self.max_retained_messages == 0),
            ("max_unconfirmed_per_connection", self.max_unconfirmed_per_connection == 0),
            ("max_topic_levels", self.max_topic_levels == 0),
            ("max_table_depth", self.max_table_depth == 0),
            ("max_sessions", self.max_sessions == 0),
            ("max_sessions_per_user", self.max_sessions_per_user == 0),
            ("max_subscriptions_per_session", self.max_subscriptions_per_session == 0),
            ("max_subscriptions", self.max_subscriptions == 0),
        ];
        match checks.iter().find(|(_, zero)| *zero) {
            Some((key, _)) => Err((format!("limits.{key}"), "must be at least 1".into())),
            None if (self.max_messages_per_second > 0 || self.max_messages_per_second_per_user > 0)
                && self.message_burst == 0 =>
            {
                Err(("limits.message_burst".into(), "must be at least 1 when a rate is set".into()))
            }
            None => Ok(()),
        }
    }

    /// Whether a topic name or filter has at most [`LimitsConfig::max_topic_levels`] levels (counted without
    /// allocating, and without reading past the limit).
    pub fn topic_depth_ok(&self, topic: &str) -> bool {
        topic_levels_within(topic, self.max_topic_levels)
    }

    /// A rate limiter for one connection, or `None` when no rate is set.
    pub fn connection_rate(&self, now: Instant) -> Option<RateLimiter> {
        (self.max_messages_per_second > 0)
            .then(|| RateLimiter::new(self.max_messages_per_second, self.message_burst.max(1), now))
    }
}

/// The message-rate buckets of users (`limits.max_messages_per_second_per_user`), shared by each user's
/// connections. A bucket lives while one of its user's connections holds it; the map forgets the rest.
#[derive(Debug, Default)]
pub struct UserRates {
    buckets: Mutex<HashMap<String, Weak<Mutex<RateLimiter>>>>,
}

/// A bucket shared by the connections of one user.
pub type SharedRate = Arc<Mutex<RateLimiter>>;

impl UserRates {
    /// The bucket of `user` (`""` for anonymous devices), or `None` when no per-user rate is set.
    pub fn for_user(&self, limits: &LimitsConfig, user: &str, now: Instant) -> Option<SharedRate> {
        let rate = limits.max_messages_per_second_per_user;
        if rate == 0 {
            return None;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = buckets.get(user).and_then(Weak::upgrade) {
            return Some(live);
        }
        if buckets.len() >= 1024 {
            buckets.retain(|_, b| b.strong_count() > 0);
        }
        let bucket = Arc::new(Mutex::new(RateLimiter::new(rate, limits.message_burst.max(1), now)));
        buckets.insert(user.to_string(), Arc::downgrade(&bucket));
        Some(bucket)
    }
}

/// The message rates one connection is held to: its own (`limits.max_messages_per_second`) and its user's
/// (`limits.max_messages_per_second_per_user`, shared with the user's other connections). Every listener asks it
/// before handling a publish, and waits (reading nothing meanwhile) as long as it says.
#[derive(Debug, Default)]
pub struct MessageRate {
    own: Option<RateLimiter>,
    user: Option<SharedRate>,
}

impl MessageRate {
    /// The rates of a connection of `user` (`""`: anonymous) under `limits`; `rates` holds the users' buckets.
    pub fn for_connection(limits: &LimitsConfig, rates: &UserRates, user: &str, now: Instant) -> MessageRate {
        MessageRate { own: limits.connection_rate(now), user: rates.for_user(limits, user, now) }
    }

    /// Takes one publish's tokens; returns how long to wait before handling it (`None`: now).
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        let own = self.own.as_mut().and_then(|r| r.take(now));
        let user = self.user.as_ref().and_then(|r| r.lock().unwrap_or_else(|p| p.into_inner()).take(now));
        own.max(user)
    }

    /// Waits as long as the rates say before a publish is handled.
    pub async fn pace(&mut self) {
        if let Some(wait) = self.take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Whether `topic` has at most `max` levels.
pub fn topic_levels_within(topic: &str, max: usize) -> bool {
    topic.bytes().filter(|&b| b == b'/').take(max).count() < max
}

/// A token bucket: `rate` messages per second on average, `burst` at once. Sans-IO: the caller passes the time
/// and waits itself.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_message: Duration,
    burst: Duration,
    /// When the bucket is full again; earlier than `now` means full.
    full_at: Instant,
}

impl RateLimiter {
    /// A full bucket of `burst` messages at `rate` per second.
    pub fn new(rate: u32, burst: u32, now: Instant) -> RateLimiter {
        let per_message = Duration::from_secs(1) / rate.max(1);
        RateLimiter { per_message, burst: per_message * burst.max(1), full_at: now }
    }

    /// Takes one message's token. Returns how long the caller must wait before the next one is within the rate
    /// (`None`: go on now).
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        let start = self.full_at.max(now);
        self.full_at = start + self.per_message;
        let debt = self.full_at.saturating_duration_since(now);
        debt.checked_sub(self.burst).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_levels_are_counted_up_to_the_limit() {
        assert!(topic_levels_within("a", 1));
        assert!(!topic_levels_within("a/b", 1));
        assert!(topic_levels_within("a/b/c", 3));
        assert!(!topic_levels_within("a/b/c/", 3), "an empty last level counts");
        assert!(!topic_levels_within(&"a/".repeat(10_000), 128));
        assert!(topic_levels_within(&"a/".repeat(127), 128));
    }

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 3, t0);
        assert_eq!(r.take(t0), None);
        assert_eq!(r.take(t0), None);
        assert_eq!(r.take(t0), None);
        let wait = r.take(t0).expect("the fourth at once is over the burst");
        assert_eq!(wait, Duration::from_millis(100));
        // After a second the bucket has refilled.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(r.take(later), None);
    }

    #[test]
    fn a_user_s_connections_share_one_bucket() {
        let limits = LimitsConfig { max_messages_per_second_per_user: 10, message_burst: 2, ..LimitsConfig::default() };
        let rates = UserRates::default();
        let t0 = Instant::now();
        let a = rates.for_user(&limits, "u", t0).unwrap();
        let b = rates.for_user(&limits, "u", t0).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.lock().unwrap().take(t0), None);
        assert_eq!(b.lock().unwrap().take(t0), None);
        assert!(a.lock().unwrap().take(t0).is_some(), "the burst is the user's, not each connection's");
        assert!(rates.for_user(&LimitsConfig::default(), "u", t0).is_none(), "no per-user rate set");
    }

    #[test]
    fn zero_limits_are_refused_with_their_key() {
        let bad = LimitsConfig { max_topic_levels: 0, ..LimitsConfig::default() };
        assert_eq!(bad.validate().unwrap_err().0, "limits.max_topic_levels");
        assert!(LimitsConfig::default().validate().is_ok());
    }
}
