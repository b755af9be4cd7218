//! The acknowledgement seam every listener shares: what a connection owes its device, in the order the device
//! sent it, each answer held until the spool says its event is durable.
//!
//! A listener admits a message, submits its event (getting a [`Ticket`]) and pushes the protocol's token for the
//! answer (an MQTT packet id, an AMQP delivery tag, a `cloudevents.json` event id) with the ticket and the message
//! for local subscribers. [`PendingAcks::resolve`] then hands back, in order, every token whose outcome is known,
//! and is the one place where two rules of the gateway are kept:
//! - a device is acknowledged only once its event is durable (the spool's watermark passed its ticket);
//! - local subscribers get a message only once it is durable, and in the order its publisher sent it (a message
//!   without a ticket, QoS 0, waits behind the ones before it).
//!
//! Outcomes are read from the spool's watermark ([`Durable`]): one comparison per token and one wake-up per
//! commit, and every answer a commit settles is handed back in one call, so the listener writes them in one
//! flush.

use std::collections::VecDeque;

use meshgate_edge_agent::pipeline::{DeliveryError, Durable, Ticket};

use crate::broker::Message;
use crate::listener::Shared;
use crate::metrics::{Protocol, RejectReason};

/// What became of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its record is durable (and its message went to local subscribers).
    Stored,
    /// It had no record to wait for: its answer was decided when it was admitted (a duplicate, a refusal, a
    /// message nobody is answered for).
    Settled,
    /// Its record could not be stored: the device must be refused (or, where its protocol cannot say so, closed).
    Failed(DeliveryError),
}

/// What an entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A device's message: counted as acknowledged or refused, its local copy routed.
    Message,
    /// A record of the protocol's own state (an MQTT QoS 2 release): neither counted nor routed.
    Record,
}

struct Entry<T> {
    token: T,
    ticket: Option<Ticket>,
    local: Option<Message>,
    kind: Kind,
}

/// The answers a connection owes, in order (see the module doc). `T` is the protocol's token for an answer.
pub struct PendingAcks<T> {
    queue: VecDeque<Entry<T>>,
    durable: Durable,
    protocol: Protocol,
}

impl<T> PendingAcks<T> {
    /// An empty queue for a connection of `protocol`.
    pub fn new(shared: &Shared, protocol: Protocol) -> PendingAcks<T> {
        PendingAcks { queue: VecDeque::new(), durable: shared.ingest.durable(), protocol }
    }

    /// Queues the answer `token` for a device's message: it waits for `ticket` (none: for nothing but the entries
    /// before it), and `local`, the copy for local subscribers, is routed once it is durable.
    pub fn push(&mut self, token: T, ticket: Option<Ticket>, local: Option<Message>) {
        self.queue.push_back(Entry { token, ticket, local, kind: Kind::Message });
    }

    /// Queues the answer `token` that waits for a record of the protocol's own state (not a message).
    pub fn push_record(&mut self, token: T, ticket: Ticket) {
        self.queue.push_back(Entry { token, ticket: Some(ticket), local: None, kind: Kind::Record });
    }

    /// Answers owed.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The outcome of the oldest entry, if it is known.
    fn front_outcome(&self) -> Option<Outcome> {
        let front = self.queue.front()?;
        match front.ticket {
            None => Some(Outcome::Settled),
            Some(ticket) => self.durable.outcome(ticket).map(|r| match r {
                Ok(()) => Outcome::Stored,
                Err(e) => Outcome::Failed(e.into()),
            }),
        }
    }

    /// Waits until the oldest entry's outcome is known; never resolves while nothing is owed.
    pub async fn ready(&mut self) {
        loop {
            if self.queue.is_empty() {
                std::future::pending::<()>().await;
            }
            if self.front_outcome().is_some() {
                return;
            }
            self.durable.changed().await;
        }
    }

    /// Hands every entry whose outcome is known to `answer`, in order, after routing its local copy (when stored)
    /// and counting it.
    pub fn resolve(&mut self, shared: &Shared, mut answer: impl FnMut(T, Outcome)) {
        while let Some(outcome) = self.front_outcome() {
            let Some(Entry { token, local, kind, .. }) = self.queue.pop_front() else { break };
            self.settle(shared, kind, local, &outcome);
            answer(token, outcome);
        }
    }

    /// Waits for every entry's outcome and hands each to `answer`, in order (a connection that is ending).
    pub async fn resolve_all(&mut self, shared: &Shared, mut answer: impl FnMut(T, Outcome)) {
        while !self.queue.is_empty() {
            self.ready().await;
            self.resolve(shared, &mut answer);
        }
    }

    /// What the gateway does with an outcome whatever the protocol: route, count, log.
    fn settle(&self, shared: &Shared, kind: Kind, local: Option<Message>, outcome: &Outcome) {
        match (outcome, kind) {
            (Outcome::Stored | Outcome::Settled, Kind::Message) => {
                if *outcome == Outcome::Stored {
                    shared.metrics.acknowledged(self.protocol);
                }
                if let Some(message) = local {
                    shared.broker.publish(message);
                }
            }
            (Outcome::Failed(e), Kind::Message) => {
                tracing::warn!(error = %e, protocol = ?self.protocol, "event not stored; refusing the publish");
                shared.metrics.reject(self.protocol, RejectReason::StorageFailed);
            }
            (_, Kind::Record) => {}
        }
    }
}
