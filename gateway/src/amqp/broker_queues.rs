//! AMQP queues as sessions of the local broker: what lets AMQP devices consume commands and each other's
//! messages, whichever protocol published them.
//!
//! - A queue is the broker session [`session_name::amqp_queue`], in a namespace of its own (no MQTT client id
//!   reaches it), and belongs to the user that declared it: another user's declare (passive or not), bind,
//!   unbind, purge, delete, consume or get is refused with 403 ACCESS_REFUSED, the queue untouched.
//! - A queue's session A durable queue (not exclusive, not auto-delete) is a
//!   persistent session: it outlives connections and restarts and collects messages while nobody consumes,
//!   bounded by `broker.max_queued_messages`. Any other queue ends with the connection that declared it.
//! - queue.bind subscribes the session at QoS 1 to the binding key read as a topic filter ([`super::topic`]);
//!   every exchange routes like `amq.topic` over the broker's one topic space.
//! - One consumer per queue at a time (a second gets 405 RESOURCE_LOCKED); basic.qos prefetch is the session's
//!   in-flight bound; an unacknowledged delivery is redelivered (`redelivered` set) after a requeue, a cancel or
//!   a reconnect.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use meshgate_protocols::mqtt::{QoS, RetainHandling, SubscriptionOptions, Version};
use tokio::sync::Notify;

use super::connection::reply;
use super::queues::{Fetched, OutgoingMessage, QueueError, QueueInfo, QueueOptions, Queues, Settle};
use super::topic;
use crate::acl::DeviceAcl;
use crate::broker::local::now_ms;
use crate::broker::{LocalBroker, Message, Outbound, SessionOwner, SessionRefused, session_name};

/// Bytes of deliveries taken from a queue per fetch (at least one): a slow consumer's backlog stays in its
/// bounded queue.
const FETCH_BYTES: u64 = 256 * 1024;

fn session_id(queue: &str) -> String {
    session_name::amqp_queue(queue)
}

/// One connection's view of the broker's queues.
pub struct BrokerQueues {
    broker: Arc<LocalBroker>,
    conn_id: u64,
    acl: DeviceAcl,
    /// The user the queues it declares belong to (`""`: anonymous), and what it may read.
    owner: SessionOwner,
    /// Woken when the broker queued messages for a queue this connection consumes.
    notify: Arc<Notify>,
    /// Queues that end with this connection.
    owned: HashSet<String>,
    /// Queues this connection consumes.
    consuming: HashSet<String>,
    /// Deliveries to send again first (in flight when the consumer last went away), per queue.
    resend: HashMap<String, VecDeque<Fetched>>,
    /// Sessions of durable queues whose declaration, bindings or contents changed since the driver last took
    /// them: the session store holds them before the answer goes out ([`BrokerQueues::take_durable_changes`]).
    durable_changes: Vec<String>,
    /// Messages fetched for delivery since [`BrokerQueues::take_delivered`].
    delivered: u64,
}

impl BrokerQueues {
    /// The queues of connection `conn_id`, with the device's ACL for bindings.
    pub fn new(broker: Arc<LocalBroker>, conn_id: u64, acl: DeviceAcl) -> BrokerQueues {
        BrokerQueues {
            broker,
            conn_id,
            acl,
            owner: SessionOwner::default(),
            notify: Arc::new(Notify::new()),
            owned: HashSet::new(),
            consuming: HashSet::new(),
            resend: HashMap::new(),
            durable_changes: Vec::new(),
            delivered: 0,
        }
    }

    /// Takes the sessions of durable queues changed by the frames handled since the last call. The driver makes
    /// them durable before it sends the answers (declare-ok, bind-ok, purge-ok, delete-ok), so a crash after the
    /// answer never loses what it promised.
    pub fn take_durable_changes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.durable_changes)
    }

    /// Notes `id` among the changed durable queues when its session outlives connections.
    fn changed(&mut self, id: &str) {
        if self.broker.read(|b| b.session(id).is_some_and(|s| s.expiry_secs > 0))
            && !self.durable_changes.iter().any(|c| c == id)
        {
            self.durable_changes.push(id.to_string());
        }
    }

    /// The notifier the driver waits on for deliveries.
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }

    /// Sets the device's ACL and the user its queues belong to (once it authenticated).
    pub fn set_device(&mut self, acl: DeviceAcl, owner: &str) {
        self.owner = SessionOwner::new(owner, &acl);
        self.acl = acl;
    }

    /// Sets the device's ACL again (a reload changed it), for the same user.
    pub fn set_acl(&mut self, acl: DeviceAcl) {
        let owner = std::mem::take(&mut self.owner.user);
        self.set_device(acl, &owner);
    }

    /// How many messages were delivered since the last call (for the client list).
    pub fn take_delivered(&mut self) -> u64 {
        std::mem::take(&mut self.delivered)
    }

    /// The connection ended: consumers detach, queues it owned end (their messages with them).
    pub fn close(&mut self) {
        for queue in std::mem::take(&mut self.consuming) {
            self.broker.detach(&session_id(&queue), self.conn_id);
        }
        for queue in std::mem::take(&mut self.owned) {
            self.broker.disconnect(&session_id(&queue), Some(0));
        }
    }

    /// The session of `queue`, which must exist and belong to this connection's user; what the user may read
    /// is brought up to date on it.
    fn require(&self, queue: &str) -> Result<String, QueueError> {
        let id = session_id(queue);
        let reader = self.owner.reader.clone();
        let found = self.broker.with(|b| match b.session_mut(&id) {
            None => Err(QueueError::not_found(queue)),
            Some(s) if s.owner != self.owner.user => Err(not_owner(queue)),
            Some(s) => {
                s.set_reader(reader);
                Ok(())
            }
        });
        found.map(|()| id)
    }

    fn fetched(out: Outbound, remaining: u32, now: u64) -> Option<Fetched> {
        match out {
            Outbound::Publish { packet_id, dup, delivery } => {
                let message = outgoing(&delivery.message, now);
                Some(Fetched { id: packet_id, redelivered: dup || delivery.redelivered, message, remaining })
            }
            Outbound::PubRel(_) => None,
        }
    }

    fn take(&mut self, queue: &str, max: usize) -> Vec<Fetched> {
        let mut out: Vec<Fetched> = Vec::new();
        if let Some(resend) = self.resend.get_mut(queue) {
            while out.len() < max {
                let Some(f) = resend.pop_front() else { break };
                out.push(f);
            }
        }
        if out.len() >= max {
            return out;
        }
        let id = session_id(queue);
        let now = now_ms();
        let (polled, remaining) = self.broker.with(|b| {
            let polled = b.poll_outbound(&id, now, max - out.len(), FETCH_BYTES);
            (polled, b.session(&id).map_or(0, |s| s.queued()))
        });
        let remaining = u32::try_from(remaining).unwrap_or(u32::MAX);
        out.extend(polled.into_iter().filter_map(|o| Self::fetched(o, remaining, now)));
        self.delivered += out.len() as u64;
        out
    }
}

impl Queues for BrokerQueues {
    fn declare(&mut self, name: &str, options: QueueOptions) -> Result<QueueInfo, QueueError> {
        let existing = session_id(name);
        let exists = !name.is_empty() && self.broker.read(|b| b.has_session(&existing));
        if options.passive && !exists {
            return Err(QueueError::not_found(name));
        }
        if exists {
            let id = self.require(name)?;
            let messages = self.broker.read(|b| b.session(&id).map_or(0, |s| s.queued()));
            let messages = u32::try_from(messages).unwrap_or(u32::MAX);
            let consumers = u32::from(self.broker.is_attached(&id));
            return Ok(QueueInfo { name: name.to_string(), messages, consumers });
        }
        if name.starts_with("amq.") {
            let text = format!("ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.'");
            return Err(QueueError { code: reply::ACCESS_REFUSED, text });
        }
        let name = if name.is_empty() { format!("amq.gen-{}", uuid::Uuid::now_v7().simple()) } else { name.into() };
        let persistent = options.durable && !options.exclusive && !options.auto_delete;
        let id = session_id(&name);
        let now = now_ms();
        let owner = &self.owner;
        let refused = |e: SessionRefused| match e {
            SessionRefused::NotOwner => not_owner(&name),
            e => {
                let text = format!("PRECONDITION_FAILED - cannot declare queue '{name}': {e:?} (see [limits])");
                QueueError { code: reply::PRECONDITION_FAILED, text }
            }
        };
        if persistent {
            // A persistent session, disconnected until consumed: it collects messages and is saved.
            self.broker
                .with(|b| {
                    let connected = b.connect(&id, owner, Version::V311, false, u32::MAX, u16::MAX, now);
                    b.disconnect(&id, None, now);
                    connected
                })
                .map_err(refused)?;
            self.changed(&id);
        } else {
            // Expiry 0: never saved, and ended by `close` with this connection.
            self.broker.with(|b| b.connect(&id, owner, Version::V311, false, 0, u16::MAX, now)).map_err(refused)?;
            self.owned.insert(name.clone());
        }
        Ok(QueueInfo { name, messages: 0, consumers: 0 })
    }

    fn bind(&mut self, queue: &str, _exchange: &str, routing_key: &str) -> Result<(), QueueError> {
        let id = self.require(queue)?;
        let filter = binding_filter(routing_key)?;
        if !self.acl.may_subscribe(&filter) {
            let text = format!("ACCESS_REFUSED - binding to '{routing_key}' is not allowed");
            return Err(QueueError { code: reply::ACCESS_REFUSED, text });
        }
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            retain_handling: RetainHandling::SendIfNew,
            ..SubscriptionOptions::default()
        };
        let now = now_ms();
        self.broker.with(|b| b.subscribe(&id, &filter, &options, None, now)).map_err(|e| {
            let text = format!("PRECONDITION_FAILED - binding to '{routing_key}' refused: {e:?} (see [limits])");
            QueueError { code: reply::PRECONDITION_FAILED, text }
        })?;
        self.changed(&id);
        self.broker.wake(&id);
        Ok(())
    }

    fn unbind(&mut self, queue: &str, _exchange: &str, routing_key: &str) -> Result<(), QueueError> {
        let id = self.require(queue)?;
        let filter = binding_filter(routing_key)?;
        self.broker.with(|b| b.unsubscribe(&id, &filter));
        self.changed(&id);
        Ok(())
    }

    fn purge(&mut self, queue: &str) -> Result<u32, QueueError> {
        let id = self.require(queue)?;
        self.resend.remove(queue);
        let n = self.broker.with(|b| b.session_mut(&id).map_or(0, |s| s.purge()));
        self.changed(&id);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn delete(&mut self, queue: &str, if_unused: bool, if_empty: bool) -> Result<u32, QueueError> {
        let id = self.require(queue)?;
        let queued = self.broker.read(|b| b.session(&id).map_or(0, |s| s.queued()));
        if if_unused && self.broker.is_attached(&id) {
            let text = format!("PRECONDITION_FAILED - queue '{queue}' in use");
            return Err(QueueError { code: reply::PRECONDITION_FAILED, text });
        }
        if if_empty && queued > 0 {
            let text = format!("PRECONDITION_FAILED - queue '{queue}' not empty");
            return Err(QueueError { code: reply::PRECONDITION_FAILED, text });
        }
        // Noted while the session still says it is durable: the store then deletes its file.
        self.changed(&id);
        self.broker.detach(&id, self.conn_id);
        self.consuming.remove(queue);
        self.owned.remove(queue);
        self.resend.remove(queue);
        self.broker.disconnect(&id, Some(0));
        Ok(u32::try_from(queued).unwrap_or(u32::MAX))
    }

    fn consume(&mut self, queue: &str, prefetch: u16) -> Result<(), QueueError> {
        let id = self.require(queue)?;
        if self.broker.is_attached(&id) {
            let text = format!("RESOURCE_LOCKED - queue '{queue}' already has a consumer");
            return Err(QueueError { code: reply::RESOURCE_LOCKED, text });
        }
        let window = if prefetch == 0 { u16::MAX } else { prefetch };
        let resend =
            self.broker.with(|b| b.session_mut(&id).map(|s| s.connected(Version::V311, window)).unwrap_or_default());
        let now = now_ms();
        let fetched: VecDeque<Fetched> = resend.into_iter().filter_map(|o| Self::fetched(o, 0, now)).collect();
        self.resend.insert(queue.to_string(), fetched);
        self.broker.attach_with(&id, self.conn_id, Arc::clone(&self.notify));
        self.consuming.insert(queue.to_string());
        self.notify.notify_one();
        Ok(())
    }

    fn cancel(&mut self, queue: &str) {
        let id = session_id(queue);
        if self.consuming.remove(queue) {
            self.broker.detach(&id, self.conn_id);
            // Messages in flight stay in the session and are redelivered to the next consumer.
            self.resend.remove(queue);
        }
    }

    fn poll(&mut self, queue: &str, max: usize) -> Vec<Fetched> {
        if !self.consuming.contains(queue) {
            return Vec::new();
        }
        self.take(queue, max)
    }

    fn get(&mut self, queue: &str) -> Result<Option<Fetched>, QueueError> {
        self.require(queue)?;
        Ok(self.take(queue, 1).pop())
    }

    fn settle(&mut self, queue: &str, id: u16, how: Settle) {
        if id == 0 {
            return; // a QoS 0 message: nothing in flight
        }
        let client = session_id(queue);
        self.broker.with(|b| {
            if let Some(s) = b.session_mut(&client) {
                match how {
                    Settle::Ack | Settle::Discard => {
                        s.puback(id);
                    }
                    Settle::Requeue => {
                        s.requeue(id);
                    }
                }
            }
        });
        self.notify.notify_one();
    }
}

fn not_owner(queue: &str) -> QueueError {
    QueueError {
        code: reply::ACCESS_REFUSED,
        text: format!("ACCESS_REFUSED - queue '{queue}' belongs to another user"),
    }
}

fn binding_filter(routing_key: &str) -> Result<String, QueueError> {
    topic::binding_key_to_filter(routing_key).filter(|f| !f.is_empty()).ok_or_else(|| QueueError {
        code: reply::PRECONDITION_FAILED,
        text: format!("PRECONDITION_FAILED - binding key '{routing_key}' has no MQTT topic filter equivalent"),
    })
}

/// A broker message as AMQP delivers it: on `amq.topic` with the topic as routing key; content type, user
/// properties as headers, response topic as reply-to, correlation data as correlation-id, the remaining expiry
/// as expiration, and the identity of its CloudEvent (message-id, timestamp, `cloudEvents:` headers).
pub fn outgoing(message: &Message, now_ms: u64) -> OutgoingMessage {
    let p = &message.properties;
    // What does not fit an AMQP short string (an MQTT device's strings go up to 65,535 bytes) is left out; the
    // routing key is cut to fit when the delivery is encoded.
    let fits = |s: &str| s.len() <= super::connection::SHORT_STRING_MAX;
    let mut headers = FieldTable::default();
    for (name, value) in p.user_properties.iter().filter(|(name, _)| fits(name)) {
        headers.insert(ShortString::from(name.as_str()), AMQPValue::LongString(LongString::from(value.as_str())));
    }
    // The event the mesh received for this message: its id as message-id, its time as timestamp, and the three
    // as `cloudEvents:` headers (where the message does not carry them already).
    if let Some(e) = &message.event {
        let identity = [
            ("cloudEvents:id", Some(&e.id)),
            ("cloudEvents:source", Some(&e.source)),
            ("cloudEvents:time", e.time.as_ref()),
        ];
        for (name, value) in identity {
            let name = ShortString::from(name);
            if let Some(value) = value.filter(|_| !headers.inner().contains_key(&name)) {
                headers.insert(name, AMQPValue::LongString(LongString::from(value.as_str())));
            }
        }
    }
    let mut properties = AMQPProperties::default().with_delivery_mode(if message.qos > 0 { 2 } else { 1 });
    if let Some(e) = &message.event {
        if fits(&e.id) {
            properties = properties.with_message_id(ShortString::from(e.id.as_str()));
        }
        let time = e.time.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if let Some(seconds) = time.and_then(|t| u64::try_from(t.timestamp()).ok()) {
            properties = properties.with_timestamp(seconds);
        }
    }
    if let Some(ct) = p.content_type.as_ref().filter(|ct| fits(ct)) {
        properties = properties.with_content_type(ShortString::from(ct.as_str()));
    }
    if !headers.inner().is_empty() {
        properties = properties.with_headers(headers);
    }
    if let Some(reply_to) = p.response_topic.as_deref().map(topic::topic_to_routing_key).filter(|r| fits(r)) {
        properties = properties.with_reply_to(ShortString::from(reply_to));
    }
    if let Some(id) = p.correlation_data.as_deref().and_then(|c| std::str::from_utf8(c).ok()).filter(|c| fits(c)) {
        properties = properties.with_correlation_id(ShortString::from(id));
    }
    if let Some(at) = message.expires_at_ms {
        properties = properties.with_expiration(ShortString::from(at.saturating_sub(now_ms).to_string()));
    }
    OutgoingMessage {
        exchange: "amq.topic".into(),
        routing_key: topic::topic_to_routing_key(&message.topic),
        properties,
        body: message.payload.clone(),
    }
}
