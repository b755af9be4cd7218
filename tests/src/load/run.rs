//! One load run: connect the publishers (and subscribers) spread over loopback source addresses, start them
//! together, run for a duration, stop, and merge what every connection measured into a [`Report`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use meshgate_protocols::mqtt::{QoS, Version};
use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::{self, ConnStats, PublishPlan};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The server.
    pub target: SocketAddr,
    /// Publishing connections.
    pub connections: usize,
    /// Messages per second over all publishers; 0 = as fast as each window allows.
    pub rate: f64,
    /// Payload bytes (at least 16: timestamp and sequence).
    pub payload: usize,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Topic of publisher `n`: `{n}` is replaced by its number.
    pub topic: String,
    /// QoS 1 publishes in flight per connection.
    pub window: usize,
    /// Subscribing connections.
    pub subscribers: usize,
    /// Their topic filter.
    pub filter: String,
    /// How long publishers send.
    pub duration: Duration,
    /// Loopback source addresses to spread connections over (127.0.0.1 ..= 127.0.0.N).
    pub sources: usize,
    /// MQTT 3.1.1 or 5.
    pub version: Version,
    /// Publisher `n`'s client id is this followed by `n` (runs side by side need different ones).
    pub client_prefix: String,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            target: SocketAddr::from(([127, 0, 0, 1], 1883)),
            connections: 100,
            rate: 0.0,
            payload: 100,
            qos: QoS::AtLeastOnce,
            topic: "load/{n}".into(),
            window: 32,
            subscribers: 0,
            filter: "load/#".into(),
            duration: Duration::from_secs(60),
            sources: 4,
            version: Version::V311,
            client_prefix: "load-pub-".into(),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Seconds publishers sent for.
    pub seconds: f64,
    /// Publishes sent.
    pub sent: u64,
    /// Publishes acknowledged (QoS 0: sent).
    pub acked: u64,
    /// Messages subscribers received.
    pub received: u64,
    /// Connections that failed (at connect or during the run).
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Publish → acknowledgement, µs.
    pub ack_latency: Histogram<u64>,
    /// Publish → receive, µs.
    pub e2e_latency: Histogram<u64>,
    /// Paced publishes: due time → written, µs.
    pub send_lag: Histogram<u64>,
}

impl Default for Report {
    /// Nothing measured yet, with empty histograms.
    fn default() -> Self {
        Report {
            seconds: 0.0,
            sent: 0,
            acked: 0,
            received: 0,
            errors: 0,
            first_error: None,
            ack_latency: conn::histogram(),
            e2e_latency: conn::histogram(),
            send_lag: conn::histogram(),
        }
    }
}

impl Report {
    /// Acknowledged publishes per second.
    pub fn acked_per_sec(&self) -> f64 {
        self.acked as f64 / self.seconds.max(1e-9)
    }

    /// Received messages per second.
    pub fn received_per_sec(&self) -> f64 {
        self.received as f64 / self.seconds.max(1e-9)
    }

    /// A percentile of `h` in milliseconds (NaN when empty).
    pub fn ms(h: &Histogram<u64>, percentile: f64) -> f64 {
        if h.is_empty() { f64::NAN } else { h.value_at_quantile(percentile / 100.0) as f64 / 1000.0 }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{:.1} s: sent {}, acknowledged {} ({:.0}/s), ack p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms",
            self.seconds,
            self.sent,
            self.acked,
            self.acked_per_sec(),
            Self::ms(&self.ack_latency, 50.0),
            Self::ms(&self.ack_latency, 99.0),
            Self::ms(&self.ack_latency, 99.9),
            Self::ms(&self.ack_latency, 100.0),
        );
        if self.received > 0 {
            line += &format!(
                "; received {} ({:.0}/s), publish→receive p50 {:.2} ms p99 {:.2} ms",
                self.received,
                self.received_per_sec(),
                Self::ms(&self.e2e_latency, 50.0),
                Self::ms(&self.e2e_latency, 99.0)
            );
        }
        if !self.send_lag.is_empty() {
            line += &format!(
                "; send lag p50 {:.2} ms p99 {:.2} ms",
                Self::ms(&self.send_lag, 50.0),
                Self::ms(&self.send_lag, 99.0)
            );
        }
        if self.errors > 0 {
            line +=
                &format!("; {} connection errors (first: {})", self.errors, self.first_error.as_deref().unwrap_or("?"));
        }
        line
    }
}

/// Runs `spec`: subscribers first, then the publishers together for the duration; subscribers stop 2 s after
/// the publishers, to count the last deliveries.
pub async fn run(spec: &LoadSpec) -> Result<Report> {
    run_at(spec, std::time::Instant::now()).await
}

/// [`run`] with payload timestamps counted from `epoch`, for a receiver outside the run (a RabbitMQ consumer)
/// that measures latency from the same clock.
pub async fn run_at(spec: &LoadSpec, epoch: std::time::Instant) -> Result<Report> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stop_subscribers, subscribers_stop) = watch::channel(false);
    let mut report = Report::default();
    // Subscribers first, each confirmed by its SUBACK.
    let mut subscribers = Vec::new();
    for n in 0..spec.subscribers {
        let source = conn::source_address(n, spec.sources);
        let stream = conn::open(spec.target, source, &format!("load-sub-{n}"), spec.version).await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = conn::subscribe(
            stream,
            spec.filter.clone(),
            spec.qos,
            spec.version,
            epoch,
            subscribers_stop.clone(),
            ready_tx,
        );
        subscribers.push(tokio::spawn(task));
        tokio::time::timeout(Duration::from_secs(10), ready_rx).await.context("no SUBACK")??;
    }
    // Publishers: connected first (concurrently, a few hundred at a time), then started together.
    let per_connection = spec.rate / spec.connections.max(1) as f64;
    let mut streams = Vec::with_capacity(spec.connections);
    for (n, stream) in
        conn::open_many(spec.target, spec.connections, spec.sources, &spec.client_prefix, spec.version).await
    {
        match stream {
            Ok(s) => streams.push((n, s)),
            Err(e) => {
                report.errors += 1;
                report.first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let start = Instant::now() + Duration::from_millis(200);
    let mut publishers = Vec::with_capacity(streams.len());
    for (n, stream) in streams {
        let plan = PublishPlan {
            topic: spec.topic.replace("{n}", &n.to_string()),
            qos: spec.qos,
            payload: spec.payload,
            rate: per_connection,
            window: spec.window,
            version: spec.version,
        };
        publishers.push(tokio::spawn(conn::publish(stream, plan, epoch, start, stop_rx.clone())));
    }
    tokio::time::sleep_until(start + spec.duration).await;
    let _ = stop_tx.send(true);
    report.seconds = spec.duration.as_secs_f64();
    for task in publishers {
        merge(&mut report, task.await?);
    }
    // Let the last deliveries arrive, then stop the subscribers.
    if spec.subscribers > 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let _ = stop_subscribers.send(true);
    for task in subscribers {
        merge(&mut report, task.await?);
    }
    Ok(report)
}

fn merge(report: &mut Report, stats: Result<ConnStats>) {
    match stats {
        Ok(s) => {
            report.sent += s.sent;
            report.acked += s.acked;
            report.received += s.received;
            let _ = report.ack_latency.add(&s.ack_latency);
            let _ = report.e2e_latency.add(&s.e2e_latency);
            let _ = report.send_lag.add(&s.send_lag);
        }
        Err(e) => {
            report.errors += 1;
            report.first_error.get_or_insert(format!("{e:#}"));
        }
    }
}

/// Holds `connections` idle connections (spread over `sources` addresses) until `release` resolves; returns how
/// many connected and how long connecting took.
pub async fn hold_idle(
    target: SocketAddr,
    connections: usize,
    sources: usize,
    version: Version,
    release: impl std::future::Future<Output = ()>,
) -> Result<(usize, Duration, Vec<String>)> {
    let started = Instant::now();
    let mut held = Vec::with_capacity(connections);
    let mut errors = Vec::new();
    for (_, stream) in conn::open_many(target, connections, sources, "idle-", version).await {
        match stream {
            Ok(s) => held.push(s),
            Err(e) if errors.len() < 5 => errors.push(format!("{e:#}")),
            Err(_) => {}
        }
    }
    let took = started.elapsed();
    let count = held.len();
    release.await;
    drop(held);
    Ok((count, took, errors))
}
