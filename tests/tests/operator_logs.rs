//! Log lines an operator can act on, read from the real binaries' stderr: a refused device login names the peer
//! and the user; an uplink, a downlink and a bridge that cannot reach their peer name its endpoint, with the
//! password hidden; nothing is coloured when stderr is a pipe.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use meshgate_tests::Gateway;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};

/// A local port nothing listens on.
fn closed_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_and_unreachable_uplinks_and_downlinks_are_logged_with_who_and_where() -> Result<()> {
    let (hook, amqp) = (closed_port()?, closed_port()?);
    let hash = meshgate_gateway::auth::hash_password("right")?;
    let data = tempfile::tempdir()?;
    let gw = Gateway::start_logging(data.path(), "info", |base| {
        format!(
            "{base}\n[[auth.users]]\nusername = \"dev1\"\npassword_hash = \"{hash}\"\n\n\
             [[uplinks]]\nname = \"hook\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{hook}/events\"\n\n\
             [[downlinks]]\nname = \"commands\"\nkind = \"amqp\"\nuri = \"amqp://ops:hunter2@127.0.0.1:{amqp}/%2f\"\n\
             exchange = \"meshgate.commands\"\nbinding = \"site.#\"\n\n[forwarder]\nbackoff_initial_ms = 50\n"
        )
    })?;

    let mut options = MqttOptions::new("intruder", gw.mqtt.ip().to_string(), gw.mqtt.port());
    options.set_credentials("dev1", "wrong");
    let (_client, mut events) = AsyncClient::new(options, 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await? {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => bail!("a wrong password was accepted: {ack:?}"),
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let login = gw.wait_for_log(&["device login refused", "user=\"dev1\""], Duration::from_secs(10))?;
    assert!(login.contains("peer=\"127.0.0.1\"") && login.contains("protocol=\"mqtt\""), "{login}");

    // An anonymous device's message, for the uplink that cannot reach its receiver.
    let (device, mut device_events) = AsyncClient::new(MqttOptions::new("pump-1", "127.0.0.1", gw.mqtt.port()), 10);
    device.publish("plant/pump-1", rumqttc::QoS::AtLeastOnce, false, "1").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(1), device_events.poll()).await
        {
            break;
        }
    }
    let uplink = gw.wait_for_log(&["uplink failed a batch", "uplink=hook"], Duration::from_secs(10))?;
    assert!(uplink.contains(&format!("endpoint=http://127.0.0.1:{hook}/events")), "{uplink}");
    let downlink = gw.wait_for_log(&["downlink connection ended", "downlink=commands"], Duration::from_secs(10))?;
    assert!(downlink.contains(&format!("amqp://ops:***@127.0.0.1:{amqp}/%2f")), "{downlink}");
    let log = gw.log_lines();
    assert!(!log.iter().any(|l| l.contains("hunter2")), "a password never reaches the log");
    assert!(!log.iter().any(|l| l.contains('\u{1b}')), "no colour codes when stderr is a pipe");
    Ok(())
}

#[test]
fn a_bridge_that_cannot_reach_its_broker_names_it() -> Result<()> {
    let port = closed_port()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("edge-agent.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"edge-test\"\ndata_dir = \"{}\"\n\n[[bridges]]\nname = \"site\"\nhost = \"127.0.0.1\"\nport = {port}\ntopics = [\"plant/#\"]\n",
            dir.path().display()
        ),
    )?;
    let mut child = Command::new(meshgate_tests::edge_agent_bin())
        .arg("--config")
        .arg(&config)
        .env("MESHGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let found = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("broker connection failed") => break Some(line),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = found.context("no `broker connection failed` line")?;
    assert!(line.contains("bridge=site") && line.contains(&format!("broker=127.0.0.1:{port}")), "{line}");
    assert!(!line.contains('\u{1b}'), "no colour codes when stderr is a pipe: {line:?}");
    Ok(())
}
