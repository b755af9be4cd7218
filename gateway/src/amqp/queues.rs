//! What the sans-IO AMQP connection asks of the queues behind it: declare, bind, consume, fetch and settle.
//!
//! [`super::connection::ServerConnection`] calls a [`Queues`] implementation synchronously while it handles a
//! frame, so every answer goes out in frame order. The gateway's implementation
//! ([`super::broker_queues::BrokerQueues`]) keeps each queue as a session of the local broker; tests use a map.

use amq_protocol::protocol::basic::AMQPProperties;

/// How a queue is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueOptions {
    /// Only check that it exists (404 if not).
    pub passive: bool,
    /// It outlives the connection (and the gateway's restarts).
    pub durable: bool,
    /// Only this connection may use it; it ends with the connection.
    pub exclusive: bool,
    /// It ends when its last consumer is cancelled (meshgate: when the declaring connection ends).
    pub auto_delete: bool,
}

/// What queue.declare-ok reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's name (generated when the client left it empty).
    pub name: String,
    /// Messages ready for delivery.
    pub messages: u32,
    /// Active consumers.
    pub consumers: u32,
}

/// A refusal with its AMQP reply code (channel level: 403, 404, 405, 406).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueError {
    /// The reply code.
    pub code: u16,
    /// The reply text (`NOT_FOUND - no queue 'x'`).
    pub text: String,
}

impl QueueError {
    /// 404 for a queue that does not exist.
    pub fn not_found(queue: &str) -> QueueError {
        QueueError { code: super::connection::reply::NOT_FOUND, text: format!("NOT_FOUND - no queue '{queue}'") }
    }
}

/// A message on its way to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The exchange it is reported as published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Content-header properties.
    pub properties: AMQPProperties,
    /// The body.
    pub body: Vec<u8>,
}

/// A message taken from a queue, not yet settled.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The queue's own id for it, for [`Queues::settle`].
    pub id: u16,
    /// Whether it was delivered before and not acknowledged.
    pub redelivered: bool,
    /// The message.
    pub message: OutgoingMessage,
    /// Messages left in the queue (basic.get-ok's message-count).
    pub remaining: u32,
}

/// What becomes of a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// basic.ack: done.
    Ack,
    /// basic.reject / basic.nack with requeue: back to the front of the queue, redelivered.
    Requeue,
    /// basic.reject / basic.nack without requeue: dropped.
    Discard,
}

/// The queues one connection works with.
pub trait Queues {
    /// queue.declare (a `passive` declare of an unknown queue is 404).
    fn declare(&mut self, name: &str, options: QueueOptions) -> Result<QueueInfo, QueueError>;
    /// queue.bind: messages whose routing key matches `routing_key` on `exchange` go to `queue`.
    fn bind(&mut self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), QueueError>;
    /// queue.unbind.
    fn unbind(&mut self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), QueueError>;
    /// queue.purge: drops the ready messages; returns how many.
    fn purge(&mut self, queue: &str) -> Result<u32, QueueError>;
    /// queue.delete; returns how many messages went with it.
    fn delete(&mut self, queue: &str, if_unused: bool, if_empty: bool) -> Result<u32, QueueError>;
    /// basic.consume: the queue's messages go to this connection, at most `prefetch` unsettled (0: no limit).
    fn consume(&mut self, queue: &str, prefetch: u16) -> Result<(), QueueError>;
    /// basic.cancel, or the consumer's channel closed.
    fn cancel(&mut self, queue: &str);
    /// Up to `max` messages for the queue's consumer (the driver's pump), in order.
    fn poll(&mut self, queue: &str, max: usize) -> Vec<Fetched>;
    /// basic.get: the next message, if any.
    fn get(&mut self, queue: &str) -> Result<Option<Fetched>, QueueError>;
    /// The outcome of a delivered message.
    fn settle(&mut self, queue: &str, id: u16, how: Settle);
}

/// Queues in memory, without persistence or routing (messages are put in with [`MemoryQueues::push`]): the
/// state machine's tests and its fuzz target drive consumers with it.
#[derive(Debug, Default)]
pub struct MemoryQueues {
    queues: std::collections::BTreeMap<String, MemoryQueue>,
    next_id: u16,
}

#[derive(Debug, Default)]
struct MemoryQueue {
    ready: std::collections::VecDeque<(u16, bool, OutgoingMessage)>,
    unsettled: std::collections::BTreeMap<u16, OutgoingMessage>,
    bindings: Vec<String>,
    consumed: bool,
    prefetch: u16,
}

impl MemoryQueues {
    /// Puts a message at the back of `queue` (created if needed).
    pub fn push(&mut self, queue: &str, message: OutgoingMessage) {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = self.next_id;
        self.queues.entry(queue.to_string()).or_default().ready.push_back((id, false, message));
    }

    /// The binding keys of `queue`.
    pub fn bindings(&self, queue: &str) -> &[String] {
        self.queues.get(queue).map_or(&[], |q| q.bindings.as_slice())
    }

    /// Messages of `queue` delivered and not settled.
    pub fn unsettled(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.unsettled.len())
    }

    /// Messages of `queue` ready for delivery.
    pub fn ready(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.ready.len())
    }

    fn queue(&mut self, name: &str) -> Result<&mut MemoryQueue, QueueError> {
        self.queues.get_mut(name).ok_or_else(|| QueueError::not_found(name))
    }

    fn take(&mut self, name: &str, max: usize, window: bool) -> Vec<Fetched> {
        let Some(q) = self.queues.get_mut(name) else { return Vec::new() };
        let mut out = Vec::new();
        while out.len() < max {
            if window && q.prefetch > 0 && q.unsettled.len() >= usize::from(q.prefetch) {
                break;
            }
            let Some((id, redelivered, message)) = q.ready.pop_front() else { break };
            q.unsettled.insert(id, message.clone());
            let remaining = u32::try_from(q.ready.len()).unwrap_or(u32::MAX);
            out.push(Fetched { id, redelivered, message, remaining });
        }
        out
    }
}

impl Queues for MemoryQueues {
    fn declare(&mut self, name: &str, options: QueueOptions) -> Result<QueueInfo, QueueError> {
        if options.passive && !self.queues.contains_key(name) {
            return Err(QueueError::not_found(name));
        }
        let name = if name.is_empty() { format!("amq.gen-{}", self.queues.len() + 1) } else { name.to_string() };
        let q = self.queues.entry(name.clone()).or_default();
        let messages = u32::try_from(q.ready.len()).unwrap_or(u32::MAX);
        Ok(QueueInfo { name, messages, consumers: u32::from(q.consumed) })
    }

    fn bind(&mut self, queue: &str, _exchange: &str, routing_key: &str) -> Result<(), QueueError> {
        self.queue(queue)?.bindings.push(routing_key.to_string());
        Ok(())
    }

    fn unbind(&mut self, queue: &str, _exchange: &str, routing_key: &str) -> Result<(), QueueError> {
        self.queue(queue)?.bindings.retain(|b| b != routing_key);
        Ok(())
    }

    fn purge(&mut self, queue: &str) -> Result<u32, QueueError> {
        let q = self.queue(queue)?;
        let n = u32::try_from(q.ready.len()).unwrap_or(u32::MAX);
        q.ready.clear();
        Ok(n)
    }

    fn delete(&mut self, queue: &str, _if_unused: bool, _if_empty: bool) -> Result<u32, QueueError> {
        let q = self.queues.remove(queue).ok_or_else(|| QueueError::not_found(queue))?;
        Ok(u32::try_from(q.ready.len()).unwrap_or(u32::MAX))
    }

    fn consume(&mut self, queue: &str, prefetch: u16) -> Result<(), QueueError> {
        let q = self.queue(queue)?;
        if q.consumed {
            let text = format!("RESOURCE_LOCKED - queue '{queue}' already has a consumer");
            return Err(QueueError { code: super::connection::reply::RESOURCE_LOCKED, text });
        }
        q.consumed = true;
        q.prefetch = prefetch;
        Ok(())
    }

    fn cancel(&mut self, queue: &str) {
        if let Some(q) = self.queues.get_mut(queue) {
            q.consumed = false;
        }
    }

    fn poll(&mut self, queue: &str, max: usize) -> Vec<Fetched> {
        if !self.queues.get(queue).is_some_and(|q| q.consumed) {
            return Vec::new();
        }
        self.take(queue, max, true)
    }

    fn get(&mut self, queue: &str) -> Result<Option<Fetched>, QueueError> {
        self.queue(queue)?;
        Ok(self.take(queue, 1, false).pop())
    }

    fn settle(&mut self, queue: &str, id: u16, how: Settle) {
        let Some(q) = self.queues.get_mut(queue) else { return };
        if let Some(message) = q.unsettled.remove(&id)
            && how == Settle::Requeue
        {
            q.ready.push_front((id, true, message));
        }
    }
}
