//! The WebSocket listener: browsers, apps and devices behind proxies, on one port with two subprotocols.
//!
//! - [`upgrade`]: path, Origin allow-list, subprotocol negotiation and credentials, from the upgrade request.
//! - [`events`]: `cloudevents.json`: structured CloudEvents in, an ack per event once durable, subscriptions out:
//!   the tokio driver around [`session`], the protocol's rules sans-IO (answers in order, invalid messages,
//!   pings and idleness on the caller's clock); [`request`]: what each of its text messages asks for.
//! - [`stream`]: `mqtt`: the WebSocket as a byte stream, so the very same MQTT sessions run over it.

pub mod events;
pub mod request;
pub mod session;
pub mod stream;
pub mod upgrade;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::auth::AuthOutcome;
use crate::config::WsListenerConfig;
use crate::listener::{Peer, Shared};
use crate::metrics::{Protocol, RejectReason};
use crate::mqtt::MqttContext;
use upgrade::{Negotiated, Subprotocol};

/// What every WebSocket connection shares.
pub struct WsContext {
    /// `[listeners.ws]`.
    pub config: WsListenerConfig,
    /// The gateway's parts every connection works with.
    pub shared: Shared,
    /// The MQTT sessions the `mqtt` subprotocol runs.
    pub mqtt: Arc<MqttContext>,
}

/// Writes a whole HTTP response and closes the write side.
async fn answer<S: AsyncWrite + Unpin>(stream: &mut S, response: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    stream.write_all(response).await?;
    stream.shutdown().await
}

/// Connection ids for the broker sessions of `cloudevents.json` devices.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Upgrades an accepted connection and serves it with the negotiated subprotocol. `identity` is the subject of a
/// verified client certificate (wss with mTLS): a device that brings no credentials is that device.
#[allow(clippy::result_large_err, reason = "the callback's error type is tungstenite's HTTP response")]
pub async fn serve<S>(mut stream: S, ctx: Arc<WsContext>, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(ctx.config.max_message_size))
        .max_frame_size(Some(ctx.config.max_frame_size));
    let mut negotiated: Option<Negotiated> = None;
    let callback = |request: &upgrade::Request, response| {
        let (response, n) =
            upgrade::negotiate(&ctx.config, request, response).map_err(upgrade::Refusal::into_response)?;
        negotiated = Some(n);
        Ok(response)
    };
    let timeout = Duration::from_secs(ctx.config.handshake_timeout_secs.max(1));
    // Borrowed, so a request that is no upgrade at all can still be answered on the stream.
    let accept = tokio_tungstenite::accept_hdr_async_with_config(&mut stream, callback, Some(config));
    let upgraded = tokio::time::timeout(timeout, accept).await;
    let mut ws = match upgraded {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebSocket upgrade refused");
            if let Some(refusal) = upgrade::refusal_for(&e) {
                ctx.shared.metrics.reject(Protocol::Ws, RejectReason::Malformed);
                let _ = tokio::time::timeout(timeout, answer(&mut stream, &refusal.to_http())).await;
            }
            return;
        }
        Err(_) => {
            tracing::debug!("WebSocket upgrade timed out");
            return;
        }
    };
    let Some(negotiated) = negotiated else { return };
    match negotiated.subprotocol {
        Subprotocol::Mqtt => {
            let bytes = stream::WsByteStream::new(ws);
            crate::mqtt::connection::serve_as(bytes, Arc::clone(&ctx.mqtt), peer).await;
        }
        Subprotocol::CloudEventsJson => {
            let identity = &peer.identity;
            let (user, pass) = match (&negotiated.credentials, identity) {
                (Some((u, p)), _) => (Some(u.as_str()), Some(p.as_bytes())),
                (None, Some(cn)) => (Some(cn.as_str()), None),
                (None, None) => (None, None),
            };
            let certified = negotiated.credentials.is_none() && identity.is_some();
            let mut policy = crate::policy::DevicePolicy::new(&ctx.shared.policy);
            let auth = policy.current(&ctx.shared.policy).auth.clone();
            if !certified && auth.check(user, pass, peer.login(Protocol::Ws)).await != AuthOutcome::Allowed {
                ctx.shared.metrics.reject(Protocol::Ws, RejectReason::BadCredentials);
                let frame = CloseFrame { code: CloseCode::Policy, reason: "not authorized".into() };
                let _ = ws.close(Some(frame)).await;
                return;
            }
            let conn_id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
            let presented = negotiated.client.as_deref();
            let default = || user.map_or_else(|| format!("ws-{conn_id}"), String::from);
            let client_id =
                match policy.current(&ctx.shared.policy).client_ids.name(presented, default, user, identity.as_deref())
                {
                    Ok(id) => id,
                    Err(why) => {
                        ctx.shared.metrics.reject(Protocol::Ws, RejectReason::NotAuthorized);
                        tracing::info!(client = presented, user, "cloudevents.json client refused: {why}");
                        let frame = CloseFrame { code: CloseCode::Policy, reason: "client name not allowed".into() };
                        let _ = ws.close(Some(frame)).await;
                        return;
                    }
                };
            policy.admit(&ctx.shared.policy, user, &client_id);
            let owner = if certified { identity.clone() } else { user.map(String::from) }.unwrap_or_default();
            let device = events::Device { client_id, policy, owner, peer: peer.addr };
            events::serve(ws, Arc::clone(&ctx), device).await;
        }
    }
}
