//! Uplinks: where events leave the edge.
//!
//! An uplink takes batches of events and reports success only when the destination holds every event of the
//! batch; an error means none of the batch may be counted as delivered (it is retried or refused upstream).

pub mod dead_letter;
pub mod eventmesh;
mod file;
pub mod http;
mod jsonl;
pub mod lanes;
pub mod mqtt;
pub mod nats;
pub mod rabbitmq;
pub mod template;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use eventmesh::EventMeshUplink;
pub use file::FileUplink;
pub use http::HttpUplink;
pub use mqtt::MqttUplink;
pub use nats::NatsUplink;
pub use rabbitmq::RabbitMqUplink;

use crate::CloudEvent;
use crate::config::UplinkConfig;
use eventmesh::config::Protocol;

/// A boxed future, as uplink methods return them (one per batch, not per event).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an uplink could not deliver a batch.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// Writing to local storage failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The broker connection or channel failed.
    #[error("broker error: {0}")]
    Broker(String),
    /// The broker refused or returned events.
    #[error("refused by the broker: {0}")]
    Refused(String),
    /// The destination asked to be left alone for a while (HTTP 429 or 503), for `retry_after` if it said.
    #[error("the destination is busy: {reason}")]
    Busy {
        /// The wait it asked for; the forwarder's backoff applies without one.
        retry_after: Option<std::time::Duration>,
        /// Its answer.
        reason: String,
    },
}

/// A destination for events.
pub trait Uplink: Send + 'static {
    /// Delivers `batch`, in order. `Ok` means the destination holds every event durably.
    fn send<'a>(&'a mut self, batch: &'a [&'a CloudEvent]) -> BoxFuture<'a, Result<(), UplinkError>>;
}

/// Counters and health of one uplink, shared with the admin endpoint.
#[derive(Debug, Default)]
pub struct UplinkStats {
    /// Events the uplink confirmed.
    pub events: AtomicU64,
    /// Batches that failed.
    pub failures: AtomicU64,
    /// Whether the last batch succeeded (true before the first).
    healthy: AtomicBool,
    /// When the oldest event not yet confirmed by this uplink was accepted (ms since the epoch; 0: none).
    pub oldest_pending_ms: AtomicU64,
    /// Events the destination returned or refused individually (e.g. unroutable).
    pub returned: AtomicU64,
    /// Connections (re)established to the destination.
    pub connects: AtomicU64,
    /// Forward latency (acceptance at the gateway → confirmation by the destination), per event, by bucket.
    pub latency: LatencyHistogram,
    /// Events set aside in the dead-letter file (poison for the destination, or unroutable).
    pub dead_lettered: AtomicU64,
    /// Answers that asked the gateway to slow down (overload, rate limit).
    pub busy: AtomicU64,
    /// Re-sent events the destination recognised by id and did not store again (JetStream's duplicate window).
    pub duplicates: AtomicU64,
    /// The destination's endpoints and their health, for uplinks that balance over several.
    pub endpoints: std::sync::OnceLock<Vec<Arc<eventmesh::EndpointState>>>,
    /// Its kind and where it sends (passwords taken out), for the admin API.
    described: std::sync::OnceLock<(&'static str, String)>,
    /// The last failure: when (ms since the epoch) and what.
    last_error: std::sync::Mutex<Option<(u64, String)>>,
}

/// Upper bounds of the forward-latency buckets, in milliseconds (the last bucket is +Inf).
pub const LATENCY_BUCKETS_MS: [u64; 10] = [1, 5, 10, 50, 100, 500, 1_000, 5_000, 30_000, 300_000];

/// A fixed-bucket histogram of forward latencies, lock-free.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Counts per bucket of [`LATENCY_BUCKETS_MS`], then +Inf (not cumulative).
    pub buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    /// Sum of observed latencies in milliseconds.
    pub sum_ms: AtomicU64,
}

impl LatencyHistogram {
    /// Records `count` events that took `ms` each.
    pub fn observe(&self, ms: u64, count: u64) {
        let i = LATENCY_BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(LATENCY_BUCKETS_MS.len());
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(count, Ordering::Relaxed);
        }
        self.sum_ms.fetch_add(ms.saturating_mul(count), Ordering::Relaxed);
    }
}

impl UplinkStats {
    /// New counters for a healthy uplink.
    pub fn new() -> Self {
        UplinkStats { healthy: AtomicBool::new(true), ..UplinkStats::default() }
    }

    /// Whether the last batch succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Its kind and endpoint, once built (`("", "")` for an uplink built in code).
    pub fn describe(&self) -> (&'static str, &str) {
        self.described.get().map_or(("", ""), |(k, e)| (*k, e.as_str()))
    }

    /// The last failure, when (ms since the epoch) and what; `None` if it never failed.
    pub fn last_error(&self) -> Option<(u64, String)> {
        self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Notes a failed batch's error.
    pub(crate) fn failed_with(&self, error: &UplinkError) {
        let now = crate::spool::record::now_ms();
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((now, error.to_string()));
    }

    pub(crate) fn record(&self, events: usize, ok: bool) {
        if ok {
            self.events.fetch_add(events as u64, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.healthy.store(ok, Ordering::Relaxed);
    }
}

/// An uplink with its name and counters.
pub struct NamedUplink {
    /// The name routes refer to.
    pub name: Arc<str>,
    /// Its counters.
    pub stats: Arc<UplinkStats>,
    /// The uplink itself.
    pub uplink: Box<dyn Uplink>,
}

/// Builds the uplink a config table describes. Relative paths resolve under `data_dir`.
pub async fn build(config: &UplinkConfig, data_dir: &std::path::Path) -> Result<NamedUplink, UplinkError> {
    let stats = Arc::new(UplinkStats::new());
    let _ = stats.described.set((config.kind(), config.endpoint()));
    let uplink: Box<dyn Uplink> = match config {
        UplinkConfig::File(c) => Box::new(FileUplink::open(&data_dir.join(&c.path)).await?),
        UplinkConfig::Amqp(c) => Box::new(RabbitMqUplink::new(c.clone(), data_dir, Arc::clone(&stats))),
        UplinkConfig::EventMeshGrpc(c) => {
            Box::new(EventMeshUplink::new(Protocol::Grpc, c.clone(), data_dir, Arc::clone(&stats))?)
        }
        UplinkConfig::EventMeshHttp(c) => {
            Box::new(EventMeshUplink::new(Protocol::Http, c.clone(), data_dir, Arc::clone(&stats))?)
        }
        UplinkConfig::EventMeshTcp(c) => {
            Box::new(EventMeshUplink::new(Protocol::Tcp, c.clone(), data_dir, Arc::clone(&stats))?)
        }
        UplinkConfig::Mqtt(c) => Box::new(MqttUplink::new(c.clone(), data_dir, Arc::clone(&stats))?),
        UplinkConfig::Http(c) => Box::new(HttpUplink::new(c.clone(), data_dir, Arc::clone(&stats))?),
        UplinkConfig::Nats(c) => Box::new(NatsUplink::new(c.clone(), data_dir, Arc::clone(&stats))),
    };
    Ok(NamedUplink { name: config.name().into(), stats, uplink })
}
