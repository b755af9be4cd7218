//! Apache EventMesh uplinks: gRPC, HTTP and TCP, behind one dispatcher with load balancing and failover.
//!
//! ```text
//! batch ──▶ lanes (one per device, in order) ──▶ balancer (policy, max_in_flight, ejection) ──▶ transport ──▶ runtime
//!                                                      ▲                                     (grpc | http | tcp)
//!                                        health checks ┘
//! ```
//!
//! - Each event becomes a *mesh event* (topic as `subject`, `uniqueid`/`bizseqno`/`ttl` extensions; see
//!   [`meshgate_protocols::eventmesh`]) and is published on its own, so every event has the runtime's own
//!   acknowledgement after storage. gRPC `batchPublish` is an opt-in, because the runtime answers a batch before
//!   storing it.
//! - Per-device order: a batch is split into lanes by device (the `deviceid` extension, else `source`); a lane
//!   sends its next event only once the previous one is stored, while lanes run concurrently across endpoints.
//! - The runtime's answer decides ([`Verdict`]): stored → done; overload or rate limit → try another endpoint, and
//!   when all are busy, the batch fails and the forwarder backs off; poison (header or body error, too big) → the
//!   event goes to the dead-letter file with the reason and the rest flows; anything else → retry with backoff.
//! - A connection error or timeout moves the event to another endpoint at once (its earlier attempt may have been
//!   stored: delivery is at least once, the event keeping its `id` and `uniqueid`), and counts towards ejecting
//!   the endpoint. An ejected endpoint sits out `ejection_ms` times its number of ejections; then the active health
//!   checks, which probe every endpoint, re-admit it as soon as it answers.
//! - A batch that fails part-way is retried by the forwarder as a whole; events this uplink already delivered from
//!   it are remembered and not sent again.

mod balancer;
pub mod config;
mod grpc;
mod health;
mod http;
pub(crate) mod tcp;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;
use meshgate_protocols::eventmesh::mesh_event;
use meshgate_protocols::eventmesh::status::Verdict;

pub use self::balancer::{Balancer, EndpointState};
use self::config::{EventMeshUplinkConfig, Protocol};
use super::dead_letter::{DeadLetter, DeadLetterFile};
use super::{BoxFuture, Uplink, UplinkError, UplinkStats};
use crate::CloudEvent;
use crate::spool::record::now_ms;

/// A runtime's answer to one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// What it means.
    pub verdict: Verdict,
    /// The protocol's status code, if any.
    pub code: Option<i64>,
    /// The runtime's words.
    pub message: String,
}

/// One protocol's client for one endpoint. A transport error means the endpoint did not answer (connection
/// refused or lost, protocol breakage): the event may go to another endpoint.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Publishes one mesh event and returns the runtime's answer.
    fn publish<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<Answer, String>>;

    /// Publishes several mesh events with one acknowledgement, if the protocol has such a call.
    fn publish_batch<'a>(&'a self, _events: &'a [CloudEvent]) -> Option<BoxFuture<'a, Result<Answer, String>>> {
        None
    }

    /// Checks that the runtime is alive and answering.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// What the uplink shares with its health checker.
pub(crate) struct Shared {
    name: Arc<str>,
    config: EventMeshUplinkConfig,
    balancer: Balancer,
    transports: Vec<Box<dyn Transport>>,
    dead_letter: DeadLetterFile,
    stats: Arc<UplinkStats>,
}

/// Why an event could not be delivered in this attempt.
#[derive(Debug)]
enum Stop {
    /// Every endpoint asked to slow down.
    Busy,
    /// No endpoint is up, or every one failed to answer.
    Unavailable(String),
    /// The runtime answered with a failure worth retrying later.
    Failed(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Busy => f.write_str("every runtime answered overload or rate limit"),
            Stop::Unavailable(e) => write!(f, "no runtime reachable: {e}"),
            Stop::Failed(e) => write!(f, "the runtime failed the publish: {e}"),
        }
    }
}

/// An uplink to one or more EventMesh runtimes.
pub struct EventMeshUplink {
    shared: Arc<Shared>,
    progress: super::lanes::Progress,
}

impl EventMeshUplink {
    /// An uplink for `config` speaking `protocol`; it connects on first use and starts its health checker
    /// (call from a tokio runtime). Relative paths resolve under `data_dir`.
    pub fn new(
        protocol: Protocol,
        config: EventMeshUplinkConfig,
        data_dir: &Path,
        stats: Arc<UplinkStats>,
    ) -> Result<EventMeshUplink, UplinkError> {
        let endpoints: Vec<(String, u32)> =
            config.endpoints.iter().enumerate().map(|(i, e)| (e.clone(), config.weight(i))).collect();
        let balancer = Balancer::new(
            &endpoints,
            config.policy,
            config.max_in_flight,
            config.eject_after_failures,
            config.ejection_ms,
        );
        let _ = stats.endpoints.set(balancer.endpoints().to_vec());
        let mut transports: Vec<Box<dyn Transport>> = Vec::with_capacity(endpoints.len());
        for (address, _) in &endpoints {
            let transport: Box<dyn Transport> = match protocol {
                Protocol::Grpc => Box::new(grpc::GrpcTransport::new(address, &config).map_err(UplinkError::Broker)?),
                Protocol::Http => Box::new(http::HttpTransport::new(address, &config).map_err(UplinkError::Broker)?),
                Protocol::Tcp => Box::new(tcp::TcpTransport::new(address, &config, Arc::clone(&stats))),
            };
            transports.push(transport);
        }
        let dead_letter = DeadLetterFile::new(&data_dir.join(config.dead_letter_path()));
        let shared =
            Arc::new(Shared { name: config.name.as_str().into(), config, balancer, transports, dead_letter, stats });
        health::spawn(Arc::downgrade(&shared));
        Ok(EventMeshUplink { shared, progress: super::lanes::Progress::default() })
    }
}

impl Shared {
    /// The mesh event for `event`: the topic from the template (or the default topic), the runtime's extensions.
    fn mesh_event(&self, event: &CloudEvent) -> CloudEvent {
        let topic = super::template::render(&self.config.topic, event, None);
        let topic = if topic.is_empty() { self.config.default_topic.as_str() } else { topic.as_str() };
        mesh_event(event, topic, self.config.ttl_ms)
    }

    /// Runs `call` on an endpoint the balancer picks, moving to another endpoint when one does not answer or
    /// asks to slow down. Returns the endpoint's address and its answer (stored, poison or failed).
    async fn with_failover<'a, F>(&'a self, call: F) -> Result<(&'a str, Answer), Stop>
    where
        F: Fn(&'a dyn Transport) -> BoxFuture<'a, Result<Answer, String>>,
    {
        let timeout = Duration::from_millis(self.config.timeout_ms.max(1));
        let mut tried = Vec::new();
        let mut busy = false;
        let mut last_error = String::from("every endpoint is ejected");
        loop {
            let Some(i) = self.balancer.pick(&tried) else {
                return Err(if busy { Stop::Busy } else { Stop::Unavailable(last_error) });
            };
            tried.push(i);
            let (Some(transport), Some(state)) = (self.transports.get(i), self.balancer.endpoints().get(i)) else {
                continue;
            };
            let Some(slot) = self.balancer.slot(i).await else { continue };
            let result = tokio::time::timeout(timeout, call(transport.as_ref())).await;
            drop(slot);
            match result {
                Ok(Ok(answer)) => {
                    self.balancer.succeeded(i, now_ms());
                    if answer.verdict == Verdict::Busy {
                        self.stats.busy.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(uplink = %self.name, endpoint = %state.address, code = ?answer.code, message = %answer.message, "runtime busy");
                        busy = true;
                        continue;
                    }
                    return Ok((&state.address, answer));
                }
                Ok(Err(e)) => {
                    tracing::debug!(uplink = %self.name, endpoint = %state.address, error = %e, "no answer; trying another endpoint");
                    self.balancer.failed(i, &e, now_ms());
                    last_error = format!("{}: {e}", state.address);
                }
                Err(_) => {
                    let e = format!("no answer within {timeout:?}");
                    self.balancer.failed(i, &e, now_ms());
                    last_error = format!("{}: {e}", state.address);
                }
            }
        }
    }

    /// Publishes one mesh event until the runtime stores it or calls it poison (dead-lettered).
    async fn deliver(&self, original: &CloudEvent, event: &CloudEvent) -> Result<(), Stop> {
        let (endpoint, answer) = self.with_failover(|t| t.publish(event)).await?;
        self.settle(original, endpoint, answer).await
    }

    /// Acts on a final answer for one event.
    async fn settle(&self, original: &CloudEvent, endpoint: &str, answer: Answer) -> Result<(), Stop> {
        match answer.verdict {
            Verdict::Stored => Ok(()),
            Verdict::Poison => self.dead_letter(original, endpoint, &answer).await,
            Verdict::Busy | Verdict::Failed => Err(Stop::Failed(format!(
                "{endpoint} answered {}: {}",
                answer.code.map_or_else(|| "without a status".to_string(), |c| c.to_string()),
                answer.message
            ))),
        }
    }

    /// Moves a poison event to the dead-letter file (synced) and counts it.
    async fn dead_letter(&self, event: &CloudEvent, endpoint: &str, answer: &Answer) -> Result<(), Stop> {
        let why =
            DeadLetter { uplink: &self.name, endpoint: Some(endpoint), code: answer.code, reason: &answer.message };
        self.dead_letter
            .set_aside(event, &why, &self.stats)
            .await
            .map_err(|e| Stop::Failed(format!("cannot write the dead-letter file: {e}")))
    }

    /// Sends the events at `lane` (indices into the batch, in order) one after another; returns the indices
    /// delivered and why it stopped early, if it did.
    async fn run_lane(
        &self,
        lane: Vec<usize>,
        batch: &[&CloudEvent],
        mesh: &[Option<CloudEvent>],
    ) -> (Vec<usize>, Option<Stop>) {
        let mut delivered = Vec::with_capacity(lane.len());
        for i in lane {
            let (Some(original), Some(Some(event))) = (batch.get(i), mesh.get(i)) else { continue };
            match self.deliver(original, event).await {
                Ok(()) => delivered.push(i),
                Err(stop) => return (delivered, Some(stop)),
            }
        }
        (delivered, None)
    }

    /// Sends the pending events with `batchPublish`, in chunks of one topic each, in order. A chunk the runtime
    /// calls poison is resent event by event so only the bad event is dead-lettered.
    async fn run_batches(
        &self,
        pending: &[usize],
        batch: &[&CloudEvent],
        mesh: &[Option<CloudEvent>],
    ) -> (Vec<usize>, Option<Stop>) {
        let mut delivered = Vec::with_capacity(pending.len());
        let max = self.config.batch_max_events.max(1);
        let mut rest = pending;
        while let Some(&first) = rest.first() {
            let topic = mesh.get(first).and_then(|e| e.as_ref()).and_then(|e| e.subject.clone());
            let len = rest
                .iter()
                .take(max)
                .take_while(|&&i| mesh.get(i).and_then(|e| e.as_ref()).and_then(|e| e.subject.clone()) == topic)
                .count()
                .max(1);
            let (chunk, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            let events: Vec<CloudEvent> = chunk.iter().filter_map(|&i| mesh.get(i).cloned().flatten()).collect();
            let Some(first_event) = events.first() else { continue };
            let answer =
                self.with_failover(|t| t.publish_batch(&events).unwrap_or_else(|| t.publish(first_event))).await;
            match answer {
                Ok((_, a)) if a.verdict == Verdict::Stored => delivered.extend_from_slice(chunk),
                Ok((_, a)) if a.verdict == Verdict::Poison => {
                    let (ok, stop) = self.run_lane(chunk.to_vec(), batch, mesh).await;
                    delivered.extend(ok);
                    if stop.is_some() {
                        return (delivered, stop);
                    }
                }
                Ok((endpoint, a)) => {
                    return (delivered, Some(Stop::Failed(format!("{endpoint} answered {:?}: {}", a.code, a.message))));
                }
                Err(stop) => return (delivered, Some(stop)),
            }
        }
        (delivered, None)
    }

    async fn send(&self, batch: &[&CloudEvent], delivered: &mut [bool]) -> Result<(), UplinkError> {
        let mesh: Vec<Option<CloudEvent>> = batch
            .iter()
            .zip(delivered.iter())
            .map(|(e, done)| if *done { None } else { Some(self.mesh_event(e)) })
            .collect();
        let pending: Vec<usize> = (0..batch.len()).filter(|&i| !delivered.get(i).copied().unwrap_or(true)).collect();
        let outcomes: Vec<(Vec<usize>, Option<Stop>)> = if self.config.batch_publish {
            vec![self.run_batches(&pending, batch, &mesh).await]
        } else {
            let lanes = super::lanes::by_device(batch, &pending);
            let concurrency = (self.config.max_in_flight.saturating_mul(self.transports.len())).max(1);
            futures::stream::iter(lanes)
                .map(|lane| self.run_lane(lane, batch, &mesh))
                .buffer_unordered(concurrency)
                .collect()
                .await
        };
        let mut stops = Vec::new();
        for (done, stop) in outcomes {
            for i in done {
                if let Some(d) = delivered.get_mut(i) {
                    *d = true;
                }
            }
            stops.extend(stop);
        }
        match stops.into_iter().next() {
            None => Ok(()),
            Some(stop) => {
                let left = delivered.iter().filter(|d| !**d).count();
                Err(UplinkError::Broker(format!("{left} of {} events not yet delivered: {stop}", batch.len())))
            }
        }
    }
}

impl Uplink for EventMeshUplink {
    fn send<'a>(&'a mut self, batch: &'a [&'a CloudEvent]) -> BoxFuture<'a, Result<(), UplinkError>> {
        Box::pin(async move { self.shared.send(batch, self.progress.for_batch(batch)).await })
    }
}
