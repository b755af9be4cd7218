//! The MQTT listener: MQTT 3.1.1 and 5 device sessions over TCP, on the codec in `meshgate-protocols`.
//!
//! - [`connection`]: the per-connection driver (CONNECT, publish flows, keep-alive, takeover, shutdown), and in
//!   `connection/delivery.rs` its broker side (subscriptions, deliveries, their acknowledgements).
//! - [`inbound`]: sans-IO bookkeeping of inbound publishes (topic aliases, Receive Maximum, QoS 2 state).
//! - [`registry`]: live client ids, for session takeover.
//! - [`outbound`]: broker deliveries as PUBLISH/PUBREL packets.
//! - [`will`]: publishing wills.

pub mod connection;
pub mod inbound;
pub mod outbound;
pub mod registry;
pub mod will;

use std::sync::Arc;

use meshgate_edge_agent::pipeline::IngestHandle;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::broker::LocalBroker;
use crate::config::MqttListenerConfig;
use crate::metrics::Metrics;
use crate::normalize::Normalizer;

/// What every MQTT connection shares.
pub struct MqttContext {
    /// `[listeners.mqtt]`.
    pub config: MqttListenerConfig,
    /// Device credentials.
    pub auth: Authenticator,
    /// Message → CloudEvent.
    pub normalizer: Arc<Normalizer>,
    /// Into the pipeline.
    pub ingest: IngestHandle,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Live client ids.
    pub registry: registry::Registry,
    /// The local broker.
    pub broker: Arc<LocalBroker>,
    /// Publish and subscribe rules.
    pub acl: crate::acl::Acl,
    /// Whether connects and disconnects become CloudEvents.
    pub lifecycle_events: bool,
    /// Becomes `true` when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
}

pub use crate::listener::stopped;
