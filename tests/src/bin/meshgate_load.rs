//! `meshgate-load`: the MQTT load generator and the benchmark suite.
//!
//! ```text
//! meshgate-load run --target 127.0.0.1:1883 --connections 100 --qos 1 --payload 100 --seconds 60 [--rate 0]
//!                   [--window 32] [--subscribers 1 --filter 'load/#'] [--topic 'load/{n}'] [--sources 8] [--mqtt 5]
//! meshgate-load idle --target 127.0.0.1:1883 --connections 50000 --sources 8 [--pid PID] [--hold 10]
//! meshgate-load sink --bind 127.0.0.1:0
//! meshgate-load suite [--seconds 60] [--idle 10000,50000] [--write docs/benchmarks.md]
//! ```
//!
//! `run` reports acknowledged messages/s, publish → PUBACK and publish → receive latency percentiles
//! (HdrHistogram) and errors. `idle` holds connections and reports the server's RSS per connection (`--pid`).
//! `sink` is a server that acknowledges everything at once, for the generator's own ceiling. `suite` runs every
//! scenario of docs/benchmarks.md against meshgate (release build) and a Mosquitto of its own; `benches/suite`
//! wraps it with the file-descriptor limit the idle runs need.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use meshgate_protocols::mqtt::{QoS, Version};
use meshgate_tests::load::brokers::rss_kib;
use meshgate_tests::load::noisy::{self, noisy_neighbour};
use meshgate_tests::load::run::{LoadSpec, hold_idle, run};
use meshgate_tests::load::sink;
use meshgate_tests::load::suite::{SuiteOptions, suite};

#[derive(Parser)]
#[command(name = "meshgate-load", about = "MQTT load generator and benchmark suite")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish (and subscribe) for a while and report throughput and latency.
    Run {
        #[arg(long, default_value = "127.0.0.1:1883")]
        target: SocketAddr,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Messages per second over all publishers; 0 = as fast as the window allows.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, default_value_t = 100)]
        payload: usize,
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// `{n}` is the publisher's number.
        #[arg(long, default_value = "load/{n}")]
        topic: String,
        /// QoS 1 publishes in flight per connection.
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long, default_value_t = 0)]
        subscribers: usize,
        #[arg(long, default_value = "load/#")]
        filter: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Loopback source addresses (127.0.0.1 ..= 127.0.0.N).
        #[arg(long, default_value_t = 4)]
        sources: usize,
        /// 3 (3.1.1) or 5.
        #[arg(long, default_value_t = 3)]
        mqtt: u8,
    },
    /// Hold idle connections; with `--pid`, report that process's RSS per connection.
    Idle {
        #[arg(long, default_value = "127.0.0.1:1883")]
        target: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 8)]
        sources: usize,
        #[arg(long)]
        pid: Option<u32>,
        /// Seconds to hold them.
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
    /// A server that acknowledges everything at once.
    Sink {
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
    },
    /// An OTLP gRPC receiver that counts the spans it is sent (a collector for runs with `[tracing]` on); prints
    /// the count every 5 seconds.
    OtlpSink {
        #[arg(long, default_value = "127.0.0.1:4317")]
        bind: SocketAddr,
    },
    /// Every scenario of docs/benchmarks.md, meshgate next to Mosquitto.
    /// The noisy-neighbour scenario alone: a quiet QoS 1 device at 10/s, alone then beside one connection
    /// flooding QoS 0, on meshgate (release build) and then on a Mosquitto of its own.
    Noisy {
        /// Seconds per run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    Suite {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, value_delimiter = ',', default_values_t = [10_000, 50_000])]
        idle: Vec<usize>,
        #[arg(long, default_value_t = 8)]
        sources: usize,
        /// Write the section into this Markdown file (between its markers).
        #[arg(long)]
        write: Option<PathBuf>,
        /// The rumqttd binary (0.20.0) to run beside meshgate and Mosquitto.
        #[arg(long, default_value = meshgate_tests::load::brokers::RUMQTTD)]
        rumqttd: PathBuf,
    },
    /// The suite's scenario 3 alone: devices → meshgate → each uplink's peer (RabbitMQ, Mosquitto, an HTTP
    /// receiver, NATS JetStream) at a fixed rate, publish → peer latency.
    Uplinks {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        sources: usize,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            target,
            connections,
            rate,
            payload,
            qos,
            topic,
            window,
            subscribers,
            filter,
            seconds,
            sources,
            mqtt,
        } => {
            let spec = LoadSpec {
                target,
                connections,
                rate,
                payload,
                qos: if qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce },
                topic,
                window,
                subscribers,
                filter,
                duration: Duration::from_secs(seconds),
                sources,
                version: if mqtt == 5 { Version::V5 } else { Version::V311 },
                client_prefix: "load-pub-".into(),
            };
            println!("{}", run(&spec).await?.summary());
        }
        Cmd::Idle { target, connections, sources, pid, hold } => {
            let before = pid.map(rss_kib).transpose()?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let held = hold_idle(target, connections, sources, Version::V311, async move {
                let _ = rx.await;
            });
            let report = async move {
                tokio::time::sleep(Duration::from_secs(hold)).await;
                let after = pid.map(rss_kib).transpose();
                let _ = tx.send(());
                after
            };
            let (held, after) = tokio::join!(held, report);
            let (connected, took, errors) = held?;
            print!("{connected} of {connections} connected in {:.1} s", took.as_secs_f64());
            if let (Some(b), Some(a)) = (before, after?) {
                print!(
                    "; RSS {b} → {a} KiB, {:.2} KiB per connection",
                    a.saturating_sub(b) as f64 / connected.max(1) as f64
                );
            }
            println!();
            for e in errors {
                println!("error: {e}");
            }
        }
        Cmd::Sink { bind } => {
            let (addr, task) = sink::start(bind).await?;
            println!("meshgate-load: sink listening on {addr}");
            task.await??;
        }
        Cmd::OtlpSink { bind } => {
            let (addr, count, task) = meshgate_tests::otlp::counting_receiver(bind).await?;
            println!("meshgate-load: OTLP sink listening on {addr}");
            let report = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    println!("meshgate-load: spans received: {}", count.load(std::sync::atomic::Ordering::Relaxed));
                }
            });
            task.await??;
            report.abort();
        }
        Cmd::Noisy { seconds } => {
            let duration = Duration::from_secs(seconds);
            let gw = meshgate_tests::Gateway::start()?;
            let meshgate = noisy_neighbour(gw.mqtt, duration).await?;
            drop(gw);
            let mosquitto = meshgate_tests::load::brokers::Mosquitto::start(true)?;
            let theirs = noisy_neighbour(mosquitto.addr, duration).await?;
            println!("{}", noisy::summary("meshgate", &meshgate));
            println!("{}", noisy::summary("Mosquitto", &theirs));
        }
        Cmd::Suite { seconds, idle, sources, write, rumqttd } => {
            let section = suite(&SuiteOptions { seconds, idle, sources, write, rumqttd }).await?;
            println!("{section}");
        }
        Cmd::Uplinks { seconds, sources } => {
            let rumqttd = PathBuf::from(meshgate_tests::load::brokers::RUMQTTD);
            let options = SuiteOptions { seconds, idle: Vec::new(), sources, write: None, rumqttd };
            print!("{}", meshgate_tests::load::uplinks::only(&options).await?);
        }
    }
    Ok(())
}
