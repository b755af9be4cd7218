//! `edge-agent` bridging the real Mosquitto on 127.0.0.1:1883 into the mesh: `mosquitto_pub` publishes to bridged
//! topics, the messages arrive in the uplink as CloudEvents with the gateway's mapping rules, and nothing is lost
//! when the agent is killed with SIGKILL mid-stream: what it had not acknowledged, and what was published while it
//! was down, Mosquitto delivers again to its persistent session when it returns. An event already marked as bridged
//! or as come from the mesh is never bridged again.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meshgate_tests::edge_agent::EdgeAgent;
use meshgate_tests::require_tool;
use serde_json::Value;

/// A prefix no other run shares, so the broker's retained state and other tests stay out of the way.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{tag}-{}-{nanos}", std::process::id())
}

fn config(data_dir: &std::path::Path, run: &str, version: &str) -> String {
    format!(
        r#"[gateway]
id = "edge-test"
data_dir = "{dir}"

[[bridges]]
name = "site"
host = "127.0.0.1"
port = 1883
version = "{version}"
client_id = "{run}"
topics = ["bridge-test/{run}/#"]
max_inflight = 20

[[rules]]
topic = "bridge-test/{run}/{{deviceid}}/telemetry"
type = "com.example.telemetry"
"#,
        dir = data_dir.display()
    )
}

/// The `seq` of every event from the run, with how often each arrived.
fn arrived(agent: &EdgeAgent) -> Result<BTreeMap<u64, usize>> {
    let mut seen = BTreeMap::new();
    for e in agent.events()? {
        if let Some(seq) = e["data"]["seq"].as_u64() {
            *seen.entry(seq).or_insert(0) += 1;
        }
    }
    Ok(seen)
}

#[test]
fn bridged_messages_survive_a_sigkill_and_those_published_meanwhile_arrive_after_the_restart() -> Result<()> {
    const TOTAL: u64 = 600;
    const KILL_AT: u64 = 250;
    const RESTART_AT: u64 = 400;
    let mosquitto_pub = require_tool("mosquitto_pub");
    let dir = tempfile::tempdir()?;
    let run = unique("bridge");
    let config = config(dir.path(), &run, "3.1.1");
    let mut agent = EdgeAgent::start_in(dir.path(), &config, 1)?;
    // One mosquitto_pub, one QoS 1 message per line of its stdin.
    let topic = format!("bridge-test/{run}/dev-1/telemetry");
    let mut publisher = Command::new(mosquitto_pub)
        .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", &topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .context("spawn mosquitto_pub")?;
    let mut lines = publisher.stdin.take().context("mosquitto_pub stdin")?;
    for seq in 0..TOTAL {
        writeln!(lines, "{{\"seq\":{seq}}}")?;
        lines.flush()?;
        if seq == KILL_AT {
            // Mid-stream: part of what was published is in the uplink, the rest on its way or in flight.
            let deadline = Instant::now() + Duration::from_secs(10);
            while arrived(&agent)?.len() < 100 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            agent.kill()?;
            eprintln!("edge-agent killed with {} of {} messages in its uplink", arrived(&agent)?.len(), KILL_AT + 1);
        }
        if seq == RESTART_AT {
            agent = EdgeAgent::start_in(dir.path(), &config, 1)?;
        }
    }
    drop(lines);
    let status = publisher.wait()?;
    ensure!(status.success(), "mosquitto_pub failed: {status}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = arrived(&agent)?;
        if seen.len() as u64 >= TOTAL || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let missing: Vec<u64> = (0..TOTAL).filter(|s| !seen.contains_key(s)).collect();
    assert!(missing.is_empty(), "{} messages never arrived: {missing:?}", missing.len());
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    // At least once: what the broker had not seen acknowledged, and what the spool had not seen forwarded, comes again.
    eprintln!("{TOTAL} messages bridged across a SIGKILL; {duplicates} extra deliveries");

    let events = agent.events()?;
    let event = events.iter().find(|e| e["data"]["seq"] == 0).context("event 0")?;
    assert_eq!(event["type"], "com.example.telemetry", "{event:#}");
    assert_eq!(event["subject"], topic.as_str());
    assert_eq!(event["deviceid"], "dev-1");
    assert_eq!(event["bridge"], "site");
    assert_eq!(event["gatewayid"], "edge-test");
    assert_eq!(event["source"], "/meshgate/edge-test/mqtt/site");
    assert_eq!(event["datacontenttype"], "application/json");
    Ok(())
}

#[test]
fn an_mqtt5_bridge_keeps_binary_mode_cloudevents_and_never_bridges_marked_ones_again() -> Result<()> {
    let mosquitto_pub = require_tool("mosquitto_pub");
    let dir = tempfile::tempdir()?;
    let run = unique("bridge5");
    let agent = EdgeAgent::start_in(dir.path(), &config(dir.path(), &run, "5"), 1)?;
    let topic = format!("bridge-test/{run}/dev-5/events");
    // Events already marked as bridged (by this bridge or another) or as come from the mesh go first: they are
    // acknowledged and left out. Then the one to bridge.
    let marked: [&[&str]; 2] = [&["bridge", "other-site"], &["meshgateorigin", "mesh:cmd"]];
    for (i, marker) in marked.iter().chain([&[][..]].iter()).enumerate() {
        let id = format!("ev-{}", 5 + i);
        let mut publish = Command::new(&mosquitto_pub);
        publish
            .args(["-h", "127.0.0.1", "-p", "1883", "-V", "5", "-q", "1", "-t", &topic])
            .args(["-m", &format!("{{\"seq\":{}}}", 5 + i)])
            .args(["-D", "publish", "content-type", "application/json"])
            .args(["-D", "publish", "user-property", "specversion", "1.0"])
            .args(["-D", "publish", "user-property", "id", &id])
            .args(["-D", "publish", "user-property", "source", "/plant/7"])
            .args(["-D", "publish", "user-property", "type", "com.example.reading"]);
        if let [name, value] = marker {
            publish.args(["-D", "publish", "user-property", name, value]);
        }
        let status = publish.status()?;
        ensure!(status.success(), "mosquitto_pub failed: {status}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    // Mosquitto delivers in order: once the last one arrived, the marked ones would have too.
    let events: Vec<Value> = loop {
        let events = agent.events()?;
        if events.iter().any(|e| e["id"] == "ev-7") || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(events.len(), 1, "marked events were bridged again: {events:#?}");
    let event = events.first().context("no event bridged")?;
    assert_eq!(event["id"], "ev-7", "{event:#}");
    assert_eq!(event["source"], "/plant/7");
    assert_eq!(event["type"], "com.example.reading");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["data"]["seq"], 7);
    assert_eq!(event["bridge"], "site", "a bridged event is marked, so it is never bridged back");
    Ok(())
}

#[test]
fn check_names_the_key_of_a_bad_bridge() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("edge-agent.toml");
    std::fs::write(&path, "[[bridges]]\nname = \"site\"\nhost = \"127.0.0.1\"\ntopics = [\"a/#/b\"]\n")?;
    let out = Command::new(meshgate_tests::edge_agent_bin()).arg("check").arg("--config").arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bridges[0].topics[0]"), "{stderr}");
    std::fs::write(&path, "[[bridges]]\nname = \"site\"\nhost = \"127.0.0.1\"\ntopics = [\"a/#\"]\n")?;
    let out = Command::new(meshgate_tests::edge_agent_bin()).arg("check").arg("--config").arg(&path).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
