//! `meshgate-client`: the `#![no_std]`, allocator-free MQTT client that devices flash to publish CloudEvents to
//! meshgate.
//!
//! - [`client`]: the protocol state, sans-IO: CONNECT and CONNACK (honouring the server's Receive Maximum,
//!   Maximum Packet Size and Server Keep Alive), QoS 0 and 1 publishes, subscriptions, acknowledgements of what it
//!   receives, keep-alive pings, and the resend (DUP) of unacknowledged publishes after a reconnect.
//! - [`outbox`]: the unacknowledged publishes, in a byte arena the application lends.
//! - [`session`]: the client over any `embedded_io_async` stream (an embassy-net `TcpSocket`, or a host socket),
//!   with embassy-time for the keep-alive.
//!
//! - [`cloudevents`]: events from a device: MQTT 5 binary mode, structured JSON for 3.1.1 into a fixed buffer, ids
//!   from a per-device counter.
//!
//! The embassy-net feature, the firmware example and the QEMU tests come with the rest of issue 9.
#![no_std]
#![deny(unsafe_code)]

#[cfg(test)]
extern crate std;

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
