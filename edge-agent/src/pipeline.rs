//! The ingest pipeline: a bounded queue from listeners to the uplinks, with group commit and per-event receipts.
//!
//! Listeners call [`IngestHandle::submit`], which waits while the queue is full (that wait is the backpressure a
//! listener turns into its protocol's own: MQTT stops reading the socket). The committer takes every event that
//! is waiting, up to [`PipelineConfig::max_batch`], hands each uplink the events routed to it in one batch, and
//! resolves each event's [`Receipt`] with the outcome. A receipt resolves `Ok` only when every uplink the event was
//! routed to confirmed it; the listener acknowledges the device only then.
//!
//! When every handle is dropped, the committer drains what is queued, commits it, and ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use crate::CloudEvent;
use crate::config::PipelineConfig;
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

impl Route {
    fn includes(&self, name: &str) -> bool {
        match self {
            Route::All => true,
            Route::Uplinks(names) => names.iter().any(|n| &**n == name),
        }
    }
}

/// Why an event was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// An uplink failed to store the batch holding the event.
    #[error("uplink `{0}` failed to store the event")]
    Uplink(Arc<str>),
    /// The pipeline stopped before the event was committed.
    #[error("the pipeline stopped")]
    Stopped,
}

/// The pipeline no longer takes events (the gateway is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ingest pipeline is closed")]
pub struct PipelineClosed;

struct Submission {
    event: CloudEvent,
    route: Route,
    done: Option<oneshot::Sender<Result<(), DeliveryError>>>,
}

/// Resolves when the event it was issued for is durable (or could not be made so).
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Result<(), DeliveryError>>);

impl Receipt {
    /// The outcome if it is already known, without waiting.
    pub fn try_result(&mut self) -> Option<Result<(), DeliveryError>> {
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(DeliveryError::Stopped)),
        }
    }
}

impl Future for Receipt {
    type Output = Result<(), DeliveryError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(DeliveryError::Stopped)))
    }
}

/// A cloneable handle listeners submit events through.
#[derive(Clone)]
pub struct IngestHandle {
    tx: mpsc::Sender<Submission>,
}

impl IngestHandle {
    /// Queues an event, waiting while the queue is full, and returns the receipt for its commit.
    pub async fn submit(&self, event: CloudEvent, route: Route) -> Result<Receipt, PipelineClosed> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Submission { event, route, done: Some(done) }).await.map_err(|_| PipelineClosed)?;
        Ok(Receipt(rx))
    }

    /// Queues an event whose outcome nobody waits for (MQTT QoS 0).
    pub async fn submit_unconfirmed(&self, event: CloudEvent, route: Route) -> Result<(), PipelineClosed> {
        self.tx.send(Submission { event, route, done: None }).await.map_err(|_| PipelineClosed)
    }
}

/// The committing half, to be spawned with [`Pipeline::run`].
pub struct Pipeline {
    rx: mpsc::Receiver<Submission>,
    uplinks: Vec<NamedUplink>,
    max_batch: usize,
}

impl Pipeline {
    /// A pipeline over `uplinks` and the handle that feeds it.
    pub fn new(config: PipelineConfig, uplinks: Vec<NamedUplink>) -> (Pipeline, IngestHandle) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        (Pipeline { rx, uplinks, max_batch: config.max_batch.max(1) }, IngestHandle { tx })
    }

    /// The counters of every uplink, by name.
    pub fn stats(&self) -> Vec<(Arc<str>, Arc<UplinkStats>)> {
        self.uplinks.iter().map(|u| (Arc::clone(&u.name), Arc::clone(&u.stats))).collect()
    }

    /// Commits batches until every handle is gone and the queue is empty.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut outcome: Vec<Result<(), DeliveryError>> = Vec::with_capacity(self.max_batch);
        loop {
            if self.rx.recv_many(&mut batch, self.max_batch).await == 0 {
                break;
            }
            outcome.clear();
            outcome.resize(batch.len(), Ok(()));
            for uplink in &mut self.uplinks {
                let (indices, events): (Vec<usize>, Vec<&CloudEvent>) = batch
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.route.includes(&uplink.name))
                    .map(|(i, s)| (i, &s.event))
                    .unzip();
                if events.is_empty() {
                    continue;
                }
                let result = uplink.uplink.send(&events).await;
                uplink.stats.record(events.len(), result.is_ok());
                if let Err(e) = result {
                    tracing::error!(uplink = %uplink.name, error = %e, events = events.len(), "uplink failed a batch");
                    for i in indices {
                        if let Some(slot) = outcome.get_mut(i) {
                            *slot = Err(DeliveryError::Uplink(Arc::clone(&uplink.name)));
                        }
                    }
                }
            }
            for (submission, result) in batch.drain(..).zip(outcome.drain(..)) {
                if let Some(done) = submission.done {
                    // The submitter may have gone (a closed connection); nothing to tell then.
                    let _ = done.send(result);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::{BoxFuture, Uplink, UplinkError};
    use std::sync::Mutex;

    /// Records batches; fails the batches whose first event id is "fail".
    struct Recorder(Arc<Mutex<Vec<Vec<String>>>>);

    impl Uplink for Recorder {
        fn send<'a>(&'a mut self, batch: &'a [&'a CloudEvent]) -> BoxFuture<'a, Result<(), UplinkError>> {
            let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
            let fail = ids.first().is_some_and(|id| id == "fail");
            self.0.lock().unwrap().push(ids);
            Box::pin(async move { if fail { Err(std::io::Error::other("disk on fire").into()) } else { Ok(()) } })
        }
    }

    fn event(id: &str) -> CloudEvent {
        CloudEvent { id: id.into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() }
    }

    fn named(name: &str, log: &Arc<Mutex<Vec<Vec<String>>>>) -> NamedUplink {
        NamedUplink {
            name: name.into(),
            stats: Arc::new(UplinkStats::new()),
            uplink: Box::new(Recorder(Arc::clone(log))),
        }
    }

    #[tokio::test]
    async fn events_waiting_together_are_committed_together_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (pipeline, handle) = Pipeline::new(PipelineConfig::default(), vec![named("a", &log)]);
        let mut receipts = Vec::new();
        for i in 0..10 {
            receipts.push(handle.submit(event(&i.to_string()), Route::All).await.unwrap());
        }
        drop(handle);
        pipeline.run().await;
        for r in receipts {
            assert_eq!(r.await, Ok(()));
        }
        let batches = log.lock().unwrap().clone();
        assert_eq!(batches.len(), 1, "one commit for events queued while none ran");
        assert_eq!(batches[0], (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_failed_batch_resolves_its_receipts_with_the_error_and_routes_are_kept() {
        let log_a = Arc::new(Mutex::new(Vec::new()));
        let log_b = Arc::new(Mutex::new(Vec::new()));
        let (pipeline, handle) = Pipeline::new(PipelineConfig::default(), vec![named("a", &log_a), named("b", &log_b)]);
        let only_b = Route::Uplinks(vec![Arc::<str>::from("b")].into());
        let to_b = handle.submit(event("fail"), only_b).await.unwrap();
        let to_all = handle.submit(event("x"), Route::All).await.unwrap();
        drop(handle);
        pipeline.run().await;
        assert_eq!(to_b.await, Err(DeliveryError::Uplink("b".into())));
        assert_eq!(to_all.await, Err(DeliveryError::Uplink("b".into())));
        assert_eq!(log_a.lock().unwrap().clone(), vec![vec!["x".to_string()]]);
    }
}
