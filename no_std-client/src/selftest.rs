//! The client's state-machine tests, written without `std` so the same code runs as `cargo test` on the host and
//! as firmware on a Cortex-M (QEMU's `mps2-an386`, see `no_std-client/firmware/`): a server played with the same
//! codec, scripted exchanges, and hostile bytes. Each scenario returns `Err` with the failed check's place.
//!
//! Enabled by the `selftest` feature; not part of a device's build.

use heapless::Vec;
use meshgate_protocols::mqtt::{
    ConnAck, Connect, Malformed, Packet, Properties, PubResponse, PubResponseKind, Publish, QoS, ReasonCode, SubAck,
    SubscribeFilter, SubscriptionOptions, Version,
};

use crate::client::{Client, Error, Event};

/// A failed check: `file:line: condition`.
pub type Failure = &'static str;

/// One scenario: its name and the function running it.
pub type Scenario = (&'static str, fn() -> Result<(), Failure>);

macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            return Err(concat!(file!(), ":", line!(), ": ", stringify!($cond)));
        }
    };
}

/// Every scenario, for a runner to call in turn.
pub const SCENARIOS: &[Scenario] = &[
    ("publishes_stay_within_the_servers_limits", publishes_stay_within_the_servers_limits),
    ("unacknowledged_publishes_are_resent_with_dup", unacknowledged_publishes_are_resent_with_dup),
    ("received_messages_are_acknowledged", received_messages_are_acknowledged),
    ("keep_alive_pings_and_gives_up", keep_alive_pings_and_gives_up),
    ("refusals_and_server_mistakes_are_errors", refusals_and_server_mistakes_are_errors),
    ("mqtt_3_1_1_publishes_and_resends", mqtt_3_1_1_publishes_and_resends),
    ("hostile_bytes_are_errors_not_panics", hostile_bytes_are_errors_not_panics),
    #[cfg(feature = "qos2")]
    ("qos2_publish_completes_and_resumes_at_pubrel", qos2_publish_completes_and_resumes_at_pubrel),
    #[cfg(feature = "qos2")]
    ("qos2_messages_are_delivered_once", qos2_messages_are_delivered_once),
];

const V5: Version = Version::V5;

type Wire = Vec<u8, 256>;

/// What the server sends, encoded at `version`.
fn server_at(version: Version, packet: &Packet<'_>) -> Wire {
    let mut out = Wire::new();
    let len = packet.encoded_len(version);
    if out.resize(len, 0).is_ok() {
        let n = packet.encode(version, &mut out).unwrap_or(0);
        out.truncate(n);
    }
    out
}

fn server(packet: &Packet<'_>) -> Wire {
    server_at(V5, packet)
}

fn decoded(bytes: &[u8]) -> Option<Packet<'_>> {
    Packet::decode(bytes, V5, usize::MAX).ok().map(|(p, _)| p)
}

fn response(kind: PubResponseKind, packet_id: u16) -> Wire {
    server(&Packet::PubResponse(PubResponse::new(kind, packet_id)))
}

fn is_response(bytes: &[u8], kind: PubResponseKind, packet_id: u16) -> bool {
    matches!(decoded(bytes), Some(Packet::PubResponse(r)) if r.kind == kind && r.packet_id == packet_id)
}

fn connack(session_present: bool, properties: Properties<'static>) -> Wire {
    server(&Packet::ConnAck(ConnAck { session_present, code: ReasonCode::SUCCESS, properties }))
}

fn connect_packet() -> Connect<'static> {
    Connect { version: V5, clean_start: false, keep_alive: 10, client_id: "dev-1", ..Connect::default() }
}

/// A client that connected (session not present) with `properties` in the CONNACK.
fn connected<'a>(arena: &'a mut [u8], properties: Properties<'static>) -> Result<Client<'a, 4>, Failure> {
    let mut c = Client::new(V5, arena);
    let mut out = [0u8; 64];
    let n = c.connect(&connect_packet(), 0, &mut out).map_err(|_| "connect failed")?;
    check!(matches!(decoded(&out[..n]), Some(Packet::Connect(c)) if c.client_id == "dev-1"));
    let ack = connack(false, properties);
    check!(c.handle(&ack, 0) == Ok(Some((ack.len(), Event::Connected { session_present: false }))));
    Ok(c)
}

/// Reconnects `c`; the server answers with `session_present`.
fn reconnect<const N: usize>(c: &mut Client<'_, N>, session_present: bool, now: u64) -> Result<(), Failure> {
    let mut out = [0u8; 64];
    check!(c.connect(&connect_packet(), now, &mut out).is_ok());
    let ack = connack(session_present, Properties::default());
    check!(c.handle(&ack, now) == Ok(Some((ack.len(), Event::Connected { session_present }))));
    Ok(())
}

fn publish_at(topic: &str, qos: QoS) -> Publish<'_> {
    Publish { topic, qos, payload: b"21.5", ..Publish::default() }
}

/// QoS 1 publishes stay within the server's Receive Maximum and Maximum Packet Size; QoS 0 is not kept.
pub fn publishes_stay_within_the_servers_limits() -> Result<(), Failure> {
    let mut arena = [0u8; 256];
    let props = Properties { receive_maximum: Some(2), maximum_packet_size: Some(64), ..Properties::default() };
    let mut c = connected(&mut arena, props)?;
    let mut out = [0u8; 256];
    let first = c.publish(&publish_at("t/a", QoS::AtLeastOnce), 0, &mut out).map(|(_, id)| id);
    let second = c.publish(&publish_at("t/b", QoS::AtLeastOnce), 0, &mut out).map(|(_, id)| id);
    check!((first, second) == (Ok(Some(1)), Ok(Some(2))));
    check!(c.publish(&publish_at("t/c", QoS::AtLeastOnce), 0, &mut out) == Err(Error::InflightFull));
    let ack = response(PubResponseKind::PubAck, 1);
    check!(matches!(c.handle(&ack, 0), Ok(Some((_, Event::Acknowledged { packet_id: 1, .. })))));
    check!(c.publish(&publish_at("t/c", QoS::AtLeastOnce), 0, &mut out).is_ok());
    let big = Publish { topic: "t", payload: &[0; 100], ..Publish::default() };
    check!(c.publish(&big, 0, &mut out) == Err(Error::PacketTooLarge));
    let Ok((n, id)) = c.publish(&publish_at("t/0", QoS::AtMostOnce), 0, &mut out) else {
        return Err("QoS 0 publish failed");
    };
    check!(id.is_none());
    check!(matches!(decoded(&out[..n]), Some(Packet::Publish(p)) if p.packet_id.is_none()));
    check!(c.in_flight() == 2);
    Ok(())
}

/// After a reconnect, the unacknowledged publishes go again, in order, flagged DUP; acknowledged ones do not.
pub fn unacknowledged_publishes_are_resent_with_dup() -> Result<(), Failure> {
    let mut arena = [0u8; 256];
    let mut c = connected(&mut arena, Properties::default())?;
    let mut out = [0u8; 256];
    for topic in ["t/1", "t/2", "t/3"] {
        check!(c.publish(&publish_at(topic, QoS::AtLeastOnce), 0, &mut out).is_ok());
    }
    check!(c.handle(&response(PubResponseKind::PubAck, 2), 0).is_ok());
    c.connection_lost();
    check!(c.publish(&publish_at("t/4", QoS::AtLeastOnce), 0, &mut out) == Err(Error::NotConnected));
    reconnect(&mut c, true, 100)?;
    let mut resent: Vec<(Option<u16>, bool, u8), 4> = Vec::new();
    loop {
        let n = c.poll_transmit(100, &mut out).map_err(|_| "poll_transmit failed")?;
        if n == 0 {
            break;
        }
        let Some(Packet::Publish(p)) = decoded(&out[..n]) else { return Err("resent something else") };
        let last = p.topic.as_bytes().last().copied().unwrap_or(0);
        check!(resent.push((p.packet_id, p.dup, last)).is_ok());
    }
    check!(resent == [(Some(1), true, b'1'), (Some(3), true, b'3')]);
    check!(c.in_flight() == 2);
    Ok(())
}

/// SUBACK is reported; a QoS 1 message is delivered and its PUBACK goes out next.
pub fn received_messages_are_acknowledged() -> Result<(), Failure> {
    let mut arena = [0u8; 64];
    let mut c = connected(&mut arena, Properties::default())?;
    let mut out = [0u8; 128];
    let filters = [SubscribeFilter {
        filter: "devices/dev-1/commands/#",
        options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() },
    }];
    let n = c.subscribe(7, &filters, 0, &mut out).map_err(|_| "subscribe failed")?;
    check!(matches!(decoded(&out[..n]), Some(Packet::Subscribe(s)) if s.packet_id == 7));
    let suback = server(&Packet::SubAck(SubAck { packet_id: 7, properties: Properties::default(), codes: &[1] }));
    check!(matches!(c.handle(&suback, 0), Ok(Some((_, Event::Subscribed { packet_id: 7, codes: [1] })))));
    let command = Publish {
        topic: "devices/dev-1/commands/blink",
        qos: QoS::AtLeastOnce,
        packet_id: Some(42),
        payload: b"3",
        ..Publish::default()
    };
    let wire = server(&Packet::Publish(command));
    check!(matches!(c.handle(&wire, 0), Ok(Some((_, Event::Message(p))))
        if p.topic == "devices/dev-1/commands/blink" && p.payload == b"3"));
    let n = c.poll_transmit(0, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(is_response(&out[..n], PubResponseKind::PubAck, 42));
    check!(c.poll_transmit(0, &mut out) == Ok(0));
    Ok(())
}

/// PINGREQ when the keep-alive is due; an unanswered one ends the connection.
pub fn keep_alive_pings_and_gives_up() -> Result<(), Failure> {
    let mut arena = [0u8; 64];
    let mut c = connected(&mut arena, Properties::default())?;
    let mut out = [0u8; 16];
    check!(c.poll_timeout() == Some(10_000));
    check!(c.poll_transmit(5_000, &mut out) == Ok(0));
    let n = c.poll_transmit(10_000, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(decoded(&out[..n]) == Some(Packet::PingReq));
    check!(c.handle(&server(&Packet::PingResp), 10_500).is_ok());
    check!(c.handle_timeout(20_000) == Ok(()));
    let n = c.poll_transmit(20_000, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(decoded(&out[..n]) == Some(Packet::PingReq));
    check!(c.handle_timeout(30_000) == Err(Error::KeepAliveTimeout));
    check!(!c.is_connected());
    Ok(())
}

/// A refused CONNACK is reported with its reason; a partial packet waits for more bytes; a packet only clients
/// send, or a malformed one, ends the connection with a DISCONNECT saying why.
pub fn refusals_and_server_mistakes_are_errors() -> Result<(), Failure> {
    let mut arena = [0u8; 64];
    let mut c: Client<'_, 4> = Client::new(V5, &mut arena);
    let mut out = [0u8; 64];
    check!(c.connect(&Connect { version: V5, client_id: "x", ..Connect::default() }, 0, &mut out).is_ok());
    let refused = server(&Packet::ConnAck(ConnAck { code: ReasonCode::NOT_AUTHORIZED, ..ConnAck::default() }));
    check!(c.handle(&refused, 0) == Err(Error::Refused(ReasonCode::NOT_AUTHORIZED)));
    check!(c.handle(&[0x20], 0) == Ok(None));
    let connect = server(&Packet::Connect(Connect::default()));
    check!(c.handle(&connect, 0) == Err(Error::Malformed(Malformed::ClientOnlyPacket(1))));
    // A connected client reading a malformed packet ends the connection, telling the server why.
    let mut arena = [0u8; 64];
    let mut c = connected(&mut arena, Properties::default())?;
    check!(c.handle(&[0x30, 0x02, 0x00, 0x05], 0) == Err(Error::Malformed(Malformed::Truncated)));
    check!(!c.is_connected());
    let n = c.poll_transmit(0, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(matches!(decoded(&out[..n]), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::MALFORMED_PACKET));
    check!(c.poll_transmit(0, &mut out) == Ok(0));
    check!(c.handle(&server(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubAck, 1))), 0).is_ok());
    Ok(())
}

/// The same flow at protocol level 4 (MQTT 3.1.1): CONNECT, a QoS 1 publish, and its resend after a reconnect.
pub fn mqtt_3_1_1_publishes_and_resends() -> Result<(), Failure> {
    const V311: Version = Version::V311;
    let mut arena = [0u8; 128];
    let mut c: Client<'_, 2> = Client::new(V311, &mut arena);
    let mut out = [0u8; 64];
    let connect = Connect { version: V311, keep_alive: 30, client_id: "dev-3", ..Connect::default() };
    let n = c.connect(&connect, 0, &mut out).map_err(|_| "connect failed")?;
    check!(matches!(Packet::decode(&out[..n], V311, 64), Ok((Packet::Connect(p), _)) if p.version == V311));
    let ack = server_at(V311, &Packet::ConnAck(ConnAck::default()));
    check!(c.handle(&ack, 0) == Ok(Some((ack.len(), Event::Connected { session_present: false }))));
    check!(c.publish(&publish_at("t/1", QoS::AtLeastOnce), 0, &mut out).is_ok());
    c.connection_lost();
    check!(c.connect(&connect, 5, &mut out).is_ok());
    let resumed = server_at(V311, &Packet::ConnAck(ConnAck { session_present: true, ..ConnAck::default() }));
    check!(c.handle(&resumed, 5).is_ok());
    let n = c.poll_transmit(5, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(
        matches!(Packet::decode(&out[..n], V311, 64), Ok((Packet::Publish(p), _)) if p.dup && p.packet_id == Some(1))
    );
    let puback = server_at(V311, &Packet::PubResponse(PubResponse::new(PubResponseKind::PubAck, 1)));
    check!(matches!(c.handle(&puback, 5), Ok(Some((_, Event::Acknowledged { packet_id: 1, .. })))));
    check!(c.in_flight() == 0);
    Ok(())
}

/// Every single-bit corruption and every truncation of a valid server conversation is read as events or an
/// error: no panic, no claim of more bytes than given. (Random bytes: the property test and the fuzz target.)
pub fn hostile_bytes_are_errors_not_panics() -> Result<(), Failure> {
    let mut conversation: Vec<u8, 512> = Vec::new();
    let command = Publish {
        topic: "devices/dev-1/commands/x",
        qos: QoS::AtLeastOnce,
        packet_id: Some(9),
        payload: b"go",
        properties: Properties { content_type: Some("text/plain"), ..Properties::default() },
        ..Publish::default()
    };
    for packet in [
        server(&Packet::Publish(command)),
        response(PubResponseKind::PubAck, 1),
        server(&Packet::SubAck(SubAck { packet_id: 3, properties: Properties::default(), codes: &[0, 1, 0x80] })),
        server(&Packet::PingResp),
    ] {
        check!(conversation.extend_from_slice(&packet).is_ok());
    }
    let mut corrupted = conversation.clone();
    for i in 0..conversation.len() * 8 {
        corrupted.clone_from(&conversation);
        if let Some(b) = corrupted.get_mut(i / 8) {
            *b ^= 1 << (i % 8);
        }
        feed(&corrupted)?;
        feed(conversation.get(..i / 8).unwrap_or_default())?;
    }
    Ok(())
}

/// Feeds `bytes` to a connected client with one publish in flight, packet by packet.
fn feed(bytes: &[u8]) -> Result<(), Failure> {
    let mut arena = [0u8; 128];
    let mut c = connected(&mut arena, Properties::default())?;
    let mut out = [0u8; 128];
    let _ = c.publish(&publish_at("t", QoS::AtLeastOnce), 0, &mut out);
    let mut rest = bytes;
    while let Ok(Some((used, _))) = c.handle(rest, 0) {
        check!(used > 0 && used <= rest.len());
        rest = rest.get(used..).unwrap_or_default();
        while let Ok(n) = c.poll_transmit(0, &mut out) {
            if n == 0 {
                break;
            }
        }
    }
    Ok(())
}

/// QoS 2 out: PUBREC is answered with PUBREL, PUBCOMP completes; after a reconnect an exchange that reached
/// PUBREC resumes with PUBREL, one that did not with the PUBLISH (DUP).
#[cfg(feature = "qos2")]
pub fn qos2_publish_completes_and_resumes_at_pubrel() -> Result<(), Failure> {
    let mut arena = [0u8; 256];
    let mut c = connected(&mut arena, Properties::default())?;
    let mut out = [0u8; 64];
    for topic in ["q/1", "q/2", "q/3"] {
        check!(c.publish(&publish_at(topic, QoS::ExactlyOnce), 0, &mut out).is_ok());
    }
    // 1 completes; 2 reaches PUBREC; 3 gets nothing.
    check!(c.handle(&response(PubResponseKind::PubRec, 1), 0) == Ok(Some((4, Event::Nothing))));
    let n = c.poll_transmit(0, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(is_response(&out[..n], PubResponseKind::PubRel, 1));
    check!(matches!(
        c.handle(&response(PubResponseKind::PubComp, 1), 0),
        Ok(Some((_, Event::Acknowledged { packet_id: 1, .. })))
    ));
    check!(c.handle(&response(PubResponseKind::PubRec, 2), 0).is_ok());
    c.connection_lost();
    reconnect(&mut c, true, 50)?;
    let n = c.poll_transmit(50, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(is_response(&out[..n], PubResponseKind::PubRel, 2));
    let n = c.poll_transmit(50, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(matches!(decoded(&out[..n]), Some(Packet::Publish(p)) if p.dup && p.packet_id == Some(3)));
    check!(c.poll_transmit(50, &mut out) == Ok(0));
    check!(c.in_flight() == 2);
    // A refusing PUBREC ends the exchange as PUBCOMP would.
    let refused = server(&Packet::PubResponse(PubResponse {
        reason: ReasonCode::QUOTA_EXCEEDED,
        ..PubResponse::new(PubResponseKind::PubRec, 3)
    }));
    check!(matches!(c.handle(&refused, 50), Ok(Some((_, Event::Acknowledged { packet_id: 3, reason })))
        if reason == ReasonCode::QUOTA_EXCEEDED));
    check!(c.handle(&response(PubResponseKind::PubComp, 2), 50).is_ok());
    check!(c.in_flight() == 0);
    Ok(())
}

/// QoS 2 in: delivered at the first PUBLISH, answered PUBREC; a resent PUBLISH before PUBREL is answered but not
/// delivered again; PUBREL gets PUBCOMP, an unknown one with "Packet Identifier not found".
#[cfg(feature = "qos2")]
pub fn qos2_messages_are_delivered_once() -> Result<(), Failure> {
    let mut arena = [0u8; 64];
    let mut c = connected(&mut arena, Properties::default())?;
    let mut out = [0u8; 64];
    let message = Publish {
        topic: "devices/dev-1/commands/open",
        qos: QoS::ExactlyOnce,
        packet_id: Some(5),
        payload: b"1",
        ..Publish::default()
    };
    check!(matches!(c.handle(&server(&Packet::Publish(message)), 0), Ok(Some((_, Event::Message(_))))));
    let n = c.poll_transmit(0, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(is_response(&out[..n], PubResponseKind::PubRec, 5));
    let again = server(&Packet::Publish(Publish { dup: true, ..message }));
    check!(c.handle(&again, 0) == Ok(Some((again.len(), Event::Nothing))));
    let n = c.poll_transmit(0, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(is_response(&out[..n], PubResponseKind::PubRec, 5));
    check!(c.handle(&response(PubResponseKind::PubRel, 5), 0).is_ok());
    let n = c.poll_transmit(0, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(matches!(decoded(&out[..n]), Some(Packet::PubResponse(r))
        if r.kind == PubResponseKind::PubComp && r.packet_id == 5 && r.reason == ReasonCode::SUCCESS));
    check!(c.handle(&response(PubResponseKind::PubRel, 5), 0).is_ok());
    let n = c.poll_transmit(0, &mut out).map_err(|_| "poll_transmit failed")?;
    check!(matches!(decoded(&out[..n]), Some(Packet::PubResponse(r))
        if r.kind == PubResponseKind::PubComp && r.reason == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND));
    // After the release, the same id is a new message.
    check!(matches!(c.handle(&server(&Packet::Publish(message)), 0), Ok(Some((_, Event::Message(_))))));
    Ok(())
}
