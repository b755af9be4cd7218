//! The ingest pipeline: listeners append events to the spool and acknowledge devices on the spool's fsync;
//! forwarders drain the spool into the uplinks.
//!
//! ```text
//! listeners ──submit──▶ spool (group commit, fsync) ──▶ forwarder per uplink ──▶ uplink
//!     ▲                      │
//!     └─ Ticket ≤ watermark ─┘
//! ```
//!
//! Every submit returns a [`Ticket`]; the spool's writer publishes after each commit how far its tickets are
//! resolved, and a listener compares its oldest tickets with that ([`Durable`]) instead of waiting on each.
//!
//! Backpressure: `submit` waits while the spool's queue is full, and the spool's writer waits while the spool is
//! at `max_bytes`; a listener that waits stops reading its sockets, which slows its devices in their protocol.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::CloudEvent;
use crate::forwarder::{self, ForwarderConfig};
use crate::spool::{Appender, Recovery, Spool, SpoolConfig, SpoolError, StoredRecord, WhenFull, WriterThread};
pub use crate::spool::{Durable, Ticket};
use crate::trace::{TraceSpan, Tracing};
use crate::uplink::{NamedUplink, UplinkStats};

/// Which uplinks an event goes to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Route {
    /// Every configured uplink.
    #[default]
    All,
    /// The named uplinks only.
    Uplinks(Arc<[Arc<str>]>),
}

/// Why an event was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The spool could not write it (disk full, I/O error).
    #[error("{0}")]
    Storage(String),
    /// The pipeline stopped before the event was stored.
    #[error("the pipeline stopped")]
    Stopped,
}

impl From<SpoolError> for DeliveryError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::Io(msg) => DeliveryError::Storage(msg),
            SpoolError::Stopped => DeliveryError::Stopped,
        }
    }
}

/// Why the pipeline could not start: the configuration key at fault and the error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

/// The pipeline no longer takes events (the gateway is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ingest pipeline is closed")]
pub struct PipelineClosed;

/// A cloneable handle listeners submit events through.
#[derive(Clone)]
pub struct IngestHandle {
    spool: Appender,
}

impl IngestHandle {
    /// Appends an event, waiting while the spool's queue is full, and returns the ticket for its fsync.
    pub async fn submit(&self, event: CloudEvent, route: Route) -> Result<Ticket, PipelineClosed> {
        self.submit_with(event, route, None, None).await
    }

    /// [`IngestHandle::submit`] with a `companion` record for a consumer inside the process, made durable in the
    /// same commit as the event (see [`crate::spool`]), and the event's `ingest` span (see [`crate::trace`]),
    /// which ends when the event is durable.
    pub async fn submit_with(
        &self,
        event: CloudEvent,
        route: Route,
        companion: Option<StoredRecord>,
        span: Option<TraceSpan>,
    ) -> Result<Ticket, PipelineClosed> {
        let record = StoredRecord::new(event, &route);
        self.spool.append_traced(record, companion, None, span).await.map_err(|_| PipelineClosed)
    }

    /// Appends a record for a consumer inside the process (routed only to `@` names, see [`crate::spool`]) and
    /// returns the ticket for its fsync.
    pub async fn submit_local(&self, record: StoredRecord) -> Result<Ticket, PipelineClosed> {
        self.spool.append_with(record, None, None).await.map_err(|_| PipelineClosed)
    }

    /// A watch on the outcomes of tickets (one per waiter).
    pub fn durable(&self) -> Durable {
        self.spool.durable()
    }

    /// Waits until the append of `ticket` is durable (for the rare waiter; a connection keeps a [`Durable`]).
    pub async fn stored(&self, ticket: Ticket) -> Result<(), DeliveryError> {
        self.durable().wait(ticket).await.map_err(DeliveryError::from)
    }

    /// Events that can be submitted now without waiting. Zero means the spool withholds credit (its queue is
    /// full because the group commit fell behind or the spool is at `max_bytes`): a listener then slows its
    /// devices in their protocol (AMQP channel.flow) before it submits and waits.
    pub fn credits(&self) -> usize {
        self.spool.credits()
    }

    /// The most credits there can be ([`crate::spool::SpoolConfig::queue_capacity`]).
    pub fn max_credits(&self) -> usize {
        self.spool.max_credits()
    }

    /// Appends an event whose outcome nobody needs to wait for (MQTT QoS 0); its ticket still tells when it is
    /// durable. With [`WhenFull::DropOldest`] a full spool may later discard it to make room for newer telemetry.
    pub async fn submit_unconfirmed(
        &self,
        event: CloudEvent,
        route: Route,
        when_full: WhenFull,
    ) -> Result<Ticket, PipelineClosed> {
        self.submit_unconfirmed_within(event, route, when_full, None, None, None).await
    }

    /// [`IngestHandle::submit_unconfirmed`] within a connection's `share` of the spool's queue: when the
    /// connection already has its share waiting for the writer, this waits (and the connection reads no more)
    /// until one of them is written, so one flooding device cannot fill the queue in front of everyone else.
    /// A `companion` is made durable in the same commit as the event (see [`crate::spool`]); `span` ends then.
    pub async fn submit_unconfirmed_within(
        &self,
        event: CloudEvent,
        route: Route,
        when_full: WhenFull,
        share: Option<&IngestShare>,
        companion: Option<StoredRecord>,
        span: Option<TraceSpan>,
    ) -> Result<Ticket, PipelineClosed> {
        let slot = match share {
            Some(s) => Some(Arc::clone(&s.0).acquire_owned().await.map_err(|_| PipelineClosed)?),
            None => None,
        };
        let mut record = StoredRecord::new(event, &route);
        record.droppable = when_full == WhenFull::DropOldest && companion.is_none();
        self.spool.append_traced(record, companion, slot, span).await.map_err(|_| PipelineClosed)
    }
}

/// One connection's share of the spool's queue for appends nobody waits for (QoS 0): at most this many of its
/// events wait for the writer at once (`limits.max_unconfirmed_per_connection`).
#[derive(Debug, Clone)]
pub struct IngestShare(Arc<tokio::sync::Semaphore>);

impl IngestShare {
    /// A share of `n` places (at least one).
    pub fn new(n: usize) -> IngestShare {
        IngestShare(Arc::new(tokio::sync::Semaphore::new(n.max(1))))
    }
}

/// The running pipeline: the spool's writer and one forwarder per uplink.
pub struct Pipeline {
    spool: Spool,
    writer: WriterThread,
    forwarders: JoinSet<()>,
    stop: watch::Sender<bool>,
    stats: Vec<(Arc<str>, Arc<UplinkStats>)>,
    recovery: Recovery,
}

impl Pipeline {
    /// Opens (recovering) the spool in `spool_dir` and starts a forwarder for each uplink. Call from a tokio
    /// runtime.
    ///
    /// `local_consumers` are readers inside the process besides the uplinks (the gateway's broker): the spool
    /// keeps what they have not confirmed too.
    pub fn start(
        spool_dir: &Path,
        spool: &SpoolConfig,
        forwarder: ForwarderConfig,
        uplinks: Vec<NamedUplink>,
        local_consumers: &[&str],
        tracing: &Tracing,
    ) -> std::io::Result<(Pipeline, IngestHandle)> {
        let mut names: Vec<&str> = uplinks.iter().map(|u| &*u.name).collect();
        names.extend_from_slice(local_consumers);
        let (handle, appender, writer, recovery) = Spool::open(spool_dir, spool, &names)?;
        let stats = uplinks.iter().map(|u| (Arc::clone(&u.name), Arc::clone(&u.stats))).collect();
        let (stop, stop_rx) = watch::channel(false);
        let mut forwarders = JoinSet::new();
        for uplink in uplinks {
            forwarders.spawn(forwarder::run(handle.clone(), uplink, forwarder, tracing.clone(), stop_rx.clone()));
        }
        let ingest = IngestHandle { spool: appender };
        Ok((Pipeline { spool: handle, writer, forwarders, stop, stats, recovery }, ingest))
    }

    /// Builds the configured uplinks (relative paths under `data_dir`) and starts the pipeline on the spool in
    /// `data_dir/spool.dir`: what `meshgate` and `edge-agent` both do at start. The error names the failing key.
    pub async fn start_configured(
        data_dir: &Path,
        uplinks: &[crate::config::UplinkConfig],
        spool: &SpoolConfig,
        forwarder: ForwarderConfig,
        local_consumers: &[&str],
        tracing: &Tracing,
    ) -> Result<(Pipeline, IngestHandle), StartError> {
        let mut built = Vec::new();
        for (i, u) in uplinks.iter().enumerate() {
            let uplink = crate::uplink::build(u, data_dir)
                .await
                .map_err(|e| StartError(format!("uplinks[{i}] `{}`: {e}", u.name())))?;
            built.push(uplink);
        }
        let spool_dir = data_dir.join(&spool.dir);
        Pipeline::start(&spool_dir, spool, forwarder, built, local_consumers, tracing)
            .map_err(|e| StartError(format!("spool.dir: cannot open the spool in {}: {e}", spool_dir.display())))
    }

    /// The counters of every uplink, by name.
    pub fn stats(&self) -> Vec<(Arc<str>, Arc<UplinkStats>)> {
        self.stats.clone()
    }

    /// The spool (for readiness and metrics).
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// What recovery found at start.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Stops the pipeline once every [`IngestHandle`] is gone: the writer commits what is queued, then the
    /// forwarders send what is durable (while their uplinks accept it) and stop. What they could not send stays in
    /// the spool for the next start.
    pub async fn shutdown(self) {
        let Pipeline { writer, mut forwarders, stop, .. } = self;
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        let _ = stop.send(true);
        while forwarders.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::{BoxFuture, Uplink, UplinkError};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Records event ids; fails the first `fail_first` batches.
    struct Flaky {
        seen: Arc<Mutex<Vec<String>>>,
        fail_first: Arc<AtomicUsize>,
    }

    impl Uplink for Flaky {
        fn send<'a>(&'a mut self, batch: &'a [&'a CloudEvent]) -> BoxFuture<'a, Result<(), UplinkError>> {
            let fail = self.fail_first.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
            if !fail {
                self.seen.lock().unwrap().extend(batch.iter().map(|e| e.id.clone()));
            }
            Box::pin(async move { if fail { Err(std::io::Error::other("mesh down").into()) } else { Ok(()) } })
        }
    }

    fn event(id: &str) -> CloudEvent {
        CloudEvent { id: id.into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_events_reach_every_routed_uplink_in_order_despite_failures() {
        let dir = tempfile::tempdir().unwrap();
        let seen_a = Arc::new(Mutex::new(Vec::new()));
        let seen_b = Arc::new(Mutex::new(Vec::new()));
        let uplink = |name: &str, seen: &Arc<Mutex<Vec<String>>>, fail: usize| NamedUplink {
            name: name.into(),
            stats: Arc::new(UplinkStats::new()),
            uplink: Box::new(Flaky { seen: Arc::clone(seen), fail_first: Arc::new(AtomicUsize::new(fail)) }),
        };
        let forwarder = ForwarderConfig {
            max_batch: 3,
            backoff_initial_ms: 5,
            backoff_max_ms: 20,
            // Never due while forwarding: the cursors below are written because the uplinks caught up.
            cursor_interval_ms: 3_600_000,
            ..ForwarderConfig::default()
        };
        let (pipeline, ingest) = Pipeline::start(
            dir.path(),
            &SpoolConfig::default(),
            forwarder,
            vec![uplink("a", &seen_a, 0), uplink("b", &seen_b, 3)],
            &[],
            &Tracing::off(),
        )
        .unwrap();
        let only_a = Route::Uplinks(vec![Arc::<str>::from("a")].into());
        for i in 0..10 {
            let route = if i % 2 == 0 { Route::All } else { only_a.clone() };
            let ticket = ingest.submit(event(&i.to_string()), route).await.unwrap();
            ingest.stored(ticket).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while (seen_a.lock().unwrap().len() < 10 || seen_b.lock().unwrap().len() < 5)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(*seen_a.lock().unwrap(), (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(*seen_b.lock().unwrap(), ["0", "2", "4", "6", "8"]);
        while (pipeline.spool().cursor("a") < 10 || pipeline.spool().cursor("b") < 9)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(pipeline.spool().cursor("a"), 10, "a caught-up uplink's cursor is written at once");
        assert!(pipeline.spool().cursor("b") >= 9);
        drop(ingest);
        pipeline.shutdown().await;
    }
}
