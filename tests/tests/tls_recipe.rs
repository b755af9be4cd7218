//! docs/tls.md's OpenSSL recipe, run as written: the certificates it makes serve the gateway, and mosquitto_pub,
//! pika and MQTT.js connect with the device certificate. An X.509 v1 client certificate (the recipe without its
//! `-extfile`) is refused and the refusal is logged at info with the peer and the reason; a client connecting by
//! IP address (an IP in its SNI) draws no warning; the log has no colour codes when it is not a terminal.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use meshgate_tests::pika::{PikaLogin, publish_over_tls};
use meshgate_tests::{Gateway, require_tool};

/// The first `sh` block after the recipe's heading in docs/tls.md.
fn recipe() -> Result<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tls.md"))?;
    let section = doc.split("## Making the certificates with OpenSSL").nth(1).context("the recipe's heading")?;
    let block = section.split("```sh\n").nth(1).context("the recipe's sh block")?;
    Ok(block.split("\n```").next().context("the block's end")?.to_string())
}

fn run(dir: &Path, script: &str) -> Result<()> {
    let out = Command::new("sh").arg("-ec").arg(script).current_dir(dir).output().context("sh")?;
    ensure!(out.status.success(), "{script}\nfailed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// mosquitto_pub over mqtts to `host`; Ok when it was acknowledged, else its stderr.
fn mosquitto_pub(host: &str, port: u16, dir: &Path, cert: &str, topic: &str) -> Result<(), String> {
    let out = Command::new(require_tool("mosquitto_pub"))
        .args(["-h", host, "-p", &port.to_string(), "-q", "1", "-t", topic, "-m", "on"])
        .args(["--cafile", "ca.pem", "--cert", &format!("{cert}.pem"), "--key", &format!("{cert}.key")])
        .current_dir(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_openssl_recipe_serves_mosquitto_pub_pika_and_mqtt_js_and_a_v1_certificate_is_refused_in_the_log()
-> Result<()> {
    let pki = tempfile::tempdir()?;
    let dir = pki.path();
    run(dir, &recipe()?)?;
    // The mistake the doc warns of: the same request signed without `-extfile`, an X.509 v1 certificate.
    run(
        dir,
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=old-pump -keyout old-pump.key -out old-pump.csr\n\
         openssl x509 -req -in old-pump.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -out old-pump.pem",
    )?;
    let text =
        Command::new("openssl").args(["x509", "-in", "old-pump.pem", "-noout", "-text"]).current_dir(dir).output()?;
    ensure!(String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"), "the control certificate is v1");

    let data = tempfile::tempdir()?;
    let d = dir.display();
    let gw = Gateway::start_logging(data.path(), "info", |base| {
        let base = base
            .replace("[listeners.mqtt]\n", "[listeners.mqtt]\ntls_bind = \"127.0.0.1:0\"\n")
            .replace("[listeners.amqp]\n", "[listeners.amqp]\ntls_bind = \"127.0.0.1:0\"\n");
        format!(
            "{base}\n[tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\nclient_ca_file = \"{d}/ca.pem\"\n"
        )
    })?;
    let mqtts = gw.listener("mqtts")?.port();

    mosquitto_pub("localhost", mqtts, dir, "pump-7", "plant/pump-7/mosquitto").map_err(anyhow::Error::msg)?;
    // By address: mosquitto_pub (OpenSSL) sends 127.0.0.1 as its SNI name; served, and no warning about it.
    mosquitto_pub("127.0.0.1", mqtts, dir, "pump-7", "plant/pump-7/by-ip").map_err(anyhow::Error::msg)?;
    let (cert, key) = (dir.join("pump-7.pem"), dir.join("pump-7.key"));
    publish_over_tls(
        gw.listener("amqps")?,
        &dir.join("ca.pem"),
        PikaLogin::Certificate(&cert, &key),
        "plant.pump-7.pika",
        "on",
    )
    .await?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/mqttjs_publish.mjs");
    let out = Command::new(require_tool("node"))
        .arg(script)
        .args([&mqtts.to_string(), "ca.pem", "pump-7.pem", "pump-7.key", "plant/pump-7/mqttjs", "on"])
        .current_dir(dir)
        .output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("published"),
        "MQTT.js (npm `mqtt` in tests/browser, installed by .ci/setup) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = gw.wait_for_events(4, Duration::from_secs(10))?;
    let subjects: Vec<&str> = events.iter().filter_map(|e| e["subject"].as_str()).collect();
    for want in ["plant/pump-7/mosquitto", "plant/pump-7/by-ip", "plant.pump-7.pika", "plant/pump-7/mqttjs"] {
        assert!(subjects.contains(&want), "{want} missing from {subjects:?}");
    }

    let refused = mosquitto_pub("localhost", mqtts, dir, "old-pump", "plant/old-pump");
    assert!(refused.is_err(), "a v1 client certificate must be refused");
    let line = gw.wait_for_log(&["TLS handshake failed", "X.509 v1"], Duration::from_secs(10))?;
    assert!(line.contains(" INFO ") && line.contains("peer=\"127.0.0.1:"), "at info, with the peer: {line}");

    let log = gw.log_lines();
    assert!(!log.iter().any(|l| l.contains("Illegal SNI")), "rustls' SNI warning is silenced");
    assert!(!log.iter().any(|l| l.contains('\u{1b}')), "no colour codes in a log that is not a terminal");
    Ok(())
}
