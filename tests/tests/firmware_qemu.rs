//! The client as firmware: `no_std-client/firmware` built for `thumbv7em-none-eabihf` and run on QEMU's
//! `mps2-an386` (Cortex-M4F). The client's state-machine scenarios pass on the target; the publish example, whose
//! UART QEMU connects to the real gateway, publishes CloudEvents that reach the uplink and receives a command; and
//! the Ethernet firmware (LAN9118 driver woken by its RX interrupt, embassy-net, QEMU's user network) publishes to
//! the gateway on the host, fails when the gateway is down, and rides out a gateway restart, resending what was
//! unacknowledged. Pass or fail is QEMU's exit code, set by the firmware through semihosting.

use std::time::Duration;

use anyhow::{Result, ensure};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client as MqttClient, Options};
use meshgate_tests::firmware::{self, Wiring};
use tokio::io::AsyncReadExt as _;

/// Runs the `selftest` firmware with `features` and returns what it printed; fails unless it exits with 0.
async fn selftest(features: &[&str]) -> Result<String> {
    let elf = firmware::build("selftest", features)?;
    // Scenarios only: the UART goes nowhere.
    let printed = firmware::passed(firmware::run(&elf, Wiring::Alone)?, Duration::from_secs(60)).await?;
    Ok(printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_machine_scenarios_pass_as_firmware_on_a_cortex_m4() -> Result<()> {
    let printed = selftest(&["selftest"]).await?;
    assert!(printed.contains("7 scenarios, 0 failed (qos2: false)"), "{printed}");
    let printed = selftest(&["selftest", "qos2"]).await?;
    assert!(printed.contains("9 scenarios, 0 failed (qos2: true)"), "{printed}");
    assert!(printed.contains("ok   qos2_messages_are_delivered_once"), "{printed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_firmware_reaches_the_gateway_through_the_boards_uart() -> Result<()> {
    let elf = firmware::build("publish", &[])?;
    let gw = Gateway::start()?;
    let mut qemu = firmware::run(&elf, Wiring::Uart(gw.mqtt))?;
    let device_events = |events: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        events.into_iter().filter(|e| e["source"] == "/devices/mps2-1").collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = device_events(gw.events()?);
        if events.len() >= 3 {
            break events;
        }
        if let Ok(Some(status)) = qemu.try_wait() {
            let mut printed = String::new();
            if let Some(mut stdout) = qemu.stdout.take() {
                stdout.read_to_string(&mut printed).await?;
            }
            anyhow::bail!("the firmware ended ({status}) before its events arrived:\n{printed}");
        }
        ensure!(tokio::time::Instant::now() < deadline, "no events from the firmware within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (operator, _) = MqttClient::connect(gw.mqtt, &Options::new(true, "operator")).await?;
    operator.publish("devices/mps2-1/commands/blink", 1, false, "2").await?;
    let printed = firmware::passed(qemu, Duration::from_secs(30)).await?;
    assert!(printed.contains("3 events acknowledged"), "{printed}");
    assert!(printed.contains("command devices/mps2-1/commands/blink 2"), "{printed}");
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["mps2-1-1", "mps2-1-2", "mps2-1-3"], "{events:#?}");
    for (event, celsius) in events.iter().zip([21.5, 21.75, 22.0]) {
        assert_eq!(event["type"], "com.example.temperature");
        assert_eq!(event["subject"], "room-4");
        assert_eq!(event["board"], "mps2-an386");
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["data"]["celsius"], celsius, "{event:#}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ethernet_firmware_publishes_to_the_gateway_on_the_host() -> Result<()> {
    let elf = firmware::build("net_publish", &[])?;
    let gw = Gateway::start()?;
    // The command waits, retained, for the device's subscription.
    let (operator, _) = MqttClient::connect(gw.mqtt, &Options::new(true, "operator")).await?;
    operator.publish("devices/mps2-net-1/commands/blink", 1, true, "2").await?;
    let qemu = firmware::run(&elf, Wiring::Ethernet(&[format!("port={}", gw.mqtt.port())]))?;
    let printed = firmware::passed(qemu, Duration::from_secs(60)).await?;
    assert!(printed.contains("3 events acknowledged"), "{printed}");
    assert!(printed.contains("command devices/mps2-net-1/commands/blink 2"), "{printed}");
    assert!(printed.contains("2 structured events acknowledged"), "{printed}");
    eprintln!("{printed}");
    // The receiver sleeps until the controller's RX interrupt wakes it: the interrupt must have fired.
    let interrupts = printed.lines().find_map(|l| l.split_once(" RX interrupts")?.0.parse::<u32>().ok());
    assert!(interrupts.is_some_and(|n| n > 0), "no RX interrupt woke the receiver:\n{printed}");
    let events = gw.wait_for_events(6, Duration::from_secs(10))?;
    let events: Vec<_> = events.into_iter().filter(|e| e["source"] == "/devices/mps2-net-1").collect();
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    // Three in MQTT 5 binary mode, then two structured from the same device speaking MQTT 3.1.1.
    assert_eq!(ids, ["mps2-net-1-1", "mps2-net-1-2", "mps2-net-1-3", "mps2-net-1-4", "mps2-net-1-5"], "{events:#?}");
    for (event, celsius) in events.iter().zip([20.5, 20.75, 21.0, 19.5, 19.25]) {
        assert_eq!(event["source"], "/devices/mps2-net-1");
        assert_eq!(event["link"], "lan9118");
        assert_eq!(event["data"]["celsius"], celsius, "{event:#}");
    }
    // The gateway gone: the firmware must fail, not pass.
    let port = gw.mqtt.port();
    drop(gw);
    let qemu = firmware::run(&elf, Wiring::Ethernet(&[format!("port={port}")]))?;
    let (status, printed) = firmware::finished(qemu, Duration::from_secs(60)).await?;
    assert!(!status.success(), "with no gateway the firmware must fail:\n{printed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ethernet_firmware_rides_out_a_gateway_restart_and_loses_nothing() -> Result<()> {
    const TOTAL: usize = 16;
    let elf = firmware::build("net_restart", &[])?;
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    let addr = gw.mqtt;
    let mut qemu = firmware::run(&elf, Wiring::Ethernet(&[format!("port={}", addr.port())]))?;
    let device_ids = |events: Vec<serde_json::Value>| -> Vec<String> {
        let ids = events.iter().filter(|e| e["source"] == "/devices/mps2-net-2");
        ids.filter_map(|e| e["id"].as_str().map(String::from)).collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while device_ids(gw.events()?).len() < 4 {
        ensure!(qemu.try_wait()?.is_none(), "the firmware ended before the restart");
        ensure!(tokio::time::Instant::now() < deadline, "no events from the firmware within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Frozen, the gateway still takes the device's bytes into its socket but acknowledges nothing: the publishes
    // of the next half second are unacknowledged when it is killed.
    let pid = gw.pid().ok_or_else(|| anyhow::anyhow!("the gateway has no pid"))?;
    let stopped = std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status()?;
    ensure!(stopped.success(), "kill -STOP {pid} failed");
    tokio::time::sleep(Duration::from_millis(600)).await;
    gw.kill()?;
    // The same port and data directory, as a service manager restarts it.
    let bind = format!("[listeners.mqtt]\nbind = \"{addr}\"");
    let gw = Gateway::start_in(dir.path(), |b| b.replace("[listeners.mqtt]\nbind = \"127.0.0.1:0\"", &bind))?;
    ensure!(gw.mqtt == addr, "the restarted gateway is not on {addr}");
    let printed = firmware::passed(qemu, Duration::from_secs(60)).await?;
    eprintln!("{printed}");
    let summary = printed.lines().find(|l| l.contains("events acknowledged after")).unwrap_or_default();
    let numbers: Vec<usize> = summary.split(' ').filter_map(|w| w.parse().ok()).collect();
    let [total, reconnects, resent] = numbers[..] else { anyhow::bail!("no summary line:\n{printed}") };
    assert_eq!(total, TOTAL, "{printed}");
    assert!(reconnects >= 1, "the firmware never saw the gateway go:\n{printed}");
    assert!(resent >= 1, "nothing was unacknowledged at the kill, so nothing was resent:\n{printed}");
    // At least once: every event is in the uplink, duplicates (resent after the kill) keep their id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ids = loop {
        let mut ids = device_ids(gw.events()?);
        ids.sort();
        ids.dedup();
        if ids.len() >= TOTAL || tokio::time::Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut want: Vec<String> = (1..=TOTAL).map(|n| format!("mps2-net-2-{n}")).collect();
    want.sort();
    assert_eq!(ids, want, "every event the firmware published arrived");
    Ok(())
}
