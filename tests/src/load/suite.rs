//! The benchmark suite: every scenario of docs/benchmarks.md ("Load suite") in one run on one machine, meshgate
//! (release build, durable spool) next to a Mosquitto and a rumqttd of its own (neither stores anything) and the
//! generator's own ceiling against a trivial sink, written as Markdown between the markers in docs/benchmarks.md.
//!
//! Two modes: shared (broker, generator and everything else on both cores, as the machine is) and pinned (the
//! broker pinned to CPU 0, the generator to CPU 1, with `taskset`), so a broker's figures do not depend on how it
//! and the generator happen to share the cores.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshgate_protocols::mqtt::QoS;

use super::brokers::{Mosquitto, Rumqttd, cpu_seconds, pin, rss_kib};
use super::run::{LoadSpec, Report, hold_idle, run};
use crate::Gateway;

/// The markers around the suite's section in docs/benchmarks.md.
pub const BEGIN: &str = "<!-- load-suite:begin -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- load-suite:end -->";

/// How to run the suite.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Seconds per throughput scenario.
    pub seconds: u64,
    /// Idle connection counts.
    pub idle: Vec<usize>,
    /// Loopback source addresses.
    pub sources: usize,
    /// The Markdown file to write the section into.
    pub write: Option<PathBuf>,
    /// The rumqttd binary.
    pub rumqttd: PathBuf,
}

/// The brokers compared, in the tables' order.
const BROKERS: [&str; 3] = ["meshgate", "Mosquitto", "rumqttd"];

/// How the cores are shared in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Everything on both cores.
    Shared,
    /// The broker on CPU 0, the generator on CPU 1.
    Pinned,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Pinned => "pinned",
        }
    }
}

/// One row of a results table.
pub(super) struct Row {
    /// What was measured.
    pub(super) scenario: String,
    /// The broker (or the uplink's peer).
    pub(super) target: &'static str,
    /// Shared or pinned.
    pub(super) mode: Mode,
    /// The figures.
    pub(super) report: Report,
    /// CPU seconds the broker used for the run, including work it finished after the run (an uplink's backlog).
    pub(super) cpu_secs: Option<f64>,
}

/// The rates of the latency sweep (QoS 1 ingest), where they are below half of meshgate's maximum.
const SWEEP_RATES: [f64; 3] = [10_000.0, 20_000.0, 40_000.0];

/// A trivial sink in a process of its own (this binary's `sink` command).
struct Sink {
    child: Child,
    addr: SocketAddr,
}

impl Sink {
    fn start() -> Result<Sink> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["sink", "--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start the sink")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("sink stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let addr = line.trim().rsplit(' ').next().unwrap_or_default().parse().context("sink address")?;
        Ok(Sink { child, addr })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn say(line: &str) {
    eprintln!("suite: {line}");
}

async fn measured(
    rows: &mut Vec<Row>,
    (scenario, target, mode): (&str, &'static str, Mode),
    spec: &LoadSpec,
    broker: Option<u32>,
) -> Result<Report> {
    let (connections, secs) = (spec.connections, spec.duration.as_secs());
    say(&format!("{scenario} on {target}, {} ({connections} connections, {secs} s)", mode.label()));
    let cpu_before = broker.map(|pid| cpu_seconds(pid).map(|before| (pid, before))).transpose()?;
    let report = run(spec).await?;
    let cpu_secs = match cpu_before {
        Some((pid, before)) => Some(settled_cpu_seconds(pid).await? - before),
        None => None,
    };
    let cpu = cpu_secs.map_or(String::new(), |c| format!("; broker CPU {c:.1} s"));
    say(&format!("  {}{cpu}", report.summary()));
    rows.push(Row { scenario: scenario.to_string(), target, mode, report: report.clone(), cpu_secs });
    Ok(report)
}

/// The CPU seconds of `pid` once it has gone quiet (under 5 % of a core over half a second, or after 120 s), so
/// work a broker finishes after the run, such as an uplink's backlog, counts towards the messages it took.
pub(super) async fn settled_cpu_seconds(pid: u32) -> Result<f64> {
    let mut last = cpu_seconds(pid)?;
    for _ in 0..240 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = cpu_seconds(pid)?;
        if now - last < 0.025 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Broker CPU per acknowledged message (QoS 0: per message sent), µs.
fn cpu_per_message_us(row: &Row) -> Option<f64> {
    row.cpu_secs.filter(|_| row.report.acked > 0).map(|c| c * 1e6 / row.report.acked as f64)
}

/// A broker for one scenario, started fresh so no backlog of the previous one competes with it.
enum Broker {
    Meshgate(Gateway),
    Mosquitto(Mosquitto),
    Rumqttd(Rumqttd),
}

impl Broker {
    /// Starts `target`; pinned to CPU 0 in [`Mode::Pinned`].
    fn start(target: &'static str, mode: Mode, options: &SuiteOptions) -> Result<Broker> {
        let broker = match target {
            "meshgate" => Broker::Meshgate(Gateway::start()?),
            "rumqttd" => Broker::Rumqttd(Rumqttd::start(&options.rumqttd)?),
            _ => Broker::Mosquitto(Mosquitto::start(true)?),
        };
        if mode == Mode::Pinned {
            pin(broker.pid().context("broker pid")?, "0")?;
        }
        Ok(broker)
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Broker::Meshgate(gw) => gw.mqtt,
            Broker::Mosquitto(m) => m.addr,
            Broker::Rumqttd(r) => r.addr,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Broker::Meshgate(gw) => gw.pid(),
            Broker::Mosquitto(m) => Some(m.pid()),
            Broker::Rumqttd(r) => Some(r.pid()),
        }
    }
}

/// Runs every scenario; returns the Markdown section (and writes it when asked).
pub async fn suite(options: &SuiteOptions) -> Result<String> {
    let seconds = Duration::from_secs(options.seconds);
    let ingest = |target: SocketAddr, qos: QoS| LoadSpec {
        target,
        connections: 100,
        payload: 100,
        qos,
        duration: seconds,
        sources: options.sources,
        ..LoadSpec::default()
    };
    let mut rows = Vec::new();
    let shared = Mode::Shared;

    // 0. The generator's ceiling against a sink that acknowledges at once.
    let sink = Sink::start()?;
    let ceiling = ingest(sink.addr, QoS::AtLeastOnce);
    measured(&mut rows, ("QoS 1 ingest, 100 connections", "trivial sink", shared), &ceiling, None).await?;
    let ceiling = ingest(sink.addr, QoS::AtMostOnce);
    measured(&mut rows, ("QoS 0 ingest, 100 connections", "trivial sink", shared), &ceiling, None).await?;
    drop(sink);

    // 1, 2, 4: ingest (meshgate: durable spool, acknowledged after fsync; the others store nothing), QoS 1 at
    // half of meshgate's maximum rate and at the sweep's lower rates, and local publish → subscribe (10 publishers,
    // one subscriber on the run's topics). Each on a fresh broker; the paced runs in the shared mode only.
    let mut half_rate = 0.0;
    for mode in [Mode::Shared, Mode::Pinned] {
        if mode == Mode::Pinned {
            pin(std::process::id(), "1")?;
        }
        for target in BROKERS {
            let broker = Broker::start(target, mode, options)?;
            let full = ingest(broker.addr(), QoS::AtLeastOnce);
            let scenario = ("QoS 1 ingest, 100 connections", target, mode);
            let max = measured(&mut rows, scenario, &full, broker.pid()).await?;
            drop(broker);
            if target == "meshgate" && mode == Mode::Shared {
                half_rate = (max.acked_per_sec() / 2.0).floor();
            }
            if mode == Mode::Shared {
                let scenario = format!("QoS 1 ingest at half of meshgate's maximum ({half_rate:.0}/s)");
                let mut paced = vec![(scenario, half_rate)];
                for rate in SWEEP_RATES.into_iter().filter(|&r| r < half_rate) {
                    paced.push((format!("QoS 1 ingest at {rate:.0}/s"), rate));
                }
                for (scenario, rate) in paced {
                    let broker = Broker::start(target, mode, options)?;
                    // The sweep's lower rates run for at most 20 s each: a latency figure, not a throughput one.
                    let duration = if rate < half_rate { seconds.min(Duration::from_secs(20)) } else { seconds };
                    let spec = LoadSpec { rate, duration, ..ingest(broker.addr(), QoS::AtLeastOnce) };
                    measured(&mut rows, (&scenario, target, mode), &spec, broker.pid()).await?;
                    drop(broker);
                }
            }
            let broker = Broker::start(target, mode, options)?;
            let qos0 = ingest(broker.addr(), QoS::AtMostOnce);
            measured(&mut rows, ("QoS 0 ingest, 100 connections", target, mode), &qos0, broker.pid()).await?;
            drop(broker);
            let broker = Broker::start(target, mode, options)?;
            let pubsub = LoadSpec {
                connections: 10,
                subscribers: 1,
                topic: "pubsub/{n}".into(),
                filter: "pubsub/#".into(),
                ..ingest(broker.addr(), QoS::AtLeastOnce)
            };
            let scenario = ("QoS 1 publish → subscribe, 10 → 1", target, mode);
            measured(&mut rows, scenario, &pubsub, broker.pid()).await?;
            drop(broker);
        }
    }
    // The generator back on both cores.
    pin(std::process::id(), "0-1")?;

    // 6. The noisy neighbour: a quiet QoS 1 device at 10/s, alone and beside one connection flooding QoS 0. The
    // broker's CPU over the whole scenario is counted per message of the flooder (nearly all of them).
    for target in BROKERS {
        let broker = Broker::start(target, shared, options)?;
        let duration = seconds.min(Duration::from_secs(30));
        say(&format!("noisy neighbour on {target} ({} s each)", duration.as_secs()));
        let pid = broker.pid().context("broker pid")?;
        let before = cpu_seconds(pid)?;
        let r = super::noisy::noisy_neighbour(broker.addr(), duration).await?;
        let cpu = settled_cpu_seconds(pid).await? - before;
        say(&format!("  {}", super::noisy::summary(target, &r)));
        let runs = [
            ("noisy neighbour: quiet QoS 1 device at 10/s, alone", r.alone, None),
            ("noisy neighbour: the same device beside one QoS 0 flooder", r.beside, None),
            ("noisy neighbour: the QoS 0 flooder (one connection)", r.flooder, Some(cpu)),
        ];
        for (scenario, report, cpu_secs) in runs {
            rows.push(Row { scenario: scenario.to_string(), target, mode: shared, report, cpu_secs });
        }
        drop(broker);
    }

    // 3. Device → each uplink's peer.
    let uplinks = super::uplinks::all(&mut rows, options, seconds).await?;

    // 5. Idle connections and RSS per connection, where this machine's descriptor limit allows.
    let limit = open_files_limit();
    let mut idle_rows = Vec::new();
    let mut not_run = Vec::new();
    // A count beyond the descriptor limit runs at the largest round count the limit allows instead.
    let largest = limit.saturating_sub(1000) / 1000 * 1000;
    let mut counts: Vec<usize> = Vec::new();
    for &n in &options.idle {
        if n + 1000 > limit {
            say(&format!("{n} idle connections: not run, the open-files limit here is {limit}; {largest} instead"));
            not_run.push(n);
            if largest > 0 && !counts.contains(&largest) && !options.idle.contains(&largest) {
                counts.push(largest);
            }
        } else if !counts.contains(&n) {
            counts.push(n);
        }
    }
    for n in counts {
        let gw = Gateway::start()?;
        let pid = gw.pid().context("meshgate pid")?;
        idle_rows.push(idle(n, "meshgate", gw.mqtt, pid, options.sources).await?);
        drop(gw);
        let mosquitto = Mosquitto::start(false)?;
        idle_rows.push(idle(n, "Mosquitto", mosquitto.addr, mosquitto.pid(), options.sources).await?);
        drop(mosquitto);
        let rumqttd = Rumqttd::start(&options.rumqttd)?;
        idle_rows.push(idle(n, "rumqttd", rumqttd.addr, rumqttd.pid(), options.sources).await?);
    }

    let section = markdown(options, &rows, &uplinks, &idle_rows, &not_run, limit)?;
    if let Some(path) = &options.write {
        write_section(path, &section)?;
        say(&format!("wrote {}", path.display()));
    }
    Ok(section)
}

/// The hard limit on open files of this process (each idle connection needs one here and one at the broker).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(4).and_then(|hard| hard.parse().ok()))
        })
        .unwrap_or(usize::MAX)
}

/// One idle measurement.
struct IdleRow {
    connections: usize,
    target: &'static str,
    connected: usize,
    connect_secs: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    errors: Vec<String>,
}

async fn idle(n: usize, target: &'static str, addr: SocketAddr, pid: u32, sources: usize) -> Result<IdleRow> {
    say(&format!("{n} idle connections on {target}"));
    let rss_before_kib = rss_kib(pid)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (measured_tx, measured_rx) = tokio::sync::oneshot::channel();
    let measure = async move {
        // Let the server settle, then read its RSS while every connection is held.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = measured_tx.send(rss_kib(pid));
        let _ = tx.send(());
    };
    let held = hold_idle(addr, n, sources, meshgate_protocols::mqtt::Version::V311, async move {
        let _ = rx.await;
    });
    let (held, ()) = tokio::join!(held, measure);
    let (connected, took, errors) = held?;
    let rss_after_kib = measured_rx.await??;
    let row = IdleRow {
        connections: n,
        target,
        connected,
        connect_secs: took.as_secs_f64(),
        rss_before_kib,
        rss_after_kib,
        errors,
    };
    say(&format!(
        "  {} connected in {:.1} s; RSS {} → {} KiB ({:.2} KiB per connection){}",
        row.connected,
        row.connect_secs,
        row.rss_before_kib,
        row.rss_after_kib,
        per_connection(&row),
        if row.errors.is_empty() { String::new() } else { format!("; errors: {:?}", row.errors) }
    ));
    Ok(row)
}

fn per_connection(row: &IdleRow) -> f64 {
    row.rss_after_kib.saturating_sub(row.rss_before_kib) as f64 / row.connected.max(1) as f64
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches("kB").trim().to_string()))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} vCPU {cpu}, {mem_gib:.0} GiB RAM, Linux {}", kernel.trim())
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() { format!("{:.2}", a / b) } else { "–".into() }
}

fn markdown(
    options: &SuiteOptions,
    rows: &[Row],
    uplinks: &[super::uplinks::UplinkRun],
    idle_rows: &[IdleRow],
    not_run: &[usize],
    limit: usize,
) -> Result<String> {
    let mut md = String::new();
    let commit = command_output("git", &["log", "-1", "--format=%h"]);
    writeln!(md, "{BEGIN}")?;
    writeln!(md, "## Load suite: meshgate next to Mosquitto and rumqttd, one run\n")?;
    writeln!(
        md,
        "Written by `benches/suite` (`cargo run --release -p meshgate-tests --bin meshgate-load -- suite --write \
         docs/benchmarks.md`, {} s per throughput scenario, connections spread over {} loopback source addresses). \
         Do not edit by hand: run it again.\n",
        options.seconds, options.sources
    )?;
    writeln!(md, "- Machine: {}.", machine())?;
    writeln!(
        md,
        "- Versions: meshgate at `{commit}` (release build), {}, {}, {}.",
        Mosquitto::version(),
        Rumqttd::version(&options.rumqttd),
        command_output("rustc", &["--version"])
    )?;
    writeln!(
        md,
        "- meshgate: durable spool (each QoS 1 publish acknowledged after the fsync that covers it), the default file \
         uplink (in scenario 3 the uplink named, to RabbitMQ and NATS JetStream on this machine, a Mosquitto of the \
         suite's own with `set_tcp_nodelay true`, or an HTTP receiver in the generator's process). Mosquitto: a \
         process of its own on a free port, persistence off, `max_queued_messages 0` for the throughput runs (its \
         default 1000 drops QoS 1 messages to a slow subscriber), default settings for the idle runs. rumqttd: its MQTT 3.1.1 server with its default limits \
         (messages in an in-memory commit log, nothing on disk), no delay between accepts. Mode `shared`: the \
         generator, the broker and RabbitMQ share both cores; `pinned`: the broker on CPU 0, the generator on CPU 1 \
         (`taskset`)."
    )?;
    writeln!(
        md,
        "- Latencies count from the moment a publish is written. The send lag is how late paced publishes went out \
         after they were due: the generator's own timer, or a connection's window of {window} unacknowledged \
         publishes filled by a slow broker, so a broker's stalls show there. Broker CPU is the broker process's user \
         and system time from the start of a run until it has gone quiet after it (meshgate's uplink backlog \
         included), per acknowledged message (QoS 0: per message sent). The lower rates of the latency sweep run \
         for at most 20 s.\n",
        window = LoadSpec::default().window
    )?;
    writeln!(
        md,
        "| scenario | target | mode | sent | acknowledged/s (QoS 0: sent/s) | ack p50 ms | ack p99 ms | ack p99.9 ms | received/s | publish→receive p50 ms | p99 ms | send lag p99 ms | broker CPU µs per message | errors |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in rows {
        let p = &r.report;
        let recv = |f: f64| if p.received > 0 { format!("{f:.2}") } else { "–".into() };
        let ack = |percentile: f64| {
            if p.ack_latency.is_empty() {
                "–".into()
            } else {
                format!("{:.2}", Report::ms(&p.ack_latency, percentile))
            }
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.target,
            r.mode.label(),
            p.sent,
            p.acked_per_sec(),
            ack(50.0),
            ack(99.0),
            ack(99.9),
            if p.received > 0 { format!("{:.0}", p.received_per_sec()) } else { "–".into() },
            recv(Report::ms(&p.e2e_latency, 50.0)),
            recv(Report::ms(&p.e2e_latency, 99.0)),
            if p.send_lag.is_empty() { "–".into() } else { format!("{:.2}", Report::ms(&p.send_lag, 99.0)) },
            cpu_per_message_us(r).map_or("–".into(), |us| format!("{us:.1}")),
            p.errors
        )?;
    }
    let row = |scenario: &str, target: &str, mode: Mode| {
        rows.iter().find(|r| r.scenario.starts_with(scenario) && r.target == target && r.mode == mode)
    };
    writeln!(md, "\nRatios in this run (meshgate's figure over each peer's; for CPU and latency lower is better):\n")?;
    writeln!(md, "| figure | mode | meshgate | Mosquitto | rumqttd | ÷ Mosquitto | ÷ rumqttd |")?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    type Figure = fn(&Row) -> Option<f64>;
    let acked: Figure = |r| Some(r.report.acked_per_sec());
    let received: Figure = |r| Some(r.report.received_per_sec());
    let cpu: Figure = cpu_per_message_us;
    let p99: Figure = |r| (!r.report.ack_latency.is_empty()).then(|| Report::ms(&r.report.ack_latency, 99.0));
    const BOTH: &[Mode] = &[Mode::Shared, Mode::Pinned];
    let mut figures: Vec<(String, &str, Figure, &[Mode])> = [
        ("QoS 1 ingest, acknowledged/s", "QoS 1 ingest, 100", acked, BOTH),
        ("QoS 0 ingest, sent/s", "QoS 0 ingest, 100", acked, BOTH),
        ("QoS 1 publish → subscribe, received/s", "QoS 1 publish → subscribe", received, BOTH),
        ("CPU per acknowledged QoS 1 message at full speed, µs", "QoS 1 ingest, 100", cpu, BOTH),
        ("CPU per QoS 0 message at full speed, µs", "QoS 0 ingest, 100", cpu, BOTH),
        ("CPU per received message, publish → subscribe, µs", "QoS 1 publish → subscribe", cpu, BOTH),
        ("QoS 1 publish → ack p99 at half of meshgate's maximum, ms", "QoS 1 ingest at half", p99, &[Mode::Shared]),
    ]
    .into_iter()
    .map(|(label, scenario, figure, modes)| (label.to_string(), scenario, figure, modes))
    .collect();
    let sweep: Vec<String> = SWEEP_RATES.iter().map(|rate| format!("QoS 1 ingest at {rate:.0}/s")).collect();
    for (rate, scenario) in SWEEP_RATES.iter().zip(&sweep) {
        figures.push((format!("QoS 1 publish → ack p99 at {rate:.0}/s, ms"), scenario, p99, &[Mode::Shared]));
    }
    for (label, scenario, figure, modes) in &figures {
        for &mode in *modes {
            let values = BROKERS.map(|target| row(scenario, target, mode).and_then(figure));
            ratio_row(&mut md, label, mode, values)?;
        }
    }
    for n in idle_rows.iter().map(|r| r.connections).collect::<std::collections::BTreeSet<_>>() {
        let values =
            BROKERS.map(|t| idle_rows.iter().find(|r| r.connections == n && r.target == t).map(per_connection));
        ratio_row(&mut md, &format!("RSS per idle connection at {n}, KiB"), Mode::Shared, values)?;
    }
    writeln!(
        md,
        "\nIdle connections (MQTT 3.1.1, keep-alive 600 s, no traffic), RSS of the broker process before and while holding them:\n"
    )?;
    writeln!(
        md,
        "| connections | target | connected | connect time s | RSS before KiB | RSS held KiB | KiB per connection |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for r in idle_rows {
        writeln!(
            md,
            "| {} | {} | {} | {:.1} | {} | {} | {:.2} |",
            r.connections,
            r.target,
            r.connected,
            r.connect_secs,
            r.rss_before_kib,
            r.rss_after_kib,
            per_connection(r)
        )?;
    }
    for n in not_run {
        writeln!(
            md,
            "| {n} | all | not run: this machine's hard limit on open files is {limit} per process, and {n} \
             connections need {n} descriptors in the generator and {n} in the broker; the largest round count it \
             allows ran instead |  |  |  |  |  |"
        )?;
    }
    writeln!(md)?;
    for u in uplinks {
        writeln!(
            md,
            "Scenario 3 ({}): {} published, {} received by the peer; publish → peer p50 {:.2} ms, p99 {:.2} ms, \
             p99.9 {:.2} ms.",
            u.target,
            u.report.sent,
            u.report.received,
            Report::ms(&u.report.e2e_latency, 50.0),
            Report::ms(&u.report.e2e_latency, 99.0),
            Report::ms(&u.report.e2e_latency, 99.9)
        )?;
    }
    writeln!(md, "{END}")?;
    Ok(md)
}

/// One line of the ratios table: each broker's figure (meshgate's first) and meshgate's over each peer's; nothing
/// when meshgate has none.
fn ratio_row(md: &mut String, label: &str, mode: Mode, values: [Option<f64>; 3]) -> std::fmt::Result {
    let Some(ours) = values[0] else { return Ok(()) };
    let cell =
        |v: Option<f64>| v.map_or("–".to_string(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") });
    let over = |v: Option<f64>| v.map_or("–".to_string(), |v| ratio(ours, v));
    writeln!(
        md,
        "| {label} | {} | {} | {} | {} | {} | {} |",
        mode.label(),
        cell(values[0]),
        cell(values[1]),
        cell(values[2]),
        over(values[1]),
        over(values[2])
    )
}

/// Replaces the section between the markers in `path` (or appends it).
fn write_section(path: &Path, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{}{}", &text[..b], section.trim_end(), &text[e + END.len()..]),
        (None, None) => format!("{}\n\n{}", text.trim_end(), section),
        _ => bail!("{}: the suite's markers are out of order", path.display()),
    };
    std::fs::write(path, updated)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(acked: u64) -> Report {
        Report { seconds: 1.0, sent: acked, acked, ..Report::default() }
    }

    fn row(target: &'static str, mode: Mode, acked: u64, cpu_secs: f64) -> Row {
        let scenario = "QoS 1 ingest, 100 connections".to_string();
        Row { scenario, target, mode, report: report(acked), cpu_secs: Some(cpu_secs) }
    }

    #[test]
    fn the_ratios_table_puts_meshgate_over_each_peer_and_leaves_out_what_was_not_run() {
        let options =
            SuiteOptions { seconds: 1, idle: vec![10], sources: 1, write: None, rumqttd: PathBuf::from("/none") };
        let rows = [
            row("meshgate", Mode::Shared, 200_000, 2.0),
            row("Mosquitto", Mode::Shared, 100_000, 0.5),
            row("rumqttd", Mode::Shared, 400_000, 0.4),
            row("meshgate", Mode::Pinned, 50_000, 1.0),
        ];
        let idle = |target, after| IdleRow {
            connections: 10,
            target,
            connected: 10,
            connect_secs: 1.0,
            rss_before_kib: 100,
            rss_after_kib: after,
            errors: Vec::new(),
        };
        let idle_rows = [idle("meshgate", 120), idle("Mosquitto", 110)];
        let uplinks = [super::super::uplinks::UplinkRun { target: "meshgate → RabbitMQ", report: report(0) }];
        let md = markdown(&options, &rows, &uplinks, &idle_rows, &[], 20_000).expect("markdown");
        assert!(
            md.contains("| QoS 1 ingest, acknowledged/s | shared | 200000 | 100000 | 400000 | 2.00 | 0.50 |"),
            "{md}"
        );
        assert!(md.contains("| QoS 1 ingest, acknowledged/s | pinned | 50000 | – | – | – | – |"), "{md}");
        assert!(
            md.contains(
                "| CPU per acknowledged QoS 1 message at full speed, µs | shared | 10.00 | 5.00 | 1.00 | 2.00 | 10.00 |"
            ),
            "{md}"
        );
        assert!(md.contains("| RSS per idle connection at 10, KiB | shared | 2.00 | 1.00 | – | 2.00 | – |"), "{md}");
        assert!(!md.contains("QoS 0 ingest, sent/s"), "no row for a scenario that did not run");
    }
}
