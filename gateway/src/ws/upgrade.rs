//! The WebSocket upgrade: path, Origin allow-list, subprotocol negotiation, and the credentials a device brings
//! (HTTP Basic, or a `token` query parameter for browsers, which cannot set headers on a WebSocket). Pure
//! functions of the request, so every refusal is testable without a socket.

use base64::Engine as _;
use tokio_tungstenite::tungstenite::Error as WsError;
pub use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use crate::config::WsListenerConfig;

/// The subprotocols served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subprotocol {
    /// `cloudevents.json`: one structured CloudEvent per text message (the CloudEvents WebSocket binding).
    CloudEventsJson,
    /// `mqtt` (also `mqttv3.1`): MQTT packets in binary messages.
    Mqtt,
}

impl Subprotocol {
    fn parse(name: &str) -> Option<Subprotocol> {
        match name {
            "cloudevents.json" => Some(Subprotocol::CloudEventsJson),
            "mqtt" | "mqttv3.1" => Some(Subprotocol::Mqtt),
            _ => None,
        }
    }
}

/// What an accepted upgrade tells the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The subprotocol chosen (the first the client offered that meshgate serves).
    pub subprotocol: Subprotocol,
    /// User name and password from `Authorization: Basic` or `?token=USER:PASSWORD`.
    pub credentials: Option<(String, String)>,
    /// The `client` query parameter: the device's name on `cloudevents.json`.
    pub client: Option<String>,
}

/// Why an upgrade is refused: the HTTP status and a short text for the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 403 or 404.
    pub status: StatusCode,
    /// Why.
    pub reason: &'static str,
}

impl Refusal {
    /// The HTTP response tungstenite sends for it.
    pub fn into_response(self) -> ErrorResponse {
        let mut response = ErrorResponse::new(Some(self.reason.to_string()));
        *response.status_mut() = self.status;
        response
    }
}

fn refuse(status: StatusCode, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// The answer to a request that is not a WebSocket upgrade at all (tungstenite refuses those before meshgate's
/// own checks, and would just close): 426 Upgrade Required when the upgrade headers are missing or name another
/// version, 400 Bad Request for anything else that is not a valid upgrade; `None` for failures with nobody left
/// to answer (I/O, timeouts).
pub fn refusal_for(error: &WsError) -> Option<Refusal> {
    use tokio_tungstenite::tungstenite::error::ProtocolError as P;
    let bad = |reason| Some(refuse(StatusCode::BAD_REQUEST, reason));
    let upgrade = |reason| Some(refuse(StatusCode::UPGRADE_REQUIRED, reason));
    match error {
        WsError::Protocol(p) => match p {
            P::WrongHttpMethod => bad("a WebSocket upgrade is a GET request"),
            P::WrongHttpVersion => bad("a WebSocket upgrade needs HTTP/1.1"),
            P::MissingConnectionUpgradeHeader => upgrade("this is a WebSocket endpoint: send Connection: Upgrade"),
            P::MissingUpgradeWebSocketHeader => upgrade("this is a WebSocket endpoint: send Upgrade: websocket"),
            P::MissingSecWebSocketVersionHeader => upgrade("only WebSocket version 13 is served"),
            P::MissingSecWebSocketKey | P::InvalidSecWebSocketKey => bad("missing or invalid Sec-WebSocket-Key"),
            P::JunkAfterRequest => bad("bytes after the upgrade request"),
            _ => bad("malformed HTTP request"),
        },
        WsError::Capacity(_) | WsError::HttpFormat(_) | WsError::Utf8(_) => bad("malformed HTTP request"),
        _ => None,
    }
}

impl Refusal {
    /// The whole HTTP/1.1 response for a refusal written by meshgate itself (not through tungstenite): status,
    /// a short plain-text body, and for 426 the headers that say what to send instead.
    pub fn to_http(self) -> Vec<u8> {
        let body = format!("{}\n", self.reason);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if self.status == StatusCode::UPGRADE_REQUIRED {
            head.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// The longest `client` name, in bytes (MQTT client ids are UTF-8 strings too; 256 is generous for a name).
const MAX_CLIENT_NAME: usize = 256;

/// Checks an upgrade request; on success, the response carries the chosen `Sec-WebSocket-Protocol`.
pub fn negotiate(
    config: &WsListenerConfig,
    request: &Request,
    mut response: Response,
) -> Result<(Response, Negotiated), Refusal> {
    if let Some(path) = &config.path
        && request.uri().path() != path
    {
        return Err(refuse(StatusCode::NOT_FOUND, "no WebSocket endpoint at this path"));
    }
    if !config.allowed_origins.is_empty()
        && let Some(origin) = request.headers().get("origin")
        && !config.allowed_origins.iter().any(|o| origin.as_bytes() == o.as_bytes())
    {
        return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    let mut chosen = None;
    for name in offered {
        if let Some(p) = Subprotocol::parse(name) {
            chosen = Some((p, name.to_string()));
            break;
        }
    }
    let Some((subprotocol, name)) = chosen else {
        // The CloudEvents WebSocket binding: the client must offer a subprotocol the server speaks.
        return Err(refuse(StatusCode::BAD_REQUEST, "offer a supported subprotocol: cloudevents.json or mqtt"));
    };
    let value = HeaderValue::from_str(&name).map_err(|_| refuse(StatusCode::BAD_REQUEST, "bad subprotocol"))?;
    response.headers_mut().insert("sec-websocket-protocol", value);
    let query = request.uri().query().unwrap_or_default();
    let credentials = basic_credentials(request)
        .or_else(|| query_param(query, "token").and_then(|t| t.split_once(':').map(|(u, p)| (u.into(), p.into()))));
    let client = query_param(query, "client").filter(|c| !c.is_empty());
    if client.as_deref().is_some_and(|c| c.len() > MAX_CLIENT_NAME || c.chars().any(char::is_control)) {
        return Err(refuse(StatusCode::BAD_REQUEST, "client names are at most 256 bytes without control characters"));
    }
    Ok((response, Negotiated { subprotocol, credentials, client }))
}

fn basic_credentials(request: &Request) -> Option<(String, String)> {
    let value = request.headers().get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// The percent-decoded value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut r = Request::builder().uri(uri);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn the_first_offered_subprotocol_meshgate_speaks_is_chosen() {
        let config = WsListenerConfig::default();
        let r = request("/", &[("sec-websocket-protocol", "wamp, cloudevents.json, mqtt")]);
        let (resp, n) = negotiate(&config, &r, Response::default()).unwrap();
        assert_eq!(n.subprotocol, Subprotocol::CloudEventsJson);
        assert_eq!(resp.headers()["sec-websocket-protocol"], "cloudevents.json");
        let r = request("/", &[("sec-websocket-protocol", "mqttv3.1")]);
        assert_eq!(negotiate(&config, &r, Response::default()).unwrap().1.subprotocol, Subprotocol::Mqtt);
        let refused = negotiate(&config, &request("/", &[]), Response::default()).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    }

    proptest::proptest! {
        /// Whatever a client puts in the target and the headers, negotiation answers without panicking, and an
        /// accepted upgrade names a subprotocol the client offered.
        #[test]
        fn arbitrary_requests_never_panic(
            target in "/[ -~]{0,40}",
            protocols in "[ -~]{0,40}",
            auth in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            origin in "[ -~]{0,20}",
        ) {
            let config = WsListenerConfig { allowed_origins: vec!["https://a".into()], ..WsListenerConfig::default() };
            let mut r = Request::builder().uri(target.as_str());
            r = r.header("sec-websocket-protocol", protocols.as_str()).header("origin", origin.as_str());
            if let Ok(value) = HeaderValue::from_bytes(&auth) {
                r = r.header("authorization", value);
            }
            if let Ok(request) = r.body(())
                && let Ok((response, _)) = negotiate(&config, &request, Response::default())
            {
                let chosen = response.headers()["sec-websocket-protocol"].to_str().unwrap_or_default();
                proptest::prop_assert!(protocols.split(',').any(|p| p.trim() == chosen));
            }
            let _ = percent_decode(&target);
        }
    }

    #[test]
    fn path_origin_and_credentials_are_read_from_the_request() {
        let config = WsListenerConfig {
            path: Some("/events".into()),
            allowed_origins: vec!["https://app.example".into()],
            ..WsListenerConfig::default()
        };
        let proto = ("sec-websocket-protocol", "cloudevents.json");
        let wrong_path = negotiate(&config, &request("/x", &[proto]), Response::default()).unwrap_err();
        assert_eq!(wrong_path.status, StatusCode::NOT_FOUND);
        let foreign = request("/events", &[proto, ("origin", "https://evil.example")]);
        assert_eq!(negotiate(&config, &foreign, Response::default()).unwrap_err().status, StatusCode::FORBIDDEN);
        let basic =
            request("/events", &[proto, ("origin", "https://app.example"), ("authorization", "Basic ZDE6czNjcmV0")]);
        let n = negotiate(&config, &basic, Response::default()).unwrap().1;
        assert_eq!(n.credentials, Some(("d1".into(), "s3cret".into())));
        let token = request("/events?client=lamp%2D2&token=d2%3Ap%40ss", &[proto]);
        let n = negotiate(&config, &token, Response::default()).unwrap().1;
        assert_eq!((n.credentials, n.client.as_deref()), (Some(("d2".into(), "p@ss".into())), Some("lamp-2")));
    }
}
