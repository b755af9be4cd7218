//! The runtime's HTTP request-code API, as a publisher uses it (runtime port 10105).
//!
//! A publish is `POST /` with the header `code: 104` (MSG_SEND_ASYNC), the identity in lowercase headers, and an
//! `application/x-www-form-urlencoded` body whose `content` field is the structured JSON CloudEvent (with
//! `protocoltype: cloudevents`, the runtime reads only `content` and `producergroup`). The answer is HTTP 200 with
//! `{"retCode":0,"retMsg":"success ...","resTime":...}`, and errors are HTTP 200 too, with a non-zero `retCode`
//! (see [`super::status`]).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Deserialize;

use super::{Identity, PROTOCOL_TYPE, PROTOCOL_VERSION};

/// The request code of an asynchronous publish (MSG_SEND_ASYNC).
pub const CODE_SEND_ASYNC: &str = "104";

/// The content type of the request body.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// The headers of a publish, names in lower case (the runtime looks them up case-sensitively, in lower case).
pub fn publish_headers(identity: &Identity) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(16);
    headers.push(("code", CODE_SEND_ASYNC.to_string()));
    headers.push(("version", "1.0".to_string()));
    headers.push(("env", identity.env.clone()));
    headers.push(("idc", identity.idc.clone()));
    headers.push(("ip", identity.ip.clone()));
    headers.push(("pid", identity.pid.clone()));
    headers.push(("sys", identity.sys.clone()));
    headers.push(("username", identity.username.clone()));
    headers.push(("passwd", identity.password.clone()));
    headers.push(("language", identity.language.clone()));
    headers.push(("protocoltype", PROTOCOL_TYPE.to_string()));
    headers.push(("protocolversion", PROTOCOL_VERSION.to_string()));
    headers.push(("protocoldesc", "http".to_string()));
    if let Some(token) = &identity.token {
        headers.push(("token", token.clone()));
    }
    headers
}

/// The form body of a publish: `producergroup` and `content` (the structured JSON event).
pub fn publish_form(producer_group: &str, content_json: &str) -> String {
    let mut out = String::with_capacity(content_json.len() * 3 / 2 + 32);
    append_form_pair(&mut out, "producergroup", producer_group);
    append_form_pair(&mut out, "content", content_json);
    out
}

/// Appends `name=value` (preceded by `&` unless `out` is empty), each part encoded the
/// `application/x-www-form-urlencoded` way: ASCII letters, digits and `*-._` as they are, space as `+`, every
/// other byte of the UTF-8 as `%XX`.
pub fn append_form_pair(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push('&');
    }
    form_encode(out, name);
    out.push('=');
    form_encode(out, value);
}

fn form_encode(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

/// The runtime's answer body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Answer {
    /// 0 on success; see [`super::status::http_verdict`].
    #[serde(rename = "retCode")]
    pub ret_code: i32,
    /// The message, e.g. `success SendResult[...]` or the error.
    #[serde(rename = "retMsg", default)]
    pub ret_msg: Option<String>,
}

impl Answer {
    /// Parses an answer body.
    pub fn parse(body: &[u8]) -> Result<Answer, String> {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_percent_encoded() {
        let mut out = String::new();
        append_form_pair(&mut out, "a b", "x=1&y={\"é\":2}~");
        assert_eq!(out, "a+b=x%3D1%26y%3D%7B%22%C3%A9%22%3A2%7D%7E");
    }

    #[test]
    fn answers_parse_with_or_without_a_message() {
        assert_eq!(
            Answer::parse(br#"{"retCode":23,"retMsg":"over limit","resTime":1}"#),
            Ok(Answer { ret_code: 23, ret_msg: Some("over limit".into()) })
        );
        assert_eq!(Answer::parse(br#"{"retCode":0}"#).map(|a| a.ret_code), Ok(0));
        assert!(Answer::parse(b"<html>").is_err());
    }
}
