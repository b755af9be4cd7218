//! `meshgate-client`: the `#![no_std]`, allocator-free MQTT client that devices flash to publish CloudEvents to
//! meshgate.
//!
//! The client's state machine, transports and CloudEvents helpers are built in a later change (issue 9); today
//! the crate pins the dependency rule that matters most: it builds on the MQTT codec of `meshgate-protocols`
//! without `std` or `alloc`.
#![no_std]
#![deny(unsafe_code)]

pub use meshgate_protocols::mqtt;
