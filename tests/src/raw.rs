//! A bare MQTT client over a blocking socket (TCP, or WebSocket with the `mqtt` subprotocol), encoding with the
//! project's codec: for the tests that must send what no well-behaved client library would (malformed packets,
//! silence past the keep-alive) or read every answer's exact code.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshgate_protocols::mqtt::{Connect, DecodeError, Packet, ReasonCode, Version};
use tokio_tungstenite::tungstenite::Message;

/// Whether `e` is a read timing out (see [`RawClient::set_timeout`]).
pub fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

/// A connected socket and the version it speaks.
pub struct RawClient {
    link: Link,
    version: Version,
    buf: Vec<u8>,
    /// The Server Keep Alive of the last CONNACK (MQTT 5).
    server_keep_alive: Option<u16>,
}

/// How the packets travel.
enum Link {
    Tcp(TcpStream),
    /// MQTT over WebSocket: packets in binary messages.
    Ws(Box<tokio_tungstenite::tungstenite::WebSocket<TcpStream>>),
}

impl Link {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Tcp(s) => s.write_all(bytes),
            Link::Ws(ws) => ws.send(Message::binary(bytes.to_vec())).map_err(std::io::Error::other),
        }
    }

    /// Appends what arrives next to `buf`; 0 when the server closed.
    fn read_into(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Link::Tcp(s) => {
                let mut chunk = [0u8; 4096];
                let n = match s.read(&mut chunk) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                    Err(e) => return Err(e),
                };
                buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Link::Ws(ws) => loop {
                use tokio_tungstenite::tungstenite::Error as E;
                match ws.read() {
                    Ok(Message::Binary(b)) => {
                        buf.extend_from_slice(&b);
                        return Ok(b.len());
                    }
                    Ok(Message::Close(_)) | Err(E::ConnectionClosed | E::AlreadyClosed) => return Ok(0),
                    Ok(_) => {}
                    Err(E::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(0),
                    Err(E::Io(e)) => return Err(e),
                    Err(e) => return Err(std::io::Error::other(e)),
                }
            },
        }
    }
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
        Ok(RawClient { link: Link::Tcp(stream), version, buf: Vec::new(), server_keep_alive: None })
    }

    /// Opens a WebSocket to `ws://{addr}/mqtt` offering the `mqtt` subprotocol (no MQTT yet).
    pub fn open_ws(addr: SocketAddr, version: Version) -> Result<RawClient> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut request = format!("ws://{addr}/mqtt").into_client_request()?;
        request.headers_mut().insert("sec-websocket-protocol", "mqtt".parse()?);
        let (ws, _) = tokio_tungstenite::tungstenite::client(request, stream).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(RawClient { link: Link::Ws(Box::new(ws)), version, buf: Vec::new(), server_keep_alive: None })
    }

    /// The Server Keep Alive the last CONNACK carried (MQTT 5).
    pub fn server_keep_alive(&self) -> Option<u16> {
        self.server_keep_alive
    }

    /// Sends `connect` and returns the CONNACK (or whatever came instead), leaving the client open either way.
    pub fn handshake(&mut self, connect: &Connect<'_>) -> Result<Reply> {
        self.send(&Packet::Connect(*connect))?;
        self.recv()
    }

    /// Publishes `payload` to `topic` at QoS 1 with packet id `id` and returns the answer (PUBACK, or a
    /// DISCONNECT or the close).
    pub fn publish_qos1(&mut self, topic: &str, id: u16, retain: bool, payload: &[u8]) -> Result<Reply> {
        use meshgate_protocols::mqtt::{Publish, QoS};
        let publish =
            Publish { topic, qos: QoS::AtLeastOnce, packet_id: Some(id), retain, payload, ..Publish::default() };
        self.send(&Packet::Publish(publish))?;
        self.recv()
    }

    /// Reads packets until none arrives for `quiet`, acknowledging QoS 1 publishes; returns the publishes.
    pub fn drain(&mut self, quiet: Duration) -> Result<Vec<Reply>> {
        use meshgate_protocols::mqtt::{PubResponse, PubResponseKind};
        self.set_timeout(quiet)?;
        let mut got = Vec::new();
        loop {
            match self.recv() {
                Ok(Reply::Closed) => break,
                Ok(p @ Reply::Publish { .. }) => {
                    if let Reply::Publish { qos: 1, packet_id, .. } = p {
                        let ack = PubResponse { kind: PubResponseKind::PubAck, packet_id, ..PubResponse::default() };
                        self.send(&Packet::PubResponse(ack))?;
                    }
                    got.push(p);
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => break,
                Err(e) => {
                    self.set_timeout(Duration::from_secs(10))?;
                    return Err(e);
                }
            }
        }
        self.set_timeout(Duration::from_secs(10))?;
        Ok(got)
    }

    /// Sets how long `recv` waits for a packet (10 s unless changed).
    pub fn set_timeout(&self, t: Duration) -> Result<()> {
        match &self.link {
            Link::Tcp(s) => s.set_read_timeout(Some(t))?,
            Link::Ws(ws) => ws.get_ref().set_read_timeout(Some(t))?,
        }
        Ok(())
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
        self.link.write_all(bytes)?;
        Ok(())
    }

    /// Reads the next packet (or the close).
    pub fn recv(&mut self) -> Result<Reply> {
        loop {
            match Packet::decode(&self.buf, self.version, usize::MAX) {
                Ok((packet, used)) => {
                    let reply = match packet {
                        Packet::ConnAck(c) => {
                            self.server_keep_alive = c.properties.server_keep_alive;
                            Reply::ConnAck(c.session_present, c.code)
                        }
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
                    if self.link.read_into(&mut self.buf).context("reading from meshgate")? == 0 {
                        return Ok(Reply::Closed);
                    }
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

/// [`publish_numbered`] from devices `0..devices` at once, each on a thread of its own.
pub fn publish_numbered_from(addr: SocketAddr, devices: usize, count: u16) -> Result<()> {
    let threads: Vec<_> = (0..devices).map(|d| std::thread::spawn(move || publish_numbered(addr, d, count))).collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("device thread panicked"))??;
    }
    Ok(())
}

/// Devices on threads that publish numbered QoS 1 messages until stopped, each waiting for its PUBACK, so a
/// test knows exactly what the gateway acknowledged.
pub struct Publishers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<u64>>>,
    acknowledged: Vec<std::sync::Arc<std::sync::atomic::AtomicU64>>,
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
        let acknowledged: Vec<_> = (0..devices).map(|_| std::sync::Arc::default()).collect();
        let threads = (0..devices)
            .map(|d| {
                let stop = std::sync::Arc::clone(&stop);
                let acked: std::sync::Arc<std::sync::atomic::AtomicU64> = std::sync::Arc::clone(&acknowledged[d]);
                let (id, topic) = (format!("{prefix}-{d}"), topic(d));
                std::thread::spawn(move || -> Result<u64> {
                    let mut c = RawClient::connect(addr, Version::V5, &id, 60)?;
                    let mut seq = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        seq += 1;
                        publish_acknowledged(&mut c, &topic, d, seq)?;
                        acked.store(seq, std::sync::atomic::Ordering::Relaxed);
                        std::thread::sleep(pause);
                    }
                    Ok(seq)
                })
            })
            .collect();
        Publishers { stop, threads, acknowledged }
    }

    /// Stops them (or lets them end with a gateway that died under them); returns how many messages each had
    /// acknowledged (seq 1..=n), whatever ended it.
    pub fn acknowledged(self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.acknowledged.iter().map(|a| a.load(std::sync::atomic::Ordering::Relaxed)).collect()
    }

    /// Stops them; returns how many messages each had acknowledged (seq 1..=n).
    pub fn stop(self) -> Result<Vec<u64>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().map_err(|_| anyhow::anyhow!("device thread panicked"))?).collect()
    }
}
