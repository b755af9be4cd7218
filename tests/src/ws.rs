//! A WebSocket client for tests: tokio-tungstenite with a chosen subprotocol and headers.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;

use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A WebSocket client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// Connects to `ws://{addr}{target}` offering `protocols` (comma-separated; none when empty), with extra headers.
pub async fn connect(addr: SocketAddr, target: &str, protocols: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let stream = TcpStream::connect(addr).await.map_err(WsError::Io)?;
    let mut request = format!("ws://{addr}{target}").into_client_request()?;
    if !protocols.is_empty() {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().map_err(|_| WsError::Utf8(String::new()))?);
    }
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName =
            k.parse().map_err(|_| WsError::Utf8(String::new()))?;
        request.headers_mut().insert(name, v.parse().map_err(|_| WsError::Utf8(String::new()))?);
    }
    Ok(tokio_tungstenite::client_async(request, stream).await?.0)
}

/// The next text message as JSON, within 10 s (pings are answered by the library as it reads).
pub async fn next_json(ws: &mut Ws) -> anyhow::Result<serde_json::Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(c))) => anyhow::bail!("closed: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("stream ended"),
        }
    }
}
