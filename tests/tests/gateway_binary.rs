//! The `meshgate` binary's contracts: startup errors, `check`, the admin endpoint, graceful shutdown, and the
//! MQTT session rules a raw client can probe (malformed packets, size limits, keep-alive, takeover).

use std::process::Command;
use std::time::{Duration, Instant};

use meshgate_protocols::mqtt::{Connect, Packet, Publish, QoS, ReasonCode, Version};
use meshgate_tests::raw::{RawClient, Reply};
use meshgate_tests::{Gateway, base_config, meshgate_bin};

#[test]
fn a_port_in_use_is_a_clear_startup_error_naming_the_key() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("meshgate.toml");
    for listener in ["mqtt", "amqp"] {
        let table = format!("[listeners.{listener}]\nbind = \"127.0.0.1:0\"");
        let taken_table = format!("[listeners.{listener}]\nbind = \"127.0.0.1:{port}\"");
        std::fs::write(&config, base_config(dir.path()).replace(&table, &taken_table))?;
        let out = Command::new(meshgate_bin()).arg("--config").arg(&config).output()?;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let key = format!("listeners.{listener}.bind");
        assert!(stderr.contains(&key) && stderr.contains("already in use"), "{stderr}");
    }
    Ok(())
}

#[test]
fn check_validates_without_starting_and_names_file_key_and_problem() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.toml");
    std::fs::write(&good, base_config(dir.path()))?;
    let out = Command::new(meshgate_bin()).args(["check", "--config"]).arg(&good).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[auth]\nallow_anonymous = false\n[[auth.users]]\nusername = \"d\"\npassword_hash = \"plain\"\n",
    )?;
    let out = Command::new(meshgate_bin()).args(["check", "--config"]).arg(&bad).output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml") && stderr.contains("auth.users[0].password_hash"), "{stderr}");
    assert!(stderr.contains("hash-password"), "{stderr}");

    let out = Command::new(meshgate_bin())
        .args(["check", "--config"])
        .arg(&good)
        .env("MESHGATE_LISTENERS__MQTT__BIND", "not-an-address")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("listeners.mqtt.bind"), "{stderr}");
    assert!(stderr.contains("environment MESHGATE_LISTENERS__MQTT__BIND"), "the variable is named: {stderr}");
    Ok(())
}

#[test]
fn check_catches_what_start_would_on_this_host() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let check = |text: String| -> anyhow::Result<(Option<i32>, String)> {
        let path = dir.path().join("m.toml");
        std::fs::write(&path, text)?;
        let out = Command::new(meshgate_bin()).args(["check", "--config"]).arg(&path).output()?;
        Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    // `localhost:PORT` is a bind address (resolved), and the gateway listens on it.
    let local = base_config(dir.path()).replace("bind = \"127.0.0.1:0\"", "bind = \"localhost:0\"");
    assert_eq!(check(local.clone())?.0, Some(0));
    let gw = Gateway::start_with(|base| base.replace("bind = \"127.0.0.1:0\"", "bind = \"localhost:0\""))?;
    assert!(gw.mqtt.ip().is_loopback(), "{}", gw.mqtt);

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")?;
    let g = garbage.display();
    let cases = [
        (format!("{local}\n[tls]\ncert_file = \"{g}\"\nkey_file = \"{g}\"\n"), "tls.cert_file"),
        (
            format!("{local}\n[tls]\ncert_file = \"{}/missing.pem\"\nkey_file = \"{g}\"\n", dir.path().display()),
            "tls.cert_file",
        ),
        (
            local.replace("bind = \"localhost:0\"\n\n[admin]", "bind = \"192.0.2.1:1883\"\n\n[admin]"),
            "listeners.mqtt.bind",
        ),
        (
            local.replace(&format!("data_dir = \"{}\"", dir.path().display()), &format!("data_dir = \"{g}\"")),
            "gateway.data_dir",
        ),
    ];
    for (text, key) in cases {
        let (code, stderr) = check(text)?;
        assert_eq!(code, Some(2), "{key}: {stderr}");
        assert!(stderr.contains(&format!("error: {}: {key}", dir.path().join("m.toml").display())), "{key}: {stderr}");
    }
    // A client CA for mTLS that is not a certificate.
    let ca = format!("{local}\n[tls]\ncert_file = \"{g}\"\nkey_file = \"{g}\"\nclient_ca_file = \"{g}\"\n");
    assert_eq!(check(ca)?.0, Some(2));
    Ok(())
}

#[test]
fn the_admin_endpoint_reports_health_readiness_and_metrics() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    assert_eq!(gw.admin_get("/healthz")?.0, 200);
    let body = gw.wait_for_readyz(200, Duration::from_secs(10))?;
    assert_eq!(body.trim(), "ready");
    let (status, metrics) = gw.admin_get("/metrics")?;
    assert_eq!(status, 200);
    for family in [
        "meshgate_connections{protocol=\"mqtt\"} 0",
        "meshgate_messages_in_total{protocol=\"mqtt\"} 0",
        "meshgate_rejects_total{protocol=\"mqtt\",reason=\"malformed\"} 0",
        "meshgate_uplink_events_total{uplink=\"local\"} 0",
    ] {
        assert!(metrics.contains(family), "missing {family} in\n{metrics}");
    }
    Ok(())
}

#[test]
fn sigterm_shuts_down_cleanly_keeping_every_acknowledged_event() -> anyhow::Result<()> {
    let mut gw = Gateway::start()?;
    let mut c = RawClient::connect(gw.mqtt, Version::V5, "before-shutdown", 30)?;
    for id in 1..=50u16 {
        let payload = id.to_string();
        c.send(&Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            packet_id: Some(id),
            topic: "s/t",
            payload: payload.as_bytes(),
            ..Publish::default()
        }))?;
    }
    for id in 1..=50u16 {
        assert_eq!(c.recv()?, Reply::Ack(4, id, ReasonCode::SUCCESS));
    }
    let status = gw.terminate()?;
    assert!(status.success(), "{status:?}");
    // The connected client was told why.
    assert_eq!(c.recv()?, Reply::Disconnect(ReasonCode::SERVER_SHUTTING_DOWN));
    // Acknowledged means in the spool; the forwarders delivered it before the gateway exited.
    assert_eq!(gw.events()?.len(), 50);
    Ok(())
}

#[test]
fn a_malformed_packet_gets_disconnect_0x81_over_v5_and_a_close_over_311_while_others_carry_on() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let mut bystander = RawClient::connect(gw.mqtt, Version::V311, "bystander", 30)?;
    let mut c = RawClient::connect(gw.mqtt, Version::V5, "malformed-5", 30)?;
    // PUBLISH with QoS 3.
    c.send_raw(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01])?;
    assert_eq!(c.recv()?, Reply::Disconnect(ReasonCode::MALFORMED_PACKET));
    assert_eq!(c.recv()?, Reply::Closed);
    let mut c = RawClient::connect(gw.mqtt, Version::V5, "wildcard-5", 30)?;
    c.send(&Packet::Publish(Publish { topic: "a/+", ..Publish::default() }))?;
    assert_eq!(c.recv()?, Reply::Disconnect(ReasonCode::TOPIC_NAME_INVALID));
    let mut c = RawClient::connect(gw.mqtt, Version::V311, "malformed-311", 30)?;
    // SUBSCRIBE with reserved flags 0000 instead of 0010.
    c.send_raw(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00])?;
    assert_eq!(c.recv()?, Reply::Closed);
    bystander.send(&Packet::PingReq)?;
    assert_eq!(bystander.recv()?, Reply::PingResp);
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(metrics.contains("meshgate_rejects_total{protocol=\"mqtt\",reason=\"malformed\"} 3"), "{metrics}");
    Ok(())
}

#[test]
fn a_packet_above_the_maximum_size_gets_disconnect_0x95() -> anyhow::Result<()> {
    let gw = Gateway::start_with(|b| {
        b.replace("bind = \"127.0.0.1:0\"\n\n[admin]", "bind = \"127.0.0.1:0\"\nmax_packet_size = 1024\n\n[admin]")
    })?;
    let mut c = RawClient::connect(gw.mqtt, Version::V5, "big", 30)?;
    let payload = vec![b'x'; 2000];
    c.send(&Packet::Publish(Publish { topic: "big", payload: &payload, ..Publish::default() }))?;
    assert_eq!(c.recv()?, Reply::Disconnect(ReasonCode::PACKET_TOO_LARGE));
    Ok(())
}

#[test]
fn keep_alive_is_enforced_at_one_and_a_half_times_the_interval() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let started = Instant::now();
    let mut c = RawClient::connect(gw.mqtt, Version::V5, "sleepy", 1)?;
    assert_eq!(c.recv()?, Reply::Disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400), "closed after {waited:?}, before 1.5 × keep-alive");
    // A client that pings in time stays connected.
    let mut c = RawClient::connect(gw.mqtt, Version::V311, "awake", 1)?;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        c.send(&Packet::PingReq)?;
        assert_eq!(c.recv()?, Reply::PingResp);
    }
    Ok(())
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_the_session_over() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let mut first = RawClient::connect(gw.mqtt, Version::V5, "twin", 30)?;
    let mut second = RawClient::connect(gw.mqtt, Version::V5, "twin", 30)?;
    assert_eq!(first.recv()?, Reply::Disconnect(ReasonCode::SESSION_TAKEN_OVER));
    second.send(&Packet::PingReq)?;
    assert_eq!(second.recv()?, Reply::PingResp);
    Ok(())
}

#[test]
fn empty_client_ids_are_assigned_over_v5_and_need_a_clean_session_over_311() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let mut c = RawClient::open(gw.mqtt, Version::V311)?;
    c.send(&Packet::Connect(Connect { version: Version::V311, clean_start: false, ..Connect::default() }))?;
    assert_eq!(c.recv()?, Reply::ConnAck(false, ReasonCode(2)));
    let mut c = RawClient::open(gw.mqtt, Version::V5)?;
    c.send(&Packet::Connect(Connect { version: Version::V5, clean_start: true, ..Connect::default() }))?;
    assert_eq!(c.recv()?, Reply::ConnAck(false, ReasonCode::SUCCESS));
    c.send(&Packet::Publish(Publish {
        topic: "anon/t",
        payload: b"1",
        qos: QoS::AtLeastOnce,
        packet_id: Some(9),
        ..Publish::default()
    }))?;
    assert_eq!(c.recv()?, Reply::Ack(4, 9, ReasonCode::SUCCESS));
    let events = gw.wait_for_events(1, Duration::from_secs(10))?;
    let device = events[0]["deviceid"].as_str().unwrap_or_default();
    assert!(device.starts_with("mg-"), "assigned id {device}");
    Ok(())
}

#[test]
fn qos2_resends_before_pubrel_are_stored_once() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let mut c = RawClient::connect(gw.mqtt, Version::V311, "exactly-once", 30)?;
    let publish =
        Publish { topic: "q2", payload: b"once", qos: QoS::ExactlyOnce, packet_id: Some(5), ..Publish::default() };
    c.send(&Packet::Publish(publish))?;
    assert_eq!(c.recv()?, Reply::Ack(5, 5, ReasonCode::SUCCESS));
    c.send(&Packet::Publish(Publish { dup: true, ..publish }))?;
    assert_eq!(c.recv()?, Reply::Ack(5, 5, ReasonCode::SUCCESS));
    c.send(&Packet::PubResponse(meshgate_protocols::mqtt::PubResponse::new(
        meshgate_protocols::mqtt::PubResponseKind::PubRel,
        5,
    )))?;
    assert_eq!(c.recv()?, Reply::Ack(7, 5, ReasonCode::SUCCESS));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(gw.wait_for_events(1, Duration::from_secs(10))?.len(), 1);
    Ok(())
}

#[test]
fn unsupported_protocol_levels_are_answered_in_a_form_the_client_reads() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    // MQTT 3.1 ("MQIsdp", level 3) is served, as 3.1.1 (its CONNACK has no Session Present flag).
    let mut c = RawClient::open(gw.mqtt, Version::V311)?;
    c.send_raw(&[0x10, 0x0e, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c, 0x00, 0x00])?;
    assert_eq!(c.recv()?, Reply::ConnAck(false, ReasonCode::SUCCESS));
    // "MQIsdp" at another level, and levels below 5 that no MQTT has: 3.1.1's return code 1.
    for (name, level) in [(&b"MQIsdp"[..], 4u8), (&b"MQTT"[..], 2)] {
        let mut c = RawClient::open(gw.mqtt, Version::V311)?;
        let mut connect = vec![0x10, u8::try_from(2 + name.len() + 6)?, 0x00, u8::try_from(name.len())?];
        connect.extend_from_slice(name);
        connect.extend_from_slice(&[level, 0x02, 0x00, 0x3c, 0x00, 0x00]);
        c.send_raw(&connect)?;
        assert_eq!(c.recv()?, Reply::ConnAck(false, ReasonCode(1)), "level {level}");
    }
    // Above 5: MQTT 5's reason 0x84.
    let mut c = RawClient::open(gw.mqtt, Version::V5)?;
    c.send_raw(&[0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x00])?;
    assert_eq!(c.recv()?, Reply::ConnAck(false, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION));
    Ok(())
}

fn publish_qos1(c: &mut RawClient, id: u16, payload: &[u8]) -> anyhow::Result<Reply> {
    c.send(&Packet::Publish(Publish {
        topic: "t",
        payload,
        qos: QoS::AtLeastOnce,
        packet_id: Some(id),
        ..Publish::default()
    }))?;
    c.recv()
}

#[test]
fn a_failing_uplink_keeps_acknowledged_events_in_the_spool_until_it_recovers() -> anyhow::Result<()> {
    // /dev/full accepts the open and fails every write with ENOSPC: an uplink whose destination is full.
    let data_dir = tempfile::tempdir()?;
    let spool_dir = data_dir.path().join("spool-kept");
    let spool_key = format!("\n[spool]\ndir = \"{}\"\n", spool_dir.display());
    let broken = spool_key.clone() + "\n[[uplinks]]\nname = \"local\"\nkind = \"file\"\npath = \"/dev/full\"\n";
    let mut gw = Gateway::start_with(|b| b + &broken)?;
    let mut c = RawClient::connect(gw.mqtt, Version::V5, "through-outage", 30)?;
    for id in 1..=5u16 {
        assert_eq!(publish_qos1(&mut c, id, id.to_string().as_bytes())?, Reply::Ack(4, id, ReasonCode::SUCCESS));
    }
    let body = gw.wait_for_readyz(503, Duration::from_secs(10))?;
    assert!(body.contains("no uplink is healthy"), "{body}");
    std::thread::sleep(Duration::from_millis(1100));
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(!metrics.contains("meshgate_uplink_failures_total{uplink=\"local\"} 0"), "{metrics}");
    let age = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshgate_uplink_oldest_pending_seconds{uplink=\"local\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(age >= 1.0, "the backlog's age must show: {age}\n{metrics}");
    assert!(gw.terminate()?.success());

    // The same spool, the uplink repaired: everything acknowledged arrives, in order.
    let gw = Gateway::start_with(|b| b + &spool_key)?;
    let events = gw.wait_for_events(5, Duration::from_secs(10))?;
    let payloads: Vec<_> = events.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(payloads, (1..=5).map(serde_json::Value::from).collect::<Vec<_>>());
    Ok(())
}

/// A tmpfs of a fixed size, unmounted on drop: a disk that really fills up.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> anyhow::Result<SmallDisk> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()?;
        anyhow::ensure!(status.success(), "mounting a tmpfs failed: this test needs root (CI runs as root)");
        Ok(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_refuses_new_messages_cleanly_and_keeps_every_acknowledged_one() -> anyhow::Result<()> {
    let disk = SmallDisk::mount("256k")?;
    let spool_key = format!("\n[spool]\ndir = \"{}\"\n", disk.0.path().display());
    // The uplink is down too, so the spool has to hold everything until the disk is full.
    let broken = spool_key.clone() + "\n[[uplinks]]\nname = \"local\"\nkind = \"file\"\npath = \"/dev/full\"\n";
    // QoS 0 waits for durability here, so a QoS 0 device learns of the full disk too.
    let qos0_durable = |b: String| b.replace("[admin]", "qos0_wait_durable = true\n\n[admin]");
    let mut gw = Gateway::start_with(|b| qos0_durable(b) + &broken)?;
    let mut c = RawClient::connect(gw.mqtt, Version::V5, "filler", 30)?;
    let payload = vec![b'x'; 8 * 1024];
    let mut acknowledged = 0u16;
    let refused = loop {
        let id = acknowledged + 1;
        anyhow::ensure!(id < 200, "a 256 KiB disk never filled up");
        match publish_qos1(&mut c, id, &payload)? {
            Reply::Ack(4, got, ReasonCode::SUCCESS) if got == id => acknowledged += 1,
            other => break other,
        }
    };
    assert_eq!(refused, Reply::Ack(4, acknowledged + 1, ReasonCode::UNSPECIFIED_ERROR));
    assert!(acknowledged > 5, "only {acknowledged} fitted");
    // The connection and the gateway stay up; readiness says why it refuses.
    c.send(&Packet::PingReq)?;
    assert_eq!(c.recv()?, Reply::PingResp);
    let mut telemetry = RawClient::connect(gw.mqtt, Version::V5, "qos0", 30)?;
    telemetry.send(&Packet::Publish(Publish { topic: "t", payload: &payload, ..Publish::default() }))?;
    assert_eq!(telemetry.recv()?, Reply::Disconnect(ReasonCode::UNSPECIFIED_ERROR));
    let body = gw.wait_for_readyz(503, Duration::from_secs(10))?;
    assert!(body.contains("the spool cannot write"), "{body}");
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(metrics.contains("meshgate_spool_healthy 0"), "{metrics}");
    assert!(gw.terminate()?.success());

    // Restart on the full disk with a working uplink: every acknowledged message is delivered.
    let gw = Gateway::start_with(|b| b + &spool_key)?;
    let events = gw.wait_for_events(usize::from(acknowledged), Duration::from_secs(20))?;
    assert_eq!(events.len(), usize::from(acknowledged));
    Ok(())
}
