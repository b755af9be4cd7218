//! A bare MQTT client over a blocking socket, encoding with the project's codec: for the tests that must send
//! what no well-behaved client library would (malformed packets, silence past the keep-alive).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshgate_protocols::mqtt::{Connect, DecodeError, Packet, ReasonCode, Version};

/// A connected socket and the version it speaks.
pub struct RawClient {
    stream: TcpStream,
    version: Version,
    buf: Vec<u8>,
}

/// What came back from the server, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// CONNACK with its session-present flag and code.
    ConnAck(bool, ReasonCode),
    /// DISCONNECT with its reason code.
    Disconnect(ReasonCode),
    /// A publish acknowledgement: the packet type byte, packet id and reason.
    Ack(u8, u16, ReasonCode),
    /// PINGRESP.
    PingResp,
    /// A PUBLISH: DUP, QoS, RETAIN, packet id (0 for QoS 0), topic, payload.
    Publish {
        /// DUP flag.
        dup: bool,
        /// QoS bits.
        qos: u8,
        /// RETAIN flag.
        retain: bool,
        /// Packet identifier (0 for QoS 0).
        packet_id: u16,
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// SUBACK codes.
    SubAck(Vec<u8>),
    /// Any other packet, by type.
    Other(u8),
    /// The server closed the socket.
    Closed,
}

impl RawClient {
    /// Connects a socket (no MQTT yet).
    pub fn open(addr: SocketAddr, version: Version) -> Result<RawClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawClient { stream, version, buf: Vec::new() })
    }

    /// Connects and completes CONNECT/CONNACK with `keep_alive` seconds; fails unless accepted.
    pub fn connect(addr: SocketAddr, version: Version, client_id: &str, keep_alive: u16) -> Result<RawClient> {
        let mut c = RawClient::open(addr, version)?;
        c.send(&Packet::Connect(Connect { version, clean_start: true, keep_alive, client_id, ..Connect::default() }))?;
        match c.recv()? {
            Reply::ConnAck(_, ReasonCode::SUCCESS) => Ok(c),
            other => bail!("connect refused: {other:?}"),
        }
    }

    /// Sends `connect` and returns the CONNACK's session-present flag; fails unless accepted.
    pub fn connect_with(addr: SocketAddr, connect: &Connect<'_>) -> Result<(RawClient, bool)> {
        let mut c = RawClient::open(addr, connect.version)?;
        c.send(&Packet::Connect(*connect))?;
        match c.recv()? {
            Reply::ConnAck(present, ReasonCode::SUCCESS) => Ok((c, present)),
            other => bail!("connect refused: {other:?}"),
        }
    }

    /// Subscribes to `filter` at `qos` (packet id 1) and returns the SUBACK codes.
    pub fn subscribe(&mut self, filter: &str, qos: meshgate_protocols::mqtt::QoS) -> Result<Vec<u8>> {
        use meshgate_protocols::mqtt::{List, Subscribe, SubscribeFilter, SubscriptionOptions};
        let filters =
            [SubscribeFilter { filter, options: SubscriptionOptions { qos, ..SubscriptionOptions::default() } }];
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: List::new(&filters),
            ..Subscribe::default()
        }))?;
        match self.recv()? {
            Reply::SubAck(codes) => Ok(codes),
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }

    /// Encodes and sends a packet.
    pub fn send(&mut self, packet: &Packet<'_>) -> Result<()> {
        let mut out = vec![0u8; packet.encoded_len(self.version)];
        let n = packet.encode(self.version, &mut out).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.send_raw(&out[..n])
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads the next packet (or the close).
    pub fn recv(&mut self) -> Result<Reply> {
        loop {
            match Packet::decode(&self.buf, self.version, usize::MAX) {
                Ok((packet, used)) => {
                    let reply = match packet {
                        Packet::ConnAck(c) => Reply::ConnAck(c.session_present, c.code),
                        Packet::Disconnect(d) => Reply::Disconnect(d.reason),
                        Packet::PubResponse(r) => Reply::Ack(r.kind.packet_type() as u8, r.packet_id, r.reason),
                        Packet::PingResp => Reply::PingResp,
                        Packet::Publish(p) => Reply::Publish {
                            dup: p.dup,
                            qos: p.qos as u8,
                            retain: p.retain,
                            packet_id: p.packet_id.unwrap_or(0),
                            topic: p.topic.to_string(),
                            payload: p.payload.to_vec(),
                        },
                        Packet::SubAck(s) => Reply::SubAck(s.codes.to_vec()),
                        other => Reply::Other(other.packet_type() as u8),
                    };
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Err(DecodeError::Incomplete { .. }) => {
                    let mut chunk = [0u8; 4096];
                    let n = match self.stream.read(&mut chunk) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                        Err(e) => return Err(e).context("reading from meshgate"),
                    };
                    if n == 0 {
                        return Ok(Reply::Closed);
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) => bail!("meshgate sent an undecodable packet: {e}"),
            }
        }
    }
}

/// Publishes `{"client": client, "seq": seq}` to `topic` at QoS 1 and checks that it is acknowledged with 0x00
/// (packet ids wrap within 1..=60,000).
fn publish_acknowledged(c: &mut RawClient, topic: &str, client: usize, seq: u64) -> Result<()> {
    use meshgate_protocols::mqtt::{Publish, QoS};
    let id = (seq % 60_000) as u16 + 1;
    let payload = serde_json::json!({"client": client, "seq": seq}).to_string();
    c.send(&Packet::Publish(Publish {
        topic,
        qos: QoS::AtLeastOnce,
        packet_id: Some(id),
        payload: payload.as_bytes(),
        ..Publish::default()
    }))?;
    anyhow::ensure!(c.recv()? == Reply::Ack(4, id, ReasonCode::SUCCESS), "publish {seq} not acknowledged");
    Ok(())
}

/// Connects as MQTT 5 client `dev-{client}` and publishes `count` QoS 1 messages `{"client": client, "seq": n}`
/// to `devices/dev-{client}/telemetry`, each acknowledged (PUBACK 0x00) before the next.
pub fn publish_numbered(addr: SocketAddr, client: usize, count: u16) -> Result<()> {
    let mut c = RawClient::connect(addr, Version::V5, &format!("dev-{client}"), 30)?;
    let topic = format!("devices/dev-{client}/telemetry");
    (1..=u64::from(count)).try_for_each(|seq| publish_acknowledged(&mut c, &topic, client, seq))
}

/// Devices on threads that publish numbered QoS 1 messages until stopped, each waiting for its PUBACK, so a
/// test knows exactly what the gateway acknowledged.
pub struct Publishers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<u64>>>,
}

impl Publishers {
    /// Starts `devices` clients `{prefix}-{n}`; device n publishes to `topic(n)` with `pause` between messages.
    pub fn start(
        addr: SocketAddr,
        devices: usize,
        prefix: &str,
        topic: impl Fn(usize) -> String,
        pause: Duration,
    ) -> Publishers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..devices)
            .map(|d| {
                let stop = std::sync::Arc::clone(&stop);
                let (id, topic) = (format!("{prefix}-{d}"), topic(d));
                std::thread::spawn(move || -> Result<u64> {
                    let mut c = RawClient::connect(addr, Version::V5, &id, 60)?;
                    let mut seq = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        seq += 1;
                        publish_acknowledged(&mut c, &topic, d, seq)?;
                        std::thread::sleep(pause);
                    }
                    Ok(seq)
                })
            })
            .collect();
        Publishers { stop, threads }
    }

    /// Stops them; returns how many messages each had acknowledged (seq 1..=n).
    pub fn stop(self) -> Result<Vec<u64>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().map_err(|_| anyhow::anyhow!("device thread panicked"))?).collect()
    }
}
