//! The admin API, `$SYS/` topics and hot reload against the real `meshgate` binary (and the edge-agent's admin
//! endpoint): the token gate, the client list and the kick on every protocol, sessions and retained messages
//! deleted durably, an operator's publish, reload by `POST /api/reload` and SIGHUP with a new user, a bad file and
//! a removed user, and `mosquitto_sub -t '$SYS/#'` as a user with the right and one without.

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use meshgate_protocols::mqtt::{Connect, Packet, ReasonCode, Version};
use meshgate_tests::clients::{Client, Options, Received};
use meshgate_tests::raw::{RawClient, Reply};
use meshgate_tests::{Gateway, admin_call, require_tool};
use serde_json::{Value, json};

const TOKEN: &str = "op3rator-t0ken";
const PASSWORD: &str = "device-pw";

/// An Argon2 hash, as `meshgate hash-password` prints it.
fn hash(secret: &str) -> String {
    meshgate_gateway::auth::hash_password(secret).expect("hash")
}

/// The base configuration with the admin token, devices that must log in, `users` (all with [`PASSWORD`]) and
/// `extra` TOML appended.
fn secured(base: String, token_hash: &str, users: &[&str], extra: &str) -> String {
    let mut text = base
        .replace(
            "[admin]\nbind = \"127.0.0.1:0\"\n",
            &format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken_hash = \"{token_hash}\"\n"),
        )
        .replace("allow_anonymous = true", "allow_anonymous = false");
    let pw = hash(PASSWORD);
    for user in users {
        text.push_str(&format!("\n[[auth.users]]\nusername = \"{user}\"\npassword_hash = \"{pw}\"\n"));
    }
    text.push_str(extra);
    text
}

/// An MQTT 5 CONNECT as `user`.
fn connect<'a>(client_id: &'a str, user: &'a str) -> Connect<'a> {
    Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 30,
        client_id,
        username: Some(user),
        password: Some(PASSWORD.as_bytes()),
        ..Connect::default()
    }
}

/// Waits until `pred` holds for the API's answer to `GET path`; returns the last answer.
fn wait_api(gw: &Gateway, path: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = gw.admin_api("GET", path, TOKEN, None)?;
        anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
        if pred(&body) || std::time::Instant::now() > deadline {
            return Ok(body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_api_is_locked_without_a_token_and_opens_only_to_the_right_one() -> anyhow::Result<()> {
    let open = Gateway::start()?;
    let (status, body) = open.admin_api("GET", "/api/clients", "anything", None)?;
    assert_eq!(status, 403, "no token configured: locked for everyone ({body})");
    assert!(body["error"].as_str().unwrap_or_default().contains("token_hash"), "{body}");
    assert_eq!(open.admin_get("/healthz")?.0, 200, "health stays open");
    assert_eq!(open.admin_get("/metrics")?.0, 200, "metrics stay open unless protect_metrics");
    let (status, doc) = open.admin_get("/api/openapi.json")?;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc)?;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/clients/{id}"]["delete"].is_object());
    drop(open);

    let token_hash = hash(TOKEN);
    let gw = Gateway::start_with(|b| {
        secured(b, &token_hash, &[], "").replace("token_hash", "protect_metrics = true\ntoken_hash")
    })?;
    let (status, text) = admin_call(gw.admin, "GET", "/api/clients", None, None)?;
    assert_eq!(status, 401, "{text}");
    let (status, _) = admin_call(gw.admin, "GET", "/api/clients", Some("wrong"), None)?;
    assert_eq!(status, 401);
    let (status, list) = gw.admin_api("GET", "/api/clients", TOKEN, None)?;
    assert_eq!((status, list), (200, json!([])));
    assert_eq!(gw.admin_get("/metrics")?.0, 401, "protect_metrics puts /metrics behind the token");
    assert_eq!(admin_call(gw.admin, "GET", "/metrics", Some(TOKEN), None)?.0, 200);
    assert_eq!(gw.admin_get("/readyz")?.0, 200, "health stays open");
    for path in ["/api/uplinks", "/api/spool", "/api/sessions", "/api/subscriptions", "/api/retained", "/api/overview"]
    {
        assert_eq!(admin_call(gw.admin, "GET", path, None, None)?.0, 401, "{path} is behind the token");
        assert_eq!(gw.admin_api("GET", path, TOKEN, None)?.0, 200, "{path}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_every_protocol_are_listed_with_their_counts_and_kicked() -> anyhow::Result<()> {
    let token_hash = hash(TOKEN);
    let gw = Gateway::start_with(|b| secured(b, &token_hash, &["dev1"], ""))?;
    // MQTT 5: three acknowledged publishes, then the kick arrives as DISCONNECT 0x98.
    let mqtt = gw.mqtt;
    let mut device =
        tokio::task::spawn_blocking(move || RawClient::connect_with(mqtt, &connect("lamp-1", "dev1"))).await??.0;
    for id in 1..=3 {
        assert!(matches!(
            device.publish_qos1("lamps/1/state", id, false, b"on")?,
            Reply::Ack(_, _, ReasonCode::SUCCESS)
        ));
    }
    // AMQP, named by its connection_name.
    let amqp = lapin::Connection::connect(
        &format!("amqp://dev1:{PASSWORD}@{}/%2f", gw.amqp()?),
        lapin::ConnectionProperties::default().with_connection_name("amqp-dev1".into()),
    )
    .await?;
    // cloudevents.json over WebSocket.
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("dev1:{PASSWORD}"));
    let auth = format!("Basic {basic}");
    let mut ws = meshgate_tests::ws::connect(
        gw.listener("ws")?,
        "/?client=ws-dev1",
        "cloudevents.json",
        &[("authorization", &auth)],
    )
    .await?;

    let list = wait_api(&gw, "/api/clients", |l| l.as_array().is_some_and(|a| a.len() == 3))?;
    let by_id = |id: &str| list.as_array().and_then(|a| a.iter().find(|c| c["client_id"] == id)).cloned();
    let lamp = by_id("lamp-1").expect("the MQTT client is listed");
    assert_eq!(
        (lamp["protocol"].as_str(), lamp["version"].as_str(), lamp["user"].as_str()),
        (Some("mqtt"), Some("5"), Some("dev1"))
    );
    assert_eq!(lamp["messages_in"], 3);
    assert_eq!(lamp["keep_alive_secs"], 30);
    assert!(lamp["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert_eq!(by_id("amqp-dev1").expect("AMQP listed")["protocol"], "amqp");
    assert_eq!(by_id("ws-dev1").expect("WebSocket listed")["protocol"], "ws");
    let (status, one) = gw.admin_api("GET", "/api/clients/lamp-1", TOKEN, None)?;
    assert_eq!((status, one["messages_in"].as_u64()), (200, Some(3)));

    let (status, kicked) = gw.admin_api("DELETE", "/api/clients/lamp-1", TOKEN, None)?;
    assert_eq!((status, kicked["disconnected"].as_u64()), (200, Some(1)));
    let disconnect = tokio::task::spawn_blocking(move || device.recv()).await??;
    assert_eq!(disconnect, Reply::Disconnect(ReasonCode::ADMINISTRATIVE_ACTION));

    assert_eq!(gw.admin_api("DELETE", "/api/clients/amqp-dev1?protocol=amqp", TOKEN, None)?.0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while amqp.status().connected() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!amqp.status().connected(), "the AMQP connection was closed");

    assert_eq!(gw.admin_api("DELETE", "/api/clients/ws-dev1?protocol=ws", TOKEN, None)?.0, 200);
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await? {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => anyhow::bail!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1008));
    wait_api(&gw, "/api/clients", |l| l.as_array().is_some_and(Vec::is_empty))?;
    assert_eq!(gw.admin_api("DELETE", "/api/clients/lamp-1", TOKEN, None)?.0, 404, "nobody left to kick");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_and_a_retained_message_deleted_by_the_operator_stay_deleted_after_a_restart() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let token_hash = hash(TOKEN);
    let edit = |b: String| {
        b.replace(
            "[admin]\nbind = \"127.0.0.1:0\"\n",
            &format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken_hash = \"{token_hash}\"\n"),
        )
    };
    let mut gw = Gateway::start_in(data.path(), edit)?;
    // A persistent session with a subscription, left offline, then messages queued for it.
    let mut o = Options::new(true, "meter-9");
    (o.clean, o.session_expiry) = (false, Some(3600));
    let (mut sub, _) = Client::connect(gw.mqtt, &o).await?;
    assert_eq!(sub.subscribe(&[("meters/#", 1)]).await?, vec![1]);
    sub.disconnect().await;
    // Offline for sure before anything is published for it.
    wait_api(&gw, "/api/clients", |l| l.as_array().is_some_and(Vec::is_empty))?;
    let (publisher, _) = Client::connect(gw.mqtt, &Options::new(true, "pub")).await?;
    publisher.publish("meters/9", 1, false, "42").await?;
    publisher.publish("config/site", 1, true, "v1").await?;
    let sessions = wait_api(&gw, "/api/sessions", |l| {
        l.as_array().and_then(|a| a.iter().find(|s| s["name"] == "meter-9")).is_some_and(|s| s["queued"] == 1)
    })?;
    let meter =
        sessions.as_array().and_then(|a| a.iter().find(|s| s["name"] == "meter-9")).cloned().unwrap_or_default();
    assert_eq!(
        (meter["connected"].as_bool(), meter["persistent"].as_bool(), meter["queued"].as_u64()),
        (Some(false), Some(true), Some(1)),
        "{meter}"
    );
    let subs = wait_api(&gw, "/api/subscriptions?client=meter-9", |l| l.as_array().is_some_and(|a| a.len() == 1))?;
    assert_eq!(subs[0]["filter"], "meters/#");
    let retained = wait_api(&gw, "/api/retained?filter=config/%23", |l| l.as_array().is_some_and(|a| a.len() == 1))?;
    assert_eq!((retained[0]["topic"].as_str(), retained[0]["payload"].as_str()), (Some("config/site"), Some("v1")));

    assert_eq!(gw.admin_api("DELETE", "/api/sessions/meter-9", TOKEN, None)?.0, 200);
    assert_eq!(gw.admin_api("DELETE", "/api/retained/config/site", TOKEN, None)?.0, 200);
    assert_eq!(gw.admin_api("DELETE", "/api/retained/config/site", TOKEN, None)?.0, 404);
    assert_eq!(gw.admin_api("DELETE", "/api/sessions/meter-9", TOKEN, None)?.0, 404);
    publisher.disconnect().await;

    // A crash right after: both deletions hold.
    gw.kill()?;
    let gw = Gateway::start_in(data.path(), edit)?;
    let sessions = wait_api(&gw, "/api/sessions", |_| true)?;
    assert!(sessions.as_array().is_some_and(|a| a.iter().all(|s| s["name"] != "meter-9")), "{sessions}");
    assert_eq!(wait_api(&gw, "/api/retained", |_| true)?, json!([]));
    let (mut again, connack) = Client::connect(gw.mqtt, &o).await?;
    assert_eq!(connack, Received::ConnAck { session_present: false, code: 0 });
    assert!(again.next_publish(Duration::from_millis(500)).await.is_none(), "the deleted session's queue is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_publish_is_made_durable_judged_by_the_acl_and_delivered() -> anyhow::Result<()> {
    let token_hash = hash(TOKEN);
    let acl = "\n[[auth.acl]]\nuser = \"admin\"\ndeny_publish = [\"firmware/#\"]\n";
    let gw = Gateway::start_with(|b| {
        b.replace(
            "[admin]\nbind = \"127.0.0.1:0\"\n",
            &format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken_hash = \"{token_hash}\"\n"),
        ) + acl
    })?;
    let (mut sub, _) = Client::connect(gw.mqtt, &Options::new(true, "valve-3")).await?;
    sub.subscribe(&[("commands/#", 1)]).await?;
    let (status, answer) =
        gw.admin_api("POST", "/api/publish", TOKEN, Some(&json!({ "topic": "commands/valve-3", "payload": "close" })))?;
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_str().unwrap_or_default().to_string();
    let got = sub.next_publish(Duration::from_secs(5)).await.expect("the command is delivered");
    assert_eq!((got.topic.as_str(), got.payload.as_str(), got.qos), ("commands/valve-3", "close", 1));
    let events = gw.wait_for_events(1, Duration::from_secs(5))?;
    let event = events.iter().find(|e| e["id"] == id.as_str()).expect("the publish became a durable event");
    assert_eq!(event["subject"], "commands/valve-3");

    let event_body = json!({ "topic": "commands/valve-3", "event": {
        "specversion": "1.0", "id": "op-1", "source": "/ops", "type": "com.example.command", "data": {"open": true}
    }});
    assert_eq!(gw.admin_api("POST", "/api/publish", TOKEN, Some(&event_body))?.0, 200);
    let got = sub.next_publish(Duration::from_secs(5)).await.expect("the CloudEvent is delivered");
    assert!(got.payload.contains("\"op-1\""), "{}", got.payload);

    let (status, refused) =
        gw.admin_api("POST", "/api/publish", TOKEN, Some(&json!({ "topic": "firmware/all", "payload": "x" })))?;
    assert_eq!(status, 403, "the ACL's rule for user admin applies: {refused}");
    let (status, _) =
        gw.admin_api("POST", "/api/publish", TOKEN, Some(&json!({ "topic": "$SYS/broker/version", "payload": "x" })))?;
    assert_eq!(status, 403, "nobody publishes into $SYS");
    let (status, _) = gw.admin_api("POST", "/api/publish", TOKEN, Some(&json!({ "topic": "a/+", "payload": "x" })))?;
    assert_eq!(status, 400, "a wildcard is no topic");
    let (status, _) =
        gw.admin_api("POST", "/api/publish", TOKEN, Some(&json!({ "topic": "a/b", "payload": "x", "event": {} })))?;
    assert_eq!(status, 400, "one payload only");
    assert!(sub.next_publish(Duration::from_millis(300)).await.is_none(), "nothing refused was delivered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_user_refuses_a_bad_file_and_disconnects_a_removed_user_without_dropping_the_others()
-> anyhow::Result<()> {
    let token_hash = hash(TOKEN);
    let gw = Gateway::start_with(|b| secured(b, &token_hash, &["dev1"], ""))?;
    let config_path = gw.data_dir.join("meshgate.toml");
    let original = std::fs::read_to_string(&config_path)?;
    let mqtt = gw.mqtt;
    let login = move |id: &'static str, user: &'static str| RawClient::connect_with(mqtt, &connect(id, user));
    let (mut dev1, _) = login("d1", "dev1")?;
    assert!(login("d2", "dev2").is_err(), "dev2 is not a user yet");

    // A new user, by POST /api/reload.
    let pw = hash(PASSWORD);
    let with_dev2 = format!("{original}\n[[auth.users]]\nusername = \"dev2\"\npassword_hash = \"{pw}\"\n");
    std::fs::write(&config_path, &with_dev2)?;
    let (status, report) = gw.admin_api("POST", "/api/reload", TOKEN, None)?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["applied"], json!(["auth"]));
    let (mut dev2, _) = login("d2", "dev2")?;
    assert!(
        matches!(dev1.publish_qos1("t/1", 1, false, b"x")?, Reply::Ack(_, _, ReasonCode::SUCCESS)),
        "dev1 kept its connection"
    );

    // A bad file is refused with file, key and problem, and what is in force stays.
    std::fs::write(&config_path, with_dev2.replace(&pw, "plaintext"))?;
    let (status, refused) = gw.admin_api("POST", "/api/reload", TOKEN, None)?;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["key"], "auth.users[1].password_hash");
    assert!(refused["file"].as_str().is_some_and(|f| f.ends_with("meshgate.toml")), "{refused}");
    assert!(refused["problem"].as_str().is_some_and(|p| p.contains("hash-password")), "{refused}");
    login("d3", "dev1")?;
    login("d4", "dev2")?;
    assert_eq!(gw.metric("meshgate_config_reloads_total{result=\"refused\"}")?, 1.0);

    // SIGHUP with dev2 removed and dev1's rights narrowed: the process lives, dev2's connection goes, dev1's
    // open connection is judged by the new rule.
    let narrowed = format!("{original}\n[[auth.acl]]\nuser = \"dev1\"\nallow_publish = [\"allowed/#\"]\n");
    std::fs::write(&config_path, narrowed)?;
    let pid = gw.pid().expect("running").to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status()?.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.metric("meshgate_config_reloads_total{result=\"applied\"}")? < 2.0 && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gw.metric("meshgate_config_reloads_total{result=\"applied\"}")?, 2.0);
    assert_eq!(gw.admin_get("/healthz")?.0, 200, "SIGHUP reloads; it does not end the process");
    assert_eq!(
        dev2.recv()?,
        Reply::Disconnect(ReasonCode::ADMINISTRATIVE_ACTION),
        "the removed user's connection ends"
    );
    assert!(login("d5", "dev2").is_err(), "and it cannot log in again");
    assert_eq!(
        dev1.publish_qos1("t/2", 2, false, b"x")?,
        Reply::Ack(4, 2, ReasonCode::NOT_AUTHORIZED),
        "the new rule applies"
    );
    assert!(matches!(dev1.publish_qos1("allowed/1", 3, false, b"x")?, Reply::Ack(_, _, ReasonCode::SUCCESS)));
    Ok(())
}

#[test]
fn sys_topics_reach_a_user_the_acl_allows_and_a_device_without_the_right_gets_0x87() -> anyhow::Result<()> {
    let token_hash = hash(TOKEN);
    let acl = "\n[[auth.acl]]\nuser = \"ops\"\nallow_subscribe = [\"$SYS/#\"]\n[broker]\nsys_interval_secs = 1\n";
    let gw = Gateway::start_with(|b| secured(b, &token_hash, &["ops", "dev1"], acl))?;
    let port = gw.mqtt.port().to_string();
    let sub = require_tool("mosquitto_sub");
    // Published once a second and retained, so the subscriber reads them at once and then their updates.
    let out = Command::new(&sub)
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "5", "-u", "ops", "-P", PASSWORD, "-t", "$SYS/#", "-v", "-W", "5"])
        .args(["-C", "40"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for topic in [
        "$SYS/broker/version meshgate ",
        "$SYS/broker/uptime ",
        "$SYS/broker/clients/connected ",
        "$SYS/broker/messages/received ",
        "$SYS/broker/messages/sent ",
        "$SYS/broker/subscriptions/count ",
        "$SYS/broker/load/messages/received/1min ",
    ] {
        assert!(text.contains(topic), "{topic} missing from:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(text.contains("$SYS/broker/clients/connected 1"), "the subscriber itself is connected:\n{text}");

    let out = Command::new(&sub)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "5",
            "-u",
            "dev1",
            "-P",
            PASSWORD,
            "-t",
            "$SYS/#",
            "-d",
            "-W",
            "3",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Subscribed (mid: 1): 135"), "SUBACK 0x87 (135) expected:\n{text}");

    // A device cannot publish into $SYS, and nothing of $SYS reaches the mesh.
    let mut dev = RawClient::connect_with(gw.mqtt, &connect("d1", "dev1"))?.0;
    assert_eq!(
        dev.publish_qos1("$SYS/broker/version", 1, false, b"fake")?,
        Reply::Ack(4, 1, ReasonCode::NOT_AUTHORIZED)
    );
    dev.send(&Packet::Disconnect(Default::default()))?;
    std::thread::sleep(Duration::from_millis(300));
    let events = gw.events()?;
    assert!(events.iter().all(|e| !e["subject"].as_str().unwrap_or_default().starts_with("$SYS")), "{events:?}");
    Ok(())
}

#[test]
fn the_edge_agent_serves_health_metrics_and_the_uplink_api_behind_its_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[gateway]\nid = \"edge-test\"\ndata_dir = \"{}\"\n\n[admin]\nbind = \"127.0.0.1:0\"\ntoken_hash = \"{}\"\n\n[[bridges]]\nname = \"site\"\nhost = \"127.0.0.1\"\nport = 1883\ntopics = [\"admin-api-test/{}/#\"]\n",
        dir.path().display(),
        hash(TOKEN),
        std::process::id()
    );
    let agent = meshgate_tests::edge_agent::EdgeAgent::start_in(dir.path(), &config, 1)?;
    let admin = agent.admin.expect("the agent announced its admin endpoint");
    assert_eq!(admin_call(admin, "GET", "/healthz", None, None)?.0, 200);
    let (status, ready) = admin_call(admin, "GET", "/readyz", None, None)?;
    assert_eq!(status, 200, "{ready}");
    let (status, metrics) = admin_call(admin, "GET", "/metrics", None, None)?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("meshgate_uplink_events_total{uplink=\"local\"}") && metrics.contains("meshgate_spool_bytes"),
        "{metrics}"
    );
    assert_eq!(admin_call(admin, "GET", "/api/uplinks", None, None)?.0, 401);
    let (status, uplinks) = admin_call(admin, "GET", "/api/uplinks", Some(TOKEN), None)?;
    assert_eq!(status, 200);
    let uplinks: Value = serde_json::from_str(&uplinks)?;
    assert_eq!((uplinks[0]["name"].as_str(), uplinks[0]["kind"].as_str()), (Some("local"), Some("file")));
    assert_eq!(uplinks[0]["state"], "caught-up");
    let (status, spool) = admin_call(admin, "GET", "/api/spool", Some(TOKEN), None)?;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&spool)?["max_bytes"].as_u64().is_some_and(|b| b > 0));
    // SIGHUP, sent out of a broker operator's habit, does not end the agent.
    let pid = agent.pid().expect("running").to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status()?.success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(admin_call(admin, "GET", "/healthz", None, None)?.0, 200, "the agent lives on after SIGHUP");
    Ok(())
}
