//! The README's tour, as a test: Mosquitto's own command-line client publishes to meshgate over MQTT 3.1, 3.1.1
//! and 5, at every QoS, with and without CloudEvents attributes. `mosquitto_pub` must be installed (`.ci/run` installs
//! `mosquitto-clients`); a missing tool fails the test rather than skipping it.

use std::process::Command;
use std::time::Duration;

use meshgate_tests::{Gateway, require_tool};
use serde_json::json;

fn mosquitto_pub(gw: &Gateway, args: &[&str]) -> anyhow::Result<String> {
    let bin = require_tool("mosquitto_pub");
    let out = Command::new(bin).args(["-h", "127.0.0.1", "-p", &gw.mqtt.port().to_string()]).args(args).output()?;
    anyhow::ensure!(out.status.success(), "mosquitto_pub {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn mosquitto_pub_publishes_at_every_qos_over_31_311_and_5() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        for qos in ["0", "1", "2"] {
            let topic = format!("cli/{version}/q{qos}");
            let payload = format!("{{\"v\":\"{version}\",\"qos\":{qos}}}");
            mosquitto_pub(
                &gw,
                &["-V", version, "-q", qos, "-i", &format!("cli-{version}-{qos}"), "-t", &topic, "-m", &payload],
            )?;
        }
    }
    let events = gw.wait_for_events(9, Duration::from_secs(10))?;
    assert_eq!(events.len(), 9, "{events:#?}");
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        for qos in [0, 1, 2] {
            let e = events
                .iter()
                .find(|e| e["subject"] == format!("cli/{version}/q{qos}"))
                .ok_or_else(|| anyhow::anyhow!("no event for {version} QoS {qos}"))?;
            assert_eq!(e["data"], json!({"v": version, "qos": qos}));
            assert_eq!(e["deviceid"], format!("cli-{version}-{qos}"));
        }
    }
    Ok(())
}

#[test]
fn mosquitto_pub_v5_user_properties_become_the_cloudevent() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    mosquitto_pub(
        &gw,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "devices/pump-3/status",
            "-m",
            "running",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "user-property",
            "specversion",
            "1.0",
            "-D",
            "publish",
            "user-property",
            "id",
            "pump-3-0001",
            "-D",
            "publish",
            "user-property",
            "source",
            "/site/7/pump-3",
            "-D",
            "publish",
            "user-property",
            "type",
            "com.example.pump.status",
        ],
    )?;
    let stderr = mosquitto_pub(
        &gw,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "devices/pump-3/status",
            "-m",
            "x",
            "-D",
            "publish",
            "user-property",
            "specversion",
            "1.0",
        ],
    )?;
    // mosquitto_pub exits 0 but reports the refusal it received.
    assert!(stderr.contains("Payload format invalid"), "{stderr}");
    let events = gw.wait_for_events(1, Duration::from_secs(10))?;
    assert_eq!(
        events,
        vec![json!({
            "specversion": "1.0", "id": "pump-3-0001", "source": "/site/7/pump-3", "type": "com.example.pump.status",
            "datacontenttype": "text/plain", "data": "running"
        })]
    );
    Ok(())
}
