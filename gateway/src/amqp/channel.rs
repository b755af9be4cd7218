//! Channel work of the sans-IO AMQP connection: opening and closing channels, declares, publishes assembled from
//! their content frames, publisher confirms, flow control both ways, consumers and their deliveries.

use std::collections::BTreeMap;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, exchange, queue};

use super::connection::{Event, ServerConnection, method, reply, short};
use super::frames::FRAME_OVERHEAD;
use super::queues::{Fetched, QueueError, QueueOptions, Queues, Settle};

/// A message being assembled from its method, header and body frames.
#[derive(Debug)]
pub(super) struct Content {
    exchange: String,
    routing_key: String,
    properties: Option<basic::AMQPProperties>,
    size: u64,
    body: Vec<u8>,
}

/// A consumer on a channel.
#[derive(Debug, Clone)]
struct Consumer {
    queue: String,
    no_ack: bool,
}

/// One open channel.
#[derive(Debug, Default)]
pub(super) struct Channel {
    confirm: bool,
    next_tag: u64,
    pub(super) content: Option<Content>,
    /// Publisher-confirm tags whose outcome is known but not sent yet, with the outcome (ack = true).
    settled: BTreeMap<u64, bool>,
    /// The highest confirm tag sent back (confirms go out in order).
    sent_up_to: u64,
    /// Set while we sent channel.close and wait for close-ok.
    pub(super) closing: bool,
    /// Whether the channel has published: flow control applies to publishing channels.
    published: bool,
    /// Whether it was told channel.flow(false) and not told to resume yet.
    paused: bool,
    /// Whether the client lets us deliver (its own channel.flow).
    deliveries_active: bool,
    /// basic.qos prefetch-count for consumers started afterwards (0: no limit).
    prefetch: u16,
    consumers: BTreeMap<String, Consumer>,
    /// Deliveries not settled yet: delivery tag → (queue, the queue's id for the message).
    unacked: BTreeMap<u64, (String, u16)>,
    next_delivery: u64,
}

impl ServerConnection {
    pub(super) fn close_channel(&mut self, id: u16, code: u16, text: &str, class_id: u16, method_id: u16) {
        let close = channel::Close { reply_code: code, reply_text: short(text), class_id, method_id };
        self.send(&method(id, AMQPClass::Channel(channel::AMQPMethod::Close(close))));
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.closing = true;
            ch.content = None;
        }
    }

    /// Refuses a publish the driver could not accept (403 not allowed by the ACL, 406 an invalid CloudEvent on a
    /// channel without confirms): channel.close naming basic.publish.
    pub fn refuse_publish(&mut self, channel: u16, code: u16, text: &str) {
        if self.channels.get(&channel).is_some_and(|ch| !ch.closing) {
            self.close_channel(channel, code, text, 60, 40);
        }
    }

    fn refuse(&mut self, id: u16, e: QueueError, class_id: u16, method_id: u16) {
        self.close_channel(id, e.code, &e.text, class_id, method_id);
    }

    /// Ends a channel's consumers and puts what it had not settled back in the queues.
    fn release_channel(&mut self, id: u16, queues: &mut impl Queues) {
        let Some(ch) = self.channels.remove(&id) else { return };
        for (queue, message) in ch.unacked.into_values() {
            queues.settle(&queue, message, Settle::Requeue);
        }
        for consumer in ch.consumers.into_values() {
            queues.cancel(&consumer.queue);
        }
    }

    /// Ends every channel (the connection is over): consumers cancelled, unsettled deliveries requeued.
    pub fn release(&mut self, queues: &mut impl Queues) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.release_channel(id, queues);
        }
    }

    pub(super) fn on_channel_method(&mut self, id: u16, class: AMQPClass, queues: &mut impl Queues) {
        let (class_id, method_id) = (class.get_amqp_class_id(), class.get_amqp_method_id());
        if let AMQPClass::Channel(channel::AMQPMethod::Open(_)) = class {
            if id > self.limits.channel_max || self.channels.contains_key(&id) {
                self.close(reply::CHANNEL_ERROR, "channel already open or out of range", class_id, method_id);
                return;
            }
            let ch = Channel { next_tag: 1, next_delivery: 1, deliveries_active: true, ..Channel::default() };
            self.channels.insert(id, ch);
            self.send(&method(id, AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {}))));
            return;
        }
        let Some(ch) = self.channels.get(&id) else {
            self.close(reply::CHANNEL_ERROR, "channel not open", class_id, method_id);
            return;
        };
        if ch.closing {
            // After our channel.close only close-ok (or the client's own close) counts.
            if let AMQPClass::Channel(channel::AMQPMethod::CloseOk(_) | channel::AMQPMethod::Close(_)) = class {
                if matches!(class, AMQPClass::Channel(channel::AMQPMethod::Close(_))) {
                    self.send(&method(id, AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))));
                }
                self.release_channel(id, queues);
            }
            return;
        }
        if ch.content.is_some() {
            self.close(reply::UNEXPECTED_FRAME, "method frame inside a message's content", class_id, method_id);
            return;
        }
        match class {
            AMQPClass::Channel(m) => self.on_channel_control(id, m, queues),
            AMQPClass::Exchange(m) => self.on_exchange(id, m, class_id, method_id),
            AMQPClass::Queue(m) => self.on_queue(id, m, queues, class_id, method_id),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if let Some(ch) = self.channels.get_mut(&id) {
                    ch.confirm = true;
                }
                if !s.nowait {
                    self.send(&method(id, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {}))));
                }
            }
            AMQPClass::Basic(m) => self.on_basic(id, m, queues, class_id, method_id),
            _ => self.close(
                reply::NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - method not supported by meshgate",
                class_id,
                method_id,
            ),
        }
    }

    fn on_channel_control(&mut self, id: u16, m: channel::AMQPMethod, queues: &mut impl Queues) {
        match m {
            channel::AMQPMethod::Close(_) => {
                self.send(&method(id, AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))));
                self.release_channel(id, queues);
            }
            channel::AMQPMethod::Flow(f) => {
                if let Some(ch) = self.channels.get_mut(&id) {
                    ch.deliveries_active = f.active;
                }
                let ok = channel::FlowOk { active: f.active };
                self.send(&method(id, AMQPClass::Channel(channel::AMQPMethod::FlowOk(ok))));
            }
            // The answer to our own channel.flow.
            channel::AMQPMethod::FlowOk(_) => {}
            other => {
                let class = AMQPClass::Channel(other);
                let (c, m) = (class.get_amqp_class_id(), class.get_amqp_method_id());
                self.close(reply::COMMAND_INVALID, "unexpected channel method", c, m);
            }
        }
    }

    fn on_exchange(&mut self, id: u16, m: exchange::AMQPMethod, class_id: u16, method_id: u16) {
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let name = d.exchange.as_str().to_string();
                if d.passive && !self.exchanges.contains(&name) {
                    let text = format!("NOT_FOUND - no exchange '{name}'");
                    self.close_channel(id, reply::NOT_FOUND, &text, class_id, method_id);
                    return;
                }
                if !d.passive && name.starts_with("amq.") && !self.exchanges.contains(&name) {
                    let text = "ACCESS_REFUSED - the amq. prefix is reserved";
                    self.close_channel(id, reply::ACCESS_REFUSED, text, class_id, method_id);
                    return;
                }
                self.exchanges.insert(name);
                if !d.nowait {
                    let ok = exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {});
                    self.send(&method(id, AMQPClass::Exchange(ok)));
                }
            }
            exchange::AMQPMethod::Delete(d) => {
                let name = d.exchange.as_str();
                if name.is_empty() || name.starts_with("amq.") {
                    let text = "ACCESS_REFUSED - the default and amq. exchanges cannot be deleted";
                    self.close_channel(id, reply::ACCESS_REFUSED, text, class_id, method_id);
                    return;
                }
                self.exchanges.remove(name);
                if !d.nowait {
                    self.send(&method(id, AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}))));
                }
            }
            _ => self.close(
                reply::NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - exchange-to-exchange bindings",
                class_id,
                method_id,
            ),
        }
    }

    fn on_queue(&mut self, id: u16, m: queue::AMQPMethod, queues: &mut impl Queues, class_id: u16, method_id: u16) {
        match m {
            queue::AMQPMethod::Declare(d) => {
                let options = QueueOptions {
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                };
                match queues.declare(d.queue.as_str(), options) {
                    Ok(info) if !d.nowait => {
                        let ok = queue::DeclareOk {
                            queue: short(&info.name),
                            message_count: info.messages,
                            consumer_count: info.consumers,
                        };
                        self.send(&method(id, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))));
                    }
                    Ok(_) => {}
                    Err(e) => self.refuse(id, e, class_id, method_id),
                }
            }
            queue::AMQPMethod::Bind(b) => {
                if !self.exchanges.contains(b.exchange.as_str()) || b.exchange.as_str().is_empty() {
                    let text = format!("NOT_FOUND - no exchange '{}' to bind to", b.exchange.as_str());
                    self.close_channel(id, reply::NOT_FOUND, &text, class_id, method_id);
                    return;
                }
                match queues.bind(b.queue.as_str(), b.exchange.as_str(), b.routing_key.as_str()) {
                    Ok(()) if !b.nowait => {
                        self.send(&method(id, AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {}))));
                    }
                    Ok(()) => {}
                    Err(e) => self.refuse(id, e, class_id, method_id),
                }
            }
            queue::AMQPMethod::Unbind(u) => {
                match queues.unbind(u.queue.as_str(), u.exchange.as_str(), u.routing_key.as_str()) {
                    Ok(()) => {
                        self.send(&method(id, AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {}))));
                    }
                    Err(e) => self.refuse(id, e, class_id, method_id),
                }
            }
            queue::AMQPMethod::Purge(p) => match queues.purge(p.queue.as_str()) {
                Ok(n) if !p.nowait => {
                    let ok = queue::PurgeOk { message_count: n };
                    self.send(&method(id, AMQPClass::Queue(queue::AMQPMethod::PurgeOk(ok))));
                }
                Ok(_) => {}
                Err(e) => self.refuse(id, e, class_id, method_id),
            },
            queue::AMQPMethod::Delete(d) => match queues.delete(d.queue.as_str(), d.if_unused, d.if_empty) {
                Ok(n) if !d.nowait => {
                    let ok = queue::DeleteOk { message_count: n };
                    self.send(&method(id, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok))));
                }
                Ok(_) => {}
                Err(e) => self.refuse(id, e, class_id, method_id),
            },
            _ => self.close(reply::COMMAND_INVALID, "a server method from the client", class_id, method_id),
        }
    }

    fn on_basic(&mut self, id: u16, m: basic::AMQPMethod, queues: &mut impl Queues, class_id: u16, method_id: u16) {
        match m {
            basic::AMQPMethod::Qos(q) => {
                if let Some(ch) = self.channels.get_mut(&id) {
                    ch.prefetch = q.prefetch_count;
                }
                self.send(&method(id, AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {}))));
            }
            basic::AMQPMethod::Publish(p) => {
                if !self.exchanges.contains(p.exchange.as_str()) {
                    let text = format!("NOT_FOUND - no exchange '{}'", p.exchange.as_str());
                    self.close_channel(id, reply::NOT_FOUND, &text, class_id, method_id);
                    return;
                }
                let paused = !self.publish_flow;
                let Some(ch) = self.channels.get_mut(&id) else { return };
                ch.published = true;
                ch.content = Some(Content {
                    exchange: p.exchange.as_str().to_string(),
                    routing_key: p.routing_key.as_str().to_string(),
                    properties: None,
                    size: 0,
                    body: Vec::new(),
                });
                if paused && !ch.paused {
                    // A channel that starts publishing while the spool withholds credit hears it at once.
                    ch.paused = true;
                    let flow = channel::Flow { active: false };
                    self.send(&method(id, AMQPClass::Channel(channel::AMQPMethod::Flow(flow))));
                }
            }
            basic::AMQPMethod::Consume(c) => self.on_consume(id, c, queues, class_id, method_id),
            basic::AMQPMethod::Cancel(c) => {
                let tag = c.consumer_tag.as_str();
                if let Some(consumer) = self.channels.get_mut(&id).and_then(|ch| ch.consumers.remove(tag)) {
                    queues.cancel(&consumer.queue);
                }
                if !c.nowait {
                    let ok = basic::CancelOk { consumer_tag: c.consumer_tag };
                    self.send(&method(id, AMQPClass::Basic(basic::AMQPMethod::CancelOk(ok))));
                }
            }
            basic::AMQPMethod::Get(g) => match queues.get(g.queue.as_str()) {
                Ok(Some(fetched)) => self.send_get_ok(id, g.queue.as_str(), g.no_ack, fetched, queues),
                Ok(None) => self.send(&method(id, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})))),
                Err(e) => self.refuse(id, e, class_id, method_id),
            },
            basic::AMQPMethod::Ack(a) => self.settle(id, a.delivery_tag, a.multiple, Settle::Ack, queues),
            basic::AMQPMethod::Reject(r) => {
                let how = if r.requeue { Settle::Requeue } else { Settle::Discard };
                self.settle(id, r.delivery_tag, false, how, queues);
            }
            basic::AMQPMethod::Nack(n) => {
                let how = if n.requeue { Settle::Requeue } else { Settle::Discard };
                self.settle(id, n.delivery_tag, n.multiple, how, queues);
            }
            basic::AMQPMethod::Recover(_) => {
                let tags: Vec<u64> =
                    self.channels.get(&id).map(|ch| ch.unacked.keys().copied().collect()).unwrap_or_default();
                for tag in tags {
                    self.settle(id, tag, false, Settle::Requeue, queues);
                }
                self.send(&method(id, AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {}))));
            }
            _ => self.close(
                reply::NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - method not supported by meshgate",
                class_id,
                method_id,
            ),
        }
    }

    fn on_consume(&mut self, id: u16, c: basic::Consume, queues: &mut impl Queues, class_id: u16, method_id: u16) {
        let mut tag = c.consumer_tag.as_str().to_string();
        if tag.is_empty() {
            tag = format!("amq.ctag-meshgate-{}", self.next_consumer);
            self.next_consumer += 1;
        }
        let Some(ch) = self.channels.get(&id) else { return };
        if ch.consumers.contains_key(&tag) {
            self.close(
                reply::NOT_ALLOWED,
                "NOT_ALLOWED - consumer tag already in use on this channel",
                class_id,
                method_id,
            );
            return;
        }
        if let Err(e) = queues.consume(c.queue.as_str(), ch.prefetch) {
            self.refuse(id, e, class_id, method_id);
            return;
        }
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.consumers.insert(tag.clone(), Consumer { queue: c.queue.as_str().to_string(), no_ack: c.no_ack });
        }
        if !c.nowait {
            let ok = basic::ConsumeOk { consumer_tag: short(&tag) };
            self.send(&method(id, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok))));
        }
    }

    /// basic.ack / reject / nack from the client: `multiple` covers every unsettled tag up to `tag` (0: all).
    fn settle(&mut self, id: u16, tag: u64, multiple: bool, how: Settle, queues: &mut impl Queues) {
        let Some(ch) = self.channels.get_mut(&id) else { return };
        let settled: Vec<(String, u16)> = if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            let keep = ch.unacked.split_off(&upto.saturating_add(1));
            std::mem::replace(&mut ch.unacked, keep).into_values().collect()
        } else {
            match ch.unacked.remove(&tag) {
                Some(entry) => vec![entry],
                None => {
                    let text = format!("PRECONDITION_FAILED - unknown delivery tag {tag}");
                    self.close_channel(id, reply::PRECONDITION_FAILED, &text, 60, 80);
                    return;
                }
            }
        };
        for (queue, message) in settled {
            queues.settle(&queue, message, how);
        }
    }

    pub(super) fn on_content_header(&mut self, id: u16, size: u64, properties: basic::AMQPProperties) {
        let max = self.limits.max_body;
        let Some(ch) = self.channels.get_mut(&id) else {
            self.close(reply::CHANNEL_ERROR, "channel not open", 60, 40);
            return;
        };
        if ch.closing {
            return;
        }
        let Some(content) = ch.content.as_mut().filter(|c| c.properties.is_none()) else {
            self.close(reply::UNEXPECTED_FRAME, "content header without basic.publish", 60, 40);
            return;
        };
        if size > max {
            let text = format!("CONTENT_TOO_LARGE - {size} bytes, the limit is {max}");
            self.close_channel(id, reply::CONTENT_TOO_LARGE, &text, 60, 40);
            return;
        }
        content.properties = Some(properties);
        content.size = size;
        // Memory follows the bytes that arrive, never the size a header claims.
        content.body.reserve(usize::try_from(size).unwrap_or(0).min(self.frame_max));
        if size == 0 {
            self.complete(id);
            return;
        }
        // Messages assembled at once on several channels share one budget per connection.
        let assembling: u64 = self.channels.values().filter_map(|c| c.content.as_ref()).map(|c| c.size).sum();
        if assembling > max {
            let text = format!("RESOURCE_ERROR - {assembling} bytes of messages in assembly, the limit is {max}");
            self.close(reply::RESOURCE_ERROR, &text, 60, 40);
        }
    }

    pub(super) fn on_content_body(&mut self, id: u16, bytes: Vec<u8>) {
        let Some(ch) = self.channels.get_mut(&id) else {
            self.close(reply::CHANNEL_ERROR, "channel not open", 60, 40);
            return;
        };
        if ch.closing {
            return;
        }
        let Some(content) = ch.content.as_mut().filter(|c| c.properties.is_some()) else {
            self.close(reply::UNEXPECTED_FRAME, "content body without a header", 60, 40);
            return;
        };
        if content.body.len() as u64 + bytes.len() as u64 > content.size {
            self.close(reply::FRAME_ERROR, "content body longer than its header said", 60, 40);
            return;
        }
        content.body.extend_from_slice(&bytes);
        if content.body.len() as u64 == content.size {
            self.complete(id);
        }
    }

    fn complete(&mut self, id: u16) {
        let Some(ch) = self.channels.get_mut(&id) else { return };
        let Some(content) = ch.content.take() else { return };
        let delivery_tag = ch.confirm.then(|| {
            let tag = ch.next_tag;
            ch.next_tag += 1;
            tag
        });
        self.events.push_back(Event::Publish {
            channel: id,
            delivery_tag,
            exchange: content.exchange,
            routing_key: content.routing_key,
            properties: Box::new(content.properties.unwrap_or_default()),
            body: content.body,
        });
    }

    /// The outcome of a confirm-mode publish: basic.ack when `ok`, basic.nack otherwise. Outcomes are sent in
    /// delivery-tag order, a run of acks as one basic.ack with `multiple`; while publish flow is off they are
    /// held (the design's backpressure: a client bounding its unconfirmed window stops too).
    pub fn confirm(&mut self, channel: u16, delivery_tag: u64, ok: bool) {
        let Some(ch) = self.channels.get_mut(&channel) else { return };
        ch.settled.insert(delivery_tag, ok);
        if self.publish_flow {
            self.send_confirms(channel);
        }
    }

    fn send_confirms(&mut self, channel: u16) {
        let Some(ch) = self.channels.get_mut(&channel) else { return };
        let mut frames = Vec::new();
        let mut run_end: Option<u64> = None;
        while let Some((&tag, &ok)) = ch.settled.first_key_value() {
            if tag != ch.sent_up_to + 1 {
                break;
            }
            ch.settled.remove(&tag);
            ch.sent_up_to = tag;
            if ok {
                run_end = Some(tag);
            } else {
                if let Some(end) = run_end.take() {
                    frames.push((end, true));
                }
                frames.push((tag, false));
            }
        }
        if let Some(end) = run_end {
            frames.push((end, true));
        }
        for (tag, ok) in frames {
            let class = if ok {
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack { delivery_tag: tag, multiple: true }))
            } else {
                AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: tag,
                    multiple: false,
                    requeue: false,
                }))
            };
            self.send(&method(channel, class));
        }
    }

    /// Whether publishing channels may send: `false` sends channel.flow(false) to each channel that has
    /// published and holds confirms; `true` resumes them and sends the held confirms.
    pub fn set_publish_flow(&mut self, active: bool) {
        if self.publish_flow == active {
            return;
        }
        self.publish_flow = active;
        let ids: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.published && !ch.closing && ch.paused == active)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.paused = !active;
            }
            let flow = channel::Flow { active };
            self.send(&method(id, AMQPClass::Channel(channel::AMQPMethod::Flow(flow))));
            if active {
                self.send_confirms(id);
            }
        }
    }

    /// Whether publish flow is on (the spool gives credit).
    pub fn publish_flow(&self) -> bool {
        self.publish_flow
    }

    /// Sends up to `max` deliveries to the consumers that may take them; returns whether more may be waiting.
    pub fn pump_deliveries(&mut self, queues: &mut impl Queues, max: usize) -> bool {
        if !self.is_open() {
            return false;
        }
        let consumers: Vec<(u16, String, Consumer)> = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.closing && ch.deliveries_active)
            .flat_map(|(&id, ch)| ch.consumers.iter().map(move |(tag, c)| (id, tag.clone(), c.clone())))
            .collect();
        let mut sent = 0;
        for (id, tag, consumer) in consumers {
            let batch = queues.poll(&consumer.queue, max.saturating_sub(sent));
            sent += batch.len();
            for fetched in batch {
                let delivery_tag = self.track(id, &consumer.queue, fetched.id, consumer.no_ack, queues);
                let deliver = basic::Deliver {
                    consumer_tag: short(&tag),
                    delivery_tag,
                    redelivered: fetched.redelivered,
                    exchange: short(&fetched.message.exchange),
                    routing_key: short(&fetched.message.routing_key),
                };
                self.send(&method(id, AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver))));
                self.send_content(id, fetched.message.properties, &fetched.message.body);
            }
            if sent >= max {
                return true;
            }
        }
        false
    }

    /// A delivery tag for a message sent on `id`; with `no_ack` it is settled at once.
    fn track(&mut self, id: u16, queue: &str, message: u16, no_ack: bool, queues: &mut impl Queues) -> u64 {
        let Some(ch) = self.channels.get_mut(&id) else { return 0 };
        let tag = ch.next_delivery;
        ch.next_delivery += 1;
        if no_ack {
            queues.settle(queue, message, Settle::Ack);
        } else {
            ch.unacked.insert(tag, (queue.to_string(), message));
        }
        tag
    }

    fn send_get_ok(&mut self, id: u16, queue: &str, no_ack: bool, fetched: Fetched, queues: &mut impl Queues) {
        let delivery_tag = self.track(id, queue, fetched.id, no_ack, queues);
        let ok = basic::GetOk {
            delivery_tag,
            redelivered: fetched.redelivered,
            exchange: short(&fetched.message.exchange),
            routing_key: short(&fetched.message.routing_key),
            message_count: fetched.remaining,
        };
        self.send(&method(id, AMQPClass::Basic(basic::AMQPMethod::GetOk(ok))));
        self.send_content(id, fetched.message.properties, &fetched.message.body);
    }

    /// The content header and the body, split into frames of at most the negotiated frame size.
    fn send_content(&mut self, id: u16, properties: basic::AMQPProperties, body: &[u8]) {
        let header = AMQPContentHeader { class_id: 60, body_size: body.len() as u64, properties };
        self.send(&AMQPFrame::Header(id, header));
        let chunk = self.frame_max.saturating_sub(FRAME_OVERHEAD).max(1);
        for part in body.chunks(chunk) {
            self.send(&AMQPFrame::Body(id, part.to_vec()));
        }
    }
}
