//! Test doubles of the Apache EventMesh runtime (the Java runtime cannot be built here), one per protocol. Each
//! follows the runtime's documented behaviour (`reference/eventmesh-protocols.md`): it checks exactly the fields
//! the runtime checks, answers with its codes and quirks (HTTP errors as 200 with a non-zero `retCode`, TCP acks
//! by `seq`, `maxEventSize` on HTTP and TCP only, `batchPublish` answered before storing), and records what it
//! stored.
//!
//! The doubles read the wire on their own terms, not with meshgate's encoders: the TCP double has its own frame
//! reader, the HTTP double parses the form with `form_urlencoded` and the event with the CloudEvents Rust SDK,
//! and the gRPC double checks the attribute value types itself.
//!
//! A test can make a double overload, rate-limit or stall, and can kill it: each double runs on its own tokio
//! runtime, and killing it drops that runtime with every connection, like a process dying.

mod grpc;
mod http;
mod tcp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// The runtime's `eventMesh.server.maxEventSize` default, in characters of event data.
pub const MAX_EVENT_SIZE: usize = 1000;

/// Which protocol a double speaks: the uplink kinds' own enum.
pub use meshgate_edge_agent::config::Protocol;

/// One event the double stored, as structured JSON, with what came with it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The event (structured-mode JSON as the double read it).
    pub event: Value,
    /// The topic the runtime routed it by.
    pub topic: String,
    /// The producer group.
    pub producer_group: String,
}

/// What a test tells a double to do, and what the double saw. Shared by all its connections.
#[derive(Debug, Default)]
pub struct State {
    stored: Mutex<Vec<Stored>>,
    /// Answer "overload" to this many publishes.
    overload: AtomicU32,
    /// Answer "rate limited" to this many publishes.
    rate_limit: AtomicU32,
    /// Never answer publishes while set.
    stall: AtomicBool,
    /// Publishes answered with overload or rate limiting.
    pub busy_answers: AtomicU64,
    /// Publishes refused as poison (header, body, size).
    pub refused: AtomicU64,
    /// Heartbeats received (TCP and gRPC).
    pub heartbeats: AtomicU64,
    /// Sessions opened with HELLO (TCP).
    pub hellos: AtomicU64,
    /// Batch publishes received (gRPC).
    pub batches: AtomicU64,
    /// Consumers: what each consumer group has acknowledged and has in flight (TCP).
    pub(crate) groups: Mutex<std::collections::HashMap<String, Group>>,
    /// Woken when there may be something new to push: an event stored, a push acknowledged, a consumer gone.
    pub(crate) to_push: tokio::sync::Notify,
    /// Events pushed to consumers, redeliveries included (TCP).
    pub pushes: AtomicU64,
    /// Pushes acknowledged by consumers (TCP).
    pub push_acks: AtomicU64,
    /// Events the runtime could not push: their `datacontenttype` is not an event format (TCP).
    pub unpushable: AtomicU64,
}

/// A consumer group's progress through the stored events (by their index in the store).
#[derive(Debug, Default)]
pub(crate) struct Group {
    /// Acknowledged, or never pushable: done for this group.
    pub(crate) done: std::collections::HashSet<usize>,
    /// Pushed and not yet acknowledged, with the session holding each.
    pub(crate) in_flight: std::collections::HashMap<usize, u64>,
}

/// What the double does with one publish that passed the runtime's checks.
pub(crate) enum Decision {
    /// Store and acknowledge.
    Store,
    /// Answer overload.
    Overload,
    /// Answer rate limited.
    RateLimited,
    /// Do not answer (stalled storage).
    Stall,
}

impl State {
    fn take(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    pub(crate) fn decide(&self) -> Decision {
        if self.stall.load(Ordering::SeqCst) {
            Decision::Stall
        } else if Self::take(&self.overload) {
            self.busy_answers.fetch_add(1, Ordering::SeqCst);
            Decision::Overload
        } else if Self::take(&self.rate_limit) {
            self.busy_answers.fetch_add(1, Ordering::SeqCst);
            Decision::RateLimited
        } else {
            Decision::Store
        }
    }

    pub(crate) fn store(&self, stored: Stored) {
        self.stored.lock().unwrap_or_else(|p| p.into_inner()).push(stored);
        self.to_push.notify_waiters();
    }
}

/// A running double.
pub struct Runtime {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its protocol.
    pub protocol: Protocol,
    state: Arc<State>,
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    tcp: Option<tcp::Control>,
}

impl Runtime {
    /// Starts a double of `protocol` on an ephemeral loopback port.
    pub fn start(protocol: Protocol) -> anyhow::Result<Runtime> {
        Runtime::start_on(protocol, "127.0.0.1:0".parse()?, Arc::new(State::default()))
    }

    /// Starts a double on `addr` with `state` (a restart keeps what it stored). The double gets a thread and a
    /// tokio runtime of its own, so killing it drops every connection it has, from any context.
    fn start_on(protocol: Protocol, addr: SocketAddr, state: Arc<State>) -> anyhow::Result<Runtime> {
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<anyhow::Result<(SocketAddr, Option<tcp::Control>)>>();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let bound = rt.block_on(async {
                // The port may still be held by the dying predecessor's sockets for a moment.
                let mut tries = 0;
                loop {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => return Ok(l),
                        Err(_) if tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            });
            let listener = match bound {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let local = listener.local_addr();
            let mut control = None;
            match protocol {
                Protocol::Grpc => {
                    rt.spawn(grpc::serve(listener, thread_state));
                }
                Protocol::Http => {
                    rt.spawn(http::serve(listener, thread_state));
                }
                Protocol::Tcp => {
                    let c = tcp::Control::new();
                    rt.spawn(tcp::serve(listener, thread_state, c.clone()));
                    control = Some(c);
                }
            }
            let _ = ready_tx.send(local.map(|a| (a, control)).map_err(Into::into));
            let _ = killed.recv();
            rt.shutdown_background();
        });
        let (addr, tcp) = ready.recv()??;
        Ok(Runtime { addr, protocol, state, kill: Some(kill), thread: Some(thread), tcp })
    }

    /// Dies at once: the listener and every connection close, answers in flight are never sent.
    pub fn kill(&mut self) {
        drop(self.kill.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Starts again on the same port, keeping what was stored.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let again = Runtime::start_on(self.protocol, self.addr, Arc::clone(&self.state))?;
        *self = again;
        Ok(())
    }

    /// The events stored so far, in the order stored.
    pub fn stored(&self) -> Vec<Stored> {
        self.state.stored.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The double's counters.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Answers the next `n` publishes with overload (gRPC 1, HTTP `retCode` 1, TCP code 3... see each double).
    pub fn overload(&self, n: u32) {
        self.state.overload.store(n, Ordering::SeqCst);
    }

    /// Answers the next `n` publishes with rate limiting (gRPC 21, HTTP 23, TCP "Tps overload").
    pub fn rate_limit(&self, n: u32) {
        self.state.rate_limit.store(n, Ordering::SeqCst);
    }

    /// Stops (or resumes) answering publishes, as a runtime whose storage hangs.
    pub fn stall(&self, on: bool) {
        self.state.stall.store(on, Ordering::SeqCst);
    }

    /// TCP only: sends `SERVER_GOODBYE_REQUEST` on every session.
    pub fn say_goodbye(&self) {
        if let Some(t) = &self.tcp {
            t.goodbye();
        }
    }

    /// TCP only: sends `REDIRECT_TO_CLIENT` naming `to` on every session.
    pub fn redirect(&self, to: SocketAddr) {
        if let Some(t) = &self.tcp {
            t.redirect(to);
        }
    }

    /// TCP only: publishes `event` (structured JSON) as a producer would, through the double's own wire path
    /// (HELLO as `pub`, `ASYNC_MESSAGE_TO_SERVER`); `Ok` once the double acknowledged it as stored.
    pub async fn publish(&self, event: &Value) -> anyhow::Result<()> {
        tcp::publish(self.addr, event).await
    }

    /// TCP only: pushes not yet acknowledged, over every consumer group.
    pub fn unacknowledged(&self) -> usize {
        self.state.groups.lock().unwrap_or_else(|p| p.into_inner()).values().map(|g| g.in_flight.len()).sum()
    }

    /// Waits until at least `n` events are stored; returns them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Stored> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stored = self.stored();
            if stored.len() >= n || tokio::time::Instant::now() > deadline {
                return stored;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The data of a structured event as the runtime measures it for `maxEventSize`: its characters as a string.
pub(crate) fn data_chars(event: &Value) -> usize {
    match event.get("data") {
        Some(Value::String(s)) => s.chars().count(),
        Some(v @ (Value::Object(_) | Value::Array(_) | Value::Number(_) | Value::Bool(_))) => {
            v.to_string().chars().count()
        }
        _ => event.get("data_base64").and_then(Value::as_str).map_or(0, |s| s.chars().count()),
    }
}
