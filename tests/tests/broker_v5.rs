//! Conformance of the local broker, MQTT 5 flow control and corners, with a raw client that shows every byte's
//! effect: the client's Receive Maximum and Maximum Packet Size bound deliveries, topic aliases are used towards a
//! client that accepts them, and Server Keep Alive caps the keep-alive.

use std::time::Duration;

use anyhow::Context as _;

use meshgate_protocols::mqtt::{Connect, Packet, Properties, PubResponse, PubResponseKind, QoS, ReasonCode, Version};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options};
use meshgate_tests::raw::{RawClient, Reply};

fn v5_connect<'a>(id: &'a str, properties: Properties<'a>) -> Connect<'a> {
    Connect { version: Version::V5, clean_start: true, keep_alive: 30, client_id: id, properties, ..Connect::default() }
}

/// Reads `n` PUBLISHes (the raw client gives up after 10 s of silence); anything else is an error.
fn read_publishes(c: &mut RawClient, n: usize) -> anyhow::Result<Vec<Reply>> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.recv()? {
            r @ Reply::Publish { .. } => out.push(r),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_receive_maximum_bounds_unacknowledged_deliveries() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let props = Properties { receive_maximum: Some(2), ..Properties::default() };
    let (mut raw, _) = RawClient::connect_with(gw.mqtt, &v5_connect("slow", props))?;
    raw.subscribe("work", QoS::AtLeastOnce)?;
    let (publisher, _) = Client::connect(gw.mqtt, &Options::new(true, "pub")).await?;
    for n in 0..5 {
        publisher.publish("work", 1, false, &n.to_string()).await?;
    }
    let first = read_publishes(&mut raw, 2)?;
    // Nothing more arrives while two are unacknowledged.
    raw.send(&Packet::PingReq)?;
    assert_eq!(raw.recv()?, Reply::PingResp, "no third PUBLISH before the PINGRESP");
    let ids: Vec<u16> = first
        .iter()
        .filter_map(|r| if let Reply::Publish { packet_id, .. } = r { Some(*packet_id) } else { None })
        .collect();
    raw.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubAck, ids[0])))?;
    let third = read_publishes(&mut raw, 1)?;
    assert!(matches!(&third[0], Reply::Publish { payload, .. } if payload == b"2"), "{third:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_clients_maximum_packet_size_is_not_sent() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let props = Properties { maximum_packet_size: Some(64), ..Properties::default() };
    let (mut raw, _) = RawClient::connect_with(gw.mqtt, &v5_connect("small", props))?;
    raw.subscribe("t", QoS::AtLeastOnce)?;
    let (publisher, _) = Client::connect(gw.mqtt, &Options::new(true, "pub")).await?;
    publisher.publish("t", 1, false, &"x".repeat(200)).await?;
    publisher.publish("t", 1, false, "fits").await?;
    let got = read_publishes(&mut raw, 1)?;
    assert!(
        matches!(&got[0], Reply::Publish { payload, .. } if payload == b"fits"),
        "the big one was discarded: {got:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_use_topic_aliases_when_the_client_accepts_them() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let props = Properties { topic_alias_maximum: Some(5), ..Properties::default() };
    let (mut raw, _) = RawClient::connect_with(gw.mqtt, &v5_connect("aliased", props))?;
    raw.subscribe("plant/+/temperature", QoS::AtMostOnce)?;
    let (publisher, _) = Client::connect(gw.mqtt, &Options::new(true, "pub")).await?;
    for _ in 0..3 {
        publisher.publish("plant/line-1/temperature", 0, false, "21").await?;
    }
    let topics: Vec<String> = read_publishes(&mut raw, 3)?
        .into_iter()
        .filter_map(|r| if let Reply::Publish { topic, .. } = r { Some(topic) } else { None })
        .collect();
    assert_eq!(topics, ["plant/line-1/temperature", "", ""], "the topic once, then its alias alone");
    Ok(())
}

/// `listeners.mqtt.max_keepalive` (Mosquitto's name for `max_keep_alive_secs`): an MQTT 5 client asking for more,
/// or for none, is told the maximum as Server Keep Alive and held to it; a 3.1.1 client cannot be told and is
/// refused with return code 2, as Mosquitto does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_caps_a_clients_longer_keep_alive() -> anyhow::Result<()> {
    let gw = Gateway::start_with(|b| b.replace("[listeners.mqtt]\n", "[listeners.mqtt]\nmax_keepalive = 1\n"))?;
    for asked in [0, 600] {
        let connect = Connect { keep_alive: asked, ..v5_connect("lazy", Properties::default()) };
        let mut raw = RawClient::open(gw.mqtt, Version::V5)?;
        assert_eq!(raw.handshake(&connect)?, Reply::ConnAck(false, ReasonCode::SUCCESS));
        assert_eq!(raw.server_keep_alive(), Some(1), "asked for {asked}");
        // The server enforces its 1 s (1.5 s with grace): silence ends the connection with 0x8D.
        let started = std::time::Instant::now();
        assert_eq!(raw.recv()?, Reply::Disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT));
        assert!(started.elapsed() < Duration::from_secs(5), "the server's keep-alive, not the client's {asked} s");
    }
    let within = Connect { keep_alive: 1, ..v5_connect("brisk", Properties::default()) };
    let mut raw = RawClient::open(gw.mqtt, Version::V5)?;
    assert_eq!(raw.handshake(&within)?, Reply::ConnAck(false, ReasonCode::SUCCESS));
    assert_eq!(raw.server_keep_alive(), None, "a keep-alive within the maximum is the client's own");
    let old = Connect { version: Version::V311, keep_alive: 600, ..v5_connect("old", Properties::default()) };
    let mut raw = RawClient::open(gw.mqtt, Version::V311)?;
    assert_eq!(raw.handshake(&old)?, Reply::ConnAck(false, ReasonCode(2)), "3.1.1 above the maximum");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eclipse_paho_sees_the_v5_corners_as_the_spec_says() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/paho_v5_corners.py");
    let out = tokio::process::Command::new("python3").arg(script).arg(gw.mqtt.port().to_string()).output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "paho check failed (needs python3 with paho-mqtt; .ci/setup installs it):\n{stdout}\n{stderr}"
    );
    for check in ["no local", "subscription identifier", "response topic", "retain handling 2", "shared split"] {
        assert!(stdout.contains(&format!("{{\"ok\": \"{check}\"}}")), "{check} not checked:\n{stdout}");
    }
    Ok(())
}

/// A client that writes Receive Maximum + 1 QoS 2 publishes (and more) in one go without reading can still read
/// every PUBREC and the DISCONNECT 0x93 that follows: the gateway reads what is still coming for a moment after
/// its DISCONNECT instead of resetting the socket under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_receive_maximum_can_read_the_disconnect() -> anyhow::Result<()> {
    use meshgate_protocols::mqtt::{Publish, QoS};
    let gw = Gateway::start_with(|b| b.replace("[listeners.mqtt]\n", "[listeners.mqtt]\nreceive_maximum = 5\n"))?;
    let mut raw = RawClient::open(gw.mqtt, Version::V5)?;
    assert_eq!(
        raw.handshake(&v5_connect("greedy", Properties::default()))?,
        Reply::ConnAck(false, ReasonCode::SUCCESS)
    );
    // As a client that does not read while it writes: one publish per write, a little apart, past the maximum.
    for id in 1..=12u16 {
        let publish = Packet::Publish(Publish {
            topic: "greedy/t",
            qos: QoS::ExactlyOnce,
            packet_id: Some(id),
            payload: b"x",
            ..Publish::default()
        });
        raw.send(&publish).with_context(|| format!("writing publish {id} after the DISCONNECT"))?;
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut pubrecs = 0;
    loop {
        match raw.recv()? {
            Reply::Ack(5, _, ReasonCode::SUCCESS) => pubrecs += 1,
            Reply::Disconnect(code) => {
                assert_eq!(code, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
                break;
            }
            other => anyhow::bail!("expected PUBRECs then DISCONNECT 0x93, got {other:?} after {pubrecs} PUBRECs"),
        }
    }
    assert!(pubrecs <= 5, "at most Receive Maximum flows were accepted: {pubrecs}");
    Ok(())
}
