//! Local publish → subscribe throughput and latency, meshgate next to Mosquitto, in one run on one machine.
//!
//! ```text
//! cargo run --release -p meshgate-tests --bin pubsub-bench -- [--publishers 4] [--messages 20000] [--qos 1] [--payload 100]
//! ```
//!
//! Starts the release `meshgate` (durable spool, default file uplink, data in a scratch directory) and a second
//! Mosquitto on a free port (persistence off, from this machine's package; once with its default queue of 1000
//! messages per client, once unlimited), then for each: one MQTT 3.1.1
//! subscriber on `bench/#`, `--publishers` publishers each sending `--messages` messages of `--payload` bytes at
//! `--qos` as fast as rumqttc's in-flight window (100) allows. Reports messages/s from the first publish to the
//! last delivery, and publish → delivery latency percentiles. meshgate acknowledges each publish only after its
//! fsync; Mosquitto acknowledges at once.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meshgate_tests::Gateway;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

struct Args {
    publishers: usize,
    messages: usize,
    qos: QoS,
    payload: usize,
    only: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args { publishers: 4, messages: 20_000, qos: QoS::AtLeastOnce, payload: 100, only: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--publishers" => a.publishers = value.parse()?,
            "--messages" => a.messages = value.parse()?,
            "--payload" => a.payload = value.parse::<usize>()?.max(8),
            "--qos" => {
                a.qos = match value.as_str() {
                    "0" => QoS::AtMostOnce,
                    "1" => QoS::AtLeastOnce,
                    "2" => QoS::ExactlyOnce,
                    other => bail!("--qos {other}?"),
                }
            }
            "--only" => a.only = Some(value),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// A Mosquitto of our own on a free port, persistence off.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts one; `unlimited_queue` sets `max_queued_messages 0` (no limit) instead of its default of 1000.
    fn start(unlimited_queue: bool) -> Result<Mosquitto> {
        let bin = meshgate_tests::require_tool("mosquitto");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        let queue = if unlimited_queue { "max_queued_messages 0\n" } else { "" };
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{queue}"))?;
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not start on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Mosquitto { child, addr, _dir: dir })
    }

    fn version() -> String {
        Command::new("mosquitto")
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
            .unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run against `addr`: (delivered messages/s, p50, p99, max latency in ms, delivered, published).
async fn run(addr: SocketAddr, a: &Args) -> Result<(f64, f64, f64, f64, usize, usize)> {
    let total = a.publishers * a.messages;
    let mut o = MqttOptions::new("bench-sub", addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (sub, mut sub_loop) = AsyncClient::new(o, 10_000);
    sub.subscribe("bench/#", a.qos).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await? {
            break;
        }
    }
    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total);
        let mut last = start.elapsed();
        // Until every message arrived, or (QoS 0 may lose some) five quiet seconds.
        while latencies.len() < total {
            match tokio::time::timeout(Duration::from_secs(5), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let sent = p.payload.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
                    last = start.elapsed();
                    latencies.push((last.as_nanos() as u64).saturating_sub(sent));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(anyhow::anyhow!("subscriber: {e}")),
                Err(_) => break,
            }
        }
        Ok((latencies, last))
    });
    let mut publishers = Vec::new();
    for p in 0..a.publishers {
        let mut o = MqttOptions::new(format!("bench-pub-{p}"), addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 1000);
        let (messages, qos, size) = (a.messages, a.qos, a.payload);
        publishers.push(tokio::spawn(async move {
            let mut sender = tokio::spawn(async move {
                for _ in 0..messages {
                    let mut payload = vec![0u8; size];
                    payload[..8].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
                    client.publish(format!("bench/{p}"), qos, false, payload).await?;
                }
                anyhow::Ok(client)
            });
            // The event loop must turn while the sender fills its queue.
            let mut acked = 0;
            let mut sent: Option<AsyncClient> = None;
            loop {
                tokio::select! {
                    done = &mut sender, if sent.is_none() => sent = Some(done??),
                    event = el.poll() => {
                        if let Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) = event? {
                            acked += 1;
                        }
                    }
                }
                if sent.is_some() && (qos == QoS::AtMostOnce || acked >= messages) {
                    break;
                }
            }
            if qos == QoS::AtMostOnce {
                // QoS 0 has no acknowledgement: turn the loop a little longer so the queue drains onto the socket.
                let _ = tokio::time::timeout(Duration::from_secs(2), async { while el.poll().await.is_ok() {} }).await;
            }
            drop(sent);
            anyhow::Ok(())
        }));
    }
    for p in publishers {
        p.await??;
    }
    let (mut latencies, elapsed) = receiver.await??;
    latencies.sort_unstable();
    let n = latencies.len();
    let pct =
        |q: f64| latencies.get(((n as f64 * q) as usize).min(n.saturating_sub(1))).map_or(0.0, |&v| v as f64 / 1e6);
    Ok((n as f64 / elapsed.as_secs_f64(), pct(0.50), pct(0.99), pct(1.0), n, total))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let a = args()?;
    println!(
        "pubsub-bench: {} publishers x {} messages, {} bytes, QoS {:?}, 1 subscriber on bench/#",
        a.publishers, a.messages, a.payload, a.qos
    );
    println!("| broker | delivered | messages/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|");
    let mut results = Vec::new();
    if a.only.as_deref().is_none_or(|o| o == "meshgate") {
        let gw = Gateway::start()?;
        let r = run(gw.mqtt, &a).await?;
        println!(
            "| meshgate (durable spool, ack after fsync) | {}/{} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.4, r.5, r.0, r.1, r.2, r.3
        );
        results.push(r.0);
    }
    if a.only.as_deref().is_none_or(|o| o == "mosquitto") {
        for (unlimited, label) in
            [(false, "persistence off, default queue of 1000"), (true, "persistence off, unlimited queue")]
        {
            let m = Mosquitto::start(unlimited)?;
            let r = run(m.addr, &a).await?;
            println!(
                "| {} ({label}) | {}/{} | {:.0} | {:.2} | {:.2} | {:.2} |",
                Mosquitto::version(),
                r.4,
                r.5,
                r.0,
                r.1,
                r.2,
                r.3
            );
            if unlimited {
                results.push(r.0);
            }
        }
    }
    if let [meshgate, mosquitto] = results[..] {
        println!("\nmeshgate / mosquitto (unlimited queue) throughput: {:.2}", meshgate / mosquitto);
    }
    Ok(())
}
