//! Sans-IO wire formats for meshgate.
//!
//! This crate holds every byte-level rule the gateway, the edge agent and the `#![no_std]` device client share:
//!
//! - [`mqtt`]: the MQTT 3.1.1 and 5.0 packet codec, client and server packets alike. Decoding borrows from the
//!   caller's bytes; encoding writes into the caller's buffer. No allocation, no IO, no clock.
//! - [`cloudevents`] (feature `cloudevents`, needs an allocator): the CloudEvents 1.0 model with attribute
//!   validation, the JSON event format and the MQTT and AMQP protocol bindings.
//! - [`eventmesh`] (feature `eventmesh`, needs an allocator): Apache EventMesh's wire formats: the TCP frame
//!   codec, the HTTP request-code publish, and the gRPC CloudEvent messages generated from `proto/` at build time.
//! - [`trace_context`]: W3C Trace Context (`traceparent`, `tracestate`), parsed and printed without allocating.
//!
//! The crate is `#![no_std]` unless the `std` feature is on, and never touches a socket: callers feed bytes in and
//! take bytes out, the way quinn-proto and smoltcp do.
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "mqtt-v311")]
pub mod mqtt;

#[cfg(feature = "cloudevents")]
pub mod cloudevents;

#[cfg(feature = "eventmesh")]
pub mod eventmesh;

pub mod trace_context;
