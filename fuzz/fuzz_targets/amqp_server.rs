//! Feeds arbitrary bytes, after a valid handshake (header, start-ok, tune-ok, open), to meshgate's AMQP 0-9-1 server
//! connection, split where the first byte says, with in-memory queues holding messages for consumers and the
//! spool's credit toggling: the state machine never panics, never consumes more than it was given, and keeps
//! answering.
#![no_main]

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{FieldTable, LongString, ShortString};
use libfuzzer_sys::fuzz_target;
use meshgate_gateway::amqp::connection::{Event, Limits, ServerConnection};
use meshgate_gateway::amqp::frames::{self, PROTOCOL_HEADER};
use meshgate_gateway::amqp::queues::{MemoryQueues, OutgoingMessage};

/// The client's side of the handshake after the protocol header.
fn handshake() -> Vec<u8> {
    let start_ok = connection::StartOk {
        client_properties: FieldTable::default(),
        mechanism: ShortString::from("PLAIN"),
        response: LongString::from("\0dev\0pw"),
        locale: ShortString::from("en_US"),
    };
    let tune_ok = connection::TuneOk { channel_max: 64, frame_max: 4096, heartbeat: 0 };
    let open = connection::Open { virtual_host: ShortString::from("/") };
    let mut wire = Vec::new();
    for m in [
        connection::AMQPMethod::StartOk(start_ok),
        connection::AMQPMethod::TuneOk(tune_ok),
        connection::AMQPMethod::Open(open),
    ] {
        frames::encode(&AMQPFrame::Method(0, AMQPClass::Connection(m)), &mut wire);
    }
    wire
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let limits = Limits { frame_max: 4096, channel_max: 64, heartbeat: 0, max_body: 1 << 20, max_table_depth: 32 };
    let mut c = ServerConnection::new(limits, 0);
    let mut queues = MemoryQueues::default();
    for name in ["q", ""] {
        let message = OutgoingMessage {
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
            properties: Default::default(),
            body: vec![0; 5000],
        };
        queues.push(name, message);
    }
    assert_eq!(c.handle_input(PROTOCOL_HEADER, 0, &mut queues), PROTOCOL_HEADER.len());
    let mut out = Vec::new();
    let mut pending = handshake();
    for (i, chunk) in rest.chunks(usize::from(split).max(1)).enumerate() {
        pending.extend_from_slice(chunk);
        loop {
            let used = c.handle_input(&pending, 0, &mut queues);
            assert!(used <= pending.len());
            pending.drain(..used);
            let mut acted = false;
            while let Some(event) = c.poll_event() {
                acted = true;
                match event {
                    Event::Authenticate { .. } => c.accept_credentials(true),
                    Event::Publish { channel, delivery_tag: Some(tag), .. } => c.confirm(channel, tag, tag % 2 == 0),
                    _ => {}
                }
            }
            if used == 0 && !acted {
                break;
            }
        }
        c.set_publish_flow(i % 3 != 1);
        c.pump_deliveries(&mut queues, 4);
        c.poll_transmit(&mut out, 0);
        out.clear();
        if c.is_closed() {
            break;
        }
    }
});
