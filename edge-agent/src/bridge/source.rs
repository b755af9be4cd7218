//! One bridge: a persistent MQTT session on an existing broker, each message it delivers turned into a CloudEvent,
//! submitted to the spool, and acknowledged to the broker only once the spool has it on disk.
//!
//! The broker keeps the session (3.1.1: `clean session = false`; 5: `clean start = false` with a session expiry)
//! and the QoS 1 subscriptions, so what arrives while the bridge is away, or was delivered and not yet acknowledged
//! when it died, is delivered again when it returns. Acknowledgements go out in delivery order from a task that
//! waits for each receipt (the spool's group commit resolves them in order), so the connection keeps reading while
//! the disk catches up, with at most `max_inflight` messages waiting.
//!
//! rumqttc sends what the client queues only from inside its event loop, and returns buffered incoming messages
//! before it looks at that queue: the queue must hold every acknowledgement the broker can be owed, or the
//! acknowledging task and the loop wait on each other. A broker cannot have more than 65,535 messages in flight to
//! one client (packet identifiers are 16 bits), so that is the queue's bound ([`REQUESTS`]).

use std::sync::Arc;
use std::time::Duration;

use meshgate_protocols::mqtt::{Properties, PropertyList, UserProperty, Version};
use tokio::sync::{mpsc, watch};

use super::config::{BridgeConfig, MqttVersion};
use crate::downlink::ORIGIN_EXTENSION;
use crate::normalize::{MqttInbound, Normalizer};
use crate::pipeline::{Durable, IngestHandle, Ticket};
use crate::trace::{Ingest, Tracing};

/// The extension that marks an event as bridged, naming the bridge: an uplink towards a broker leaves such
/// events out, so a bridged topic is never bridged back.
pub const BRIDGE_EXTENSION: &str = "bridge";

/// The client's request queue: every acknowledgement a broker can be owed (one per packet identifier), and the
/// subscription. Slots are taken as requests wait, not allocated up front.
pub const REQUESTS: usize = u16::MAX as usize + 16;

/// What a bridge needs from the process.
#[derive(Clone)]
pub struct BridgeContext {
    /// Maps messages to events, with the configured rules.
    pub normalizer: Arc<Normalizer>,
    /// Where events go.
    pub ingest: IngestHandle,
    /// Becomes `true` at shutdown.
    pub stop: watch::Receiver<bool>,
    /// Trace context and spans (see [`crate::trace`]).
    pub traces: Tracing,
}

/// Runs the bridge until shutdown, reconnecting with capped exponential backoff.
pub async fn run(config: BridgeConfig, tls: Option<Arc<rustls::ClientConfig>>, cx: BridgeContext) {
    match config.version {
        MqttVersion::V311 => v311::run(config, tls, cx).await,
        MqttVersion::V5 => v5::run(config, tls, cx).await,
    }
}

/// The delay before reconnection attempt `attempt` (0-based): 100 ms doubling up to `max_ms`, with jitter.
/// After a CONNACK: a resumed session holds the subscriptions already; a new one gets them (`subscribe` queues
/// them, `false` when it could not).
fn connected(config: &BridgeConfig, session_present: bool, subscribe: impl FnOnce() -> bool) {
    tracing::info!(bridge = %config.name, broker = %config.address(), session_present, "connected to the broker");
    if session_present {
        announce_ready(config);
    } else if !subscribe() {
        tracing::warn!(bridge = %config.name, "could not queue the subscription");
    }
}

/// After a failed connection: waits the backoff of `attempt` (100 ms doubling to `reconnect_max_ms`, jittered) and
/// counts it; `false` when the agent stops meanwhile.
async fn wait_to_retry(
    config: &BridgeConfig,
    error: &(dyn std::fmt::Display + Sync),
    attempt: &mut u32,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let backoff = crate::forwarder::ForwarderConfig {
        max_batch: 1,
        backoff_initial_ms: 100,
        backoff_max_ms: config.reconnect_max_ms,
        ..Default::default()
    };
    let wait = backoff.backoff(*attempt);
    tracing::warn!(bridge = %config.name, broker = %config.address(), error = %error, retry_in = ?wait, "broker connection failed");
    *attempt = attempt.saturating_add(1);
    tokio::select! {
        _ = stop.changed() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Prints `edge-agent: bridge NAME subscribed at HOST:PORT` on stdout once the broker holds the subscriptions (a
/// resumed session, or a SUBACK), so scripts and tests know messages published from now on reach the bridge.
fn announce_ready(config: &BridgeConfig) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "edge-agent: bridge {} subscribed at {}:{}", config.name, config.host, config.port());
    let _ = out.flush();
}

/// A delivered message, as the bridge reads it from either protocol level.
struct Delivered<'a> {
    version: Version,
    topic: &'a str,
    payload: &'a [u8],
    content_type: Option<&'a str>,
    user_properties: &'a [(String, String)],
}

/// Normalizes and submits one delivered message; `None` when it is not kept or the pipeline is closed. Not kept:
/// an invalid CloudEvent, which the broker could never deliver differently (logged and acknowledged), and a
/// CloudEvent already marked with the `bridge` or `meshgateorigin` extension (acknowledged and left out, so a
/// topic that carries bridged or mesh events back to the broker never makes a loop).
async fn submit(config: &BridgeConfig, cx: &BridgeContext, msg: &Delivered<'_>) -> Option<Ticket> {
    let user: Vec<UserProperty<'_>> =
        msg.user_properties.iter().map(|(name, value)| UserProperty { name, value }).collect();
    let properties = Properties {
        content_type: msg.content_type,
        user_properties: PropertyList::new(&user),
        ..Properties::default()
    };
    let inbound = MqttInbound {
        version: msg.version,
        client_id: &config.name,
        topic: msg.topic,
        properties: &properties,
        payload: msg.payload,
    };
    let mut normalized = match cx.normalizer.mqtt(&inbound, uuid::Uuid::now_v7(), chrono::Utc::now()) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(bridge = %config.name, broker = %config.address(), topic = msg.topic, error = %e, "an invalid CloudEvent from the broker; acknowledged and left out");
            return None;
        }
    };
    let extensions = &normalized.event.extensions;
    if let Some(marker) = [BRIDGE_EXTENSION, ORIGIN_EXTENSION].into_iter().find(|m| extensions.contains_key(*m)) {
        // Bridged into the mesh before, or come from it: bridging it again would loop.
        tracing::debug!(bridge = %config.name, topic = msg.topic, marker, "a marked event is not bridged again; acknowledged and left out");
        return None;
    }
    normalized.event.extensions.insert(BRIDGE_EXTENSION.into(), config.name.as_str().into());
    let at = Ingest { protocol: "bridge", client: &config.name, topic: msg.topic, bytes: Some(msg.payload.len()) };
    let span = cx.traces.ingest(&mut normalized.event, at);
    cx.ingest.submit_with(normalized.event, normalized.route, None, span).await.ok()
}

/// Acknowledges each message once its ticket is durable, in delivery order. A storage failure stops the
/// acknowledgements of this connection: the broker delivers the message again after the next reconnect.
async fn acknowledge_in_order<P, F, Fut, E>(
    name: String,
    mut durable: Durable,
    mut waiting: mpsc::Receiver<(Option<Ticket>, P)>,
    ack: F,
) where
    F: Fn(P) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    while let Some((ticket, publish)) = waiting.recv().await {
        if let Some(ticket) = ticket
            && let Err(e) = durable.wait(ticket).await
        {
            tracing::error!(bridge = %name, error = %e, "the spool did not store a bridged message; it stays unacknowledged at the broker");
            return;
        }
        if ack(publish).await.is_err() {
            return;
        }
    }
}

mod v311 {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter, TlsConfiguration, Transport};

    use super::*;

    pub(super) async fn run(config: BridgeConfig, tls: Option<Arc<rustls::ClientConfig>>, mut cx: BridgeContext) {
        let mut options = MqttOptions::new(config.client_id(), &config.host, config.port());
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(u64::from(config.keep_alive_secs.max(5))))
            .set_inflight(config.max_inflight);
        if let Some(user) = &config.username {
            options.set_credentials(user, config.password.as_deref().unwrap_or_default());
        }
        if let Some(tls) = tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        }
        let (client, mut events) = AsyncClient::new(options, REQUESTS);
        let (waiting, to_acknowledge) = mpsc::channel(usize::from(config.max_inflight));
        let acker = client.clone();
        tokio::spawn(acknowledge_in_order(config.name.clone(), cx.ingest.durable(), to_acknowledge, move |p| {
            let acker = acker.clone();
            async move { acker.ack(&p).await }
        }));
        let filters: Vec<SubscribeFilter> =
            config.topics.iter().map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)).collect();
        let mut attempt = 0;
        loop {
            let event = tokio::select! {
                _ = cx.stop.changed() => break,
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    attempt = 0;
                    connected(&config, ack.session_present, || client.try_subscribe_many(filters.clone()).is_ok());
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => announce_ready(&config),
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let msg = Delivered {
                        version: Version::V311,
                        topic: &publish.topic,
                        payload: &publish.payload,
                        content_type: None,
                        user_properties: &[],
                    };
                    let receipt = submit(&config, &cx, &msg).await;
                    if waiting.send((receipt, publish)).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if !wait_to_retry(&config, &e, &mut attempt, &mut cx.stop).await {
                        break;
                    }
                }
            }
        }
        let _ = client.try_disconnect();
    }
}

mod v5 {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use rumqttc::{TlsConfiguration, Transport};

    use super::*;

    pub(super) async fn run(config: BridgeConfig, tls: Option<Arc<rustls::ClientConfig>>, mut cx: BridgeContext) {
        let mut options = MqttOptions::new(config.client_id(), &config.host, config.port());
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(config.session_expiry_secs))
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(u64::from(config.keep_alive_secs.max(5))))
            .set_receive_maximum(Some(config.max_inflight));
        if let Some(user) = &config.username {
            options.set_credentials(user, config.password.as_deref().unwrap_or_default());
        }
        if let Some(tls) = tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        }
        let (client, mut events) = AsyncClient::new(options, REQUESTS);
        let (waiting, to_acknowledge) = mpsc::channel(usize::from(config.max_inflight));
        let acker = client.clone();
        tokio::spawn(acknowledge_in_order(config.name.clone(), cx.ingest.durable(), to_acknowledge, move |p| {
            let acker = acker.clone();
            async move { acker.ack(&p).await }
        }));
        let filters: Vec<Filter> = config.topics.iter().map(|t| Filter::new(t.clone(), QoS::AtLeastOnce)).collect();
        let mut attempt = 0;
        loop {
            let event = tokio::select! {
                _ = cx.stop.changed() => break,
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    attempt = 0;
                    connected(&config, ack.session_present, || client.try_subscribe_many(filters.clone()).is_ok());
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => announce_ready(&config),
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                        tracing::warn!(bridge = %config.name, "a topic that is not UTF-8; acknowledged and left out");
                        if waiting.send((None, publish)).await.is_err() {
                            break;
                        }
                        continue;
                    };
                    let properties = publish.properties.as_ref();
                    let msg = Delivered {
                        version: Version::V5,
                        topic,
                        payload: &publish.payload,
                        content_type: properties.and_then(|p| p.content_type.as_deref()),
                        user_properties: properties.map_or(&[], |p| &p.user_properties),
                    };
                    let receipt = submit(&config, &cx, &msg).await;
                    if waiting.send((receipt, publish)).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if !wait_to_retry(&config, &e, &mut attempt, &mut cx.stop).await {
                        break;
                    }
                }
            }
        }
        let _ = client.try_disconnect();
    }
}
