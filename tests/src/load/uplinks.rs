//! Scenario 3 of the load suite: devices publish QoS 1 at a fixed rate, meshgate forwards through one uplink, and
//! the peer's consumer reads each payload's timestamp (the binary data of the event, first 8 bytes): publish →
//! peer latency per uplink kind. RabbitMQ and NATS JetStream are the machine's services, the upstream broker a
//! Mosquitto of the suite's own; the HTTP receiver is a hyper server in this process.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use meshgate_protocols::mqtt::{QoS, Version};

use super::brokers::{Mosquitto, cpu_seconds};
use super::conn;
use super::run::{LoadSpec, Report, run_at};
use super::suite::{Mode, Row, SuiteOptions, say, settled_cpu_seconds};
use crate::Gateway;

/// One uplink's measurement, for the summary under the table.
pub struct UplinkRun {
    /// The peer, as the table names it (`meshgate → RabbitMQ`).
    pub target: &'static str,
    /// What the run measured.
    pub report: Report,
}

/// How long a consumer waits for more once nothing arrives.
const QUIET: Duration = Duration::from_secs(5);

/// Records the latency of a payload stamped at `epoch` + its first 8 bytes (ns).
fn record(latency: &mut Histogram<u64>, payload: &[u8], epoch: std::time::Instant) {
    if let Some(stamp) = payload.get(..8) {
        let sent = u64::from_be_bytes(stamp.try_into().unwrap_or_default());
        let now = epoch.elapsed().as_nanos() as u64;
        let _ = latency.record((now.saturating_sub(sent) / 1000).max(1));
    }
}

/// One uplink's scenario.
struct Scenario<'a> {
    /// The peer, as the table names it.
    target: &'static str,
    /// The scenario's words.
    label: &'a str,
    /// Messages per second over all devices.
    rate: f64,
    /// The `[[uplinks]]` table.
    uplink: &'a str,
}

/// Runs the load through a gateway with the scenario's uplink while `consume` (given the payload clock) counts
/// what reaches the peer; one row in `rows`.
async fn through<F, Fut>(
    rows: &mut Vec<Row>,
    options: &SuiteOptions,
    seconds: Duration,
    Scenario { target, label, rate, uplink }: Scenario<'_>,
    consume: F,
) -> Result<UplinkRun>
where
    F: FnOnce(std::time::Instant) -> Fut,
    Fut: Future<Output = Result<(u64, Histogram<u64>)>>,
{
    let gw = Gateway::start_with(|base| base + uplink)?;
    let epoch = std::time::Instant::now();
    let spec = LoadSpec {
        target: gw.mqtt,
        connections: 10,
        rate,
        duration: seconds,
        sources: options.sources,
        ..LoadSpec::default()
    };
    let scenario = format!("device → {label}, QoS 1 at {rate:.0}/s");
    say(&scenario);
    let pid = gw.pid().context("meshgate pid")?;
    let before = cpu_seconds(pid)?;
    let (report, consumed) = tokio::join!(run_at(&spec, epoch), consume(epoch));
    let mut report = report?;
    let (received, latency) = consumed?;
    report.received = received;
    report.e2e_latency = latency;
    let cpu_secs = Some(settled_cpu_seconds(pid).await? - before);
    say(&format!("  {}", report.summary()));
    rows.push(Row { scenario, target, mode: Mode::Shared, report: report.clone(), cpu_secs });
    Ok(UplinkRun { target, report })
}

/// Every uplink's row: RabbitMQ at 5,000/s (the figure kept since the first suite), the upstream MQTT broker,
/// the CloudEvents HTTP receiver and NATS JetStream at 2,000/s.
pub(super) async fn all(rows: &mut Vec<Row>, options: &SuiteOptions, seconds: Duration) -> Result<Vec<UplinkRun>> {
    Ok(vec![
        rabbitmq(rows, options, seconds).await?,
        mqtt(rows, options, seconds).await?,
        http(rows, options, seconds).await?,
        nats(rows, options, seconds).await?,
    ])
}

/// Scenario 3 alone (`meshgate-load uplinks`): one line per uplink, nothing written.
pub async fn only(options: &SuiteOptions) -> Result<String> {
    let mut rows = Vec::new();
    let runs = all(&mut rows, options, Duration::from_secs(options.seconds)).await?;
    let mut out = String::new();
    for (run, row) in runs.iter().zip(&rows) {
        let cpu = row.cpu_secs.map_or(String::new(), |c| format!(", meshgate CPU {c:.1} s"));
        out += &format!(
            "{}: {} published, {} received; publish → peer p50 {:.2} ms, p99 {:.2} ms{cpu}\n",
            run.target,
            run.report.sent,
            run.report.received,
            Report::ms(&run.report.e2e_latency, 50.0),
            Report::ms(&run.report.e2e_latency, 99.0),
        );
    }
    Ok(out)
}

async fn rabbitmq(rows: &mut Vec<Row>, options: &SuiteOptions, seconds: Duration) -> Result<UplinkRun> {
    use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{FieldTable, ShortString};
    const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    const EXCHANGE: &str = "meshgate-bench";
    let conn = lapin::Connection::connect(BROKER, lapin::ConnectionProperties::default())
        .await
        .map_err(|e| anyhow::anyhow!("RabbitMQ must run on 127.0.0.1:5672 for the AMQP scenario: {e}"))?;
    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    ch.exchange_declare(ShortString::from(EXCHANGE), lapin::ExchangeKind::Topic, durable, FieldTable::default())
        .await?;
    let queue_options = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    let queue = ch.queue_declare(ShortString::from(""), queue_options, FieldTable::default()).await?;
    let queue = queue.name().to_string();
    let bind = QueueBindOptions::default();
    ch.queue_bind(queue.as_str().into(), EXCHANGE.into(), "#".into(), bind, FieldTable::default()).await?;
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut consumer = ch.basic_consume(queue.as_str().into(), "bench".into(), no_ack, FieldTable::default()).await?;
    let uplink = format!(
        "\n[[uplinks]]\nname = \"rabbit\"\nkind = \"amqp\"\nuri = \"{BROKER}\"\nexchange = \"{EXCHANGE}\"\nrouting_key = \"{{subject}}\"\n"
    );
    let label = "RabbitMQ consumer through the AMQP uplink";
    let scenario = Scenario { target: "meshgate → RabbitMQ", label, rate: 5_000.0, uplink: &uplink };
    through(rows, options, seconds, scenario, |epoch| async move {
        let mut latency = conn::histogram();
        let mut received = 0u64;
        while let Ok(Some(delivery)) = tokio::time::timeout(QUIET, consumer.next()).await {
            received += 1;
            record(&mut latency, &delivery?.data, epoch);
        }
        Ok((received, latency))
    })
    .await
}

async fn mqtt(rows: &mut Vec<Row>, options: &SuiteOptions, seconds: Duration) -> Result<UplinkRun> {
    // The suite's own Mosquitto, with Nagle off: with its default (`set_tcp_nodelay false`) every PUBACK waits
    // for the delayed ACK, and publish → peer is ~25 ms whatever the uplink does.
    let broker = Mosquitto::start_with("set_tcp_nodelay true\n")?;
    let source = conn::source_address(0, 1);
    let stream = conn::open(broker.addr, source, "meshgate-bench-upstream-sub", Version::V5).await?;
    let uplink = format!(
        "\n[[uplinks]]\nname = \"upstream\"\nkind = \"mqtt\"\nuri = \"mqtt://{}\"\ntopic = \"meshgate-bench/{{subject}}\"\n",
        broker.addr
    );
    let label = "Mosquitto subscriber through the upstream MQTT uplink";
    let scenario = Scenario { target: "meshgate → Mosquitto", label, rate: 2_000.0, uplink: &uplink };
    through(rows, options, seconds, scenario, |epoch| async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        let filter = "meshgate-bench/#".to_string();
        let task = tokio::spawn(conn::subscribe(stream, filter, QoS::AtLeastOnce, Version::V5, epoch, stopped, ready));
        tokio::time::timeout(Duration::from_secs(10), subscribed).await.context("no SUBACK from Mosquitto")??;
        // The subscriber counts until the run is over and QUIET has passed.
        tokio::time::sleep(seconds + QUIET).await;
        let _ = stop.send(true);
        let stats = task.await??;
        Ok((stats.received, stats.e2e_latency))
    })
    .await
}

async fn http(rows: &mut Vec<Row>, options: &SuiteOptions, seconds: Duration) -> Result<UplinkRun> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/events", listener.local_addr()?);
    let uplink = format!("\n[[uplinks]]\nname = \"webhook\"\nkind = \"http\"\nurl = \"{url}\"\nmode = \"binary\"\n");
    let label = "CloudEvents HTTP receiver through the HTTP uplink (binary mode)";
    let scenario = Scenario { target: "meshgate → HTTP", label, rate: 2_000.0, uplink: &uplink };
    through(rows, options, seconds, scenario, |epoch| async move {
        let seen: Arc<Mutex<(u64, Histogram<u64>)>> = Arc::new(Mutex::new((0, conn::histogram())));
        let last = Arc::new(Mutex::new(tokio::time::Instant::now()));
        let (seen2, last2) = (Arc::clone(&seen), Arc::clone(&last));
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (seen, last) = (Arc::clone(&seen2), Arc::clone(&last2));
                async move {
                    if let Ok(mut s) = seen.lock() {
                        s.0 += 1;
                        record(&mut s.1, &body, epoch);
                    }
                    if let Ok(mut l) = last.lock() {
                        *l = tokio::time::Instant::now();
                    }
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        tokio::time::sleep(seconds).await;
        while last.lock().map(|l| l.elapsed() < QUIET).unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        server.abort();
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("receiver poisoned"))?;
        Ok((seen.0, seen.1.clone()))
    })
    .await
}

async fn nats(rows: &mut Vec<Row>, options: &SuiteOptions, seconds: Duration) -> Result<UplinkRun> {
    const STREAM: &str = "MESHGATE_BENCH";
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .map_err(|e| anyhow::anyhow!("NATS must run on 127.0.0.1:4222 for the NATS uplink scenario: {e}"))?;
    let js = async_nats::jetstream::new(client.clone());
    // A fresh stream each run (the uplink creates it), so the duplicate window holds nothing from before.
    let _ = js.delete_stream(STREAM).await;
    let mut subscriber = client.subscribe("mgbench.>").await?;
    let uplink = format!(
        "\n[[uplinks]]\nname = \"js\"\nkind = \"nats\"\nsubject = \"mgbench.{{subject}}\"\nstream = \"{STREAM}\"\n"
    );
    let label = "NATS subscriber through the JetStream uplink";
    let scenario = Scenario { target: "meshgate → NATS", label, rate: 2_000.0, uplink: &uplink };
    let run = through(rows, options, seconds, scenario, |epoch| async move {
        let mut latency = conn::histogram();
        let mut received = 0u64;
        let first = tokio::time::timeout(seconds + QUIET, subscriber.next()).await;
        if let Ok(Some(m)) = first {
            received += 1;
            record(&mut latency, &m.payload, epoch);
            while let Ok(Some(m)) = tokio::time::timeout(QUIET, subscriber.next()).await {
                received += 1;
                record(&mut latency, &m.payload, epoch);
            }
        }
        Ok((received, latency))
    })
    .await;
    let _ = js.delete_stream(STREAM).await;
    run
}
