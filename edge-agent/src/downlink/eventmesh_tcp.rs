//! An EventMesh TCP downlink: a consumer session on a runtime's framed TCP protocol.
//!
//! HELLO with `purpose` `sub` and the consumer group, `SUBSCRIBE_REQUEST` with the topics in `CLUSTERING` mode
//! (`ASYNC`), `LISTEN_REQUEST`; then the runtime pushes `ASYNC_MESSAGE_TO_CLIENT` frames, each a structured JSON
//! CloudEvent (`protocoltype` `cloudevents`). The pushes read at once are judged and handed to the local broker,
//! committed, and only then acknowledged, each with its `seq` (`ASYNC_MESSAGE_TO_CLIENT_ACK`, the pushed body
//! echoed as the Java SDK does). The runtime keeps a push until it is acknowledged and gives what a lost session
//! left unacknowledged to the group again, so a gateway killed before its acknowledgement gets those events again.
//!
//! The TCP protocol has no negative acknowledgement: an event that cannot be delivered (not a CloudEvent, no
//! valid topic) is counted as refused, logged and acknowledged, as an expired one is; unacknowledged, the runtime
//! would push it again and again and finally isolate the consumer. Heartbeats keep the session alive;
//! `SERVER_GOODBYE_REQUEST` is answered and `REDIRECT_TO_CLIENT` followed, both after what was delivered is
//! acknowledged. A session that cannot be opened sends the next one to the next endpoint.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshgate_protocols::cloudevents::CloudEvent;
use meshgate_protocols::eventmesh::tcp::{
    Command, Frame, FrameError, Header, Redirect, Subscription, SubscriptionItem, UserAgent,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::config::EventMeshTcpDownlinkConfig;
use super::{DownlinkStats, LocalDelivery};
use crate::uplink::eventmesh::tcp::{encode, hello, next_seq, read_answer, user_agent};

/// Consumes until `stop`, reconnecting with capped exponential backoff.
pub async fn run(
    config: EventMeshTcpDownlinkConfig,
    target: Arc<dyn LocalDelivery>,
    stats: Arc<DownlinkStats>,
    stop: watch::Receiver<bool>,
) {
    let mut agent = user_agent(config.identity(), "sub");
    agent.unack = i64::from(config.max_unacked);
    let consumer = Consumer {
        agent,
        seq: AtomicU64::new(u64::from(rand::random::<u32>())),
        next_endpoint: AtomicUsize::new(0),
        redirect: Mutex::new(None),
        config,
        target,
        stats,
    };
    let (name, reconnect_max_ms) = (consumer.config.name.clone(), consumer.config.reconnect_max_ms);
    let endpoint = consumer.config.endpoints.join(", ");
    super::reconnecting(&name, &endpoint, reconnect_max_ms, &consumer.stats, stop, || consumer.session()).await;
}

/// A downlink's consumer state across sessions.
struct Consumer {
    config: EventMeshTcpDownlinkConfig,
    agent: UserAgent,
    seq: AtomicU64,
    next_endpoint: AtomicUsize,
    /// Where the runtime told us to go (`REDIRECT_TO_CLIENT`), for the next session only.
    redirect: Mutex<Option<String>>,
    target: Arc<dyn LocalDelivery>,
    stats: Arc<DownlinkStats>,
}

/// How a session ends: why, and a frame to send before closing.
struct End {
    why: String,
    last_words: Option<Vec<u8>>,
}

impl Consumer {
    /// One session: connect, HELLO, SUBSCRIBE, LISTEN, then consume until it ends; returns why it ended.
    async fn session(&self) -> String {
        let redirected = self.redirect.lock().unwrap_or_else(|p| p.into_inner()).take();
        let endpoints = &self.config.endpoints;
        let (address, index) = match redirected {
            Some(to) => (to, None),
            None => {
                let i = self.next_endpoint.load(Ordering::Relaxed) % endpoints.len().max(1);
                (endpoints.get(i).cloned().unwrap_or_default(), Some(i))
            }
        };
        match self.open(&address).await {
            Ok((stream, buf, early)) => format!("{address}: {}", self.consume(stream, buf, early).await),
            Err(e) => {
                // The next session tries the next endpoint; one that ran is tried again first.
                if let Some(i) = index {
                    self.next_endpoint.store(i + 1, Ordering::Relaxed);
                }
                format!("{address}: {e}")
            }
        }
    }

    /// Connects and subscribes; returns the stream, the bytes read past `LISTEN_RESPONSE`, and any push that
    /// came before it.
    async fn open(&self, address: &str) -> Result<(TcpStream, Vec<u8>, Vec<Frame>), String> {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms.max(1));
        let (mut stream, mut buf) = hello(address, &self.agent, timeout, &self.seq).await?;
        let topics = self
            .config
            .topics
            .iter()
            .map(|t| SubscriptionItem { topic: t.clone(), mode: "CLUSTERING".into(), kind: "ASYNC".into() })
            .collect();
        let subscription = serde_json::to_vec(&Subscription { topic_list: topics }).map_err(|e| e.to_string())?;
        let mut early = Vec::new();
        for (request, body, answer) in [
            (Command::SubscribeRequest, subscription, Command::SubscribeResponse),
            (Command::ListenRequest, Vec::new(), Command::ListenResponse),
        ] {
            let frame = encode(Header::new(request, &next_seq(&self.seq)), body)?;
            let header = tokio::time::timeout(timeout, async {
                stream.write_all(&frame).await.map_err(|e| format!("{}: {e}", request.name()))?;
                read_answer(&mut stream, &mut buf, answer, &mut early).await
            })
            .await
            .map_err(|_| format!("no {} in time", answer.name()))??;
            if header.code != 0 {
                return Err(format!(
                    "{} refused: code {} {}",
                    request.name(),
                    header.code,
                    header.desc.unwrap_or_default()
                ));
            }
        }
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(downlink = %self.config.name, endpoint = %address, topics = ?self.config.topics,
            group = %self.agent.group, "listening for events from the mesh");
        Ok((stream, buf, early))
    }

    /// Takes pushes until the session ends. Pushes read together are delivered, committed and then acknowledged.
    async fn consume(&self, stream: TcpStream, mut buf: Vec<u8>, early: Vec<Frame>) -> String {
        let (mut reader, mut writer) = stream.into_split();
        let beat = Duration::from_millis(self.config.heartbeat_interval_ms.max(100));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        let mut acks = Vec::new();
        let mut end = None;
        for frame in early {
            end = end.or(self.on_frame(frame, &mut acks));
        }
        loop {
            while end.is_none() {
                match Frame::decode(&buf) {
                    Ok((frame, used)) => {
                        buf.drain(..used);
                        end = self.on_frame(frame, &mut acks);
                    }
                    Err(FrameError::Incomplete { .. }) => break,
                    Err(e) => end = Some(End { why: format!("protocol error: {e}"), last_words: None }),
                }
            }
            if !acks.is_empty() {
                if let Err(e) = self.target.commit().await {
                    // Unacknowledged, the runtime gives these events to the group again.
                    return format!("the local broker could not commit: {e}");
                }
                if let Err(e) = writer.write_all(&acks).await {
                    return format!("write: {e}");
                }
                acks.clear();
            }
            if let Some(End { why, last_words }) = end {
                if let Some(bytes) = last_words {
                    let _ = writer.write_all(&bytes).await;
                }
                let _ = writer.shutdown().await;
                return why;
            }
            tokio::select! {
                read = reader.read_buf(&mut buf) => match read {
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

    /// Handles one frame from the runtime: a push is delivered and its acknowledgement appended to `acks`.
    fn on_frame(&self, frame: Frame, acks: &mut Vec<u8>) -> Option<End> {
        let seq = frame.header.seq.clone().unwrap_or_default();
        if let Some(ack) = frame.header.cmd.push_ack() {
            self.take(&frame);
            match encode(Header::new(ack, &seq), frame.body) {
                Ok(bytes) => acks.extend_from_slice(&bytes),
                Err(e) => tracing::warn!(downlink = %self.config.name, error = %e, "acknowledgement not encoded"),
            }
            return None;
        }
        match frame.header.cmd {
            Command::ServerGoodbyeRequest => Some(End {
                why: "the runtime said goodbye".into(),
                last_words: encode(Header::new(Command::ServerGoodbyeResponse, &seq), Vec::new()).ok(),
            }),
            Command::RedirectToClient => match serde_json::from_slice::<Redirect>(&frame.body) {
                Ok(r) => {
                    let to = format!("{}:{}", r.ip, r.port);
                    *self.redirect.lock().unwrap_or_else(|p| p.into_inner()) = Some(to.clone());
                    Some(End { why: format!("redirected to {to}"), last_words: None })
                }
                Err(e) => {
                    tracing::warn!(downlink = %self.config.name, error = %e, "unreadable REDIRECT_TO_CLIENT ignored");
                    None
                }
            },
            _ => None,
        }
    }

    /// Reads one pushed event and hands it on (or counts it refused).
    fn take(&self, frame: &Frame) {
        let (config, stats) = (&self.config, self.stats.as_ref());
        let seq = frame.header.seq.as_deref().unwrap_or_default();
        let protocol = frame.header.property("protocoltype").unwrap_or("eventmeshmessage");
        if protocol != "cloudevents" {
            let why = format!("protocoltype `{protocol}`: only CloudEvents are delivered to devices");
            return super::refused(&config.name, seq, &why, stats);
        }
        match CloudEvent::from_json_slice(&frame.body) {
            Ok(mut event) => {
                super::deliver(&mut event, &config.name, &config.topic, self.target.as_ref(), stats);
            }
            Err(e) => super::refused(&config.name, seq, &format!("not a structured CloudEvent: {e}"), stats),
        }
    }
}
