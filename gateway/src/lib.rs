//! meshgate, the IoT edge gateway.
//!
//! Devices connect over MQTT 3.1.1 and 5 and AMQP 0-9-1; every accepted publish becomes a CloudEvent ([`normalize`]), is made
//! durable by the pipeline of `meshgate-edge-agent`, and only then acknowledged to the device.
//!
//! Rooms:
//! - [`config`]: the TOML file, environment overrides, defaults and their validation.
//! - [`auth`]: device credentials (Argon2 hashes) and the anonymous switch; [`acl`]: publish/subscribe rules.
//! - [`broker`]: the local MQTT broker (subscriptions, retained messages, sessions, wills, shared subscriptions).
//! - [`mqtt`]: the MQTT listener, our own sessions over the `meshgate-protocols` codec.
//! - [`amqp`]: the AMQP 0-9-1 listener: publisher confirms, channel.flow, queues over the local broker.
//! - [`ws`]: the WebSocket listener: `cloudevents.json` with acknowledgements, and MQTT over WebSocket.
//! - [`limits`]: the named depth, count, byte and rate budgets of `[limits]`, and the checks that apply them.
//! - [`listener`]: the accept loop the listeners share; [`tls`]: rustls (ring) for the TLS listeners.
//! - [`policy`]: the users, rules and limits a reload replaces; [`clients`]: who is connected (and the kick).
//! - [`acks`]: the acknowledgement seam every listener shares: answers held until their events are durable.
//! - [`normalize`]: message → CloudEvent, with mapping rules (shared with the `edge-agent` bridge, so it lives there).
//! - [`downlinks`]: events from the mesh delivered to devices through the local broker.
//! - [`metrics`] and [`admin`]: counters and the health/metrics endpoint.
//! - [`server`]: process wiring and ordered shutdown.

pub mod acks;
pub mod acl;
pub mod admin;
pub mod amqp;
pub mod auth;
pub mod broker;
pub mod clients;
pub mod config;
pub mod downlinks;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod mqtt;
pub mod policy;
pub mod preflight;
pub use meshgate_edge_agent::normalize;
pub mod reload;
pub mod server;
pub mod sys;
pub mod tls;
pub mod ws;
