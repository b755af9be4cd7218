//! The `#![no_std]` client on its real network path: a device's embassy-net stack, joined by an in-memory link to
//! a second stack that relays each accepted TCP connection to the real gateway. The client's `TcpSocket` session
//! opens, subscribes, publishes CloudEvents in MQTT 5 binary mode, receives a command, and reopens the connection
//! with `Session::open`; the events reach the gateway's uplink with their attributes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use embassy_net::tcp::TcpSocket;
use embassy_net::{Config, IpEndpoint, Ipv4Address, Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embedded_io_async::Write as _;
use meshgate_client::cloudevents::{EventAttributes, EventData, EventIds};
use meshgate_client::mqtt::{Connect, Properties, QoS, SubscribeFilter, SubscriptionOptions, Version};
use meshgate_client::net::OpenError;
use meshgate_client::{Client, Event, Session};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client as MqttClient, Options};
use meshgate_tests::embassy_link::link;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const RELAY: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
const DEVICE: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
const MQTT_PORT: u16 = 1883;

fn static_ip(address: Ipv4Address) -> Config {
    Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(address, 24),
        gateway: None,
        dns_servers: Default::default(),
    })
}

/// Accepts TCP connections on the relay's stack, one after the other, and joins each to a new connection to the
/// gateway until either side closes. Ends only on an error.
async fn relay(stack: Stack<'_>, gateway: SocketAddr) -> Result<Infallible> {
    let (mut socket_rx, mut socket_tx) = ([0u8; 4096], [0u8; 4096]);
    loop {
        let mut socket = TcpSocket::new(stack, &mut socket_rx, &mut socket_tx);
        socket.accept(MQTT_PORT).await.map_err(|e| anyhow!("accept: {e:?}"))?;
        let (mut up_read, mut up_write) = tokio::net::TcpStream::connect(gateway).await?.into_split();
        let (mut down_read, mut down_write) = socket.split();
        let to_gateway = async {
            let mut buf = [0u8; 1024];
            loop {
                match down_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) if up_write.write_all(&buf[..n]).await.is_err() => return,
                    Ok(_) => {}
                }
            }
        };
        let to_device = async {
            let mut buf = [0u8; 1024];
            loop {
                let n = match up_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if down_write.write_all(&buf[..n]).await.is_err() || down_write.flush().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = to_gateway => {}
            () = to_device => {}
        }
        socket.abort();
        let _ = socket.flush().await;
    }
}

/// The device: opens, subscribes to its commands, publishes three events and receives a command, then reopens
/// (as after a lost link) and publishes a fourth. Returns the command's topic and payload.
async fn device(stack: Stack<'_>, operator: &MqttClient) -> Result<(String, Vec<u8>)> {
    let (mut socket_rx, mut socket_tx) = ([0u8; 2048], [0u8; 2048]);
    let mut socket = TcpSocket::new(stack, &mut socket_rx, &mut socket_tx);
    socket.set_timeout(Some(embassy_time::Duration::from_secs(10)));
    let (mut outbox, mut rx, mut tx) = ([0u8; 2048], [0u8; 1024], [0u8; 1024]);
    let client: Client<'_, 8> = Client::new(Version::V5, &mut outbox);
    let mut session = Session::new(socket, client, &mut rx, &mut tx);
    let gateway = IpEndpoint::new(RELAY.into(), MQTT_PORT);
    let connect = Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: "pump-7",
        properties: Properties { session_expiry_interval: Some(600), ..Properties::default() },
        ..Connect::default()
    };
    let present = open(&mut session, gateway, &connect).await?;
    assert!(!present, "a clean start");
    let filter = [SubscribeFilter {
        filter: "devices/pump-7/commands/#",
        options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() },
    }];
    session.subscribe(1, &filter).await.map_err(|e| anyhow!("subscribe: {e:?}"))?;
    wait_for(&mut session, |e| matches!(e, Event::Subscribed { packet_id: 1, codes: [1] })).await?;
    let mut ids = EventIds::new("pump-7", 0);
    let mut publish = async |session: &mut Session<'_, TcpSocket<'_>, 8>, bar: &str| -> Result<u16> {
        let mut id = [0u8; 24];
        let attrs = EventAttributes {
            id: ids.next(&mut id).map_err(|e| anyhow!("{e:?}"))?,
            source: "/devices/pump-7",
            ty: "com.example.pressure",
            subject: Some("line-3"),
            time: None,
            datacontenttype: Some("application/json"),
            extensions: &[("site", "berlin")],
        };
        let data = format!(r#"{{"bar":{bar}}}"#);
        let topic = "devices/pump-7/events/pressure";
        let packet_id = session.publish_event(topic, QoS::AtLeastOnce, &attrs, EventData::Json(&data)).await;
        packet_id.map_err(|e| anyhow!("publish_event: {e:?}"))?.context("a QoS 1 packet id")
    };
    for bar in ["3.1", "3.2", "3.3"] {
        publish(&mut session, bar).await?;
    }
    for _ in 0..3 {
        wait_for(&mut session, |e| matches!(e, Event::Acknowledged { .. })).await?;
    }
    operator.publish("devices/pump-7/commands/stop", 1, false, "now").await?;
    let mut command = None;
    wait_for(&mut session, |e| match e {
        Event::Message(p) => {
            command = Some((p.topic.to_string(), p.payload.to_vec()));
            true
        }
        _ => false,
    })
    .await?;
    // As after a lost link: the same socket, reopened; the gateway resumes the session.
    let resume = Connect { clean_start: false, ..connect };
    let present = open(&mut session, gateway, &resume).await?;
    assert!(present, "the gateway kept the session");
    publish(&mut session, "3.4").await?;
    wait_for(&mut session, |e| matches!(e, Event::Acknowledged { .. })).await?;
    assert_eq!(session.client().in_flight(), 0);
    session.disconnect().await.map_err(|e| anyhow!("disconnect: {e:?}"))?;
    command.context("no command")
}

/// Opens the session, retried as a device does while nothing listens yet (the relay's socket listens again only
/// after it closed the previous connection).
async fn open(session: &mut Session<'_, TcpSocket<'_>, 8>, gateway: IpEndpoint, connect: &Connect<'_>) -> Result<bool> {
    for _ in 0..50 {
        match session.open(gateway, connect).await {
            Ok(present) => return Ok(present),
            Err(OpenError::Tcp(e)) => {
                eprintln!("open: {e:?}, again in 100 ms");
                embassy_time::Timer::after_millis(100).await;
            }
            Err(e) => bail!("open: {e:?}"),
        }
    }
    bail!("the relay never accepted")
}

/// Receives until `want` accepts an event.
async fn wait_for(session: &mut Session<'_, TcpSocket<'_>, 8>, mut want: impl FnMut(&Event<'_>) -> bool) -> Result<()> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), session.receive())
            .await
            .context("no event within 10 s")?
            .map_err(|e| anyhow!("receive: {e:?}"))?;
        if want(&event) {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_client_runs_on_an_embassy_net_tcp_socket_to_the_gateway() -> Result<()> {
    let gw = Gateway::start()?;
    let (operator, _) = MqttClient::connect(gw.mqtt, &Options::new(true, "operator")).await?;
    let (device_end, relay_end) = link();
    let (mut device_resources, mut relay_resources) = (StackResources::<2>::new(), StackResources::<2>::new());
    let (device_stack, mut device_runner) =
        embassy_net::new(device_end, static_ip(DEVICE), &mut device_resources, 0x5eed_0001);
    let (relay_stack, mut relay_runner) =
        embassy_net::new(relay_end, static_ip(RELAY), &mut relay_resources, 0x5eed_0002);
    let command = tokio::select! {
        never = device_runner.run() => match never {},
        never = relay_runner.run() => match never {},
        failed = relay(relay_stack, gw.mqtt) => bail!("the relay failed: {:?}", failed.err()),
        command = device(device_stack, &operator) => command?,
    };
    assert_eq!(command, ("devices/pump-7/commands/stop".to_string(), b"now".to_vec()));
    // The operator's command is an event too; the device's are those from its source.
    let events = gw.wait_for_events(5, Duration::from_secs(10))?;
    let events: Vec<_> = events.into_iter().filter(|e| e["source"] == "/devices/pump-7").collect();
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["pump-7-1", "pump-7-2", "pump-7-3", "pump-7-4"], "{events:#?}");
    for (event, bar) in events.iter().zip([3.1, 3.2, 3.3, 3.4]) {
        assert_eq!(event["type"], "com.example.pressure");
        assert_eq!(event["source"], "/devices/pump-7");
        assert_eq!(event["subject"], "line-3");
        assert_eq!(event["site"], "berlin");
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["data"]["bar"], bar, "{event:#}");
    }
    Ok(())
}
