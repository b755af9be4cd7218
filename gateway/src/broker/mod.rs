//! The local MQTT broker: devices subscribe to each other and to their commands at the edge, and keep doing so
//! while the mesh is unreachable.
//!
//! - [`core`]: the sans-IO broker: sessions, routing, retained messages, shared subscriptions.
//! - [`session`]: one client's session: subscriptions, the bounded queue, outbound QoS 1/2 flows.
//! - [`session_name`]: session names, one namespace per protocol.
//! - [`session_store`]: persistent sessions on disk, one file each.
//! - [`durable`]: the broker's records in the spool, which make routing to persistent sessions crash-proof.
//! - [`topic_tree`]: the subscription index.
//! - [`message`]: a message as the broker keeps it.
//! - [`local`]: the broker as the gateway runs it: shared, waking connections, persisted in the data directory.

pub mod core;
pub mod durable;
pub mod local;
pub mod message;
pub mod session;
pub mod session_name;
pub mod session_store;
pub mod topic_tree;

pub use self::core::{Broker, BrokerConfig, BrokerStats, Connected, SessionOwner, SessionRefused, SubscribeRefused};
pub use self::local::LocalBroker;
pub use self::message::{Message, MessageProperties};
pub use self::session::{Delivery, MemoryBudget, Outbound, QueueLimits, Session, Subscription};
