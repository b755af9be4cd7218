//! The TCP double: the runtime's framed protocol (`Codec.java`, `AbstractTCPServer`, `HelloProcessor`,
//! `MessageTransferTask`), with a frame reader of its own written from the reference: `EventMesh` `0000`, a
//! package length of `13 + header + body` and a header length, both big-endian u32.
//!
//! Before HELLO every request fails with "no session is found"; HELLO needs `version`, `purpose` `pub`/`sub` and a
//! `group`. A message with data over `maxEventSize` fails with code 1 and the exception text "event size exceeds
//! the limit"; rate limiting fails with code 1 and "Tps overload, global flow control"; success acks with the same
//! `seq` and the event as body. A test can make every session get `SERVER_GOODBYE_REQUEST` or
//! `REDIRECT_TO_CLIENT`.
//!
//! Consumers (`SessionPusher`, `MessageAckProcessor`): `SUBSCRIBE_REQUEST` with a `topicList`, then
//! `LISTEN_REQUEST`; from then on the stored events of the subscribed topics are pushed as
//! `ASYNC_MESSAGE_TO_CLIENT` (structured JSON, `protocoltype` `cloudevents`) with a `seq` of the double's, to one
//! listening session of each consumer group (`CLUSTERING`), and stay in flight until an
//! `ASYNC_MESSAGE_TO_CLIENT_ACK` echoes that `seq`; an unknown `seq` is ignored, as the runtime only logs it. What
//! a session held unacknowledged when it ended goes to the group again. Only events whose `datacontenttype` is an
//! event format (`application/cloudevents+json`) can be pushed: the runtime picks its serializer by that type and
//! finds none for others, so those are counted as unpushable and never delivered. The double keeps at most the
//! HELLO's `unack` (100 without one) pushes in flight per session; the runtime's own limit is its configuration's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};

use super::{Decision, MAX_EVENT_SIZE, State, Stored, data_chars};

/// Frames larger than this are refused, as Netty's decoder does (4 MiB).
const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Server-initiated frames a test asks for.
#[derive(Clone)]
pub(crate) struct Control {
    tx: broadcast::Sender<(String, Vec<u8>)>,
}

impl Control {
    pub(crate) fn new() -> Control {
        Control { tx: broadcast::channel(16).0 }
    }

    pub(crate) fn goodbye(&self) {
        let _ = self.tx.send(("SERVER_GOODBYE_REQUEST".into(), Vec::new()));
    }

    pub(crate) fn redirect(&self, to: SocketAddr) {
        let body = json!({"ip": to.ip().to_string(), "port": to.port()}).to_string().into_bytes();
        let _ = self.tx.send(("REDIRECT_TO_CLIENT".into(), body));
    }
}

/// Pushes in flight per consumer session without an `unack` in its HELLO.
const DEFAULT_UNACK: usize = 100;

/// Session ids and push `seq`s, unique in the process.
static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A session that subscribed.
struct Consumer {
    group: String,
    topics: Vec<String>,
    listening: bool,
    limit: usize,
    /// Pushes in flight: `seq` → index of the stored event.
    in_flight: HashMap<String, usize>,
}

/// The frames to push to consumer session `id` now: the group's next events on its topics, up to its limit.
fn pushes(state: &State, id: u64, consumer: &mut Consumer) -> Vec<Vec<u8>> {
    let stored = state.stored.lock().unwrap_or_else(|p| p.into_inner());
    let mut groups = state.groups.lock().unwrap_or_else(|p| p.into_inner());
    let group = groups.entry(consumer.group.clone()).or_default();
    let mut frames = Vec::new();
    for (i, s) in stored.iter().enumerate() {
        if consumer.in_flight.len() >= consumer.limit {
            break;
        }
        if !consumer.topics.contains(&s.topic) || group.done.contains(&i) || group.in_flight.contains_key(&i) {
            continue;
        }
        if s.event.get("datacontenttype").and_then(Value::as_str) != Some("application/cloudevents+json") {
            group.done.insert(i);
            state.unpushable.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let seq = format!("{:010}", COUNTER.fetch_add(1, Ordering::SeqCst));
        consumer.in_flight.insert(seq.clone(), i);
        group.in_flight.insert(i, id);
        state.pushes.fetch_add(1, Ordering::SeqCst);
        let header = json!({"cmd": "ASYNC_MESSAGE_TO_CLIENT", "code": 0, "seq": seq,
            "properties": {"protocoltype": "cloudevents", "protocolversion": "1.0", "protocoldesc": "tcp"}});
        frames.push(frame(&header, s.event.to_string().as_bytes()));
    }
    frames
}

/// An acknowledgement from consumer session `consumer`: the event is done for its group.
fn acknowledged(state: &State, consumer: &mut Consumer, seq: &str) {
    let Some(i) = consumer.in_flight.remove(seq) else { return };
    let mut groups = state.groups.lock().unwrap_or_else(|p| p.into_inner());
    let group = groups.entry(consumer.group.clone()).or_default();
    group.in_flight.remove(&i);
    group.done.insert(i);
    state.push_acks.fetch_add(1, Ordering::SeqCst);
}

/// Session `id` ended: what it held unacknowledged goes to its group again.
fn released(state: &State, id: u64) {
    let mut groups = state.groups.lock().unwrap_or_else(|p| p.into_inner());
    for group in groups.values_mut() {
        group.in_flight.retain(|_, holder| *holder != id);
    }
    drop(groups);
    state.to_push.notify_waiters();
}

/// A producer's publish through the double's wire path; see [`super::Runtime::publish`].
pub(crate) async fn publish(addr: SocketAddr, event: &Value) -> anyhow::Result<()> {
    let (mut reader, mut writer) = TcpStream::connect(addr).await?.into_split();
    let agent = json!({"env": "PRD", "subsystem": "5023", "path": "/", "pid": 1, "host": "127.0.0.1", "port": 0,
        "version": "2.0", "username": "u", "password": "p", "idc": "DEFAULT", "group": "test-producer",
        "purpose": "pub", "unack": 0});
    writer
        .write_all(&frame(&json!({"cmd": "HELLO_REQUEST", "code": 0, "seq": "1"}), agent.to_string().as_bytes()))
        .await?;
    let header = json!({"cmd": "ASYNC_MESSAGE_TO_SERVER", "code": 0, "seq": "2",
        "properties": {"protocoltype": "cloudevents", "protocolversion": "1.0", "protocoldesc": "tcp"}});
    writer.write_all(&frame(&header, event.to_string().as_bytes())).await?;
    loop {
        let (header, _) = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut reader))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the double closed the connection"))?;
        match header.get("cmd").and_then(Value::as_str) {
            Some("HELLO_RESPONSE" | "ASYNC_MESSAGE_TO_SERVER_ACK") if header["code"] != 0 => {
                anyhow::bail!("refused: {header}")
            }
            Some("ASYNC_MESSAGE_TO_SERVER_ACK") => return Ok(()),
            _ => {}
        }
    }
}

/// Serves until the double's runtime is dropped.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>, control: Control) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(session(stream, Arc::clone(&state), control.tx.subscribe()));
    }
}

fn frame(header: &Value, body: &[u8]) -> Vec<u8> {
    let header = header.to_string().into_bytes();
    let mut out = b"EventMesh0000".to_vec();
    out.extend_from_slice(&((13 + header.len() + body.len()) as u32).to_be_bytes());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    out
}

/// Reads one frame: its header JSON and body. `None` at EOF or on a frame the runtime would refuse.
async fn read_frame(stream: &mut tokio::net::tcp::OwnedReadHalf) -> Option<(Value, Vec<u8>)> {
    let mut prefix = [0u8; 21];
    stream.read_exact(&mut prefix).await.ok()?;
    if &prefix[..13] != b"EventMesh0000" {
        return None;
    }
    let package = u32::from_be_bytes(prefix[13..17].try_into().ok()?) as usize;
    let header_len = u32::from_be_bytes(prefix[17..21].try_into().ok()?) as usize;
    let total = package + 8;
    if total > MAX_FRAME || package < 13 + header_len {
        return None;
    }
    let mut rest = vec![0u8; total - 21];
    stream.read_exact(&mut rest).await.ok()?;
    let body = rest.split_off(header_len);
    Some((serde_json::from_slice(&rest).ok()?, body))
}

fn reply(cmd: &str, code: i32, desc: &str, seq: &Value) -> Value {
    json!({"cmd": cmd, "code": code, "desc": desc, "seq": seq, "properties": null})
}

async fn session(stream: TcpStream, state: Arc<State>, mut control: broadcast::Receiver<(String, Vec<u8>)>) {
    let (mut reader, mut writer) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(1024);
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut hello = false;
    let id = COUNTER.fetch_add(1, Ordering::SeqCst);
    let (mut group, mut unack) = (String::new(), DEFAULT_UNACK);
    let mut consumer: Option<Consumer> = None;
    // A notification can fall between two checks; the tick catches what it missed.
    let mut recheck = tokio::time::interval(Duration::from_millis(50));
    loop {
        if let Some(c) = consumer.as_mut().filter(|c| c.listening) {
            for push in pushes(&state, id, c) {
                if out_tx.send(push).await.is_err() {
                    break;
                }
            }
        }
        let (header, body) = tokio::select! {
            f = read_frame(&mut reader) => match f {
                Some(f) => f,
                None => break,
            },
            c = control.recv() => {
                if let Ok((cmd, body)) = c {
                    let _ = out_tx.send(frame(&json!({"cmd": cmd, "code": 0, "seq": "9999999999"}), &body)).await;
                }
                continue;
            }
            () = state.to_push.notified() => continue,
            _ = recheck.tick() => continue,
        };
        let cmd = header.get("cmd").and_then(Value::as_str).unwrap_or_default().to_string();
        let seq = header.get("seq").cloned().unwrap_or(Value::Null);
        let answer = match cmd.as_str() {
            "HELLO_REQUEST" => {
                let agent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let ok = agent.get("version").is_some_and(|v| !v.is_null())
                    && matches!(agent.get("purpose").and_then(Value::as_str), Some("pub" | "sub"))
                    && agent.get("group").and_then(Value::as_str).is_some_and(|g| !g.trim().is_empty());
                if ok {
                    hello = true;
                    group = agent.get("group").and_then(Value::as_str).unwrap_or_default().to_string();
                    unack = agent.get("unack").and_then(Value::as_u64).filter(|&n| n > 0).map_or(unack, |n| n as usize);
                    state.hellos.fetch_add(1, Ordering::SeqCst);
                    frame(&reply("HELLO_RESPONSE", 0, "success", &seq), &[])
                } else {
                    let _ = out_tx.send(frame(&reply("HELLO_RESPONSE", 1, "user agent is invalid", &seq), &[])).await;
                    break;
                }
            }
            _ if !hello => frame(&reply(&cmd, 1, "no session is found", &seq), &[]),
            "HEARTBEAT_REQUEST" => {
                state.heartbeats.fetch_add(1, Ordering::SeqCst);
                frame(&reply("HEARTBEAT_RESPONSE", 0, "success", &seq), &[])
            }
            "CLIENT_GOODBYE_REQUEST" => {
                let _ = out_tx.send(frame(&reply("CLIENT_GOODBYE_RESPONSE", 0, "success", &seq), &[])).await;
                break;
            }
            "SERVER_GOODBYE_RESPONSE" => continue,
            "SUBSCRIBE_REQUEST" => {
                let topics: Vec<String> = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|b| b.get("topicList").and_then(Value::as_array).cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|item| item.get("topic").and_then(Value::as_str).map(String::from))
                    .collect();
                if topics.is_empty() {
                    frame(&reply("SUBSCRIBE_RESPONSE", 1, "topicList is empty or unreadable", &seq), &[])
                } else {
                    let limit = unack;
                    let (group, in_flight) = (group.clone(), HashMap::new());
                    consumer = Some(Consumer { group, topics, listening: false, limit, in_flight });
                    frame(&reply("SUBSCRIBE_RESPONSE", 0, "success", &seq), &[])
                }
            }
            "LISTEN_REQUEST" => match consumer.as_mut() {
                Some(c) => {
                    c.listening = true;
                    frame(&reply("LISTEN_RESPONSE", 0, "success", &seq), &[])
                }
                None => frame(&reply("LISTEN_RESPONSE", 1, "no subscription", &seq), &[]),
            },
            "ASYNC_MESSAGE_TO_CLIENT_ACK" => {
                if let (Some(c), Some(seq)) = (consumer.as_mut(), seq.as_str()) {
                    acknowledged(&state, c, seq);
                }
                continue;
            }
            "ASYNC_MESSAGE_TO_SERVER" => {
                let ack = "ASYNC_MESSAGE_TO_SERVER_ACK";
                let props = header.get("properties").cloned().unwrap_or(Value::Null);
                if props.get("protocoltype").and_then(Value::as_str) != Some("cloudevents") {
                    frame(&reply(ack, 1, "java.lang.Exception: this double speaks cloudevents only", &seq), &[])
                } else {
                    match serde_json::from_slice::<cloudevents::Event>(&body) {
                        Err(_) => {
                            state.refused.fetch_add(1, Ordering::SeqCst);
                            frame(&reply(ack, 1, "java.lang.Exception: event is null", &seq), &[])
                        }
                        Ok(event) => {
                            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            if data_chars(&json) > MAX_EVENT_SIZE {
                                state.refused.fetch_add(1, Ordering::SeqCst);
                                let desc =
                                    format!("java.lang.Exception: event size exceeds the limit: {MAX_EVENT_SIZE}");
                                frame(&reply(ack, 1, &desc, &seq), &[])
                            } else {
                                match state.decide() {
                                    Decision::Overload | Decision::RateLimited => {
                                        frame(&reply(ack, 1, "Tps overload, global flow control", &seq), &[])
                                    }
                                    Decision::Stall => continue,
                                    Decision::Store => {
                                        let topic = cloudevents::AttributesReader::subject(&event)
                                            .unwrap_or_default()
                                            .to_string();
                                        state.store(Stored { event: json, topic, producer_group: String::new() });
                                        frame(&reply(ack, 0, "success", &seq), &body)
                                    }
                                }
                            }
                        }
                    }
                }
            }
            other => frame(&reply(other, 1, "not supported by this double", &seq), &[]),
        };
        if out_tx.send(answer).await.is_err() {
            break;
        }
    }
    released(&state, id);
    drop(out_tx);
    let _ = writer_task.await;
}
