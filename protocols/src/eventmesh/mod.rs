//! Apache EventMesh wire formats, as the runtime (1.10 through 1.12) reads and writes them.
//!
//! - [`tcp`]: the framed TCP protocol (port 10000): `EventMesh` + `0000` + lengths + header JSON + body, its
//!   commands, and the `UserAgent` a client says HELLO with. A sans-IO codec: bytes in, frames out.
//! - [`http`]: the request-code publish (port 10105, `POST /` with `code: 104`): headers, the form body and the
//!   `retCode` answer.
//! - [`grpc`]: the CloudEvent protobuf messages of `PublisherService` (port 10205), generated from this crate's
//!   own `proto/` files at build time, and the mapping between them and [`CloudEvent`].
//! - [`status`]: what each protocol's answer means for the sender: stored, back off, poison, or retry.
//!
//! All three carry the same event: the device's CloudEvent with the topic as `subject` and the extensions the
//! runtime requires (`uniqueid`, `bizseqno`, `ttl`), built once by [`mesh_event`]. The client's identity (env,
//! idc, sys, pid, producer group, credentials) is one [`Identity`] for all three.
//!
//! The facts behind every rule here are in the project's `reference/eventmesh-protocols.md`, read from the runtime's
//! source.

pub mod grpc;
pub mod http;
mod identity;
pub mod status;
pub mod tcp;

pub use identity::{Identity, PROTOCOL_TYPE, PROTOCOL_VERSION, mesh_event, sequence_number};
