//! The MQTT bridge source of `edge-agent`: subscribe to existing brokers' topics and forward their messages into
//! the mesh through the same mapping rules, spool and uplinks as the gateway's devices.
//!
//! - [`agent`]: the `edge-agent` process wiring.
//! - [`config`]: `[[bridges]]` and the whole `edge-agent` file.
//! - [`source`]: one broker's persistent session, acknowledged after the spool's fsync.
//! - [`tls`]: the rustls client configuration.

pub mod agent;
pub mod config;
pub mod source;

pub use config::{AgentConfig, BridgeConfig};
pub use source::{BRIDGE_EXTENSION, BridgeContext};
