//! The mesh-facing half of meshgate.
//!
//! Everything between "a device's message is a valid CloudEvent" and "a mesh runtime has it":
//!
//! - [`pipeline`]: listeners [`submit`](pipeline::IngestHandle::submit) events and get a
//!   [`Receipt`](pipeline::Receipt) that resolves once the event is durable in the [`spool`] (group-committed,
//!   fsynced); only then do they acknowledge the device.
//! - [`spool`]: the append-only log on disk, with a cursor per uplink, crash recovery and a byte bound.
//! - [`forwarder`]: one task per uplink that drains the spool in order, retrying with backoff, and advances the
//!   uplink's cursor only on confirmation.
//! - [`uplink`]: the [`Uplink`](uplink::Uplink) trait and its implementations: a JSON-lines file (the embedded
//!   default), RabbitMQ, and Apache EventMesh over gRPC, HTTP and TCP with load balancing and failover.

pub mod admin;
pub mod bridge;
pub mod client_tls;
pub mod config;
pub mod config_file;
pub mod downlink;
pub mod forwarder;
pub mod normalize;
pub mod pipeline;
pub mod process;
pub mod spool;
pub mod trace;
pub mod uplink;

pub use meshgate_protocols::cloudevents::CloudEvent;
