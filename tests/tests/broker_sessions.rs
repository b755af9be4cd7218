//! Conformance of the local broker, sessions (MQTT 3.1.1 section 3.1.2.4 and 4.1, MQTT 5 section 3.1.2.4, 3.1.2.11
//! and 4.1): persistent sessions keep subscriptions and queue messages while the client is away, unacknowledged
//! deliveries are resent with DUP, Session Present is right, sessions expire, and all of it survives a restart.

use std::time::Duration;

use meshgate_protocols::mqtt::{Connect, Packet, Properties, PubResponse, PubResponseKind, QoS, Version};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options, Received};
use meshgate_tests::raw::{RawClient, Reply};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn persistent(v5: bool, id: &str) -> Options {
    Options { clean: false, session_expiry: v5.then_some(3600), ..Options::new(v5, id) }
}

async fn a_persistent_session_queues_messages_while_the_client_is_away(v5: bool) -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (mut dev, connack) = Client::connect(gw.mqtt, &persistent(v5, "dev")).await?;
    assert_eq!(connack, Received::ConnAck { session_present: false, code: 0 });
    dev.subscribe(&[("cmd/dev", 1)]).await?;
    dev.disconnect().await;
    let (ctl, _) = Client::connect(gw.mqtt, &Options::new(v5, "ctl")).await?;
    for n in 0..5 {
        ctl.publish("cmd/dev", 1, false, &format!("c{n}")).await?;
    }
    gw.wait_for_events(5, WAIT)?;
    let (mut dev, connack) = Client::connect(gw.mqtt, &persistent(v5, "dev")).await?;
    assert_eq!(connack, Received::ConnAck { session_present: true, code: 0 });
    let got: Vec<String> = dev.drain(QUIET * 2).await.into_iter().map(|m| m.payload).collect();
    assert_eq!(got, ["c0", "c1", "c2", "c3", "c4"], "queued while away, in order");
    dev.disconnect().await;
    // A clean start discards the session and its subscription.
    let (mut dev, connack) = Client::connect(gw.mqtt, &Options::new(v5, "dev")).await?;
    assert_eq!(connack, Received::ConnAck { session_present: false, code: 0 });
    ctl.publish("cmd/dev", 1, false, "late").await?;
    assert!(dev.next_publish(QUIET * 2).await.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_queues_messages_while_the_client_is_away_v311() -> anyhow::Result<()> {
    a_persistent_session_queues_messages_while_the_client_is_away(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_queues_messages_while_the_client_is_away_v5() -> anyhow::Result<()> {
    a_persistent_session_queues_messages_while_the_client_is_away(true).await
}

fn connect_packet(version: Version, id: &str) -> Connect<'_> {
    let properties = Properties { session_expiry_interval: version.is_v5().then_some(3600), ..Properties::default() };
    Connect { version, clean_start: false, keep_alive: 30, client_id: id, properties, ..Connect::default() }
}

async fn unacknowledged_deliveries_are_resent_with_dup(version: Version) -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (mut raw, _) = RawClient::connect_with(gw.mqtt, &connect_packet(version, "slow"))?;
    assert_eq!(raw.subscribe("jobs", QoS::ExactlyOnce)?, [2]);
    let (publisher, _) = Client::connect(gw.mqtt, &Options::new(version.is_v5(), "pub")).await?;
    publisher.publish("jobs", 1, false, "one").await?;
    publisher.publish("jobs", 2, false, "two").await?;
    let mut first = Vec::new();
    for _ in 0..2 {
        match raw.recv()? {
            Reply::Publish { dup: false, qos, packet_id, payload, .. } => first.push((qos, packet_id, payload)),
            other => anyhow::bail!("expected a PUBLISH, got {other:?}"),
        }
    }
    // Acknowledge the QoS 2 message's PUBREC step only, then vanish.
    let (_, qos2_id, _) =
        first.iter().find(|(q, _, _)| *q == 2).cloned().ok_or_else(|| anyhow::anyhow!("{first:?}"))?;
    raw.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubRec, qos2_id)))?;
    assert_eq!(raw.recv()?, Reply::Ack(6, qos2_id, meshgate_protocols::mqtt::ReasonCode::SUCCESS), "PUBREL");
    drop(raw);
    tokio::time::sleep(QUIET).await;

    let (mut raw, present) = RawClient::connect_with(gw.mqtt, &connect_packet(version, "slow"))?;
    assert!(present, "Session Present");
    let (qos1_id, _) = first
        .iter()
        .find(|(q, _, _)| *q == 1)
        .map(|(_, id, p)| (*id, p.clone()))
        .ok_or_else(|| anyhow::anyhow!("{first:?}"))?;
    match raw.recv()? {
        Reply::Publish { dup: true, qos: 1, packet_id, payload, .. } => {
            assert_eq!((packet_id, payload.as_slice()), (qos1_id, &b"one"[..]), "the QoS 1 PUBLISH again, DUP set");
        }
        other => anyhow::bail!("expected the QoS 1 resend, got {other:?}"),
    }
    assert_eq!(raw.recv()?, Reply::Ack(6, qos2_id, meshgate_protocols::mqtt::ReasonCode::SUCCESS), "PUBREL again");
    raw.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubAck, qos1_id)))?;
    raw.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubComp, qos2_id)))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_are_resent_with_dup_v311() -> anyhow::Result<()> {
    unacknowledged_deliveries_are_resent_with_dup(Version::V311).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_are_resent_with_dup_v5() -> anyhow::Result<()> {
    unacknowledged_deliveries_are_resent_with_dup(Version::V5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_session_ends_when_its_expiry_interval_passes() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let short = Options { clean: false, session_expiry: Some(1), ..Options::new(true, "brief") };
    let (mut c, _) = Client::connect(gw.mqtt, &short).await?;
    c.subscribe(&[("x", 1)]).await?;
    c.disconnect().await;
    let (c, connack) = Client::connect(gw.mqtt, &short).await?;
    assert_eq!(connack, Received::ConnAck { session_present: true, code: 0 }, "still there right away");
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_c, connack) = Client::connect(gw.mqtt, &short).await?;
    assert_eq!(connack, Received::ConnAck { session_present: false, code: 0 }, "expired after 1 s");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_retained_messages_survive_a_gateway_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    for v5 in [false, true] {
        let (mut dev, _) = Client::connect(gw.mqtt, &persistent(v5, &format!("dev-{v5}"))).await?;
        dev.subscribe(&[("cmd/all", 1)]).await?;
        dev.disconnect().await;
    }
    let (ctl, _) = Client::connect(gw.mqtt, &Options::new(true, "ctl")).await?;
    ctl.publish("cmd/all", 1, false, "queued-before-restart").await?;
    ctl.publish("status/gw", 1, true, "retained-before-restart").await?;
    gw.wait_for_events(2, WAIT)?;
    ctl.disconnect().await;
    assert!(gw.terminate()?.success());

    let gw = Gateway::start_in(dir.path(), |b| b)?;
    for v5 in [false, true] {
        let (mut dev, connack) = Client::connect(gw.mqtt, &persistent(v5, &format!("dev-{v5}"))).await?;
        assert_eq!(connack, Received::ConnAck { session_present: true, code: 0 }, "v5 {v5}");
        let m = dev.next_publish(WAIT).await.ok_or_else(|| anyhow::anyhow!("queued message lost (v5 {v5})"))?;
        assert_eq!(m.payload, "queued-before-restart");
        let (ctl, _) = Client::connect(gw.mqtt, &Options::new(v5, "ctl2")).await?;
        ctl.publish("cmd/all", 1, false, "after-restart").await?;
        let m = dev.next_publish(WAIT).await.ok_or_else(|| anyhow::anyhow!("subscription lost (v5 {v5})"))?;
        assert_eq!(m.payload, "after-restart");
        ctl.disconnect().await;
        dev.disconnect().await;
    }
    let (mut fresh, _) = Client::connect(gw.mqtt, &Options::new(false, "fresh")).await?;
    fresh.subscribe(&[("status/#", 1)]).await?;
    let m = fresh.next_publish(WAIT).await.ok_or_else(|| anyhow::anyhow!("retained message lost"))?;
    assert_eq!((m.payload.as_str(), m.retain), ("retained-before-restart", true));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_for_an_offline_session_survive_a_crash_after_the_snapshot() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    let (mut dev, _) = Client::connect(gw.mqtt, &persistent(true, "dev")).await?;
    dev.subscribe(&[("cmd/dev", 1)]).await?;
    dev.disconnect().await;
    let (ctl, _) = Client::connect(gw.mqtt, &Options::new(true, "ctl")).await?;
    ctl.publish("cmd/dev", 1, false, "queued").await?;
    gw.wait_for_events(1, WAIT)?;
    // Past the session snapshot interval (2 s), then a SIGKILL: no shutdown save.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    gw.kill()?;
    let gw = Gateway::start_in(dir.path(), |b| b)?;
    let (mut dev, connack) = Client::connect(gw.mqtt, &persistent(true, "dev")).await?;
    assert_eq!(connack, Received::ConnAck { session_present: true, code: 0 });
    assert_eq!(dev.next_publish(WAIT).await.map(|m| m.payload).as_deref(), Some("queued"));
    Ok(())
}

/// QoS 2 is exactly once across a reconnect and a restart: the packet ids answered with PUBREC belong to the
/// session, so a DUP PUBLISH resent on a new connection (or after the gateway restarted) is answered with PUBREC
/// again and not ingested a second time; PUBREL then completes it with PUBCOMP 0x00.
fn qos2_is_exactly_once_across_reconnects(version: Version) -> anyhow::Result<()> {
    use meshgate_protocols::mqtt::{Publish, ReasonCode};
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    let properties = Properties { session_expiry_interval: Some(3600), ..Properties::default() };
    let properties = if version.is_v5() { properties } else { Properties::default() };
    let connect =
        Connect { version, clean_start: false, keep_alive: 30, client_id: "meter", properties, ..Connect::default() };
    let publish = |dup: bool, id: u16| {
        let payload: &'static [u8] = if id == 7 { b"reading-7" } else { b"reading-8" };
        Packet::Publish(Publish {
            topic: "meters/m1",
            qos: QoS::ExactlyOnce,
            dup,
            packet_id: Some(id),
            payload,
            ..Publish::default()
        })
    };
    let (mut c, _) = RawClient::connect_with(gw.mqtt, &connect)?;
    c.send(&publish(false, 7))?;
    assert_eq!(c.recv()?, Reply::Ack(5, 7, ReasonCode::SUCCESS), "PUBREC");
    drop(c);
    // A new connection resends it with DUP before releasing it.
    let (mut c, present) = RawClient::connect_with(gw.mqtt, &connect)?;
    assert!(present);
    c.send(&publish(true, 7))?;
    assert_eq!(c.recv()?, Reply::Ack(5, 7, ReasonCode::SUCCESS), "PUBREC again, for the same message");
    c.send(&publish(false, 8))?;
    assert_eq!(c.recv()?, Reply::Ack(5, 8, ReasonCode::SUCCESS));
    drop(c);
    // The gateway restarts (the session saved at shutdown); the device resends both, then releases them.
    gw.terminate()?;
    let gw = Gateway::start_in(dir.path(), |b| b)?;
    let (mut c, present) = RawClient::connect_with(gw.mqtt, &connect)?;
    assert!(present);
    for id in [7, 8] {
        c.send(&publish(true, id))?;
        assert_eq!(c.recv()?, Reply::Ack(5, id, ReasonCode::SUCCESS));
        c.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubRel, id)))?;
        assert_eq!(c.recv()?, Reply::Ack(7, id, ReasonCode::SUCCESS), "PUBCOMP");
    }
    let events = gw.wait_for_events(2, WAIT)?;
    std::thread::sleep(QUIET);
    let events = gw.events().unwrap_or(events);
    let readings: Vec<&str> = events.iter().filter_map(|e| e["data_base64"].as_str().or(e["data"].as_str())).collect();
    assert_eq!(events.len(), 2, "one event per message, however often it was sent: {readings:?}");
    Ok(())
}

#[test]
fn qos2_is_exactly_once_across_reconnects_v311() -> anyhow::Result<()> {
    qos2_is_exactly_once_across_reconnects(Version::V311)
}

#[test]
fn qos2_is_exactly_once_across_reconnects_v5() -> anyhow::Result<()> {
    qos2_is_exactly_once_across_reconnects(Version::V5)
}

/// The case: QoS 1 messages acknowledged to their publisher and queued for an offline persistent
/// subscriber, then a SIGKILL right after the last PUBACK (no session snapshot in between): every one arrives after
/// the restart, in order, once. Three rounds on one data directory, so replays stack on earlier ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_acknowledged_for_an_offline_session_survive_a_sigkill_right_after_the_puback() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    let (mut dev, _) = Client::connect(gw.mqtt, &persistent(true, "dev")).await?;
    dev.subscribe(&[("cmd/dev", 1)]).await?;
    dev.disconnect().await;
    for round in 0..3 {
        let version = if round % 2 == 0 { Version::V5 } else { Version::V311 };
        let mut ctl = RawClient::connect(gw.mqtt, version, "ctl", 30)?;
        for n in 0..200u16 {
            let acked = ctl.publish_qos1("cmd/dev", n + 1, false, format!("r{round}-{n}").as_bytes())?;
            assert_eq!(acked, Reply::Ack(4, n + 1, meshgate_protocols::mqtt::ReasonCode::SUCCESS));
        }
        gw.kill()?;
        gw = Gateway::start_in(dir.path(), |b| b)?;
        let (mut dev, connack) = Client::connect(gw.mqtt, &persistent(true, "dev")).await?;
        assert_eq!(connack, Received::ConnAck { session_present: true, code: 0 });
        let got: Vec<String> = dev.drain(QUIET * 3).await.into_iter().map(|m| m.payload).collect();
        let want: Vec<String> = (0..200).map(|n| format!("r{round}-{n}")).collect();
        assert_eq!(got, want, "round {round}: every acknowledged message, in order, once");
        dev.disconnect().await;
    }
    Ok(())
}

/// QoS 2 to a persistent subscriber across SIGKILLs: the PUBLISH a client received before the crash is resent with
/// its packet id and DUP, and after PUBREC the flow resumes with PUBREL: the subscriber's application gets each
/// message once.
#[test]
fn qos2_deliveries_to_a_persistent_session_are_exactly_once_across_sigkills() -> anyhow::Result<()> {
    use meshgate_protocols::mqtt::{Publish, ReasonCode};
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    let sub = connect_packet(Version::V5, "sub");
    let (mut s, _) = RawClient::connect_with(gw.mqtt, &sub)?;
    assert_eq!(s.subscribe("cmd/sub", QoS::ExactlyOnce)?, [2]);
    let (mut p, _) = RawClient::connect_with(gw.mqtt, &connect_packet(Version::V5, "pub"))?;
    let publish = Packet::Publish(Publish {
        topic: "cmd/sub",
        qos: QoS::ExactlyOnce,
        packet_id: Some(1),
        payload: b"once",
        ..Publish::default()
    });
    p.send(&publish)?;
    assert_eq!(p.recv()?, Reply::Ack(5, 1, ReasonCode::SUCCESS));
    // The subscriber receives it (its application may deliver it now), then the gateway dies before any answer.
    let first = s.recv()?;
    let Reply::Publish { packet_id: id, dup: false, qos: 2, .. } = first else { anyhow::bail!("{first:?}") };
    gw.kill()?;
    gw = Gateway::start_in(dir.path(), |b| b)?;
    let (mut s, present) = RawClient::connect_with(gw.mqtt, &sub)?;
    assert!(present);
    let again = s.recv()?;
    assert!(
        matches!(&again, Reply::Publish { packet_id, dup: true, .. } if *packet_id == id),
        "resent as {id}: {again:?}"
    );
    s.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubRec, id)))?;
    assert_eq!(s.recv()?, Reply::Ack(6, id, ReasonCode::SUCCESS), "PUBREL");
    // Killed again after PUBREL: the flow resumes with PUBREL, not with the message.
    gw.kill()?;
    let gw = Gateway::start_in(dir.path(), |b| b)?;
    let (mut s, _) = RawClient::connect_with(gw.mqtt, &sub)?;
    assert_eq!(s.recv()?, Reply::Ack(6, id, ReasonCode::SUCCESS), "PUBREL resent, the message is not");
    s.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubComp, id)))?;
    assert!(s.drain(QUIET * 2)?.is_empty(), "nothing more");
    Ok(())
}

/// A session exists once CONNACK says so: a persistent session created (or one a clean start ended) right before a
/// SIGKILL is as the CONNACK left it after the restart, without waiting for the session store's next round.
#[test]
fn a_session_is_durable_once_its_connack_is_sent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    for version in [Version::V5, Version::V311] {
        let id = if version.is_v5() { "fresh-5" } else { "fresh-311" };
        let (c, present) = RawClient::connect_with(gw.mqtt, &connect_packet(version, id))?;
        assert!(!present);
        drop(c);
    }
    gw.kill()?;
    gw = Gateway::start_in(dir.path(), |b| b)?;
    for version in [Version::V5, Version::V311] {
        let id = if version.is_v5() { "fresh-5" } else { "fresh-311" };
        let (_c, present) = RawClient::connect_with(gw.mqtt, &connect_packet(version, id))?;
        assert!(present, "{id}: the session CONNACK created survived the kill");
    }
    // A clean start ends the stored session: after a kill it does not come back.
    let clean = Connect { clean_start: true, ..connect_packet(Version::V311, "fresh-311") };
    let (c, present) = RawClient::connect_with(gw.mqtt, &clean)?;
    assert!(!present);
    drop(c);
    gw.kill()?;
    let gw = Gateway::start_in(dir.path(), |b| b)?;
    let (_c, present) = RawClient::connect_with(gw.mqtt, &connect_packet(Version::V5, "fresh-311"))?;
    assert!(!present, "the ended session stayed ended");
    Ok(())
}

/// A persistent session's PUBREL is as durable as its PUBCOMP: after a SIGKILL, a client that reuses the released
/// packet id for its next message and resends it with DUP (it got no PUBREC before the crash) has it stored, not
/// taken for the released one.
#[test]
fn a_released_qos2_id_reused_after_a_sigkill_is_a_new_message() -> anyhow::Result<()> {
    use meshgate_protocols::mqtt::{Publish, ReasonCode};
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    let connect = connect_packet(Version::V5, "meter");
    let publish = |dup: bool, payload: &'static [u8]| {
        Packet::Publish(Publish {
            topic: "meters/m1",
            qos: QoS::ExactlyOnce,
            dup,
            packet_id: Some(1),
            payload,
            ..Publish::default()
        })
    };
    let (mut c, _) = RawClient::connect_with(gw.mqtt, &connect)?;
    c.send(&publish(false, b"first"))?;
    assert_eq!(c.recv()?, Reply::Ack(5, 1, ReasonCode::SUCCESS), "PUBREC");
    c.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubRel, 1)))?;
    assert_eq!(c.recv()?, Reply::Ack(7, 1, ReasonCode::SUCCESS), "PUBCOMP");
    gw.kill()?;
    let gw = Gateway::start_in(dir.path(), |b| b)?;
    let (mut c, present) = RawClient::connect_with(gw.mqtt, &connect)?;
    assert!(present);
    // The next message under id 1, sent before the crash and unanswered, comes again with DUP.
    c.send(&publish(true, b"second"))?;
    assert_eq!(c.recv()?, Reply::Ack(5, 1, ReasonCode::SUCCESS));
    c.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubRel, 1)))?;
    assert_eq!(c.recv()?, Reply::Ack(7, 1, ReasonCode::SUCCESS));
    gw.wait_for_events(2, WAIT)?;
    std::thread::sleep(QUIET);
    // The file uplink forwards at least once (a kill may repeat a line): one event is one id.
    let ids: std::collections::BTreeSet<String> =
        gw.events()?.iter().filter_map(|e| e["id"].as_str().map(String::from)).collect();
    assert_eq!(ids.len(), 2, "both messages stored, once each: {ids:?}");
    Ok(())
}
