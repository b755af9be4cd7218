//! The load generator behind `meshgate-load` (and the benchmark suite in docs/benchmarks.md): MQTT connections
//! on the project's own codec, spread over loopback source addresses, publishing at a rate or as fast as a window
//! of unacknowledged QoS 1 publishes allows, with HdrHistogram latencies; a trivial sink that shows the
//! generator's own ceiling; Mosquitto and process RSS for the side-by-side runs.

pub mod brokers;
pub mod conn;
pub mod noisy;
pub mod run;
pub mod sink;
pub mod suite;
pub mod uplinks;
