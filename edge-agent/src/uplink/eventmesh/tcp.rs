//! The TCP transport: one session per endpoint in the runtime's framed protocol.
//!
//! Connect, `HELLO_REQUEST` with the [`UserAgent`] (purpose `pub`), wait for `HELLO_RESPONSE` code 0; then
//! `ASYNC_MESSAGE_TO_SERVER` frames carry the structured events and their `ASYNC_MESSAGE_TO_SERVER_ACK`s are
//! matched by `seq`, so many publishes share the session. A heartbeat goes out every `heartbeat_interval_ms`.
//! `SERVER_GOODBYE_REQUEST` is answered and the session closed; `REDIRECT_TO_CLIENT` closes it and the next
//! session goes to the address the runtime named (back to the configured one if that fails). Any close fails
//! the publishes waiting on the session, and the next publish opens a new session with a new HELLO.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshgate_protocols::eventmesh::status::tcp_verdict;
use meshgate_protocols::eventmesh::tcp::{Command, Frame, FrameError, Header, Redirect, UserAgent};
use meshgate_protocols::eventmesh::{PROTOCOL_TYPE, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::config::EventMeshUplinkConfig;
use super::{Answer, Transport};
use crate::CloudEvent;
use crate::uplink::{BoxFuture, UplinkStats};

/// The client version sent in HELLO.
const CLIENT_VERSION: &str = concat!("meshgate/", env!("CARGO_PKG_VERSION"));

/// Frames queued for a session's writer beyond the requests in flight (heartbeats, goodbye answers).
const EXTRA_QUEUED_FRAMES: usize = 8;

/// Waiters for answers, by `seq`.
type Pending = Mutex<HashMap<String, oneshot::Sender<Header>>>;

/// One open session.
struct Session {
    outgoing: mpsc::Sender<Vec<u8>>,
    pending: Arc<Pending>,
    closed: Arc<AtomicBool>,
}

/// Removes a waiter when its publish ends, however it ends (answered, timed out, dropped).
struct Waiter<'a> {
    pending: &'a Pending,
    seq: String,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.seq);
    }
}

/// TCP to one runtime.
pub(crate) struct TcpTransport {
    configured: String,
    redirect: Arc<Mutex<Option<String>>>,
    /// An async mutex on purpose: it serialises opening a session (connect + HELLO), which awaits IO.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    user_agent: UserAgent,
    heartbeat: Duration,
    connect_timeout: Duration,
    queue: usize,
    seq: Arc<AtomicU64>,
    stats: Arc<UplinkStats>,
}

pub(crate) fn next_seq(seq: &AtomicU64) -> String {
    // Ten digits, as the Java SDK sends.
    format!("{:010}", seq.fetch_add(1, Ordering::Relaxed) % 10_000_000_000)
}

pub(crate) fn encode(header: Header, body: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    Frame { header, body }.encode(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The HELLO `UserAgent` for `identity`: purpose `pub` (publishing, the group is the producer group) or `sub`
/// (a consumer, the group is the consumer group).
pub(crate) fn user_agent(identity: meshgate_protocols::eventmesh::Identity, purpose: &str) -> UserAgent {
    UserAgent {
        env: identity.env,
        subsystem: identity.sys,
        path: "/meshgate".into(),
        pid: identity.pid.parse().unwrap_or(0),
        host: identity.ip,
        port: 0,
        version: Some(CLIENT_VERSION.into()),
        username: identity.username,
        password: identity.password,
        token: identity.token,
        idc: identity.idc,
        group: identity.producer_group,
        purpose: purpose.into(),
        unack: 0,
    }
}

/// Opens a session: connects to `address` and says HELLO with `agent` (its port set to the local one), both
/// within `timeout`. Returns the stream and whatever was read after the `HELLO_RESPONSE`.
pub(crate) async fn hello(
    address: &str,
    agent: &UserAgent,
    timeout: Duration,
    seq: &AtomicU64,
) -> Result<(TcpStream, Vec<u8>), String> {
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| format!("connect timed out after {timeout:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut agent = agent.clone();
    agent.port = stream.local_addr().map(|a| i64::from(a.port())).unwrap_or(0);
    let body = serde_json::to_vec(&agent).map_err(|e| e.to_string())?;
    let hello = encode(Header::new(Command::HelloRequest, &next_seq(seq)), body)?;
    let mut buf = Vec::with_capacity(8 * 1024);
    let answer = tokio::time::timeout(timeout, async {
        stream.write_all(&hello).await.map_err(|e| format!("HELLO: {e}"))?;
        // Nothing but the answer comes before a session exists.
        read_answer(&mut stream, &mut buf, Command::HelloResponse, &mut Vec::new()).await
    })
    .await
    .map_err(|_| "no HELLO_RESPONSE in time".to_string())??;
    if answer.code != 0 {
        return Err(format!("HELLO refused: code {} {}", answer.code, answer.desc.unwrap_or_default()));
    }
    Ok((stream, buf))
}

/// Reads frames into `buf` until one with command `expect` arrives; returns its header. Frames before it go to
/// `others` (a consumer may be pushed an event before its `LISTEN_RESPONSE`).
pub(crate) async fn read_answer(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    expect: Command,
    others: &mut Vec<Frame>,
) -> Result<Header, String> {
    loop {
        match Frame::decode(buf) {
            Ok((frame, used)) => {
                buf.drain(..used);
                if frame.header.cmd == expect {
                    return Ok(frame.header);
                }
                others.push(frame);
            }
            Err(FrameError::Incomplete { .. }) => {
                if stream.read_buf(buf).await.map_err(|e| format!("{}: {e}", expect.name()))? == 0 {
                    return Err(format!("the runtime closed the connection before {}", expect.name()));
                }
            }
            Err(e) => return Err(format!("{}: {e}", expect.name())),
        }
    }
}

impl TcpTransport {
    /// A transport to `address` (`host:port`); it opens its session on first use.
    pub fn new(address: &str, config: &EventMeshUplinkConfig, stats: Arc<UplinkStats>) -> TcpTransport {
        let user_agent = user_agent(config.identity(), "pub");
        TcpTransport {
            configured: address.into(),
            redirect: Arc::new(Mutex::new(None)),
            session: tokio::sync::Mutex::new(None),
            user_agent,
            heartbeat: Duration::from_millis(config.heartbeat_interval_ms.max(100)),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms.max(1)),
            queue: config.max_in_flight.saturating_add(EXTRA_QUEUED_FRAMES),
            seq: Arc::new(AtomicU64::new(u64::from(rand::random::<u32>()))),
            stats,
        }
    }

    /// The open session, opening one (connect + HELLO) if there is none or it closed.
    async fn session(&self) -> Result<Arc<Session>, String> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.closed.load(Ordering::Relaxed)) {
            return Ok(Arc::clone(s));
        }
        *slot = None;
        let redirected = self.redirect.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let address = redirected.clone().unwrap_or_else(|| self.configured.clone());
        let session = match self.open(&address).await {
            Ok(s) => s,
            Err(e) => {
                if redirected.is_some() {
                    // The runtime we were sent to is not there: go back to the configured one next time.
                    *self.redirect.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                return Err(format!("{address}: {e}"));
            }
        };
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }

    async fn open(&self, address: &str) -> Result<Arc<Session>, String> {
        let (stream, buf) = hello(address, &self.user_agent, self.connect_timeout, &self.seq).await?;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(endpoint = %address, "EventMesh TCP session open");
        let (outgoing, rx) = mpsc::channel(self.queue);
        let session = Arc::new(Session {
            outgoing,
            pending: Arc::new(Mutex::new(HashMap::new())),
            closed: Arc::new(AtomicBool::new(false)),
        });
        let run = Runner {
            address: address.to_string(),
            pending: Arc::clone(&session.pending),
            closed: Arc::clone(&session.closed),
            redirect: Arc::clone(&self.redirect),
            seq: Arc::clone(&self.seq),
            heartbeat: self.heartbeat,
        };
        tokio::spawn(run.run(stream, rx, buf));
        Ok(session)
    }

    /// Sends a request on the session and waits for the answer with the same `seq`.
    async fn request(
        &self,
        cmd: Command,
        body: Vec<u8>,
        properties: impl Iterator<Item = (&'static str, String)>,
    ) -> Result<Header, String> {
        let session = self.session().await?;
        let seq = next_seq(&self.seq);
        let mut header = Header::new(cmd, &seq);
        header.properties.extend(properties.map(|(k, v)| (k.into(), v.into())));
        if cmd == Command::AsyncMessageToServer {
            for (k, v) in
                [("protocoltype", PROTOCOL_TYPE), ("protocolversion", PROTOCOL_VERSION), ("protocoldesc", "tcp")]
            {
                header.properties.insert(k.into(), v.into());
            }
        }
        let frame = encode(header, body)?;
        let (tx, rx) = oneshot::channel();
        session.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(seq.clone(), tx);
        let _waiter = Waiter { pending: &session.pending, seq };
        if session.outgoing.send(frame).await.is_err() {
            session.closed.store(true, Ordering::Relaxed);
            return Err("the session closed".into());
        }
        rx.await.map_err(|_| "the session closed before the runtime answered".to_string())
    }
}

impl Transport for TcpTransport {
    fn publish<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<Answer, String>> {
        Box::pin(async move {
            // The event's trace context also travels as header properties, as EventMesh's own tracing reads it.
            let trace = crate::trace::native_headers(event);
            let answer =
                self.request(Command::AsyncMessageToServer, event.to_json_string().into_bytes(), trace).await?;
            if answer.cmd != Command::AsyncMessageToServerAck {
                return Err(format!("unexpected answer {} to ASYNC_MESSAGE_TO_SERVER", answer.cmd.name()));
            }
            let message = answer.desc.unwrap_or_default();
            Ok(Answer { verdict: tcp_verdict(answer.code, &message), code: Some(i64::from(answer.code)), message })
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(
            async move { self.request(Command::HeartbeatRequest, Vec::new(), std::iter::empty()).await.map(|_| ()) },
        )
    }
}

/// A session's IO task: writes queued frames, reads and dispatches answers, sends heartbeats.
struct Runner {
    address: String,
    pending: Arc<Pending>,
    closed: Arc<AtomicBool>,
    redirect: Arc<Mutex<Option<String>>>,
    seq: Arc<AtomicU64>,
    heartbeat: Duration,
}

impl Runner {
    async fn run(self, stream: TcpStream, mut rx: mpsc::Receiver<Vec<u8>>, mut buf: Vec<u8>) {
        let why = self.serve(stream, &mut rx, &mut buf).await;
        self.closed.store(true, Ordering::Relaxed);
        rx.close();
        // Dropping the senders fails every waiting publish; they go to another endpoint or are retried.
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
        tracing::info!(endpoint = %self.address, why, "EventMesh TCP session closed");
    }

    async fn serve(&self, stream: TcpStream, rx: &mut mpsc::Receiver<Vec<u8>>, buf: &mut Vec<u8>) -> String {
        let (mut reader, mut writer) = stream.into_split();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        loop {
            // Dispatch every complete frame already read.
            loop {
                match Frame::decode(buf) {
                    Ok((frame, used)) => {
                        buf.drain(..used);
                        if let Some((why, last_words)) = self.dispatch(frame) {
                            if let Some(bytes) = last_words {
                                let _ = writer.write_all(&bytes).await;
                            }
                            let _ = writer.shutdown().await;
                            return why;
                        }
                    }
                    Err(FrameError::Incomplete { .. }) => break,
                    Err(e) => return format!("protocol error: {e}"),
                }
            }
            tokio::select! {
                frame = rx.recv() => match frame {
                    Some(bytes) => {
                        if let Err(e) = writer.write_all(&bytes).await {
                            return format!("write: {e}");
                        }
                    }
                    None => return "the transport was dropped".into(),
                },
                read = reader.read_buf(buf) => match read {
                    Ok(0) => return "the runtime closed the connection".into(),
                    Ok(_) => {}
                    Err(e) => return format!("read: {e}"),
                },
                _ = heartbeat.tick() => {
                    let beat = encode(Header::new(Command::HeartbeatRequest, &next_seq(&self.seq)), Vec::new());
                    if let Ok(bytes) = beat
                        && let Err(e) = writer.write_all(&bytes).await
                    {
                        return format!("write: {e}");
                    }
                }
            }
        }
    }

    /// Handles one frame from the runtime; `Some((reason, frame to send first))` ends the session.
    fn dispatch(&self, frame: Frame) -> Option<(String, Option<Vec<u8>>)> {
        match frame.header.cmd {
            Command::ServerGoodbyeRequest => {
                // No new publishes on this session from now on; the answer goes out before the close.
                self.closed.store(true, Ordering::Relaxed);
                let seq = frame.header.seq.clone().unwrap_or_default();
                let answer = encode(Header::new(Command::ServerGoodbyeResponse, &seq), Vec::new()).ok();
                Some(("the runtime said goodbye".into(), answer))
            }
            Command::RedirectToClient => match serde_json::from_slice::<Redirect>(&frame.body) {
                Ok(r) => {
                    self.closed.store(true, Ordering::Relaxed);
                    let to = format!("{}:{}", r.ip, r.port);
                    *self.redirect.lock().unwrap_or_else(|p| p.into_inner()) = Some(to.clone());
                    Some((format!("redirected to {to}"), None))
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.address, error = %e, "unreadable REDIRECT_TO_CLIENT ignored");
                    None
                }
            },
            _ => {
                let waiter = frame
                    .header
                    .seq
                    .as_ref()
                    .and_then(|seq| self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(seq));
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(frame.header);
                    }
                    None => {
                        tracing::debug!(endpoint = %self.address, cmd = frame.header.cmd.name(), "unsolicited frame")
                    }
                }
                None
            }
        }
    }
}
