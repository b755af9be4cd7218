//! The load generator (`meshgate-load`) counts what really happened: against the gateway every acknowledged
//! publish is in the spool's uplink and reached the subscriber; against the trivial sink every publish is
//! acknowledged; idle connections spread over several loopback source addresses all connect. Functional checks
//! only: its figures go to docs/benchmarks.md, never into assertions.

use std::time::Duration;

use meshgate_protocols::mqtt::QoS;
use meshgate_tests::Gateway;
use meshgate_tests::load::run::{LoadSpec, hold_idle, run};
use meshgate_tests::load::sink;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_are_durable_and_delivered() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let spec = LoadSpec {
        target: gw.mqtt,
        connections: 4,
        subscribers: 1,
        rate: 400.0,
        duration: Duration::from_secs(2),
        sources: 2,
        ..LoadSpec::default()
    };
    let report = run(&spec).await?;
    assert_eq!(report.errors, 0, "{}", report.summary());
    assert!(report.acked > 0 && report.acked == report.sent, "{}", report.summary());
    assert_eq!(report.received, report.acked, "the subscriber got every acknowledged message: {}", report.summary());
    assert_eq!(report.ack_latency.len(), report.acked, "one latency per acknowledgement");
    let events = gw.wait_for_events(report.acked as usize, Duration::from_secs(10))?;
    assert_eq!(events.len() as u64, report.acked, "every acknowledged publish reached the uplink");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_acknowledges_everything_and_qos0_counts_what_was_sent() -> anyhow::Result<()> {
    let (addr, server) = sink::start("127.0.0.1:0".parse()?).await?;
    for qos in [QoS::AtLeastOnce, QoS::AtMostOnce] {
        let spec =
            LoadSpec { target: addr, connections: 8, qos, duration: Duration::from_secs(1), ..LoadSpec::default() };
        let report = run(&spec).await?;
        assert_eq!(report.errors, 0, "{}", report.summary());
        assert!(report.sent > 0 && report.acked == report.sent, "{qos:?}: {}", report.summary());
    }
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_spread_over_source_addresses_all_connect() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let metric =
        async { gw.wait_metric("meshgate_connections{protocol=\"mqtt\"}", 300.0, Duration::from_secs(20)).await };
    let held = hold_idle(gw.mqtt, 300, 3, meshgate_protocols::mqtt::Version::V311, async move {
        let _ = released.await;
    });
    let check = async {
        let seen = metric.await;
        let _ = release.send(());
        seen
    };
    let (held, seen) = tokio::join!(held, check);
    let (connected, _, errors) = held?;
    assert_eq!((connected, errors.len()), (300, 0), "{errors:?}");
    assert_eq!(seen?, 300.0, "the gateway counted them");
    Ok(())
}
