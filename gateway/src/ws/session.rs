//! The `cloudevents.json` session, sans-IO: WebSocket messages and time in, events and messages out. The driver
//! ([`super::events`]) owns the socket, the clock, the broker and the pipeline.
//!
//! The session keeps the protocol's rules: what a text message asks for ([`Request`]); answers (`ack`, `nack`) in
//! the order the events came, whatever order the driver completes them in; `max_invalid` refusals in a row close
//! with 1007; binary messages close with 1003, oversized ones 1009, text that is not UTF-8 1007, a WebSocket
//! protocol error 1002; a ping every `ping_interval_secs` of silence, and 1001 after `idle_timeout_secs` without
//! hearing anything.

use std::collections::VecDeque;

use meshgate_protocols::cloudevents::CloudEvent;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::request::{Refusal, Request};
use crate::limits::LimitsConfig;
use crate::metrics::RejectReason;

/// The limits of a session (`[listeners.ws]`, `[limits]`).
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Refused messages in a row before the connection is closed (at least 1).
    pub max_invalid: u32,
    /// Milliseconds of silence before a ping.
    pub ping_every_ms: u64,
    /// Milliseconds without hearing anything before the connection is closed.
    pub idle_ms: u64,
    /// Topic depth and the other limits a message is parsed against.
    pub limits: LimitsConfig,
}

/// Names an event's answer: handed out with [`Event::Publish`], given back with [`EventsSession::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u64);

/// Something the driver acts on.
#[derive(Debug)]
pub enum Event {
    /// A valid CloudEvent to publish on `topic` (its subject; empty without one): complete its token once it is
    /// durable or refused.
    Publish {
        /// The answer owed.
        token: Token,
        /// The event.
        event: Box<CloudEvent>,
        /// Its subject as a topic.
        topic: String,
    },
    /// Subscribe to an MQTT filter; answer with [`EventsSession::subscribed`].
    Subscribe(String),
    /// Unsubscribe; answer with [`EventsSession::unsubscribed`].
    Unsubscribe(String),
    /// A message was refused (the device has its `nack`); count the reason, if it is one.
    Refused(Option<RejectReason>),
    /// The session is over: send what [`EventsSession::poll_transmit`] holds (a close frame) and stop.
    Closed(Close),
}

/// How the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The close code sent (`None`: the peer closed or went away, nothing to send).
    pub code: Option<CloseCode>,
    /// For the log and the close frame.
    pub why: &'static str,
    /// The refusal to count, when the session refused the device for it.
    pub reject: Option<RejectReason>,
}

/// A message the driver sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A text message.
    Text(String),
    /// A ping.
    Ping,
    /// The close frame, last.
    Close(CloseCode, &'static str),
}

/// What the driver read from the socket.
#[derive(Debug, Clone, Copy)]
pub enum Incoming<'a> {
    /// A text message.
    Text(&'a [u8]),
    /// A binary message.
    Binary,
    /// A ping, pong or other frame: only heard.
    Control,
    /// The peer closed, or the stream ended.
    Gone,
    /// A message over the size limit.
    TooLarge,
    /// Text that is not UTF-8.
    NotUtf8,
    /// A WebSocket protocol error.
    ProtocolError,
}

/// The outcome of an event for [`EventsSession::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Durable: `ack`.
    Stored,
    /// Refused: `nack` with this reason.
    Refused(String),
}

#[derive(Debug)]
struct Owed {
    token: u64,
    id: String,
    decided: Option<Verdict>,
}

/// One `cloudevents.json` connection, sans-IO (see the module doc).
#[derive(Debug)]
pub struct EventsSession {
    config: EventsConfig,
    owed: VecDeque<Owed>,
    next_token: u64,
    events: VecDeque<Event>,
    out: Vec<Outgoing>,
    last_heard: u64,
    next_ping: u64,
    invalid_in_a_row: u32,
    closed: bool,
}

impl EventsSession {
    /// A session opened at `now` (milliseconds on the driver's clock).
    pub fn new(config: EventsConfig, now: u64) -> EventsSession {
        let next_ping = now.saturating_add(config.ping_every_ms);
        EventsSession {
            config,
            owed: VecDeque::new(),
            next_token: 0,
            events: VecDeque::new(),
            out: Vec::new(),
            last_heard: now,
            next_ping,
            invalid_in_a_row: 0,
            closed: false,
        }
    }

    /// Events whose answers are owed; a driver reads no more while this reaches `max_unacked`.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Takes what the driver read at `now`.
    pub fn handle_input(&mut self, input: Incoming<'_>, now: u64) {
        if self.closed {
            return;
        }
        self.last_heard = now;
        self.next_ping = now.saturating_add(self.config.ping_every_ms);
        let reject = match input {
            Incoming::Text(text) => return self.on_text(text),
            Incoming::Control => return,
            Incoming::Gone => return self.end(Close { code: None, why: "gone", reject: None }),
            Incoming::Binary => {
                (CloseCode::Unsupported, "cloudevents.json carries text messages", RejectReason::ProtocolViolation)
            }
            Incoming::TooLarge => (CloseCode::Size, "message too large", RejectReason::TooLarge),
            Incoming::NotUtf8 => (CloseCode::Invalid, "text message is not UTF-8", RejectReason::Malformed),
            Incoming::ProtocolError => (CloseCode::Protocol, "WebSocket protocol error", RejectReason::Malformed),
        };
        let (code, why, reason) = reject;
        self.close_with(code, why, Some(reason));
    }

    fn on_text(&mut self, text: &[u8]) {
        let event = match Request::parse(text, &self.config.limits) {
            Request::Subscribe(filter) => {
                self.invalid_in_a_row = 0;
                return self.events.push_back(Event::Subscribe(filter));
            }
            Request::Unsubscribe(filter) => {
                self.invalid_in_a_row = 0;
                return self.events.push_back(Event::Unsubscribe(filter));
            }
            Request::Refused { id, reason, kind } => {
                let reject = match kind {
                    Refusal::NotJson => None,
                    Refusal::InvalidEvent => Some(RejectReason::InvalidCloudEvent),
                    Refusal::TooDeep => Some(RejectReason::LimitExceeded),
                };
                self.events.push_back(Event::Refused(reject));
                self.out.push(nack(id.as_deref(), &reason));
                self.invalid_in_a_row += 1;
                if self.invalid_in_a_row >= self.config.max_invalid.max(1) {
                    self.close_with(CloseCode::Invalid, "too many invalid events", None);
                }
                return;
            }
            Request::Publish(event) => event,
        };
        self.invalid_in_a_row = 0;
        let token = self.next_token;
        self.next_token += 1;
        self.owed.push_back(Owed { token, id: event.id.clone(), decided: None });
        // ACL publish rules judge the subject; an event without one is judged as the empty topic.
        let topic = event.subject.clone().unwrap_or_default();
        self.events.push_back(Event::Publish { token: Token(token), event, topic });
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The outcome of the event `token` names: its `ack` or `nack` goes out once every answer before it has.
    pub fn complete(&mut self, token: Token, verdict: Verdict) {
        if let Some(owed) = self.owed.iter_mut().find(|o| o.token == token.0) {
            owed.decided = Some(verdict);
        }
        while self.owed.front().is_some_and(|o| o.decided.is_some()) {
            let Some(Owed { id, decided, .. }) = self.owed.pop_front() else { break };
            if self.closed {
                continue;
            }
            self.out.push(match decided {
                Some(Verdict::Refused(reason)) => nack(Some(&id), &reason),
                _ => Outgoing::Text(json!({ "ack": id }).to_string()),
            });
        }
    }

    /// The answer to `{"subscribe":FILTER}`.
    pub fn subscribed(&mut self, filter: &str, granted: bool) {
        if !self.closed {
            self.out.push(Outgoing::Text(json!({ "subscribed": filter, "granted": granted }).to_string()));
        }
    }

    /// The answer to `{"unsubscribe":FILTER}`.
    pub fn unsubscribed(&mut self, filter: &str) {
        if !self.closed {
            self.out.push(Outgoing::Text(json!({ "unsubscribed": filter }).to_string()));
        }
    }

    /// A message on one of the device's subscriptions, as the event text it is sent as.
    pub fn deliver(&mut self, event_text: String) {
        if !self.closed {
            self.out.push(Outgoing::Text(event_text));
        }
    }

    /// Ends the session for the driver's reason (takeover, shutdown).
    pub fn close(&mut self, code: CloseCode, why: &'static str) {
        self.close_with(code, why, None);
    }

    /// When [`EventsSession::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<u64> {
        (!self.closed).then_some(self.next_ping)
    }

    /// Time passed to `now`: a ping after silence, or the end of an idle connection.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.closed || now < self.next_ping {
            return;
        }
        if now.saturating_sub(self.last_heard) >= self.config.idle_ms {
            return self.close_with(CloseCode::Away, "idle", Some(RejectReason::KeepAliveTimeout));
        }
        self.out.push(Outgoing::Ping);
        self.next_ping = now.saturating_add(self.config.ping_every_ms);
    }

    /// Moves the messages to send into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut Vec<Outgoing>) {
        buf.append(&mut self.out);
    }

    fn close_with(&mut self, code: CloseCode, why: &'static str, reject: Option<RejectReason>) {
        if !self.closed {
            self.out.push(Outgoing::Close(code, why));
            self.end(Close { code: Some(code), why, reject });
        }
    }

    fn end(&mut self, close: Close) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(Event::Closed(close));
        }
    }
}

/// A `nack` for an event (`id` null when unreadable).
fn nack(id: Option<&str>, reason: &str) -> Outgoing {
    Outgoing::Text(json!({ "nack": id, "reason": reason }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(now: u64) -> EventsSession {
        let config =
            EventsConfig { max_invalid: 2, ping_every_ms: 30_000, idle_ms: 90_000, limits: LimitsConfig::default() };
        EventsSession::new(config, now)
    }

    fn event(id: &str) -> String {
        format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t","subject":"a/b"}}"#)
    }

    fn texts(s: &mut EventsSession) -> Vec<String> {
        let mut out = Vec::new();
        s.poll_transmit(&mut out);
        out.into_iter()
            .map(|o| match o {
                Outgoing::Text(t) => t,
                Outgoing::Ping => "ping".into(),
                Outgoing::Close(code, why) => format!("close {} {why}", u16::from(code)),
            })
            .collect()
    }

    fn publish(s: &mut EventsSession, id: &str) -> Token {
        s.handle_input(Incoming::Text(event(id).as_bytes()), 0);
        match s.poll_event() {
            Some(Event::Publish { token, topic, .. }) if topic == "a/b" => token,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_leave_in_the_order_the_events_came() {
        let mut s = session(0);
        let (a, b, c) = (publish(&mut s, "1"), publish(&mut s, "2"), publish(&mut s, "3"));
        s.complete(c, Verdict::Stored);
        s.complete(b, Verdict::Refused("not authorized".into()));
        assert!(texts(&mut s).is_empty());
        s.complete(a, Verdict::Stored);
        assert_eq!(texts(&mut s), [r#"{"ack":"1"}"#, r#"{"nack":"2","reason":"not authorized"}"#, r#"{"ack":"3"}"#]);
        assert_eq!(s.owed(), 0);
    }

    #[test]
    fn invalid_messages_in_a_row_close_with_1007_and_a_valid_one_resets_the_count() {
        let mut s = session(0);
        s.handle_input(Incoming::Text(b"{"), 0);
        publish_after_refusal(&mut s);
        s.handle_input(Incoming::Text(b"{"), 0);
        s.handle_input(Incoming::Text(br#"{"specversion":"0.3","id":"x"}"#), 0);
        let mut closed = None;
        while let Some(e) = s.poll_event() {
            if let Event::Closed(c) = e {
                closed = Some(c);
            }
        }
        assert_eq!(closed.and_then(|c| c.code), Some(CloseCode::Invalid));
        assert_eq!(texts(&mut s).last().map(String::as_str), Some("close 1007 too many invalid events"));
    }

    fn publish_after_refusal(s: &mut EventsSession) {
        assert!(matches!(s.poll_event(), Some(Event::Refused(None))));
        s.handle_input(Incoming::Text(event("ok").as_bytes()), 0);
        assert!(matches!(s.poll_event(), Some(Event::Publish { .. })));
    }

    #[test]
    fn silence_brings_a_ping_and_then_the_end() {
        let mut s = session(0);
        assert_eq!(s.poll_timeout(), Some(30_000));
        s.handle_timeout(30_000);
        assert_eq!(texts(&mut s), ["ping"]);
        assert_eq!(s.poll_timeout(), Some(60_000), "one ping per interval, not one per wake-up");
        s.handle_input(Incoming::Control, 50_000);
        s.handle_timeout(80_000);
        assert_eq!(texts(&mut s), ["ping"]);
        s.handle_timeout(110_000);
        s.handle_timeout(140_000);
        assert_eq!(texts(&mut s), ["ping", "close 1001 idle"], "90 s after it was last heard");
        assert!(s.is_closed());
    }

    #[test]
    fn a_binary_message_closes_with_1003_and_nothing_follows_the_close() {
        let mut s = session(0);
        let token = publish(&mut s, "1");
        s.handle_input(Incoming::Binary, 0);
        s.complete(token, Verdict::Stored);
        s.deliver("late".into());
        assert_eq!(texts(&mut s), ["close 1003 cloudevents.json carries text messages"]);
        assert!(matches!(
            s.poll_event(),
            Some(Event::Closed(Close { reject: Some(RejectReason::ProtocolViolation), .. }))
        ));
    }
}
