//! The TCP double: the runtime's framed protocol (`Codec.java`, `AbstractTCPServer`, `HelloProcessor`,
//! `MessageTransferTask`), with a frame reader of its own written from the reference: `EventMesh` `0000`, a
//! package length of `13 + header + body` and a header length, both big-endian u32.
//!
//! Before HELLO every request fails with "no session is found"; HELLO needs `version`, `purpose` `pub`/`sub` and a
//! `group`. A message with data over `maxEventSize` fails with code 1 and the exception text "event size exceeds
//! the limit"; rate limiting fails with code 1 and "Tps overload, global flow control"; success acks with the same
//! `seq` and the event as body. A test can make every session get `SERVER_GOODBYE_REQUEST` or
//! `REDIRECT_TO_CLIENT`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
    loop {
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
    drop(out_tx);
    let _ = writer_task.await;
}
