//! The server connection driven frame by frame, as lapin would, without sockets.

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{channel, confirm, exchange, queue};

use super::*;
use crate::amqp::queues::{MemoryQueues, OutgoingMessage};

const LIMITS: Limits =
    Limits { frame_max: 131_072, channel_max: 16, heartbeat: 10, max_body: 1024, max_table_depth: 32 };

fn frames_of(bytes: &[u8]) -> Vec<AMQPFrame> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok(Some((f, n))) = frames::decode(rest, 0, 32) {
        out.push(f);
        rest = &rest[n..];
    }
    out
}

fn feed(c: &mut ServerConnection, frames_in: &[AMQPFrame]) -> Vec<AMQPFrame> {
    feed_with(c, &mut MemoryQueues::default(), frames_in)
}

fn feed_with(c: &mut ServerConnection, q: &mut MemoryQueues, frames_in: &[AMQPFrame]) -> Vec<AMQPFrame> {
    let mut wire = Vec::new();
    for f in frames_in {
        frames::encode(f, &mut wire);
    }
    assert_eq!(c.handle_input(&wire, 0, q), wire.len());
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 0);
    frames_of(&out)
}

fn conn_method(m: connection::AMQPMethod) -> AMQPFrame {
    method(0, AMQPClass::Connection(m))
}

/// Header, start-ok (PLAIN u/p), tune-ok, open; returns the connection, open.
fn open() -> ServerConnection {
    let mut c = ServerConnection::new(LIMITS, 0);
    c.handle_input(PROTOCOL_HEADER, 0, &mut MemoryQueues::default());
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 0);
    assert!(matches!(
        frames_of(&out)[..],
        [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_)))]
    ));
    let start_ok = connection::StartOk {
        client_properties: FieldTable::default(),
        mechanism: short("PLAIN"),
        response: LongString::from("\0dev\0secret"),
        locale: short("en_US"),
    };
    assert!(feed(&mut c, &[conn_method(connection::AMQPMethod::StartOk(start_ok))]).is_empty());
    assert_eq!(
        c.poll_event(),
        Some(Event::Authenticate {
            mechanism: "PLAIN".into(),
            username: "dev".into(),
            password: "secret".into(),
            connection_name: None
        })
    );
    c.accept_credentials(true);
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 0);
    assert!(matches!(
        frames_of(&out)[..],
        [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))]
    ));
    let tune_ok = connection::TuneOk { channel_max: 16, frame_max: 131_072, heartbeat: 10 };
    let open = connection::Open { virtual_host: short("/") };
    let out = feed(
        &mut c,
        &[conn_method(connection::AMQPMethod::TuneOk(tune_ok)), conn_method(connection::AMQPMethod::Open(open))],
    );
    assert!(matches!(out[..], [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))]));
    assert!(c.is_open());
    c
}

fn publish_frames(ch: u16, exchange: &str, body: &[&[u8]]) -> Vec<AMQPFrame> {
    let size: usize = body.iter().map(|b| b.len()).sum();
    let publish =
        basic::Publish { exchange: short(exchange), routing_key: short("rk"), mandatory: false, immediate: false };
    let mut v = vec![
        method(ch, AMQPClass::Basic(basic::AMQPMethod::Publish(publish))),
        AMQPFrame::Header(
            ch,
            AMQPContentHeader { class_id: 60, body_size: size as u64, properties: basic::AMQPProperties::default() },
        ),
    ];
    v.extend(body.iter().map(|b| AMQPFrame::Body(ch, b.to_vec())));
    v
}

#[test]
fn a_publish_in_confirm_mode_is_one_event_and_acks_coalesce_in_order() {
    let mut c = open();
    let out = feed(
        &mut c,
        &[
            method(1, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))),
            method(1, AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select { nowait: false }))),
        ],
    );
    assert_eq!(out.len(), 2, "open-ok, select-ok");
    let mut frames_in = Vec::new();
    for n in 0..3u8 {
        frames_in.extend(publish_frames(1, "amq.topic", &[&[n], b"-split-", &[n]]));
    }
    assert!(feed(&mut c, &frames_in).is_empty());
    for tag in 1..=3u64 {
        match c.poll_event() {
            Some(Event::Publish { channel: 1, delivery_tag: Some(t), exchange, body, .. }) => {
                assert_eq!((t, exchange.as_str(), body.len()), (tag, "amq.topic", 9));
            }
            other => panic!("{other:?}"),
        }
    }
    // Tag 2 settles first: nothing may go out before tag 1.
    c.confirm(1, 2, true);
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 0);
    assert!(out.is_empty());
    c.confirm(1, 1, true);
    c.confirm(1, 3, false);
    c.poll_transmit(&mut out, 0);
    let acks: Vec<_> = frames_of(&out)
        .into_iter()
        .map(|f| match f {
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => (a.delivery_tag, a.multiple, true),
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => (n.delivery_tag, n.multiple, false),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(acks, [(2, true, true), (3, false, false)], "one multiple ack for 1-2, then the nack");
}

#[test]
fn errors_get_their_reply_codes() {
    // A method on a channel that is not open: connection.close 504.
    let mut c = open();
    let out =
        feed(&mut c, &[method(3, AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select { nowait: false })))]);
    assert!(
        matches!(&out[..], [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(cl)))] if cl.reply_code == reply::CHANNEL_ERROR)
    );

    // Passive declare of a missing exchange: channel.close 404, the connection stays open.
    let mut c = open();
    feed(&mut c, &[method(1, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})))]);
    let declare = exchange::Declare {
        exchange: short("nope"),
        kind: short("topic"),
        passive: true,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    let out = feed(&mut c, &[method(1, AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare)))]);
    assert!(
        matches!(&out[..], [AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Close(cl)))] if cl.reply_code == reply::NOT_FOUND)
    );
    assert!(c.is_open());

    // A body without a header: 505.
    let mut c = open();
    feed(&mut c, &[method(1, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})))]);
    let out = feed(&mut c, &[AMQPFrame::Body(1, vec![1])]);
    assert!(
        matches!(&out[..], [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(cl)))] if cl.reply_code == reply::UNEXPECTED_FRAME)
    );

    // A body over the limit: channel.close 311.
    let mut c = open();
    feed(&mut c, &[method(1, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})))]);
    let big = vec![0u8; 2048];
    let out = feed(&mut c, &publish_frames(1, "", &[&big])[..2]);
    assert!(
        matches!(&out[..], [AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Close(cl)))] if cl.reply_code == reply::CONTENT_TOO_LARGE)
    );
}

#[test]
fn wrong_credentials_a_foreign_header_and_oversized_frames_end_the_connection() {
    let mut c = ServerConnection::new(LIMITS, 0);
    let mut out = Vec::new();
    c.handle_input(b"AMQP\x00\x00\x08\x00", 0, &mut MemoryQueues::default());
    c.poll_transmit(&mut out, 0);
    assert_eq!(out, PROTOCOL_HEADER, "the header we speak, then the close");
    assert!(c.is_closed());

    let mut c = ServerConnection::new(LIMITS, 0);
    c.handle_input(PROTOCOL_HEADER, 0, &mut MemoryQueues::default());
    let start_ok = connection::StartOk {
        client_properties: FieldTable::default(),
        mechanism: short("PLAIN"),
        response: LongString::from("\0dev\0wrong"),
        locale: short("en_US"),
    };
    feed(&mut c, &[conn_method(connection::AMQPMethod::StartOk(start_ok))]);
    assert!(matches!(c.poll_event(), Some(Event::Authenticate { .. })));
    c.accept_credentials(false);
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 0);
    assert!(
        matches!(&frames_of(&out)[..], [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(cl)))] if cl.reply_code == reply::ACCESS_REFUSED)
    );

    let mut c = open();
    let mut huge = vec![3u8, 0, 1];
    huge.extend_from_slice(&(1u32 << 20).to_be_bytes());
    c.handle_input(&huge, 0, &mut MemoryQueues::default());
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 0);
    assert!(
        matches!(&frames_of(&out)[..], [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(cl)))] if cl.reply_code == reply::FRAME_ERROR)
    );
    assert!(c.is_closed());
}

#[test]
fn amqplain_credentials_are_read_from_their_table() {
    use amq_protocol::auth::{Credentials, SASLMechanism};
    let response = Credentials::new("dev".into(), "secret".into()).sasl_auth_string(SASLMechanism::AMQPlain);
    assert_eq!(parse_credentials("AMQPLAIN", response.as_bytes(), 32), Some(("dev".into(), "secret".into())));
    assert_eq!(parse_credentials("PLAIN", b"\0a\0b", 32), Some(("a".into(), "b".into())));
    assert_eq!(parse_credentials("PLAIN", b"garbage", 32), None);
    assert_eq!(parse_credentials("EXTERNAL", b"", 32), None);
}

#[test]
fn heartbeats_go_out_when_quiet_and_silence_closes() {
    let mut c = open();
    c.handle_timeout(10_000);
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 10_000);
    assert_eq!(frames_of(&out), [AMQPFrame::Heartbeat]);
    c.handle_timeout(20_001);
    assert!(c.is_closed(), "nothing heard for two intervals");
}

proptest::proptest! {
    /// Whatever a client sends after a valid handshake, the state machine never panics, consumes at most what it
    /// was given, and ends up open or with a close on the wire.
    #[test]
    fn arbitrary_bytes_never_panic_the_server(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0..8)) {
        let mut c = open();
        let mut queues = MemoryQueues::default();
        queues.push("q", message("a.b", b"x"));
        let mut pending = Vec::new();
        for chunk in chunks {
            pending.extend_from_slice(&chunk);
            let used = c.handle_input(&pending, 0, &mut queues);
            proptest::prop_assert!(used <= pending.len());
            pending.drain(..used);
            while c.poll_event().is_some() {}
            c.pump_deliveries(&mut queues, 8);
            let mut out = Vec::new();
            c.poll_transmit(&mut out, 0);
            if c.is_closed() {
                break;
            }
        }
    }
}

fn message(routing_key: &str, body: &[u8]) -> OutgoingMessage {
    OutgoingMessage {
        exchange: "amq.topic".into(),
        routing_key: routing_key.into(),
        properties: basic::AMQPProperties::default(),
        body: body.to_vec(),
    }
}

fn channel_open(ch: u16) -> AMQPFrame {
    method(ch, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})))
}

#[test]
fn without_spool_credit_publishers_hear_flow_false_and_confirms_wait_for_the_resume() {
    let mut c = open();
    let select = method(1, AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select { nowait: false })));
    feed(&mut c, &[channel_open(1), select, channel_open(2)]);
    feed(&mut c, &publish_frames(1, "amq.topic", &[b"x"]));
    assert!(matches!(c.poll_event(), Some(Event::Publish { delivery_tag: Some(1), .. })));
    c.set_publish_flow(false);
    c.confirm(1, 1, true);
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 0);
    let flow = |f: &AMQPFrame| match f {
        AMQPFrame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Flow(fl))) => Some((*ch, fl.active)),
        _ => None,
    };
    let frames_out = frames_of(&out);
    assert_eq!(frames_out.iter().filter_map(flow).collect::<Vec<_>>(), [(1, false)], "only the publishing channel");
    assert_eq!(frames_out.len(), 1, "the confirm is held");
    // The client answers flow-ok; channel 2 starts publishing and is told at once.
    let flow_ok = method(1, AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk { active: false })));
    assert!(feed(&mut c, &[flow_ok]).is_empty());
    let out = feed(&mut c, &publish_frames(2, "amq.topic", &[b"y"]));
    assert_eq!(out.iter().filter_map(flow).collect::<Vec<_>>(), [(2, false)]);
    c.set_publish_flow(true);
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 0);
    let frames_out = frames_of(&out);
    assert_eq!(frames_out.iter().filter_map(flow).collect::<Vec<_>>(), [(1, true), (2, true)]);
    assert!(
        frames_out.iter().any(
            |f| matches!(f, AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) if a.delivery_tag == 1)
        ),
        "the held confirm goes out on resume: {frames_out:?}"
    );
}

fn declare(name: &str, passive: bool) -> AMQPFrame {
    let d = queue::Declare {
        queue: short(name),
        passive,
        durable: true,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    method(1, AMQPClass::Queue(queue::AMQPMethod::Declare(d)))
}

#[test]
fn consumers_get_deliveries_within_prefetch_and_settle_them() {
    let mut c = open();
    let mut q = MemoryQueues::default();
    let out = feed_with(&mut c, &mut q, &[channel_open(1), declare("missing", true)]);
    assert!(
        matches!(&out[1], AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Close(cl))) if cl.reply_code == reply::NOT_FOUND),
        "passive declare of an unknown queue: {out:?}"
    );
    let close_ok = method(1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})));
    feed_with(&mut c, &mut q, &[close_ok]);
    let bind = queue::Bind {
        queue: short("cmds"),
        exchange: short("amq.topic"),
        routing_key: short("devices.d1.#"),
        nowait: false,
        arguments: FieldTable::default(),
    };
    let qos = basic::Qos { prefetch_count: 2, global: false };
    let consume = basic::Consume {
        queue: short("cmds"),
        consumer_tag: short(""),
        no_local: false,
        no_ack: false,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    let out = feed_with(
        &mut c,
        &mut q,
        &[
            channel_open(1),
            declare("cmds", false),
            method(1, AMQPClass::Queue(queue::AMQPMethod::Bind(bind))),
            method(1, AMQPClass::Basic(basic::AMQPMethod::Qos(qos))),
            method(1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume))),
        ],
    );
    assert_eq!(out.len(), 5, "open-ok, declare-ok, bind-ok, qos-ok, consume-ok: {out:?}");
    assert_eq!(q.bindings("cmds"), ["devices.d1.#"]);
    for n in 0..3u8 {
        q.push("cmds", message("devices.d1.cmd", &[n]));
    }
    assert!(!c.pump_deliveries(&mut q, 16));
    let mut wire = Vec::new();
    c.poll_transmit(&mut wire, 0);
    let delivered: Vec<(u64, Vec<u8>)> = {
        let frames_out = frames_of(&wire);
        let tags = frames_out.iter().filter_map(|f| match f {
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => Some(d.delivery_tag),
            _ => None,
        });
        let bodies = frames_out.iter().filter_map(|f| match f {
            AMQPFrame::Body(1, b) => Some(b.clone()),
            _ => None,
        });
        tags.zip(bodies).collect()
    };
    assert_eq!(delivered, [(1, vec![0]), (2, vec![1])], "prefetch 2 holds the third back");
    // Reject 1 with requeue, ack 2: the third and the requeued first come next.
    let reject = basic::Reject { delivery_tag: 1, requeue: true };
    let ack = basic::Ack { delivery_tag: 2, multiple: false };
    feed_with(
        &mut c,
        &mut q,
        &[
            method(1, AMQPClass::Basic(basic::AMQPMethod::Reject(reject))),
            method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))),
        ],
    );
    c.pump_deliveries(&mut q, 16);
    let mut wire = Vec::new();
    c.poll_transmit(&mut wire, 0);
    let redelivered: Vec<(u64, bool)> = frames_of(&wire)
        .iter()
        .filter_map(|f| match f {
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                Some((d.delivery_tag, d.redelivered))
            }
            _ => None,
        })
        .collect();
    assert_eq!(redelivered, [(3, true), (4, false)]);
    // An unknown tag closes the channel with 406; closing requeues what was unsettled.
    let out = feed_with(
        &mut c,
        &mut q,
        &[method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack { delivery_tag: 99, multiple: false })))],
    );
    assert!(
        matches!(&out[..], [AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Close(cl)))] if cl.reply_code == reply::PRECONDITION_FAILED)
    );
    feed_with(&mut c, &mut q, &[method(1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})))]);
    assert_eq!((q.unsettled("cmds"), q.ready("cmds")), (0, 2), "both unsettled deliveries back in the queue");
}

#[test]
fn basic_get_answers_get_ok_or_get_empty() {
    let mut c = open();
    let mut q = MemoryQueues::default();
    feed_with(&mut c, &mut q, &[channel_open(1), declare("q", false)]);
    let get = || method(1, AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get { queue: short("q"), no_ack: true })));
    let out = feed_with(&mut c, &mut q, &[get()]);
    assert!(matches!(&out[..], [AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)))]));
    q.push("q", message("a", &[7; 10]));
    let out = feed_with(&mut c, &mut q, &[get()]);
    assert!(
        matches!(&out[0], AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::GetOk(g))) if g.message_count == 0)
    );
    assert!(matches!(&out[1], AMQPFrame::Header(1, h) if h.body_size == 10));
    assert_eq!(q.unsettled("q"), 0, "no_ack settles at once");
}

#[test]
fn messages_in_assembly_on_many_channels_share_one_budget() {
    let mut c = open();
    // LIMITS.max_body is 1024: two channels each announcing 600 bytes exceed it together.
    feed(&mut c, &[channel_open(1), channel_open(2)]);
    let mut frames_in = publish_frames(1, "", &[&[0; 600]]);
    frames_in.truncate(2);
    assert!(feed(&mut c, &frames_in).is_empty(), "one message in assembly is fine");
    let mut frames_in = publish_frames(2, "", &[&[0; 600]]);
    frames_in.truncate(2);
    let out = feed(&mut c, &frames_in);
    assert!(
        matches!(&out[..], [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(cl)))] if cl.reply_code == reply::RESOURCE_ERROR),
        "{out:?}"
    );
}

#[test]
fn external_is_offered_only_with_a_verified_certificate() {
    let start_ok = |mechanism: &str| {
        let ok = connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: short(mechanism),
            response: LongString::from(""),
            locale: short("en_US"),
        };
        conn_method(connection::AMQPMethod::StartOk(ok))
    };
    let mechanisms = |c: &mut ServerConnection| {
        let mut out = Vec::new();
        c.handle_input(PROTOCOL_HEADER, 0, &mut MemoryQueues::default());
        c.poll_transmit(&mut out, 0);
        match frames_of(&out).first() {
            Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(s)))) => {
                String::from_utf8_lossy(s.mechanisms.as_bytes()).into_owned()
            }
            other => panic!("{other:?}"),
        }
    };
    let mut plain = ServerConnection::new(LIMITS, 0);
    assert_eq!(mechanisms(&mut plain), "PLAIN AMQPLAIN");
    let out = feed(&mut plain, &[start_ok("EXTERNAL")]);
    assert!(
        matches!(&out[..], [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(cl)))] if cl.reply_code == reply::ACCESS_REFUSED)
    );
    let mut certified = ServerConnection::new(LIMITS, 0).with_certificate_identity(Some("sensor-9".into()));
    assert_eq!(mechanisms(&mut certified), "PLAIN AMQPLAIN EXTERNAL");
    feed(&mut certified, &[start_ok("EXTERNAL")]);
    assert!(matches!(
        certified.poll_event(),
        Some(Event::Authenticate { ref mechanism, ref username, .. }) if mechanism == "EXTERNAL" && username == "sensor-9"
    ));
}
