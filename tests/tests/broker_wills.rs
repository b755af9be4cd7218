//! Conformance of the local broker, wills (MQTT 3.1.1 section 3.1.2.5, MQTT 5 section 3.1.2.5 and 3.1.3.2): a
//! will is published when the connection ends without DISCONNECT, not after a normal one, after the Will Delay
//! Interval unless the client is back; and it becomes a CloudEvent for the mesh like any publish.

use std::time::Duration;

use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(500);

fn with_will(v5: bool, id: &str, delay: Option<u32>) -> Options {
    Options { will: Some((format!("status/{id}"), "offline".into(), 1, false, delay)), ..Options::new(v5, id) }
}

async fn a_will_is_published_when_a_client_vanishes_and_not_after_disconnect(v5: bool) -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (mut watcher, _) = Client::connect(gw.mqtt, &Options::new(v5, "watcher")).await?;
    watcher.subscribe(&[("status/+", 1)]).await?;

    let (polite, _) = Client::connect(gw.mqtt, &with_will(v5, "polite", None)).await?;
    polite.disconnect().await;
    assert!(watcher.next_publish(QUIET).await.is_none(), "no will after DISCONNECT");

    let (gone, _) = Client::connect(gw.mqtt, &with_will(v5, "gone", None)).await?;
    gone.kill();
    let will = watcher.next_publish(WAIT).await.ok_or_else(|| anyhow::anyhow!("no will"))?;
    assert_eq!((will.topic.as_str(), will.payload.as_str(), will.qos), ("status/gone", "offline", 1));
    let events = gw.wait_for_events(1, WAIT)?;
    assert!(events.iter().any(|e| e["subject"] == "status/gone"), "the will is an event for the mesh: {events:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_published_when_a_client_vanishes_and_not_after_disconnect_v311() -> anyhow::Result<()> {
    a_will_is_published_when_a_client_vanishes_and_not_after_disconnect(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_published_when_a_client_vanishes_and_not_after_disconnect_v5() -> anyhow::Result<()> {
    a_will_is_published_when_a_client_vanishes_and_not_after_disconnect(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_delay_holds_the_will_and_a_reconnect_cancels_it() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (mut watcher, _) = Client::connect(gw.mqtt, &Options::new(true, "watcher")).await?;
    watcher.subscribe(&[("status/+", 1)]).await?;

    let persistent = |id: &str| Options { clean: false, session_expiry: Some(60), ..with_will(true, id, Some(2)) };
    let (late, _) = Client::connect(gw.mqtt, &persistent("late")).await?;
    let started = tokio::time::Instant::now();
    late.kill();
    let will = watcher.next_publish(Duration::from_secs(6)).await.ok_or_else(|| anyhow::anyhow!("no will"))?;
    assert_eq!(will.topic, "status/late");
    assert!(started.elapsed() >= Duration::from_millis(1900), "held for the delay: {:?}", started.elapsed());

    let (back, _) = Client::connect(gw.mqtt, &persistent("back")).await?;
    back.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_back, _) = Client::connect(gw.mqtt, &persistent("back")).await?;
    assert!(watcher.next_publish(Duration::from_secs(3)).await.is_none(), "reconnected within the delay: no will");
    Ok(())
}

/// [MQTT-3.1.3-9]: the will goes out when the session ends, if that is before the Will Delay Interval. With Session
/// Expiry 0 and a delay of 5 s the session ends with the connection, so the will is published at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_goes_out_when_the_session_ends_before_its_delay() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (mut watcher, _) = Client::connect(gw.mqtt, &Options::new(true, "watcher")).await?;
    watcher.subscribe(&[("status/+", 1)]).await?;
    let (short, _) =
        Client::connect(gw.mqtt, &Options { session_expiry: Some(0), ..with_will(true, "short", Some(5)) }).await?;
    let started = tokio::time::Instant::now();
    short.kill();
    let will =
        watcher.next_publish(Duration::from_secs(4)).await.ok_or_else(|| anyhow::anyhow!("no will within 4 s"))?;
    assert_eq!(will.topic, "status/short");
    assert!(started.elapsed() < Duration::from_secs(2), "published at once: {:?}", started.elapsed());
    Ok(())
}
