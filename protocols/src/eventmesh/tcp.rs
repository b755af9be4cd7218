//! The EventMesh TCP protocol (runtime port 10000): frames, header JSON, commands and the HELLO `UserAgent`.
//!
//! ```text
//! +-----------+---------+--------------------+-------------------+-------------+------+
//! | EventMesh | 0000    | package length u32 | header length u32 | header JSON | body |
//! +-----------+---------+--------------------+-------------------+-------------+------+
//!   9 bytes     4 bytes   big-endian           big-endian
//! ```
//! Since runtime 1.9 the package length is `13 + header length + body length`: it counts the magic, the version,
//! the header and the body but not the two length fields, so a frame is `21 + header + body` bytes. The runtime's
//! decoder (`LengthFieldBasedFrameDecoder(4 MiB, 13, 4, -9, 0)`) refuses frames over [`MAX_FRAME_LEN`] and closes
//! the connection on a bad magic or version.
//!
//! ```
//! use meshgate_protocols::eventmesh::tcp::{Command, Frame, Header};
//!
//! let frame = Frame { header: Header::new(Command::HeartbeatRequest, "1"), body: Vec::new() };
//! let mut wire = Vec::new();
//! frame.encode(&mut wire).unwrap();
//! let (back, used) = Frame::decode(&wire).unwrap();
//! assert_eq!((back, used), (frame, wire.len()));
//! ```

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

/// The magic every frame starts with.
pub const MAGIC: &[u8; 9] = b"EventMesh";
/// The protocol version after the magic.
pub const VERSION: &[u8; 4] = b"0000";
/// Bytes before the header JSON: magic, version and the two lengths.
pub const PREFIX_LEN: usize = 21;
/// The largest frame the runtime accepts (4 MiB).
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

macro_rules! commands {
    ($($variant:ident = $code:literal, $name:literal;)*) => {
        /// A command (`Command.java`); the header JSON carries its name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        pub enum Command {
            $(
                #[doc = concat!("`", $name, "` (", stringify!($code), ")")]
                #[serde(rename = $name)]
                $variant,
            )*
        }

        impl Command {
            /// The command's numeric code.
            pub fn code(self) -> u8 {
                match self { $(Command::$variant => $code,)* }
            }

            /// The command's name, as the header JSON carries it.
            pub fn name(self) -> &'static str {
                match self { $(Command::$variant => $name,)* }
            }

            /// Every command, in code order.
            pub const ALL: &'static [Command] = &[$(Command::$variant,)*];
        }
    };
}

commands! {
    HeartbeatRequest = 0, "HEARTBEAT_REQUEST";
    HeartbeatResponse = 1, "HEARTBEAT_RESPONSE";
    HelloRequest = 2, "HELLO_REQUEST";
    HelloResponse = 3, "HELLO_RESPONSE";
    ClientGoodbyeRequest = 4, "CLIENT_GOODBYE_REQUEST";
    ClientGoodbyeResponse = 5, "CLIENT_GOODBYE_RESPONSE";
    ServerGoodbyeRequest = 6, "SERVER_GOODBYE_REQUEST";
    ServerGoodbyeResponse = 7, "SERVER_GOODBYE_RESPONSE";
    SubscribeRequest = 8, "SUBSCRIBE_REQUEST";
    SubscribeResponse = 9, "SUBSCRIBE_RESPONSE";
    UnsubscribeRequest = 10, "UNSUBSCRIBE_REQUEST";
    UnsubscribeResponse = 11, "UNSUBSCRIBE_RESPONSE";
    ListenRequest = 12, "LISTEN_REQUEST";
    ListenResponse = 13, "LISTEN_RESPONSE";
    RequestToServer = 14, "REQUEST_TO_SERVER";
    RequestToClient = 15, "REQUEST_TO_CLIENT";
    RequestToClientAck = 16, "REQUEST_TO_CLIENT_ACK";
    ResponseToServer = 17, "RESPONSE_TO_SERVER";
    ResponseToClient = 18, "RESPONSE_TO_CLIENT";
    ResponseToClientAck = 19, "RESPONSE_TO_CLIENT_ACK";
    AsyncMessageToServer = 20, "ASYNC_MESSAGE_TO_SERVER";
    AsyncMessageToServerAck = 21, "ASYNC_MESSAGE_TO_SERVER_ACK";
    AsyncMessageToClient = 22, "ASYNC_MESSAGE_TO_CLIENT";
    AsyncMessageToClientAck = 23, "ASYNC_MESSAGE_TO_CLIENT_ACK";
    BroadcastMessageToServer = 24, "BROADCAST_MESSAGE_TO_SERVER";
    BroadcastMessageToServerAck = 25, "BROADCAST_MESSAGE_TO_SERVER_ACK";
    BroadcastMessageToClient = 26, "BROADCAST_MESSAGE_TO_CLIENT";
    BroadcastMessageToClientAck = 27, "BROADCAST_MESSAGE_TO_CLIENT_ACK";
    SysLogToLogserver = 28, "SYS_LOG_TO_LOGSERVER";
    TraceLogToLogserver = 29, "TRACE_LOG_TO_LOGSERVER";
    RedirectToClient = 30, "REDIRECT_TO_CLIENT";
    RegisterRequest = 31, "REGISTER_REQUEST";
    RegisterResponse = 32, "REGISTER_RESPONSE";
    UnregisterRequest = 33, "UNREGISTER_REQUEST";
    UnregisterResponse = 34, "UNREGISTER_RESPONSE";
    RecommendRequest = 35, "RECOMMEND_REQUEST";
    RecommendResponse = 36, "RECOMMEND_RESPONSE";
}

/// A frame's header (`Header.java`): the command, a status `code` and `desc` in answers, the `seq` answers echo,
/// and message properties (`protocoltype`, `protocolversion`, `protocoldesc`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The command.
    pub cmd: Command,
    /// `OPStatus` in answers: 0 success, 1 fail, 2 ACL failure, 3 TPS overload.
    #[serde(default)]
    pub code: i32,
    /// The status text of an answer (a failure's exception text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// The sequence number answers and acks echo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<String>,
    /// Message properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_as_empty")]
    pub properties: BTreeMap<String, serde_json::Value>,
}

/// Jackson writes absent maps as `null`.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, serde_json::Value>, D::Error> {
    Ok(Option::<BTreeMap<String, serde_json::Value>>::deserialize(d)?.unwrap_or_default())
}

impl Header {
    /// A request header with `code` 0 and no properties.
    pub fn new(cmd: Command, seq: &str) -> Header {
        Header { cmd, code: 0, desc: None, seq: Some(seq.into()), properties: BTreeMap::new() }
    }

    /// A string property, if present and a string.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).and_then(serde_json::Value::as_str)
    }
}

/// One frame: a header and a body (a CloudEvent's JSON, a `UserAgent`, or nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The header.
    pub header: Header,
    /// The body bytes.
    pub body: Vec<u8>,
}

/// Why bytes are not (yet) a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The input ends before the frame does; at least `needed` more bytes are required.
    Incomplete {
        /// The minimum number of further bytes.
        needed: usize,
    },
    /// The magic or version is wrong: not an EventMesh peer (the runtime closes the connection).
    BadMagic,
    /// The frame is larger than [`MAX_FRAME_LEN`].
    TooLarge(usize),
    /// The lengths disagree (header longer than the package, a package shorter than its fixed part).
    BadLength,
    /// The header is not the JSON of a [`Header`].
    BadHeader(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Incomplete { needed } => write!(f, "incomplete frame: {needed} more bytes needed"),
            FrameError::BadMagic => f.write_str("not an EventMesh frame (bad magic or version)"),
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the 4 MiB limit"),
            FrameError::BadLength => f.write_str("frame lengths are inconsistent"),
            FrameError::BadHeader(e) => write!(f, "invalid frame header: {e}"),
        }
    }
}

impl core::error::Error for FrameError {}

fn be_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(b)).ok()
}

impl Frame {
    /// Decodes the frame at the start of `input`, returning it and the bytes it used.
    pub fn decode(input: &[u8]) -> Result<(Frame, usize), FrameError> {
        let magic_len = MAGIC.len() + VERSION.len();
        let seen = input.len().min(magic_len);
        let expected = [MAGIC.as_slice(), VERSION.as_slice()].concat();
        if input.get(..seen) != expected.get(..seen) {
            return Err(FrameError::BadMagic);
        }
        let (Some(package_len), Some(header_len)) = (be_u32(input, 13), be_u32(input, 17)) else {
            return Err(FrameError::Incomplete { needed: PREFIX_LEN - input.len() });
        };
        let total = package_len.checked_add(8).ok_or(FrameError::BadLength)?;
        if total > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(total));
        }
        if package_len < magic_len || header_len > package_len - magic_len {
            return Err(FrameError::BadLength);
        }
        let Some(frame) = input.get(..total) else {
            return Err(FrameError::Incomplete { needed: total - input.len() });
        };
        let header_bytes = frame.get(PREFIX_LEN..PREFIX_LEN + header_len).ok_or(FrameError::BadLength)?;
        let body = frame.get(PREFIX_LEN + header_len..).ok_or(FrameError::BadLength)?;
        let header: Header = serde_json::from_slice(header_bytes).map_err(|e| FrameError::BadHeader(e.to_string()))?;
        Ok((Frame { header, body: body.to_vec() }, total))
    }

    /// Appends the frame's bytes to `out`. Fails only if the frame would exceed [`MAX_FRAME_LEN`].
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let header = serde_json::to_vec(&self.header).map_err(|e| FrameError::BadHeader(e.to_string()))?;
        let total = PREFIX_LEN + header.len() + self.body.len();
        if total > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(total));
        }
        let package_len = (total - 8) as u32;
        out.reserve(total);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(VERSION);
        out.extend_from_slice(&package_len.to_be_bytes());
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.body);
        Ok(())
    }
}

/// The body of `HELLO_REQUEST` (`UserAgent.java`). The runtime requires `version`, `purpose` `pub` or `sub`, and a
/// non-blank `group`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UserAgent {
    /// Environment.
    pub env: String,
    /// Subsystem (the `sys` of the other protocols).
    pub subsystem: String,
    /// Deployment path.
    pub path: String,
    /// Process id.
    pub pid: i64,
    /// The client's host.
    pub host: String,
    /// The client's port.
    pub port: i64,
    /// Client version (required).
    pub version: Option<String>,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// Token for `auth-token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Data-centre id.
    pub idc: String,
    /// Producer or consumer group (required).
    pub group: String,
    /// `pub` or `sub` (required).
    pub purpose: String,
    /// Un-acknowledged pushes (consumers).
    pub unack: i64,
}

/// The body of `REDIRECT_TO_CLIENT`: the runtime the client should use instead.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Redirect {
    /// Host or IP.
    pub ip: String,
    /// Port.
    pub port: u16,
}

impl Command {
    /// The acknowledgement a client owes for a message the runtime pushed (`ASYNC_MESSAGE_TO_CLIENT` → `_ACK`,
    /// broadcast and request alike); `None` for every other command.
    pub fn push_ack(self) -> Option<Command> {
        match self {
            Command::AsyncMessageToClient => Some(Command::AsyncMessageToClientAck),
            Command::BroadcastMessageToClient => Some(Command::BroadcastMessageToClientAck),
            Command::RequestToClient => Some(Command::RequestToClientAck),
            _ => None,
        }
    }
}

/// The body of `SUBSCRIBE_REQUEST` and `UNSUBSCRIBE_REQUEST`: `{"topicList":[{"topic":..,"mode":..,"type":..}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The topics, each with its delivery mode and type.
    #[serde(rename = "topicList")]
    pub topic_list: Vec<SubscriptionItem>,
}

/// One subscribed topic (`SubscriptionItem.java`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionItem {
    /// The topic.
    pub topic: String,
    /// `CLUSTERING` (one consumer of the group gets each event, acknowledged) or `BROADCASTING` (every consumer).
    pub mode: String,
    /// `ASYNC` (events) or `SYNC` (request-reply).
    #[serde(rename = "type")]
    pub kind: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_round_trips_by_name() {
        for (i, &cmd) in Command::ALL.iter().enumerate() {
            assert_eq!(usize::from(cmd.code()), i);
            let json = serde_json::to_string(&cmd).unwrap();
            assert_eq!(json, alloc::format!("\"{}\"", cmd.name()));
            assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
        }
        assert_eq!(Command::AsyncMessageToClient.push_ack(), Some(Command::AsyncMessageToClientAck));
        assert_eq!(Command::BroadcastMessageToClient.push_ack().map(Command::code), Some(27));
        assert_eq!(Command::AsyncMessageToServer.push_ack(), None);
    }

    #[test]
    fn a_subscription_body_is_the_runtimes_topic_list() {
        let item = SubscriptionItem { topic: "cmd".into(), mode: "CLUSTERING".into(), kind: "ASYNC".into() };
        let json = serde_json::to_string(&Subscription { topic_list: alloc::vec![item] }).unwrap();
        assert_eq!(json, r#"{"topicList":[{"topic":"cmd","mode":"CLUSTERING","type":"ASYNC"}]}"#);
    }

    #[test]
    fn short_or_foreign_input_is_incomplete_or_refused() {
        assert_eq!(Frame::decode(b"Event"), Err(FrameError::Incomplete { needed: 16 }));
        assert_eq!(Frame::decode(b"HTTP/1.1 200"), Err(FrameError::BadMagic));
        assert_eq!(Frame::decode(b"EventMesh0001\0\0\0\0"), Err(FrameError::BadMagic));
        let mut huge = b"EventMesh0000".to_vec();
        huge.extend_from_slice(&(5u32 << 20).to_be_bytes());
        huge.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(Frame::decode(&huge), Err(FrameError::TooLarge((5 << 20) + 8)));
    }
}
