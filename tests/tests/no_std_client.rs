//! The `#![no_std]` client on the host, through an embedded-io-async adapter over a tokio socket: it publishes to
//! the real gateway (CloudEvents in MQTT 5 binary mode and MQTT 3.1.1 structured mode) and to Mosquitto, receives
//! a command sent to the device, and after its connection is cut or the gateway restarted resends what was not
//! acknowledged. (Runs with embassy-time's std driver.)

use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use meshgate_client::cloudevents::{EventAttributes, EventData, EventIds};
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
async fn acks<const N: usize>(session: &mut Session<'_, Transport, N>, n: usize) -> anyhow::Result<Vec<u16>> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_1_devices_publish_structured_cloudevents() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (mut outbox, mut rx, mut tx) = ([0u8; 2048], [0u8; 512], [0u8; 1024]);
    let client: Client<'_, 8> = Client::new(Version::V311, &mut outbox);
    let mut session = Session::new(transport(gw.mqtt).await?, client, &mut rx, &mut tx);
    let connect = Connect { version: Version::V311, keep_alive: 30, client_id: "meter-9", ..Connect::default() };
    session.connect(&connect).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut ids = EventIds::new("meter-9", 99);
    // Attributes may not hold control characters (CloudEvents' String type); data may.
    let subject = "quote \" backslash \\ ünïcødé";
    let note = "quote \" backslash \\ newline \n tab \t bell \u{7} ünïcødé";
    let data = [EventData::Json(r#"{"kwh":12.5}"#), EventData::Text(note), EventData::Binary(&[0, 159, 255, 10])];
    for data in data {
        let mut id = [0u8; 24];
        let attrs = EventAttributes {
            id: ids.next(&mut id).map_err(|e| anyhow::anyhow!("{e:?}"))?,
            source: "/devices/meter-9",
            ty: "com.example.energy",
            subject: Some(subject),
            time: Some("2026-12-01T06:00:00Z"),
            datacontenttype: Some(if matches!(data, EventData::Json(_)) { "application/json" } else { "text/plain" }),
            extensions: &[("site", "hamburg")],
        };
        let topic = "devices/meter-9/events/energy";
        session.publish_event(topic, QoS::AtLeastOnce, &attrs, data).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    acks(&mut session, 3).await?;
    let events = gw.wait_for_events(3, Duration::from_secs(10))?;
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["meter-9-100", "meter-9-101", "meter-9-102"], "{events:#?}");
    for event in &events {
        assert_eq!(event["type"], "com.example.energy");
        assert_eq!(event["subject"], subject, "escaped and read back exactly");
        assert_eq!(event["site"], "hamburg");
        assert_eq!(event["time"], "2026-12-01T06:00:00Z");
    }
    assert_eq!(events[0]["data"]["kwh"], 12.5);
    assert_eq!(events[1]["data"], note);
    assert_eq!(events[2]["data_base64"], "AJ//Cg==");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_survives_a_gateway_restart_and_resends_what_was_not_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    let addr = gw.mqtt;
    let (mut outbox, mut rx, mut tx) = ([0u8; 8192], [0u8; 1024], [0u8; 1024]);
    let client: Client<'_, 64> = Client::new(Version::V5, &mut outbox);
    let mut session = Session::new(transport(addr).await?, client, &mut rx, &mut tx);
    session.connect(&connect_packet("boiler-1", false)).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // Twenty publishes acknowledged, twenty more, and the gateway is killed before the client reads their
    // acknowledgements.
    for i in 0..40u8 {
        session.publish(&qos1("devices/boiler-1/events/t", &[i])).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if i == 19 {
            acks(&mut session, 20).await?;
        }
    }
    gw.kill()?;
    let unacknowledged = session.client().in_flight();
    assert_eq!(unacknowledged, 20, "the acknowledged twenty are not kept");
    // The same port and spool, as an edge host's service manager restarts it.
    let bind = format!("[listeners.mqtt]\nbind = \"{addr}\"");
    let gw = Gateway::start_in(dir.path(), |b| b.replace("[listeners.mqtt]\nbind = \"127.0.0.1:0\"", &bind))?;
    assert_eq!(gw.mqtt, addr);
    let mut attempts = 0;
    let present = loop {
        let socket = match transport(addr).await {
            Ok(socket) => socket,
            Err(e) if attempts < 50 => {
                attempts += 1;
                eprintln!("reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        drop(session.replace_transport(socket));
        break session.connect(&connect_packet("boiler-1", false)).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    };
    // A killed gateway keeps sessions as of its last snapshot (docs/broker.md): resumed or not, the client resends.
    eprintln!("session present after the restart: {present}");
    acks(&mut session, unacknowledged).await?;
    assert_eq!(session.client().in_flight(), 0);
    // Some of the twenty may be in the uplink twice (stored before the kill, resent after it): count distinct
    // payloads, not lines.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let payloads = loop {
        let events = gw.events()?;
        let mut payloads: Vec<String> =
            events.iter().filter_map(|e| e["data_base64"].as_str().map(String::from)).collect();
        payloads.sort();
        payloads.dedup();
        if payloads.len() >= 40 || std::time::Instant::now() > deadline {
            break payloads;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(payloads.len(), 40, "{unacknowledged} were unacknowledged at the kill; every message arrived");
    eprintln!("{unacknowledged} of 40 publishes were unacknowledged when the gateway was killed, all resent");
    Ok(())
}
