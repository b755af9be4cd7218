//! Feeds arbitrary bytes, after a valid handshake, to meshgate's AMQP 0-9-1 server connection, split where the
//! first byte says: the state machine never panics, never consumes more than it was given, and keeps answering.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_gateway::amqp::connection::{Event, Limits, ServerConnection};
use meshgate_gateway::amqp::frames::PROTOCOL_HEADER;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let limits = Limits { frame_max: 131_072, channel_max: 64, heartbeat: 0, max_body: 1 << 20 };
    let mut c = ServerConnection::new(limits, 0);
    assert_eq!(c.handle_input(PROTOCOL_HEADER, 0), PROTOCOL_HEADER.len());
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for chunk in rest.chunks(usize::from(split).max(1)) {
        pending.extend_from_slice(chunk);
        let used = c.handle_input(&pending, 0);
        assert!(used <= pending.len());
        pending.drain(..used);
        while let Some(event) = c.poll_event() {
            match event {
                Event::Authenticate { .. } => c.accept_credentials(true),
                Event::Publish { channel, delivery_tag: Some(tag), .. } => c.confirm(channel, tag, tag % 2 == 0),
                _ => {}
            }
        }
        c.poll_transmit(&mut out, 0);
        if c.is_closed() {
            break;
        }
    }
});
