//! The server side of one AMQP 0-9-1 connection, sans-IO: bytes in ([`ServerConnection::handle_input`]), bytes
//! out ([`ServerConnection::poll_transmit`]), events for the driver ([`ServerConnection::poll_event`]), time
//! passed in. No socket, no clock, no tokio.
//!
//! ```text
//! client                         server
//! AMQP 0 0 9 1       ──▶
//!                    ◀──  connection.start (PLAIN AMQPLAIN)
//! start-ok           ──▶  Event::Authenticate → accept_credentials(ok)
//!                    ◀──  connection.tune         (or connection.close 403)
//! tune-ok, open      ──▶
//!                    ◀──  connection.open-ok
//! channel.open, confirm.select, basic.publish + header + body… ──▶ Event::Publish { delivery_tag }
//!                    ◀──  basic.ack / basic.nack  (ServerConnection::confirm, runs coalesced with `multiple`)
//!                    ◀──  channel.flow(false) … channel.flow(true)  (ServerConnection::set_publish_flow)
//! queue.declare, queue.bind, basic.qos, basic.consume  ──▶  Queues (called in frame order)
//!                    ◀──  basic.deliver + header + body…  (ServerConnection::pump_deliveries)
//! basic.ack / basic.reject / basic.nack  ──▶  Queues::settle
//! ```
//!
//! Queue and consumer work goes through the [`Queues`] trait, synchronously, so answers leave in frame order;
//! channel methods live in `channel.rs`.
//!
//! Errors follow the specification's reply codes: 501 frame error, 503 command invalid, 504 channel error,
//! 505 unexpected frame, 403 access refused, 530 not allowed, 540 not implemented (connection level, the
//! connection closes); 404 not found, 405 resource locked, 406 precondition failed, 311 content too large (channel
//! level, only the channel closes).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::channel::Channel;
use super::frames::{self, FrameError, PROTOCOL_HEADER};
use super::queues::Queues;

/// AMQP reply codes used here.
pub mod reply {
    /// 311 content-too-large (channel).
    pub const CONTENT_TOO_LARGE: u16 = 311;
    /// 403 access-refused.
    pub const ACCESS_REFUSED: u16 = 403;
    /// 404 not-found (channel).
    pub const NOT_FOUND: u16 = 404;
    /// 405 resource-locked (channel).
    pub const RESOURCE_LOCKED: u16 = 405;
    /// 406 precondition-failed (channel).
    pub const PRECONDITION_FAILED: u16 = 406;
    /// 320 connection-forced (the gateway shuts down).
    pub const CONNECTION_FORCED: u16 = 320;
    /// 501 frame-error.
    pub const FRAME_ERROR: u16 = 501;
    /// 503 command-invalid.
    pub const COMMAND_INVALID: u16 = 503;
    /// 504 channel-error.
    pub const CHANNEL_ERROR: u16 = 504;
    /// 505 unexpected-frame.
    pub const UNEXPECTED_FRAME: u16 = 505;
    /// 530 not-allowed.
    pub const NOT_ALLOWED: u16 = 530;
    /// 540 not-implemented.
    pub const NOT_IMPLEMENTED: u16 = 540;
    /// 506 resource-error (connection).
    pub const RESOURCE_ERROR: u16 = 506;
}

/// What the server offers in tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame, in bytes.
    pub frame_max: u32,
    /// The highest channel number.
    pub channel_max: u16,
    /// Heartbeat interval in seconds (0: none).
    pub heartbeat: u16,
    /// The largest message body.
    pub max_body: u64,
    /// The deepest nesting of field tables and arrays accepted (`limits.max_table_depth`).
    pub max_table_depth: usize,
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Check these credentials and answer with [`ServerConnection::accept_credentials`].
    Authenticate {
        /// `PLAIN`, `AMQPLAIN`, or `EXTERNAL` (the user name is then the certificate's identity, already proven).
        mechanism: String,
        /// User name.
        username: String,
        /// Password.
        password: String,
        /// The client's `connection_name` property, if it sent one.
        connection_name: Option<String>,
    },
    /// A complete message. With a delivery tag the channel is in confirm mode: answer with
    /// [`ServerConnection::confirm`] once the message is durable (or refused).
    Publish {
        /// The channel.
        channel: u16,
        /// The publisher-confirm sequence number, in confirm mode.
        delivery_tag: Option<u64>,
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The content header's properties.
        properties: Box<basic::AMQPProperties>,
        /// The body.
        body: Vec<u8>,
    },
    /// The connection is over (after close/close-ok, or an error); the driver closes the socket.
    Closed {
        /// The reply code (200 for a normal close).
        code: u16,
        /// Why.
        text: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHeader,
    AwaitStartOk,
    AwaitAuth,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent connection.close and wait for close-ok (other frames are discarded).
    Closing,
    Closed,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct ServerConnection {
    pub(super) limits: Limits,
    state: State,
    pub(super) frame_max: usize,
    heartbeat_ms: u64,
    pub(super) channels: BTreeMap<u16, Channel>,
    pub(super) exchanges: BTreeSet<String>,
    out: Vec<u8>,
    pub(super) events: VecDeque<Event>,
    last_input_ms: u64,
    last_output_ms: u64,
    /// Whether the spool gives credit: while not, publishing channels are told channel.flow(false) and
    /// confirms are held.
    pub(super) publish_flow: bool,
    /// For server-generated consumer tags.
    pub(super) next_consumer: u64,
    /// The subject of a verified TLS client certificate: offered as the SASL mechanism EXTERNAL.
    certificate_identity: Option<String>,
}

pub(super) fn method(channel: u16, class: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(channel, class)
}

/// `s` as a short string, cut to fit ([`short_len`]).
pub(super) fn short(s: &str) -> ShortString {
    ShortString::from(s.get(..short_len(s)).unwrap_or_default())
}

/// The longest an AMQP short string may be, in bytes (its length is one byte on the wire).
pub(super) const SHORT_STRING_MAX: usize = 255;

/// How much of `s` fits a short string: all of it, or its first 255 bytes cut on a character boundary (a device's
/// topic, up to 65,535 bytes, as a routing key must never make a frame with a wrapped length).
fn short_len(s: &str) -> usize {
    let mut end = s.len().min(SHORT_STRING_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

impl ServerConnection {
    /// A connection waiting for the protocol header, at `now_ms`.
    pub fn new(limits: Limits, now_ms: u64) -> ServerConnection {
        let exchanges = ["", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"]
            .into_iter()
            .map(String::from)
            .collect();
        ServerConnection {
            limits,
            state: State::AwaitHeader,
            frame_max: limits.frame_max as usize,
            heartbeat_ms: 0,
            channels: BTreeMap::new(),
            exchanges,
            out: Vec::new(),
            events: VecDeque::new(),
            last_input_ms: now_ms,
            last_output_ms: now_ms,
            publish_flow: true,
            next_consumer: 1,
            certificate_identity: None,
        }
    }

    /// The identity a verified client certificate proved (amqps with mTLS): connection.start then also offers
    /// `EXTERNAL`, which logs the device in as that identity.
    pub fn with_certificate_identity(mut self, identity: Option<String>) -> ServerConnection {
        self.certificate_identity = identity;
        self
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the connection is open for publishing.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    pub(super) fn send(&mut self, frame: &AMQPFrame) {
        frames::encode(frame, &mut self.out);
    }

    /// Moves the bytes to send into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>, now_ms: u64) {
        if !self.out.is_empty() {
            self.last_output_ms = now_ms;
            buf.append(&mut self.out);
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Ends the connection with connection.close (a hard error, or the gateway shutting down with 320).
    pub fn close(&mut self, code: u16, text: &str, class_id: u16, method_id: u16) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        if self.state == State::AwaitHeader {
            self.finish(code, text);
            return;
        }
        let close = connection::Close { reply_code: code, reply_text: short(text), class_id, method_id };
        self.send(&method(0, AMQPClass::Connection(connection::AMQPMethod::Close(close))));
        self.state = State::Closing;
        self.events.push_back(Event::Closed { code, text: text.into() });
    }

    fn finish(&mut self, code: u16, text: &str) {
        if self.state != State::Closing {
            self.events.push_back(Event::Closed { code, text: text.into() });
        }
        self.state = State::Closed;
    }

    /// Consumes whole frames from `input`; returns how many bytes it used. Call again with the rest once more
    /// bytes arrived.
    /// Stops early while the driver owes an answer to [`Event::Authenticate`].
    pub fn handle_input(&mut self, input: &[u8], now_ms: u64, queues: &mut impl Queues) -> usize {
        let mut used = 0;
        while !self.is_closed() && self.state != State::AwaitAuth {
            let rest = input.get(used..).unwrap_or_default();
            if self.state == State::AwaitHeader {
                match frames::decode_protocol_header(rest) {
                    Ok(Some(n)) => {
                        used += n;
                        self.last_input_ms = now_ms;
                        self.send_start();
                        continue;
                    }
                    Ok(None) => return used,
                    Err(_) => {
                        // The specification: answer with the header we speak, then close.
                        self.out.extend_from_slice(PROTOCOL_HEADER);
                        self.finish(reply::FRAME_ERROR, "not AMQP 0-9-1");
                        return used;
                    }
                }
            }
            match frames::decode(rest, self.frame_max, self.limits.max_table_depth) {
                Ok(Some((frame, n))) => {
                    used += n;
                    self.last_input_ms = now_ms;
                    self.handle_frame(frame, queues);
                }
                Ok(None) => return used,
                Err(FrameError::TooDeep { max }) => {
                    let text = format!("field table nested deeper than {max} levels (limits.max_table_depth)");
                    self.close(reply::FRAME_ERROR, &text, 0, 0);
                    self.finish(reply::FRAME_ERROR, "field table too deep");
                    return input.len();
                }
                Err(FrameError::TooLarge { size, max }) => {
                    self.close(reply::FRAME_ERROR, &format!("frame of {size} bytes exceeds frame_max {max}"), 0, 0);
                    self.finish(reply::FRAME_ERROR, "frame too large");
                    return input.len();
                }
                Err(e) => {
                    self.close(reply::FRAME_ERROR, &format!("malformed frame: {e:?}"), 0, 0);
                    self.finish(reply::FRAME_ERROR, "malformed frame");
                    return input.len();
                }
            }
        }
        used
    }

    /// Heartbeats: sends one when we have been quiet for the interval, and closes a connection silent for two.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.heartbeat_ms == 0 || matches!(self.state, State::Closed) {
            return;
        }
        if now_ms.saturating_sub(self.last_input_ms) >= 2 * self.heartbeat_ms {
            self.finish(reply::FRAME_ERROR, "missed heartbeats");
            return;
        }
        if now_ms.saturating_sub(self.last_output_ms) >= self.heartbeat_ms && self.out.is_empty() {
            self.send(&AMQPFrame::Heartbeat);
        }
    }

    /// When [`ServerConnection::handle_timeout`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        (self.heartbeat_ms > 0 && !self.is_closed())
            .then(|| (self.last_output_ms + self.heartbeat_ms).min(self.last_input_ms + 2 * self.heartbeat_ms))
    }

    fn send_start(&mut self) {
        let mut props = FieldTable::default();
        props.insert(short("product"), AMQPValue::LongString(LongString::from("meshgate")));
        props.insert(short("version"), AMQPValue::LongString(LongString::from(env!("CARGO_PKG_VERSION"))));
        let mut caps = FieldTable::default();
        caps.insert(short("publisher_confirms"), AMQPValue::Boolean(true));
        caps.insert(short("basic.nack"), AMQPValue::Boolean(true));
        props.insert(short("capabilities"), AMQPValue::FieldTable(caps));
        let start = connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: LongString::from(if self.certificate_identity.is_some() {
                "PLAIN AMQPLAIN EXTERNAL"
            } else {
                "PLAIN AMQPLAIN"
            }),
            locales: LongString::from("en_US"),
        };
        self.send(&method(0, AMQPClass::Connection(connection::AMQPMethod::Start(start))));
        self.state = State::AwaitStartOk;
    }

    /// The driver's verdict on [`Event::Authenticate`].
    pub fn accept_credentials(&mut self, ok: bool) {
        if self.state != State::AwaitAuth {
            return;
        }
        if !ok {
            self.close(reply::ACCESS_REFUSED, "ACCESS_REFUSED - login refused", 10, 11);
            return;
        }
        let tune = connection::Tune {
            channel_max: self.limits.channel_max,
            frame_max: self.limits.frame_max,
            heartbeat: self.limits.heartbeat,
        };
        self.send(&method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune))));
        self.state = State::AwaitTuneOk;
    }

    fn handle_frame(&mut self, frame: AMQPFrame, queues: &mut impl Queues) {
        if self.state == State::Closing {
            // Only close-ok (or the peer's own close) matters now.
            match frame {
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                    self.finish(reply::FRAME_ERROR, "closed");
                }
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                    self.send(&method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                    ));
                    self.finish(reply::FRAME_ERROR, "closed");
                }
                _ => {}
            }
            return;
        }
        match frame {
            AMQPFrame::Heartbeat => {}
            AMQPFrame::ProtocolHeader(_) | AMQPFrame::InvalidHeartbeat(_) => {
                self.close(reply::UNEXPECTED_FRAME, "unexpected frame", 0, 0);
            }
            AMQPFrame::Method(0, AMQPClass::Connection(m)) => self.on_connection_method(m),
            AMQPFrame::Method(0, class) => {
                let (c, m) = (class.get_amqp_class_id(), class.get_amqp_method_id());
                self.close(reply::COMMAND_INVALID, "channel 0 carries connection methods only", c, m);
            }
            _ if self.state != State::Open => {
                self.close(reply::UNEXPECTED_FRAME, "the connection is not open", 0, 0);
            }
            AMQPFrame::Method(id, class) => self.on_channel_method(id, class, queues),
            AMQPFrame::Header(id, header) => self.on_content_header(id, header.body_size, header.properties),
            AMQPFrame::Body(id, bytes) => self.on_content_body(id, bytes),
        }
    }

    fn on_connection_method(&mut self, m: connection::AMQPMethod) {
        use connection::AMQPMethod as M;
        match (self.state, m) {
            (State::AwaitStartOk, M::StartOk(ok)) => {
                let external = (ok.mechanism.as_str() == "EXTERNAL")
                    .then(|| self.certificate_identity.clone().map(|id| (id, String::new())))
                    .flatten();
                match external.or_else(|| {
                    parse_credentials(ok.mechanism.as_str(), ok.response.as_bytes(), self.limits.max_table_depth)
                }) {
                    Some((username, password)) => {
                        self.state = State::AwaitAuth;
                        let mechanism = ok.mechanism.as_str().to_string();
                        let connection_name = match ok.client_properties.inner().get(&short("connection_name")) {
                            Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
                            _ => None,
                        };
                        let event = Event::Authenticate { mechanism, username, password, connection_name };
                        self.events.push_back(event);
                    }
                    None => {
                        self.close(reply::ACCESS_REFUSED, "ACCESS_REFUSED - unsupported mechanism or response", 10, 11)
                    }
                }
            }
            (State::AwaitTuneOk, M::TuneOk(t)) => {
                if t.frame_max != 0 && t.frame_max < 4096 || t.frame_max > self.limits.frame_max {
                    self.close(reply::NOT_ALLOWED, "frame_max out of range", 10, 31);
                    return;
                }
                if t.frame_max != 0 {
                    self.frame_max = t.frame_max as usize;
                }
                self.heartbeat_ms = u64::from(t.heartbeat) * 1000;
                self.state = State::AwaitOpen;
            }
            (State::AwaitOpen, M::Open(_)) => {
                self.send(&method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {}))));
                self.state = State::Open;
            }
            (_, M::Close(_)) => {
                self.send(&method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}))));
                self.finish(200, "closed by the client");
            }
            (_, other) => {
                let class = AMQPClass::Connection(other);
                let (c, m) = (class.get_amqp_class_id(), class.get_amqp_method_id());
                self.close(reply::COMMAND_INVALID, "unexpected connection method", c, m);
            }
        }
    }
}

/// PLAIN (`\0user\0password`) or AMQPLAIN (a field table of LOGIN and PASSWORD, without its length prefix).
fn parse_credentials(mechanism: &str, response: &[u8], max_table_depth: usize) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|&b| b == 0);
            let _authzid = parts.next()?;
            let user = std::str::from_utf8(parts.next()?).ok()?;
            let pass = std::str::from_utf8(parts.next()?).ok()?;
            parts.next().is_none().then(|| (user.to_string(), pass.to_string()))
        }
        "AMQPLAIN" => {
            let mut table = u32::try_from(response.len()).ok()?.to_be_bytes().to_vec();
            table.extend_from_slice(response);
            super::table_depth::check_table(&table, max_table_depth).ok()?;
            let (_, fields) = amq_protocol::types::parsing::parse_field_table(table.as_slice()).ok()?;
            let text = |k: &str| match fields.inner().get(&short(k)) {
                Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
                _ => None,
            };
            Some((text("LOGIN")?, text("PASSWORD")?))
        }
        _ => None,
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
