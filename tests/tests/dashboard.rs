//! The dashboard in a real browser: Debian's Chromium, headless, driven by `playwright-core` from npm
//! (`tests/browser/dashboard.mjs`; both installed by `.ci/setup`). A device publishes all along; the page must
//! load with no console error, show the device and its message count rising, fit a phone-sized screen, and its
//! Kick button must disconnect the device (MQTT 5 DISCONNECT 0x98). The screenshot it takes under that load is
//! `docs/dashboard.png` when `DASHBOARD_SCREENSHOT` names that path.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshgate_protocols::mqtt::{Connect, ReasonCode, Version};
use meshgate_tests::raw::{RawClient, Reply};
use meshgate_tests::{Gateway, require_tool};
use serde_json::Value;

const TOKEN: &str = "dashboard-t0ken";

#[test]
fn the_dashboard_shows_a_publishing_device_live_and_its_kick_button_disconnects_it() -> anyhow::Result<()> {
    let node = require_tool("node");
    let chromium = require_tool("chromium");
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    anyhow::ensure!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {}: run .ci/setup (npm ci there)",
        browser_dir.display()
    );
    let token_hash = meshgate_gateway::auth::hash_password(TOKEN)?;
    let gw = Gateway::start_with(|b| {
        b.replace(
            "[admin]\nbind = \"127.0.0.1:0\"\n",
            &format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken_hash = \"{token_hash}\"\n"),
        )
    })?;

    // Background load: a few devices publishing, and the one the test watches and kicks.
    let stop = Arc::new(AtomicBool::new(false));
    let mut others = Vec::new();
    for n in 0..3 {
        let (stop, mqtt) = (Arc::clone(&stop), gw.mqtt);
        others.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let id = format!("sensor-{n}");
            let mut c = RawClient::connect(mqtt, Version::V5, &id, 30)?;
            let mut packet_id = 0u16;
            while !stop.load(Ordering::Relaxed) {
                packet_id = packet_id % 60_000 + 1;
                c.publish_qos1(&format!("sites/a/{id}/temp"), packet_id, false, b"21.5")?;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        }));
    }
    // A subscriber, so messages go out as well as in.
    {
        let (stop, mqtt) = (Arc::clone(&stop), gw.mqtt);
        others.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut c = RawClient::connect(mqtt, Version::V5, "control-room", 30)?;
            c.subscribe("sites/#", meshgate_protocols::mqtt::QoS::AtMostOnce)?;
            while !stop.load(Ordering::Relaxed) {
                c.drain(Duration::from_millis(100))?;
            }
            Ok(())
        }));
    }
    let watched = {
        let (stop, mqtt) = (Arc::clone(&stop), gw.mqtt);
        std::thread::spawn(move || -> anyhow::Result<Reply> {
            let connect = Connect {
                version: Version::V5,
                clean_start: true,
                keep_alive: 30,
                client_id: "pump-7",
                ..Connect::default()
            };
            let (mut c, _) = RawClient::connect_with(mqtt, &connect)?;
            let mut packet_id = 0u16;
            loop {
                packet_id = packet_id % 60_000 + 1;
                match c.publish_qos1("sites/a/pump-7/flow", packet_id, false, b"3.2")? {
                    Reply::Ack(..) => {}
                    other => return Ok(other),
                }
                if stop.load(Ordering::Relaxed) {
                    anyhow::bail!("pump-7 was never disconnected");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let screenshot = std::env::var("DASHBOARD_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join(format!("meshgate-dashboard-{}.png", std::process::id())));
    let out = Command::new(node)
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("http://{}/", gw.admin))
        .arg(TOKEN)
        .arg("pump-7")
        .arg(&screenshot)
        .env("CHROMIUM", chromium)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| anyhow::anyhow!("no result from the browser script:\n{stdout}\n{stderr}"))?;
    stop.store(true, Ordering::Relaxed);
    let disconnect = watched.join().map_err(|_| anyhow::anyhow!("pump-7's thread panicked"))?;
    for t in others {
        let _ = t.join();
    }

    assert!(out.status.success() && result["failure"].is_null(), "browser run failed: {result}\n{stderr}");
    assert_eq!(result["errors"], Value::Array(vec![]), "the page logged errors");
    let (first, second) = (result["first"].as_u64().unwrap_or(0), result["second"].as_u64().unwrap_or(0));
    assert!(first > 0 && second > first, "pump-7's message count must rise on the page: {first} then {second}");
    assert!(result["phoneOverflow"].as_i64().is_some_and(|o| o <= 0), "the page is wider than a phone: {result}");
    assert_eq!(result["kicked"], true);
    assert_eq!(disconnect?, Reply::Disconnect(ReasonCode::ADMINISTRATIVE_ACTION), "the Kick button disconnects pump-7");
    assert!(std::fs::metadata(&screenshot)?.len() > 10_000, "a screenshot was taken");
    Ok(())
}
