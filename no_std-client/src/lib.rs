//! `meshgate-client`: the `#![no_std]`, allocator-free MQTT client that devices flash to publish CloudEvents to
//! meshgate (or any MQTT 3.1.1 / 5 server) and to receive commands. No panics on any input, every buffer the
//! application's, no allocation.
//!
//! - [`client`]: the protocol state, sans-IO: CONNECT and CONNACK (honouring the server's Receive Maximum,
//!   Maximum Packet Size and Server Keep Alive), publishes at QoS 0 and 1 (and 2 with the `qos2` feature),
//!   subscriptions, acknowledgements of what it receives, keep-alive pings, and the resend (DUP, or PUBREL) of
//!   unacknowledged publishes after a reconnect. Bytes and milliseconds in, bytes and events out.
//! - [`outbox`]: the unacknowledged publishes, encoded, in a byte arena the application lends.
//! - [`session`]: the client over any `embedded_io_async` stream with embassy-time for the keep-alive, and
//!   [`Session::publish_event`] for a CloudEvent in one call.
//! - [`net`] (feature `embassy-net`): an embassy-net `TcpSocket` as the transport, with [`Session::open`] to
//!   (re)connect by endpoint.
//! - [`cloudevents`]: events from a device: MQTT 5 binary mode, structured JSON for 3.1.1 into a fixed buffer, ids
//!   from a per-device counter.
//! - `selftest` (feature `selftest`): the state-machine scenarios, run by `cargo test` and as firmware on QEMU.
//!
//! Features: `mqtt5` (default; without it the client speaks MQTT 3.1.1 only and is smaller), `qos2`,
//! `embassy-net` (pick the medium on your own embassy-net dependency), `defmt`. `no_std-client/firmware` has a
//! Cortex-M firmware example, and docs/no_std-client.md the guide; docs/benchmarks.md the flash and RAM it costs.
#![no_std]
#![deny(unsafe_code)]

#[cfg(test)]
extern crate std;

/// Logs through defmt with the `defmt` feature; compiles to nothing without it.
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        #[cfg(feature = "defmt")]
        defmt::$level!($($arg)*);
    };
}

pub mod client;
pub mod cloudevents;
#[cfg(feature = "embassy-net")]
pub mod net;
pub mod outbox;
#[cfg(any(test, feature = "selftest"))]
pub mod selftest;
pub mod session;

pub use client::{Client, Error, Event};
pub use meshgate_protocols::mqtt;
pub use session::{Session, SessionError};

/// Drops the first `used` of the `filled` bytes of a receive buffer (what [`Client::handle`] consumed), moving the
/// rest to the front; returns how many bytes remain. A forward byte copy, correct for this overlap: unlike
/// `copy_within` it does not pull in `memmove`, 1.5 KB of flash on a Cortex-M.
pub fn consume(buf: &mut [u8], used: usize, filled: usize) -> usize {
    let filled = filled.min(buf.len());
    let used = used.min(filled);
    for from in used..filled {
        if let Some(byte) = buf.get(from).copied()
            && let Some(to) = buf.get_mut(from - used)
        {
            *to = byte;
        }
    }
    filled - used
}
