//! The AMQP 0-9-1 listener: devices that speak AMQP publish with publisher confirms, are slowed with
//! channel.flow, and consume from queues bound to the local broker's topics.
//!
//! - [`frames`]: the protocol header and frames over the `amq-protocol` codec, with `frame_max` checked first.
//! - [`connection`] and `channel.rs`: the sans-IO server connection: handshake with PLAIN/AMQPLAIN, tune,
//!   channels, declares with passive semantics, publishes assembled from content frames, publisher confirms in
//!   order, channel.flow both ways, consumers, heartbeats, and the specification's reply codes.
//! - [`queues`]: what the connection asks of the queues behind it; [`broker_queues`]: queues as local broker
//!   sessions; [`topic`]: routing keys and topics as one space.
//! - [`driver`]: the tokio side of a connection: credentials, normalize, spool receipts, flow control.

pub mod broker_queues;
mod channel;
pub mod connection;
pub mod driver;
pub mod frames;
pub mod queues;
pub mod table_depth;
pub mod topic;

use crate::config::AmqpListenerConfig;
use crate::listener::Shared;

/// What every AMQP connection shares.
pub struct AmqpContext {
    /// `[listeners.amqp]`.
    pub config: AmqpListenerConfig,
    /// The gateway's parts every connection works with.
    pub shared: Shared,
}
