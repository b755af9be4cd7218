//! The MQTT listener: MQTT 3.1.1 and 5 device sessions over TCP, on the codec in `meshgate-protocols`.
//!
//! - [`connection`]: the per-connection driver (CONNECT, publish flows, keep-alive, takeover, shutdown), and in
//!   `connection/delivery.rs` its broker side (subscriptions, deliveries, their acknowledgements).
//! - [`inbound`]: sans-IO bookkeeping of inbound publishes (topic aliases, Receive Maximum, QoS 2 state).
//! - [`session`]: the MQTT server session, sans-IO: bytes and time in, events and bytes out.
//! - [`registry`]: live client ids, for session takeover.
//! - [`outbound`]: broker deliveries as PUBLISH/PUBREL packets.
//! - [`will`]: publishing wills.

pub mod connection;
pub mod inbound;
pub mod outbound;
pub mod registry;
pub mod session;
pub mod will;

use crate::config::MqttListenerConfig;
use crate::listener::Shared;

/// What every MQTT connection shares.
pub struct MqttContext {
    /// `[listeners.mqtt]`.
    pub config: MqttListenerConfig,
    /// The gateway's parts every connection works with.
    pub shared: Shared,
    /// Live client ids.
    pub registry: registry::Registry,
    /// Whether connects and disconnects become CloudEvents.
    pub lifecycle_events: bool,
}

pub use crate::listener::stopped;
