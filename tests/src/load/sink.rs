//! A trivial MQTT sink: answers CONNECT, acknowledges every QoS 1 publish at once, stores and forwards nothing.
//! Run against it, the load generator shows its own ceiling, so a broker's figures are not the generator's.

use std::net::SocketAddr;

use anyhow::Result;
use meshgate_protocols::mqtt::{ConnAck, Packet, PingResp, PubResponse, PubResponseKind, SubAck, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::conn::append;

/// Serves on `listener` until the process ends.
pub async fn serve(listener: TcpListener) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = connection(stream).await;
        });
    }
}

/// Binds `addr` and serves; returns the bound address and the serving task.
pub async fn start(addr: SocketAddr) -> Result<(SocketAddr, tokio::task::JoinHandle<Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, tokio::spawn(serve(listener))))
}

async fn connection(mut stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut version = Version::V311;
    let mut inbuf = Vec::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(4096);
    loop {
        if stream.read_buf(&mut inbuf).await? == 0 {
            return Ok(());
        }
        let mut at = 0;
        loop {
            let (packet, used) = match Packet::decode(&inbuf[at..], version, 1 << 20) {
                Ok(decoded) => decoded,
                Err(meshgate_protocols::mqtt::DecodeError::Incomplete { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            at += used;
            match packet {
                Packet::Connect(c) => {
                    version = c.version;
                    append(&mut out, &ConnAck::default(), version)?;
                }
                Packet::Publish(p) => {
                    if let Some(id) = p.packet_id {
                        append(&mut out, &PubResponse::new(PubResponseKind::PubAck, id), version)?;
                    }
                }
                Packet::Subscribe(s) => {
                    let codes = [0u8; 1];
                    let suback = SubAck { packet_id: s.packet_id, codes: &codes, ..SubAck::default() };
                    append(&mut out, &suback, version)?;
                }
                Packet::PingReq => append(&mut out, &PingResp, version)?,
                Packet::Disconnect(_) => return Ok(()),
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
