//! The `#![no_std]` client on the host, through an embedded-io-async adapter over a tokio socket: it publishes to
//! the real gateway and to Mosquitto, receives a command sent to the device, and after its connection is cut
//! resends what was not acknowledged. (Runs with embassy-time's std driver.)

use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use meshgate_client::mqtt::{Connect, Publish, QoS, SubscribeFilter, SubscriptionOptions, Version};
use meshgate_client::{Client, Event, Session};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client as MqttClient, Options};
use meshgate_tests::proxy::FaultProxy;
use tokio::net::TcpStream;

type Transport = FromTokio<TcpStream>;

async fn transport(addr: std::net::SocketAddr) -> anyhow::Result<Transport> {
    Ok(FromTokio::new(TcpStream::connect(addr).await?))
}

fn connect_packet(id: &str, clean: bool) -> Connect<'_> {
    let properties =
        meshgate_client::mqtt::Properties { session_expiry_interval: (!clean).then_some(3600), ..Default::default() };
    Connect {
        version: Version::V5,
        clean_start: clean,
        keep_alive: 30,
        client_id: id,
        properties,
        ..Connect::default()
    }
}

fn qos1<'a>(topic: &'a str, payload: &'a [u8]) -> Publish<'a> {
    Publish { topic, qos: QoS::AtLeastOnce, payload, ..Publish::default() }
}

/// Receives until `n` acknowledgements arrived (other events are ignored); returns their packet ids.
async fn acks(session: &mut Session<'_, Transport, 8>, n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ids = Vec::new();
    while ids.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), session.receive()).await? {
            Ok(Event::Acknowledged { packet_id, .. }) => ids.push(packet_id),
            Ok(_) => {}
            Err(e) => anyhow::bail!("{e:?}"),
        }
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_publishes_to_meshgate_and_receives_a_command() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (mut outbox, mut rx, mut tx) = ([0u8; 2048], [0u8; 1024], [0u8; 1024]);
    let client: Client<'_, 8> = Client::new(Version::V5, &mut outbox);
    let mut session = Session::new(transport(gw.mqtt).await?, client, &mut rx, &mut tx);
    let present = session.connect(&connect_packet("pump-2", true)).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(!present);
    let filter = [SubscribeFilter {
        filter: "devices/pump-2/commands/#",
        options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() },
    }];
    session.subscribe(1, &filter).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for i in 0..5u8 {
        let payload = [b'0' + i];
        session
            .publish(&qos1("devices/pump-2/events/pressure", &payload))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let mut ids = acks(&mut session, 5).await?;
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    let events = gw.wait_for_events(5, Duration::from_secs(10))?;
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| e["subject"] == "devices/pump-2/events/pressure"));
    // A command for the device, from an ordinary MQTT client.
    let (operator, _) = MqttClient::connect(gw.mqtt, &Options::new(true, "operator")).await?;
    operator.publish("devices/pump-2/commands/stop", 1, false, "now").await?;
    let command = loop {
        match tokio::time::timeout(Duration::from_secs(10), session.receive()).await? {
            Ok(Event::Message(p)) => break (p.topic.to_string(), p.payload.to_vec()),
            Ok(_) => {}
            Err(e) => anyhow::bail!("{e:?}"),
        }
    };
    assert_eq!(command, ("devices/pump-2/commands/stop".to_string(), b"now".to_vec()));
    session.disconnect().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_talks_to_mosquitto_too() -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = "127.0.0.1:1883".parse()?;
    let socket = TcpStream::connect(addr).await.map_err(|e| {
        anyhow::anyhow!("Mosquitto must run on 127.0.0.1:1883 for this test (.ci/setup starts it): {e}")
    })?;
    let (mut outbox, mut rx, mut tx) = ([0u8; 2048], [0u8; 1024], [0u8; 1024]);
    let client: Client<'_, 8> = Client::new(Version::V5, &mut outbox);
    let mut session = Session::new(FromTokio::new(socket), client, &mut rx, &mut tx);
    let id = format!("meshgate-client-{}", std::process::id());
    session.connect(&connect_packet(&id, true)).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let topic = format!("meshgate-test/{id}/echo");
    let filter = [SubscribeFilter {
        filter: &topic,
        options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() },
    }];
    session.subscribe(9, &filter).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), session.receive()).await? {
            Ok(Event::Subscribed { packet_id: 9, codes }) => {
                assert_eq!(codes, [1]);
                break;
            }
            Ok(_) => {}
            Err(e) => anyhow::bail!("{e:?}"),
        }
    }
    session.publish(&qos1(&topic, b"hello")).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (mut acked, mut echoed) = (false, false);
    while !(acked && echoed) {
        match tokio::time::timeout(Duration::from_secs(10), session.receive()).await? {
            Ok(Event::Acknowledged { .. }) => acked = true,
            Ok(Event::Message(p)) => echoed = p.payload == b"hello",
            Ok(_) => {}
            Err(e) => anyhow::bail!("{e:?}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_publishes_are_resent_after_the_connection_is_cut() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let proxy = FaultProxy::start(gw.mqtt).await?;
    let (mut outbox, mut rx, mut tx) = ([0u8; 2048], [0u8; 1024], [0u8; 1024]);
    let client: Client<'_, 8> = Client::new(Version::V5, &mut outbox);
    let mut session = Session::new(transport(proxy.addr).await?, client, &mut rx, &mut tx);
    session.connect(&connect_packet("valve-4", false)).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // The network swallows everything: the publishes leave, no acknowledgement comes back.
    proxy.black_hole();
    for i in 0..4u8 {
        let payload = [b'a' + i];
        session.publish(&qos1("devices/valve-4/events/state", &payload)).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    assert_eq!(session.client().in_flight(), 4);
    proxy.cut();
    proxy.heal();
    let old = session.replace_transport(transport(proxy.addr).await?);
    drop(old);
    session.connect(&connect_packet("valve-4", false)).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut ids = acks(&mut session, 4).await?;
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4], "all four resent and acknowledged");
    assert_eq!(session.client().in_flight(), 0);
    let events = gw.wait_for_events(4, Duration::from_secs(10))?;
    let mut payloads: Vec<String> = events.iter().filter_map(|e| e["data_base64"].as_str().map(String::from)).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 4, "every message arrived: {events:#?}");
    Ok(())
}
