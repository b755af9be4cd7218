//! The WebSocket listener end to end: tokio-tungstenite, Python's `websockets` and Eclipse Paho's WebSocket
//! transport against the real binary. `cloudevents.json` events are acknowledged only once durable, invalid ones
//! are refused with the documented nack or close code, subscriptions deliver local broker messages, and MQTT over
//! WebSocket runs the same sessions as MQTT over TCP.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use meshgate_tests::ws::{Ws, connect as ws_connect, next_json};

async fn events_client(gw: &Gateway, target: &str) -> anyhow::Result<Ws> {
    Ok(ws_connect(gw.listener("ws")?, target, "cloudevents.json", &[]).await?)
}

/// Reads until the gateway closes; returns the close code.
async fn close_code(ws: &mut Ws) -> anyhow::Result<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await? {
            Some(Ok(Message::Close(Some(frame)))) => return Ok(frame.code),
            Some(Ok(Message::Close(None))) | None => anyhow::bail!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => anyhow::bail!("error instead of a close frame: {e}"),
        }
    }
}

fn event(id: &str, subject: &str) -> String {
    json!({"specversion": "1.0", "id": id, "source": "/browser/app-1", "type": "com.example.click", "subject": subject,
           "datacontenttype": "application/json", "data": {"x": 1}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_json_events_are_acknowledged_in_order_once_durable_and_invalid_ones_nacked() -> anyhow::Result<()>
{
    let gw = Gateway::start()?;
    let mut ws = events_client(&gw, "/?client=app-1").await?;
    for i in 0..5 {
        ws.send(Message::text(event(&format!("e-{i}"), "ui/clicks"))).await?;
    }
    ws.send(Message::text(r#"{"specversion":"1.0","id":"bad-1","type":"t"}"#)).await?;
    ws.send(Message::text("not json at all")).await?;
    ws.send(Message::text(event("e-5", "ui/clicks"))).await?;
    let mut acks = Vec::new();
    let mut nacks = Vec::new();
    while acks.len() < 6 || nacks.len() < 2 {
        let v = next_json(&mut ws).await?;
        if let Some(id) = v.get("ack").and_then(Value::as_str) {
            acks.push(id.to_string());
        } else if v.get("nack").is_some() {
            nacks.push(v);
        } else {
            anyhow::bail!("unexpected {v}");
        }
    }
    assert_eq!(acks, ["e-0", "e-1", "e-2", "e-3", "e-4", "e-5"], "acks in the order the events came");
    assert_eq!(nacks[0]["nack"], "bad-1");
    assert!(nacks[0]["reason"].as_str().unwrap_or_default().contains("source"), "{}", nacks[0]);
    assert_eq!(nacks[1]["nack"], Value::Null, "an unreadable message has no id to name");
    // Every acknowledged event is in the uplink, exactly as sent.
    let events = gw.wait_for_events(6, Duration::from_secs(10))?;
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["e-0", "e-1", "e-2", "e-3", "e-4", "e-5"]);
    assert_eq!(events[0]["source"], "/browser/app-1");
    assert_eq!(events[0]["data"]["x"], 1);
    // A binary message is not a cloudevents.json message: close 1003.
    ws.send(Message::binary(vec![1, 2, 3])).await?;
    assert_eq!(close_code(&mut ws).await?, CloseCode::Unsupported);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_deliver_local_messages_and_events_reach_mqtt_subscribers() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let mut ws = events_client(&gw, "/?client=lamp-3").await?;
    ws.send(Message::text(json!({"subscribe": "devices/lamp-3/commands/#"}).to_string())).await?;
    assert_eq!(next_json(&mut ws).await?, json!({"subscribed": "devices/lamp-3/commands/#", "granted": true}));
    let (mut mqtt, _) = Client::connect(gw.mqtt, &Options::new(true, "operator")).await?;
    mqtt.subscribe(&[("ui/#", 1)]).await?;
    mqtt.publish("devices/lamp-3/commands/dim", 1, false, r#"{"level":30}"#).await?;
    let command = next_json(&mut ws).await?;
    assert_eq!(command["subject"], "devices/lamp-3/commands/dim", "{command}");
    assert_eq!(command["data"]["level"], 30);
    assert_eq!(command["specversion"], "1.0");
    // The other way: an acknowledged event reaches MQTT subscribers of its subject.
    ws.send(Message::text(event("tap-1", "ui/taps"))).await?;
    assert_eq!(next_json(&mut ws).await?, json!({"ack": "tap-1"}));
    let got = mqtt.next_publish(Duration::from_secs(10)).await.ok_or_else(|| anyhow::anyhow!("no MQTT delivery"))?;
    assert_eq!(got.topic, "ui/taps");
    let delivered: Value = serde_json::from_str(&got.payload)?;
    assert_eq!(delivered["id"], "tap-1", "the event itself, structured");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_its_close_code_and_others_are_unaffected() -> anyhow::Result<()> {
    let gw = Gateway::start_with(|b| {
        b.replace(
            "[listeners.ws]\n",
            "[listeners.ws]\nmax_message_size = 4096\nmax_frame_size = 4096\nmax_invalid = 3\n",
        )
    })?;
    let mut bystander = events_client(&gw, "/").await?;

    let mut big = events_client(&gw, "/").await?;
    big.send(Message::text(event(&"x".repeat(8000), "a"))).await?;
    assert_eq!(close_code(&mut big).await?, CloseCode::Size, "over max_message_size");

    let mut abusive = events_client(&gw, "/").await?;
    for _ in 0..3 {
        abusive.send(Message::text("{}")).await?;
    }
    assert_eq!(close_code(&mut abusive).await?, CloseCode::Invalid, "max_invalid invalid events in a row");

    // Text that is not UTF-8, written as a raw frame since no library sends it.
    let mut bad_utf8 = events_client(&gw, "/").await?;
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let frame = Frame::message(vec![0xC3, 0x28, 0xFF], OpCode::Data(Data::Text), true);
    bad_utf8.send(Message::Frame(frame)).await?;
    assert_eq!(close_code(&mut bad_utf8).await?, CloseCode::Invalid, "invalid UTF-8");

    // Refused upgrades: no subprotocol we speak (400), as the CloudEvents binding requires.
    match ws_connect(gw.listener("ws")?, "/", "wamp.2.json", &[]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 400),
        other => anyhow::bail!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    }

    bystander.send(Message::text(event("still-1", "a/b"))).await?;
    assert_eq!(next_json(&mut bystander).await?, json!({"ack": "still-1"}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_origin_and_credentials_guard_the_upgrade() -> anyhow::Result<()> {
    let hash = meshgate_gateway::auth::hash_password("s3cret")?;
    let gw = Gateway::start_with(|b| {
        b.replace("allow_anonymous = true", "allow_anonymous = false").replace(
            "[listeners.ws]\n",
            "[listeners.ws]\npath = \"/events\"\nallowed_origins = [\"https://app.example\"]\n",
        ) + &format!("\n[[auth.users]]\nusername = \"browser-1\"\npassword_hash = \"{hash}\"\n")
    })?;
    let addr = gw.listener("ws")?;
    let status = |r: Result<Ws, WsError>| match r {
        Err(WsError::Http(response)) => Some(response.status().as_u16()),
        _ => None,
    };
    assert_eq!(status(ws_connect(addr, "/other", "cloudevents.json", &[]).await), Some(404));
    let foreign = [("origin", "https://evil.example")];
    assert_eq!(status(ws_connect(addr, "/events", "cloudevents.json", &foreign).await), Some(403));
    // Wrong credentials: the upgrade completes, then close 1008.
    let mut wrong = ws_connect(addr, "/events?token=browser-1:nope", "cloudevents.json", &[]).await?;
    assert_eq!(close_code(&mut wrong).await?, CloseCode::Policy);
    // HTTP Basic, from an allowed origin.
    let basic = [("authorization", "Basic YnJvd3Nlci0xOnMzY3JldA=="), ("origin", "https://app.example")];
    let mut ok = ws_connect(addr, "/events", "cloudevents.json", &basic).await?;
    ok.send(Message::text(event("auth-1", "a"))).await?;
    assert_eq!(next_json(&mut ok).await?, json!({"ack": "auth-1"}));
    // The token query parameter, as a browser would send it.
    let mut token = ws_connect(addr, "/events?token=browser-1%3As3cret", "cloudevents.json", &[]).await?;
    token.send(Message::text(event("auth-2", "a"))).await?;
    assert_eq!(next_json(&mut token).await?, json!({"ack": "auth-2"}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_publishes_cloudevents_and_paho_runs_mqtt_over_websocket() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let port = gw.listener("ws")?.port().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/ws_peers.py");
    let out =
        tokio::process::Command::new("python3").arg(script).arg(&port).arg(gw.mqtt.port().to_string()).output().await?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "python peers failed (needs websockets and paho-mqtt; .ci/setup installs them):\n{stdout}\n{stderr}"
    );
    for check in ["websockets acked 10", "paho ws published", "paho ws received"] {
        assert!(stdout.contains(&format!("{{\"ok\": \"{check}\"}}")), "{check} not seen:\n{stdout}");
    }
    let events = gw.wait_for_events(11, Duration::from_secs(10))?;
    assert!(events.iter().filter(|e| e["source"] == "/python/websockets").count() == 10, "{events:#?}");
    assert!(events.iter().any(|e| e["subject"] == "paho/ws/hello" && e["protocol"] == "mqtt"), "{events:#?}");
    Ok(())
}

const WS_CONNECTIONS: &str = "meshgate_connections{protocol=\"ws\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_and_a_client_that_never_reads_is_cut_off() -> anyhow::Result<()> {
    let gw = Gateway::start_with(|b| {
        b.replace("[listeners.ws]\n", "[listeners.ws]\nping_interval_secs = 1\nidle_timeout_secs = 2\n")
    })?;
    // A client that reads answers the gateway's pings (the library does it as it reads) and stays.
    let mut lively = events_client(&gw, "/").await?;
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = lively.next().await {
            if matches!(m, Message::Close(_)) {
                return false;
            }
        }
        false
    });
    // A client that never reads subscribes to a topic that is then flooded: its socket fills, and it is cut off.
    let mut deaf = events_client(&gw, "/?client=deaf").await?;
    deaf.send(Message::text(json!({"subscribe": "flood/#"}).to_string())).await?;
    assert_eq!(gw.wait_metric(WS_CONNECTIONS, 2.0, Duration::from_secs(5)).await?, 2.0);
    let (flooder, _) = Client::connect(gw.mqtt, &Options::new(false, "flooder")).await?;
    let chunk = "z".repeat(8 * 1024);
    for _ in 0..2000 {
        flooder.publish("flood/data", 0, false, &chunk).await?;
    }
    // The silent one goes (idle, or cut off as its socket stays full); the one that reads stays.
    assert_eq!(gw.wait_metric(WS_CONNECTIONS, 1.0, Duration::from_secs(30)).await?, 1.0, "the deaf client is gone");
    assert!(!reader.is_finished(), "the reading client is still connected");
    let mut fresh = events_client(&gw, "/").await?;
    fresh.send(Message::text(event("after-flood", "a"))).await?;
    assert_eq!(next_json(&mut fresh).await?, json!({"ack": "after-flood"}));
    reader.abort();
    drop(deaf);
    Ok(())
}

fn encode(packet: &meshgate_protocols::mqtt::Packet<'_>) -> anyhow::Result<Vec<u8>> {
    use meshgate_protocols::mqtt::Version;
    let mut out = vec![0u8; packet.encoded_len(Version::V5)];
    let n = packet.encode(Version::V5, &mut out).map_err(|e| anyhow::anyhow!("{e}"))?;
    out.truncate(n);
    Ok(out)
}

/// Reads binary messages until `n` MQTT packets decoded; returns their types.
async fn read_packets(ws: &mut Ws, n: usize) -> anyhow::Result<Vec<u8>> {
    use meshgate_protocols::mqtt::{Packet, Version};
    let (mut buf, mut types) = (Vec::new(), Vec::new());
    while types.len() < n {
        while let Ok((packet, used)) = Packet::decode(&buf, Version::V5, usize::MAX) {
            types.push(packet.packet_type() as u8);
            buf.drain(..used);
        }
        if types.len() >= n {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            Some(Ok(Message::Text(_))) => anyhow::bail!("MQTT over WebSocket answered in a text message"),
            Some(Ok(_)) => {}
            other => anyhow::bail!("ended: {other:?}"),
        }
    }
    Ok(types)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_packets_split_across_and_packed_within_websocket_messages_run_the_same_session() -> anyhow::Result<()> {
    use meshgate_protocols::mqtt::{Connect, Packet, Publish, QoS, Version};
    let gw = Gateway::start()?;
    let mut ws = ws_connect(gw.listener("ws")?, "/mqtt", "mqtt", &[]).await?;
    let connect = encode(&Packet::Connect(Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: "tungstenite-mqtt",
        ..Connect::default()
    }))?;
    // CONNECT split over three messages.
    let (a, rest) = connect.split_at(3);
    let (b, c) = rest.split_at(rest.len() / 2);
    for part in [a, b, c] {
        ws.send(Message::binary(part.to_vec())).await?;
    }
    assert_eq!(read_packets(&mut ws, 1).await?, [2], "CONNACK");
    // PUBLISH QoS 1, PINGREQ and a second PUBLISH packed into one message.
    let mut packed = Vec::new();
    for (id, topic) in [(1u16, "ws/mqtt/a"), (2, "ws/mqtt/b")] {
        packed.extend(encode(&Packet::Publish(Publish {
            topic,
            qos: QoS::AtLeastOnce,
            packet_id: Some(id),
            payload: b"packed",
            ..Publish::default()
        }))?);
        if id == 1 {
            packed.extend(encode(&Packet::PingReq)?);
        }
    }
    ws.send(Message::binary(packed)).await?;
    let mut replies = read_packets(&mut ws, 3).await?;
    replies.sort_unstable();
    assert_eq!(replies, [4, 4, 13], "two PUBACKs and a PINGRESP");
    let events = gw.wait_for_events(2, Duration::from_secs(10))?;
    let subjects: Vec<&str> = events.iter().filter_map(|e| e["subject"].as_str()).collect();
    assert_eq!(subjects, ["ws/mqtt/a", "ws/mqtt/b"]);
    assert_eq!(events[0]["protocol"], "mqtt", "MQTT over WebSocket is MQTT");
    Ok(())
}
