//! One load connection: a lean MQTT client on the project's own codec (no client library in the way of the
//! figures), bound to a chosen loopback source address so tens of thousands of connections fit past the 64k
//! ephemeral-port limit of one address pair.
//!
//! A publisher sends `[nanos since the run's epoch: u64][sequence: u64][filler]` payloads, keeps at most `window`
//! QoS 1 publishes unacknowledged, and records publish → PUBACK latency; a subscriber records publish → receive
//! latency from the timestamp in each payload. Both are counted from the moment the publish is written, not from
//! when a paced publish was due: the generator's timer wakes up to a couple of milliseconds late, which would
//! count against the broker. How late each paced publish went out is recorded on its own (the send lag); a broker
//! that stops acknowledging fills the window and shows there, so nothing it delays goes unmeasured.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use meshgate_protocols::mqtt::{
    Connect, Encode, Packet, PubResponse, PubResponseKind, Publish, QoS, Subscribe, SubscribeFilter,
    SubscriptionOptions, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Latencies are recorded in microseconds, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits"))
}

/// What one connection did.
pub struct ConnStats {
    /// Publishes sent.
    pub sent: u64,
    /// QoS 1 publishes acknowledged (QoS 0: sent).
    pub acked: u64,
    /// Messages received (subscribers).
    pub received: u64,
    /// Publish → acknowledgement, µs.
    pub ack_latency: Histogram<u64>,
    /// Publish → receive, µs.
    pub e2e_latency: Histogram<u64>,
    /// Paced publishes: due time → written, µs (the generator's timer, and a window full of unacknowledged ones).
    pub send_lag: Histogram<u64>,
}

impl ConnStats {
    fn new() -> Self {
        ConnStats {
            sent: 0,
            acked: 0,
            received: 0,
            ack_latency: histogram(),
            e2e_latency: histogram(),
            send_lag: histogram(),
        }
    }
}

/// The `n`-th loopback source address of `count` (127.0.0.1, 127.0.0.2, ...).
pub fn source_address(n: usize, count: usize) -> IpAddr {
    let k = (n % count.max(1)) as u32 + 1;
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | k))
}

/// The keep-alive the generator's connections ask for, in seconds. They send no PINGREQ: a run ends long before
/// it (1.5 times this) lapses. Not 0: rumqttd refuses a keep-alive of 0.
pub const KEEP_ALIVE_SECS: u16 = 600;

/// Opens TCP from `source` and completes CONNECT / CONNACK as `client_id` (clean session, [`KEEP_ALIVE_SECS`]).
pub async fn open(target: SocketAddr, source: IpAddr, client_id: &str, version: Version) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("bind {source}"))?;
    let mut stream = socket.connect(target).await.with_context(|| format!("connect {target} from {source}"))?;
    stream.set_nodelay(true)?;
    let connect = Connect { version, clean_start: true, keep_alive: KEEP_ALIVE_SECS, client_id, ..Connect::default() };
    write_packet(&mut stream, &connect, version).await?;
    let mut buf = Vec::with_capacity(64);
    match read_packet(&mut stream, &mut buf, version).await? {
        Packet::ConnAck(ack) if !ack.code.is_error() => Ok(stream),
        Packet::ConnAck(ack) => bail!("{client_id}: CONNACK refused with {:#x}", ack.code.0),
        other => bail!("{client_id}: expected CONNACK, got {:?}", other.packet_type()),
    }
}

/// Encodes `packet` at the end of `out` (packets bound for one write).
pub fn append(out: &mut Vec<u8>, packet: &impl Encode, version: Version) -> Result<()> {
    let start = out.len();
    out.resize(start + packet.encoded_len(version), 0);
    packet.encode(version, &mut out[start..])?;
    Ok(())
}

/// Opens `count` connections named `{prefix}{n}`, spread over `sources` loopback addresses, a few hundred at a
/// time; returns each one's number and outcome.
pub async fn open_many(
    target: SocketAddr,
    count: usize,
    sources: usize,
    prefix: &str,
    version: Version,
) -> Vec<(usize, Result<TcpStream>)> {
    let mut opened = Vec::with_capacity(count);
    for first in (0..count).step_by(256) {
        let chunk = first..(first + 256).min(count);
        opened.extend(
            futures::future::join_all(chunk.map(|n| async move {
                (n, open(target, source_address(n, sources), &format!("{prefix}{n}"), version).await)
            }))
            .await,
        );
    }
    opened
}

async fn write_packet(stream: &mut TcpStream, packet: &impl Encode, version: Version) -> Result<()> {
    let mut out = Vec::new();
    append(&mut out, packet, version)?;
    stream.write_all(&out).await?;
    Ok(())
}

/// Reads until one whole packet is in `buf` and decodes it (the handshake's packets only).
async fn read_packet<'b>(stream: &mut TcpStream, buf: &'b mut Vec<u8>, version: Version) -> Result<Packet<'b>> {
    buf.clear();
    loop {
        if let Ok((_, used)) = Packet::decode(buf, version, 1 << 20) {
            let (packet, _) = Packet::decode(&buf[..used], version, 1 << 20)?;
            return Ok(packet);
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("closed during the handshake");
        }
    }
}

/// How a publisher sends.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// The topic.
    pub topic: String,
    /// QoS 0 or 1.
    pub qos: QoS,
    /// Payload bytes (at least 16).
    pub payload: usize,
    /// Messages per second for this connection; 0 = as fast as the window allows.
    pub rate: f64,
    /// QoS 1 publishes in flight, at most.
    pub window: usize,
    /// The protocol level.
    pub version: Version,
}

/// Publishes per `plan` from `start` until `stop` turns true, then waits (up to 5 s) for the outstanding
/// acknowledgements. Latency is measured from the intended send time in rate mode (no coordinated omission),
/// from the actual one when flooding.
pub async fn publish(
    mut stream: TcpStream,
    plan: PublishPlan,
    epoch: std::time::Instant,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> Result<ConnStats> {
    let mut stats = ConnStats::new();
    let version = plan.version;
    let qos1 = plan.qos == QoS::AtLeastOnce;
    // Send time (µs since `epoch`) by packet id.
    let mut sent_at = vec![0u64; 65_536];
    let mut next_id: u16 = 1;
    let mut inflight = 0usize;
    let mut out = Vec::with_capacity(plan.window.max(16) * (plan.payload + plan.topic.len() + 8));
    let mut payload = vec![b'x'; plan.payload.max(16)];
    let mut inbuf = Vec::with_capacity(64 * 1024);
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
    let mut seq: u64 = 0;
    let mut stopping = false;
    let mut drain_deadline = None;
    tokio::time::sleep_until(start).await;
    loop {
        if *stop.borrow() && !stopping {
            stopping = true;
            drain_deadline = Some(Instant::now() + Duration::from_secs(5));
        }
        if stopping && (!qos1 || inflight == 0) {
            break;
        }
        if let Some(deadline) = drain_deadline
            && Instant::now() > deadline
        {
            break;
        }
        // Send what is due and what the window allows.
        let now = Instant::now();
        let due = match interval {
            Some(every) => (((now - start).as_secs_f64() / every.as_secs_f64()) as u64 + 1).saturating_sub(seq),
            None => u64::MAX,
        };
        let room = if qos1 { plan.window.saturating_sub(inflight) as u64 } else { 64 };
        let batch = if stopping { 0 } else { due.min(room) };
        let stamp = now.into_std().saturating_duration_since(epoch).as_nanos() as u64;
        for _ in 0..batch {
            if let Some(every) = interval {
                let due_at = start + every.mul_f64(seq as f64);
                let _ = stats.send_lag.record(now.saturating_duration_since(due_at).as_micros().max(1) as u64);
            }
            payload[..8].copy_from_slice(&stamp.to_be_bytes());
            payload[8..16].copy_from_slice(&seq.to_be_bytes());
            let packet_id = qos1.then(|| {
                let id = next_id;
                next_id = if next_id == u16::MAX { 1 } else { next_id + 1 };
                sent_at[usize::from(id)] = stamp / 1000;
                id
            });
            let publish =
                Publish { topic: &plan.topic, qos: plan.qos, packet_id, payload: &payload, ..Publish::default() };
            append(&mut out, &publish, version)?;
            seq += 1;
            stats.sent += 1;
            if qos1 {
                inflight += 1;
            } else {
                stats.acked += 1;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        // Wait for acknowledgements, the next due time, or the stop.
        let next_due = match interval {
            Some(every) if !stopping => Some(start + every.mul_f64(seq as f64)),
            _ => None,
        };
        let window_full = qos1 && inflight >= plan.window;
        let flooding = interval.is_none() && !stopping && !window_full;
        if flooding && !qos1 {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            read = stream.read_buf(&mut inbuf), if qos1 => {
                if read? == 0 {
                    bail!("the server closed the connection");
                }
                let mut at = 0;
                while let Ok((packet, used)) = Packet::decode(&inbuf[at..], version, 1 << 20) {
                    at += used;
                    if let Packet::PubResponse(r) = packet
                        && r.kind == PubResponseKind::PubAck
                    {
                        let now_us = epoch.elapsed().as_micros() as u64;
                        let sent = sent_at[usize::from(r.packet_id)];
                        let _ = stats.ack_latency.record(now_us.saturating_sub(sent).max(1));
                        stats.acked += 1;
                        inflight = inflight.saturating_sub(1);
                    }
                }
                inbuf.drain(..at);
            }
            () = sleep_until_opt(next_due), if next_due.is_some() && !window_full => {}
            () = std::future::ready(()), if flooding => {}
            _ = stop.changed(), if !stopping => {}
            () = tokio::time::sleep(Duration::from_millis(100)), if stopping => {}
        }
    }
    Ok(stats)
}

async fn sleep_until_opt(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Subscribes to `filter` at `qos` and counts what arrives (acknowledging QoS 1) until `stop`, recording
/// publish → receive latency from each payload's timestamp.
pub async fn subscribe(
    mut stream: TcpStream,
    filter: String,
    qos: QoS,
    version: Version,
    epoch: std::time::Instant,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<ConnStats> {
    let mut stats = ConnStats::new();
    let filters =
        [SubscribeFilter { filter: &filter, options: SubscriptionOptions { qos, ..SubscriptionOptions::default() } }];
    let subscribe =
        Subscribe { packet_id: 1, filters: meshgate_protocols::mqtt::List::new(&filters), ..Subscribe::default() };
    write_packet(&mut stream, &subscribe, version).await?;
    let mut inbuf = Vec::with_capacity(256 * 1024);
    let mut out = Vec::with_capacity(4096);
    let mut ready = Some(ready);
    loop {
        tokio::select! {
            read = stream.read_buf(&mut inbuf) => {
                if read? == 0 {
                    bail!("the server closed the subscriber's connection");
                }
            }
            _ = stop.changed() => return Ok(stats),
        }
        let mut at = 0;
        while let Ok((packet, used)) = Packet::decode(&inbuf[at..], version, 1 << 20) {
            at += used;
            match packet {
                Packet::SubAck(_) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Packet::Publish(p) => {
                    stats.received += 1;
                    if let Some(stamp) = p.payload.get(..8) {
                        let sent_ns = u64::from_be_bytes(stamp.try_into().unwrap_or_default());
                        let now_ns = epoch.elapsed().as_nanos() as u64;
                        let _ = stats.e2e_latency.record((now_ns.saturating_sub(sent_ns) / 1000).max(1));
                    }
                    if let Some(id) = p.packet_id {
                        append(&mut out, &PubResponse::new(PubResponseKind::PubAck, id), version)?;
                    }
                }
                _ => {}
            }
        }
        inbuf.drain(..at);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}
