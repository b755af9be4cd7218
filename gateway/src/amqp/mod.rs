//! The AMQP 0-9-1 listener (issue 7, in progress): devices that speak AMQP publish with publisher confirms.
//!
//! - [`frames`]: the protocol header and frames over the `amq-protocol` codec, with `frame_max` checked first.
//! - [`connection`]: the sans-IO server connection: handshake with PLAIN/AMQPLAIN, tune, channels, declares with
//!   passive semantics, publishes assembled from content frames, publisher confirms in order, heartbeats, and the
//!   specification's reply codes.
//!
//! Not wired to a listener yet: `[listeners.amqp]` is still refused at config load.

pub mod connection;
pub mod frames;
