//! The no_std client against a hostile server: arbitrary bytes arrive in arbitrary pieces, interleaved with
//! publishes (QoS 0, 1, 2), subscriptions, timer ticks and reconnects chosen by the input. Checks that the client
//! never panics, never claims more bytes than it was given, and that everything it transmits is a valid packet
//! at its protocol level, whatever the server did before.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_client::mqtt::{
    ConnAck, Connect, Packet, Properties, Publish, QoS, SubscribeFilter, SubscriptionOptions, Version,
};
use meshgate_client::{Client, consume};

fn connack(version: Version, session_present: bool) -> Vec<u8> {
    let ack = Packet::ConnAck(ConnAck { session_present, properties: Properties::default(), ..ConnAck::default() });
    let mut buf = vec![0u8; ack.encoded_len(version)];
    let n = ack.encode(version, &mut buf).expect("CONNACK encodes");
    buf.truncate(n);
    buf
}

/// CONNECT, answered by a CONNACK with `present` as Session Present.
fn reconnect(client: &mut Client<'_, 4>, version: Version, now: u64, present: bool) {
    let mut out = [0u8; 64];
    let connect = Connect { version, keep_alive: 5, client_id: "fuzz", ..Connect::default() };
    if client.connect(&connect, now, &mut out).is_ok() {
        let _ = client.handle(&connack(version, present), now);
    }
}

/// Sends whatever the client owes and checks every packet is valid.
fn drain(client: &mut Client<'_, 4>, now: u64, version: Version) {
    let mut out = [0u8; 512];
    for _ in 0..32 {
        match client.poll_transmit(now, &mut out) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                Packet::decode(&out[..n], version, usize::MAX).expect("the client sent a valid packet");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else { return };
    let version = if first & 1 == 0 { Version::V311 } else { Version::V5 };
    let mut arena = [0u8; 256];
    let mut client: Client<'_, 4> = Client::new(version, &mut arena);
    let mut out = [0u8; 512];
    let mut rx = [0u8; 512];
    let mut filled = 0;
    let mut now = 0u64;
    reconnect(&mut client, version, now, first & 2 != 0);
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        now += u64::from(op >> 4) * 400;
        match op & 7 {
            0..=2 => {
                let qos = QoS::from_bits(op & 3).unwrap_or(QoS::AtLeastOnce);
                let publish = Publish { topic: "t/x", qos, payload: b"21.5", ..Publish::default() };
                if let Ok((n, _)) = client.publish(&publish, now, &mut out) {
                    Packet::decode(&out[..n], version, usize::MAX).expect("a valid PUBLISH");
                }
            }
            3 => {
                let filters = [SubscribeFilter { filter: "c/#", options: SubscriptionOptions::default() }];
                if let Ok(n) = client.subscribe(u16::from(op) + 1, &filters, now, &mut out) {
                    Packet::decode(&out[..n], version, usize::MAX).expect("a valid SUBSCRIBE");
                }
            }
            4 => {
                client.connection_lost();
                filled = 0;
                reconnect(&mut client, version, now, op & 8 != 0);
            }
            5 => {
                let _ = client.handle_timeout(now);
            }
            _ => {
                // The server's next bytes, in a piece of up to 31 bytes.
                let take = usize::from(op >> 3).min(rest.len());
                let (piece, tail) = rest.split_at(take);
                rest = tail;
                let room = rx.len() - filled;
                let piece = &piece[..piece.len().min(room)];
                rx[filled..filled + piece.len()].copy_from_slice(piece);
                filled += piece.len();
                loop {
                    match client.handle(&rx[..filled], now) {
                        Ok(Some((used, _))) => {
                            assert!(used > 0 && used <= filled);
                            filled = consume(&mut rx, used, filled);
                            drain(&mut client, now, version);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            // A protocol error ends the connection, as a session would.
                            client.connection_lost();
                            filled = 0;
                            break;
                        }
                    }
                }
            }
        }
        drain(&mut client, now, version);
    }
});
