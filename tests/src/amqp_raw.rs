//! A hand-driven AMQP 0-9-1 client over a blocking socket, for what no library will send: malformed frames,
//! frames out of order, bodies longer than announced. Frames are built with `amq-protocol` and raw bytes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use amq_protocol::types::{FieldTable, LongString, ShortString};
use anyhow::{Context, Result, bail};

/// The client's protocol header.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// A raw connection.
pub struct RawAmqp {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// The encoding of a frame.
pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new())).map(|c| c.write).unwrap_or_default()
}

/// A method frame.
pub fn method(channel: u16, class: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(channel, class)
}

/// channel.open on `id`.
pub fn channel_open(id: u16) -> AMQPFrame {
    method(id, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})))
}

/// basic.publish on `channel` to `amq.topic` with `routing_key`.
pub fn publish(channel: u16, routing_key: &str) -> AMQPFrame {
    let p = basic::Publish {
        exchange: ShortString::from("amq.topic"),
        routing_key: ShortString::from(routing_key),
        mandatory: false,
        immediate: false,
    };
    method(channel, AMQPClass::Basic(basic::AMQPMethod::Publish(p)))
}

/// A content header announcing `size` bytes.
pub fn header(channel: u16, size: u64) -> AMQPFrame {
    AMQPFrame::Header(channel, AMQPContentHeader { class_id: 60, body_size: size, properties: Default::default() })
}

impl RawAmqp {
    /// Connects and sends nothing yet.
    pub fn connect(addr: SocketAddr) -> Result<RawAmqp> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawAmqp { stream, buf: Vec::new() })
    }

    /// Connects and runs the handshake (PLAIN `user`/`pass`, the server's tune, vhost `/`) up to open-ok.
    pub fn open(addr: SocketAddr, user: &str, pass: &str) -> Result<RawAmqp> {
        let mut c = RawAmqp::connect(addr)?;
        c.write(PROTOCOL_HEADER)?;
        let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_))) = c.recv()? else {
            bail!("no connection.start")
        };
        let start_ok = connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: ShortString::from("PLAIN"),
            response: LongString::from(format!("\0{user}\0{pass}")),
            locale: ShortString::from("en_US"),
        };
        c.send(&method(0, AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok))))?;
        let tune = match c.recv()? {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
            other => bail!("expected tune, got {other:?}"),
        };
        let tune_ok = connection::TuneOk { channel_max: tune.channel_max, frame_max: tune.frame_max, heartbeat: 0 };
        c.send(&method(0, AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok))))?;
        let open = connection::Open { virtual_host: ShortString::from("/") };
        c.send(&method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open))))?;
        match c.recv()? {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => Ok(c),
            other => bail!("expected open-ok, got {other:?}"),
        }
    }

    /// Writes raw bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Writes a frame.
    pub fn send(&mut self, frame: &AMQPFrame) -> Result<()> {
        self.write(&encode(frame))
    }

    /// Reads raw bytes until the server closes the socket (or the read times out).
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let _ = self.stream.read_to_end(&mut out);
        out
    }

    /// The next frame from the server.
    pub fn recv(&mut self) -> Result<AMQPFrame> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(frame);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).context("reading from the gateway")?;
            if n == 0 {
                bail!("the gateway closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame if one arrives within `wait`.
    pub fn try_recv(&mut self, wait: Duration) -> Result<Option<AMQPFrame>> {
        if let Some(frame) = self.buffered()? {
            return Ok(Some(frame));
        }
        self.stream.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk);
        self.stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        match read {
            Ok(0) => bail!("the gateway closed the connection"),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.buffered()
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn buffered(&mut self) -> Result<Option<AMQPFrame>> {
        if self.buf.len() < 7 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]) as usize;
        if self.buf.len() < size + 8 {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..size + 8).collect();
        let (_, parsed) = parse_frame(frame.as_slice()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(Some(parsed))
    }

    /// basic.publish, its content header and one body frame on `channel`, written at once.
    pub fn publish(&mut self, channel: u16, routing_key: &str, body: &[u8]) -> Result<()> {
        let mut wire = encode(&publish(channel, routing_key));
        wire.extend(encode(&header(channel, body.len() as u64)));
        wire.extend(encode(&AMQPFrame::Body(channel, body.to_vec())));
        self.write(&wire)
    }

    /// Reads frames until a connection.close or channel.close arrives; returns (channel, reply code).
    pub fn expect_close(&mut self) -> Result<(u16, u16)> {
        loop {
            match self.recv()? {
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                    return Ok((0, c.reply_code));
                }
                AMQPFrame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => {
                    return Ok((ch, c.reply_code));
                }
                _ => {}
            }
        }
    }
}
