//! The noisy-neighbour scenario: one connection floods QoS 0 as fast as it can while one quiet device publishes
//! QoS 1 at 10/s; what matters is the quiet device's publish → PUBACK latency beside its latency alone, on
//! meshgate and on Mosquitto in the same run.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use meshgate_protocols::mqtt::QoS;

use super::run::{LoadSpec, Report, run_at};

/// What one broker showed.
#[derive(Debug, Clone)]
pub struct NoisyReport {
    /// The quiet device with nobody else connected.
    pub alone: Report,
    /// The quiet device beside the flooder.
    pub beside: Report,
    /// The flooder (QoS 0: sent counts as acknowledged).
    pub flooder: Report,
}

/// The quiet device: one connection, QoS 1, 10 publishes per second, one in flight.
pub fn quiet(target: SocketAddr, duration: Duration) -> LoadSpec {
    LoadSpec {
        target,
        connections: 1,
        rate: 10.0,
        qos: QoS::AtLeastOnce,
        topic: "quiet/{n}".into(),
        client_prefix: "quiet-".into(),
        window: 1,
        duration,
        sources: 1,
        ..LoadSpec::default()
    }
}

/// The flooder: one connection, QoS 0, as fast as the socket takes it.
pub fn flooder(target: SocketAddr, duration: Duration) -> LoadSpec {
    LoadSpec {
        target,
        connections: 1,
        rate: 0.0,
        qos: QoS::AtMostOnce,
        topic: "noisy/{n}".into(),
        client_prefix: "noisy-".into(),
        duration,
        sources: 1,
        ..LoadSpec::default()
    }
}

/// Runs the quiet device alone, then beside the flooder, against the broker at `target`.
pub async fn noisy_neighbour(target: SocketAddr, duration: Duration) -> Result<NoisyReport> {
    let alone = run_at(&quiet(target, duration), std::time::Instant::now()).await?;
    let (quiet, flood) = (quiet(target, duration), flooder(target, duration));
    let epoch = std::time::Instant::now();
    let (beside, flooder) = tokio::join!(run_at(&quiet, epoch), run_at(&flood, epoch));
    Ok(NoisyReport { alone, beside: beside?, flooder: flooder? })
}

/// One line for people.
pub fn summary(target: &str, r: &NoisyReport) -> String {
    format!(
        "{target}: quiet device alone ack p50 {:.2} ms p99 {:.2} ms max {:.2} ms; beside a QoS 0 flood of {:.0}/s \
         ack p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} of {} acknowledged)",
        Report::ms(&r.alone.ack_latency, 50.0),
        Report::ms(&r.alone.ack_latency, 99.0),
        Report::ms(&r.alone.ack_latency, 100.0),
        r.flooder.acked_per_sec(),
        Report::ms(&r.beside.ack_latency, 50.0),
        Report::ms(&r.beside.ack_latency, 99.0),
        Report::ms(&r.beside.ack_latency, 100.0),
        r.beside.acked,
        r.beside.sent,
    )
}
