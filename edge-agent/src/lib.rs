//! The mesh-facing half of meshgate.
//!
//! Everything between "a device's message is a valid CloudEvent" and "a mesh runtime has it":
//!
//! - [`pipeline`]: the ingest queue. Listeners [`submit`](pipeline::IngestHandle::submit) events and get a
//!   [`Receipt`](pipeline::Receipt) that resolves once the event is durable; only then do they acknowledge the
//!   device. Events that arrive while a write is in flight are committed together in the next one.
//! - [`uplink`]: the [`Uplink`](uplink::Uplink) abstraction and its implementations. Today: the embedded default, a
//!   JSON-lines file of structured CloudEvents in the data directory.
//!
//! The durable spool and the forwarder slot in between the two (issue 3): the pipeline will append to the spool
//! and resolve receipts on its fsync, and a forwarder will drain the spool into the uplinks.

pub mod config;
pub mod forwarder;
pub mod pipeline;
pub mod spool;
pub mod uplink;

pub use meshgate_protocols::cloudevents::CloudEvent;
