//! The JSON routes of the admin API (every one behind the admin token; see the OpenAPI document,
//! `openapi.json`, served at `/api/openapi.json`).
//!
//! Names with a protocol of their own (`cloudevents.json` clients' sessions, AMQP queues) are addressed with
//! `?protocol=ws` or `?protocol=amqp`; without it a name is an MQTT client id. Errors are
//! `{"error": "..."}` with a 4xx status.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use meshgate_edge_agent::normalize::MqttInbound;
use meshgate_edge_agent::trace::Ingest;
use meshgate_protocols::mqtt::{Properties, QoS, Version};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use crate::broker::local::now_ms;
use crate::broker::message::EventIdentity;
use crate::broker::{Message, Session, session_name};
use crate::clients::Client;

/// The identity `POST /api/publish` is judged by: ACL rules for user `admin` apply to it, and its events carry
/// client id `admin`.
pub const ADMIN_IDENTITY: &str = "admin";

/// At most this many retained messages are listed at once (`?limit=` lowers it).
const MAX_RETAINED_LISTED: usize = 10_000;

/// The largest payload `POST /api/publish` takes.
const MAX_PUBLISH_BYTES: usize = 1024 * 1024;

/// Standard base64 that also takes encodings whose unused last bits are not zero (as most encoders' decoders do).
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// The OpenAPI document of the API.
const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/openapi.json`.
pub async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// An extractor (`Path`, `Query`) whose rejection is the API's JSON error (400) rather than axum's plain text.
struct Api<X>(X);

impl<X, S> FromRequestParts<S> for Api<X>
where
    X: FromRequestParts<S>,
    X::Rejection: std::fmt::Display,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match X::from_request_parts(parts, state).await {
            Ok(x) => Ok(Api(x)),
            Err(e) => Err(refused(StatusCode::BAD_REQUEST, e.to_string())),
        }
    }
}

/// A 4xx answer with a reason.
fn refused(status: StatusCode, error: impl Into<String>) -> Response {
    (status, Json(json!({ "error": error.into() }))).into_response()
}

/// The admin API's routes.
pub fn routes(state: AdminState) -> Router {
    Router::new()
        .route("/api/clients", get(clients))
        .route("/api/clients/{id}", get(client).delete(kick))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/{name}", delete(delete_session))
        .route("/api/subscriptions", get(subscriptions))
        .route("/api/retained", get(retained))
        .route("/api/retained/{*topic}", delete(delete_retained))
        .route("/api/publish", post(publish))
        .route("/api/reload", post(reload))
        .with_state(state)
        // A body larger than a publish's payload (base64 and JSON around it) is refused before it is read whole.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PUBLISH_BYTES * 2))
}

/// Which protocol's namespace a name is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NameSpace {
    /// MQTT client ids (the default).
    #[default]
    Mqtt,
    /// `cloudevents.json` client names.
    Ws,
    /// AMQP queues.
    Amqp,
}

impl NameSpace {
    fn session(self, name: &str) -> String {
        match self {
            NameSpace::Mqtt => name.to_string(),
            NameSpace::Ws => session_name::ws_client(name),
            NameSpace::Amqp => session_name::amqp_queue(name),
        }
    }

    /// The namespace and the name of a broker session.
    fn of_session(session: &str) -> (NameSpace, &str) {
        if let Some(n) = session.strip_prefix(session_name::WS_CLIENT) {
            (NameSpace::Ws, n)
        } else if let Some(n) = session.strip_prefix(session_name::AMQP_QUEUE) {
            (NameSpace::Amqp, n)
        } else {
            (NameSpace::Mqtt, session)
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            NameSpace::Mqtt => "mqtt",
            NameSpace::Ws => "ws",
            NameSpace::Amqp => "amqp",
        }
    }

    fn protocol(self) -> crate::metrics::Protocol {
        match self {
            NameSpace::Mqtt => crate::metrics::Protocol::Mqtt,
            NameSpace::Ws => crate::metrics::Protocol::Ws,
            NameSpace::Amqp => crate::metrics::Protocol::Amqp,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct InSpace {
    #[serde(default)]
    protocol: NameSpace,
}

/// A connection as the API shows it.
pub fn client_json(c: &Client, broker: &crate::broker::LocalBroker) -> Value {
    let (in_flight, queued) = c
        .info
        .session
        .as_deref()
        .map_or((0, 0), |name| broker.read(|b| b.session(name).map_or((0, 0), |s| (s.in_flight(), s.queued()))));
    json!({
        "client_id": c.info.client_id,
        "user": c.info.user,
        "protocol": c.info.protocol.as_str(),
        "version": c.info.version,
        "peer": c.info.peer.map(|p| p.to_string()),
        "connected_at": c.connected_at.to_rfc3339(),
        "keep_alive_secs": c.info.keep_alive_secs,
        "messages_in": c.messages_in(),
        "messages_out": c.messages_out(),
        "in_flight": in_flight,
        "queued": queued,
    })
}

async fn clients(State(s): State<AdminState>) -> Json<Value> {
    Json(Value::Array(s.clients.all().iter().map(|c| client_json(c, &s.broker)).collect()))
}

async fn client(
    State(s): State<AdminState>,
    Api(Path(id)): Api<Path<String>>,
    Api(Query(q)): Api<Query<InSpace>>,
) -> Response {
    let found = s.clients.named(&id).into_iter().find(|c| c.info.protocol == q.protocol.protocol());
    match found {
        Some(c) => Json(client_json(&c, &s.broker)).into_response(),
        None => refused(StatusCode::NOT_FOUND, format!("no {} client `{id}` is connected", q.protocol.as_str())),
    }
}

async fn kick(
    State(s): State<AdminState>,
    Api(Path(id)): Api<Path<String>>,
    Api(Query(q)): Api<Query<InSpace>>,
) -> Response {
    let protocol = q.protocol.protocol();
    let n = s.clients.kick_where(|c| c.info.client_id == id && c.info.protocol == protocol);
    if n == 0 {
        return refused(StatusCode::NOT_FOUND, format!("no {} client `{id}` is connected", q.protocol.as_str()));
    }
    tracing::info!(client = %id, protocol = q.protocol.as_str(), "client disconnected by the administrator");
    Json(json!({ "disconnected": n })).into_response()
}

fn session_json(name: &str, s: &Session, connected: bool) -> Value {
    let (space, shown) = NameSpace::of_session(name);
    let disconnected_at =
        s.disconnected_at_ms.and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64)).map(|t| t.to_rfc3339());
    json!({
        "name": shown,
        "protocol": space.as_str(),
        "owner": s.owner,
        "connected": connected,
        "persistent": s.expiry_secs > 0,
        "expiry_secs": s.expiry_secs,
        "subscriptions": s.subscriptions.len(),
        "queued": s.queued(),
        "queued_bytes": s.queued_bytes(),
        "in_flight": s.in_flight(),
        "dropped": s.dropped,
        "disconnected_at": disconnected_at,
    })
}

async fn sessions(State(s): State<AdminState>) -> Json<Value> {
    let listed: Vec<(String, Value)> = s
        .broker
        .read(|b| b.sessions().map(|(name, session)| (name.to_string(), session_json(name, session, false))).collect());
    let list = listed
        .into_iter()
        .map(|(name, mut v)| {
            v["connected"] = Value::Bool(s.broker.is_attached(&name));
            v
        })
        .collect();
    Json(Value::Array(list))
}

/// `DELETE /api/sessions/{name}`: a connected client is disconnected first; the session, its subscriptions and
/// its queue end, durably.
async fn delete_session(
    State(s): State<AdminState>,
    Api(Path(name)): Api<Path<String>>,
    Api(Query(q)): Api<Query<InSpace>>,
) -> Response {
    let session = q.protocol.session(&name);
    if !s.broker.read(|b| b.has_session(&session)) {
        return refused(StatusCode::NOT_FOUND, format!("no {} session `{name}`", q.protocol.as_str()));
    }
    let protocol = q.protocol.protocol();
    let kicked =
        s.clients.kick_where(|c| c.info.session.as_deref() == Some(session.as_str()) && c.info.protocol == protocol);
    // The connection detaches as it ends; wait for that (briefly) so it does not keep the session alive.
    for _ in 0..100 {
        if !s.broker.is_attached(&session) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.broker.disconnect(&session, Some(0));
    if let Err(e) = s.broker.persist_session(&session).await {
        return refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the session ended but its removal is not durable yet: {e}"),
        );
    }
    tracing::info!(session = %name, protocol = q.protocol.as_str(), kicked, "session deleted by the administrator");
    Json(json!({ "deleted": name, "disconnected": kicked })).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct SubscriptionsQuery {
    /// Only this client's (MQTT client id, or the name in `protocol`'s namespace).
    client: Option<String>,
    #[serde(default)]
    protocol: NameSpace,
}

async fn subscriptions(State(s): State<AdminState>, Api(Query(q)): Api<Query<SubscriptionsQuery>>) -> Json<Value> {
    let only = q.client.as_deref().map(|c| q.protocol.session(c));
    let list = s.broker.read(|b| {
        let mut list = Vec::new();
        for (name, session) in b.sessions().filter(|(n, _)| only.as_deref().is_none_or(|o| o == *n)) {
            let (space, shown) = NameSpace::of_session(name);
            for (filter, sub) in &session.subscriptions {
                list.push(json!({
                    "client": shown,
                    "protocol": space.as_str(),
                    "filter": filter,
                    "qos": sub.qos,
                    "no_local": sub.no_local,
                    "retain_as_published": sub.retain_as_published,
                    "subscription_id": sub.id,
                }));
            }
        }
        list
    });
    Json(Value::Array(list))
}

#[derive(Debug, Deserialize)]
struct RetainedQuery {
    /// An MQTT topic filter (default `#`).
    filter: Option<String>,
    /// At most this many (default and maximum 10,000).
    limit: Option<usize>,
}

/// A payload as JSON: text when it is UTF-8, else base64.
fn payload_json(payload: &[u8]) -> (Value, &'static str) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Value::String(text.to_string()), "utf-8"),
        Err(_) => (Value::String(base64::engine::general_purpose::STANDARD.encode(payload)), "base64"),
    }
}

async fn retained(State(s): State<AdminState>, Api(Query(q)): Api<Query<RetainedQuery>>) -> Response {
    let filter = q.filter.unwrap_or_else(|| "#".to_string());
    if let Err(e) = meshgate_protocols::mqtt::topic::validate_filter(&filter) {
        return refused(StatusCode::BAD_REQUEST, format!("`{filter}` is not a topic filter: {e}"));
    }
    let limit = q.limit.unwrap_or(MAX_RETAINED_LISTED);
    if limit > MAX_RETAINED_LISTED {
        return refused(StatusCode::BAD_REQUEST, format!("limit: at most {MAX_RETAINED_LISTED}"));
    }
    let list: Vec<Value> = s.broker.read(|b| {
        b.retained()
            .filter(|m| meshgate_protocols::mqtt::topic::matches(&filter, &m.topic))
            .take(limit)
            .map(|m| {
                let (payload, encoding) = payload_json(&m.payload);
                json!({
                    "topic": m.topic,
                    "payload": payload,
                    "payload_encoding": encoding,
                    "bytes": m.payload.len(),
                    "qos": m.qos,
                    "content_type": m.properties.content_type,
                    "publisher": m.publisher,
                    "event_id": m.event.as_ref().map(|e| e.id.clone()),
                })
            })
            .collect()
    });
    Json(Value::Array(list)).into_response()
}

async fn delete_retained(State(s): State<AdminState>, Api(Path(topic)): Api<Path<String>>) -> Response {
    match s.broker.clear_retained(&topic).await {
        Ok(true) => {
            tracing::info!(topic, "retained message deleted by the administrator");
            Json(json!({ "deleted": topic })).into_response()
        }
        Ok(false) => refused(StatusCode::NOT_FOUND, format!("no retained message on `{topic}`")),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, format!("the deletion could not be made durable: {e}")),
    }
}

/// `POST /api/publish`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    /// The local topic.
    topic: String,
    /// A text payload.
    payload: Option<String>,
    /// A binary payload, base64.
    payload_base64: Option<String>,
    /// A CloudEvent (structured), published as `application/cloudevents+json`.
    event: Option<Value>,
    /// 0 or 1 (default 1): the QoS local subscribers get it with.
    #[serde(default = "default_qos")]
    qos: u8,
    /// Kept as the topic's retained message.
    #[serde(default)]
    retain: bool,
    /// The content type of `payload` / `payload_base64`.
    content_type: Option<String>,
}

fn default_qos() -> u8 {
    1
}

/// `POST /api/publish`: an operator's message, judged by the ACL as user `admin`, becomes a CloudEvent like a
/// device's: durable first (and forwarded by the mapping rules), then delivered to local subscribers.
async fn publish(
    State(s): State<AdminState>,
    body: Result<Json<PublishRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Err(e) = meshgate_protocols::mqtt::topic::validate_name(&req.topic) {
        return refused(StatusCode::BAD_REQUEST, format!("`{}` is not a topic: {e}", req.topic));
    }
    let forbidden =
        |c: char| c.is_control() || ('\u{fdd0}'..='\u{fdef}').contains(&c) || matches!(c, '\u{fffe}' | '\u{ffff}');
    if req.topic.len() > usize::from(u16::MAX) {
        return refused(StatusCode::BAD_REQUEST, "the topic is longer than MQTT's 65,535 bytes");
    }
    if req.topic.chars().any(forbidden) {
        return refused(StatusCode::BAD_REQUEST, "the topic holds a control character or a Unicode noncharacter");
    }
    let policy = s.policy.load();
    if !policy.limits.topic_depth_ok(&req.topic) {
        return refused(StatusCode::BAD_REQUEST, "topic deeper than limits.max_topic_levels");
    }
    let acl = policy.acl.for_device(Some(ADMIN_IDENTITY), ADMIN_IDENTITY);
    if !acl.may_publish(&req.topic) {
        return refused(
            StatusCode::FORBIDDEN,
            format!("the ACL does not let user `{ADMIN_IDENTITY}` publish to `{}`", req.topic),
        );
    }
    let qos = match req.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => return refused(StatusCode::BAD_REQUEST, "qos must be 0 or 1"),
    };
    if let Some(ct) = req.content_type.as_deref().filter(|ct| !media_type(ct)) {
        return refused(
            StatusCode::BAD_REQUEST,
            format!("content_type `{ct}` is not a type/subtype media type (a CloudEvent goes in `event`)"),
        );
    }
    if req.event.is_some() && req.content_type.is_some() {
        return refused(StatusCode::BAD_REQUEST, "content_type goes with payload or payload_base64, not with event");
    }
    let (payload, content_type) = match (req.payload, req.payload_base64, req.event) {
        (Some(text), None, None) => (text.into_bytes(), req.content_type),
        (None, Some(b64), None) => match LENIENT_BASE64.decode(b64.as_bytes()) {
            Ok(bytes) => (bytes, req.content_type),
            Err(e) => return refused(StatusCode::BAD_REQUEST, format!("payload_base64: {e}")),
        },
        (None, None, Some(event)) => (event.to_string().into_bytes(), Some("application/cloudevents+json".to_string())),
        _ => return refused(StatusCode::BAD_REQUEST, "give exactly one of payload, payload_base64 and event"),
    };
    if payload.len() > MAX_PUBLISH_BYTES {
        return refused(StatusCode::PAYLOAD_TOO_LARGE, format!("payload over {MAX_PUBLISH_BYTES} bytes"));
    }
    let properties = Properties { content_type: content_type.as_deref(), ..Properties::default() };
    let inbound = MqttInbound {
        version: Version::V5,
        client_id: ADMIN_IDENTITY,
        topic: &req.topic,
        properties: &properties,
        payload: &payload,
    };
    let mut normalized = match policy.normalizer.mqtt(&inbound, uuid::Uuid::now_v7(), chrono::Utc::now()) {
        Ok(n) => n,
        Err(e) => return refused(StatusCode::UNPROCESSABLE_ENTITY, format!("not a valid CloudEvent: {e}")),
    };
    let at = Ingest { protocol: "admin", client: ADMIN_IDENTITY, topic: &req.topic, bytes: Some(payload.len()) };
    let span = s.traces.ingest(&mut normalized.event, at);
    let mut local = Message::new(&req.topic, &payload, qos, req.retain, &properties, ADMIN_IDENTITY, now_ms());
    local.carry_trace(&normalized.event);
    local.event = Some(EventIdentity::of(&normalized.event));
    let id = normalized.event.id.clone();
    if local.retain {
        if !s.broker.read(|b| b.may_retain(&local)) {
            return refused(StatusCode::INSUFFICIENT_STORAGE, "the retained-message limits are reached");
        }
        if let Err(e) = s.broker.log_retained(&local).await {
            return refused(StatusCode::INTERNAL_SERVER_ERROR, format!("retained message not stored: {e}"));
        }
    }
    let (companion, local) = s.broker.companion(local, None);
    let ticket = match s.ingest.submit_with(normalized.event, normalized.route, companion, span).await {
        Ok(t) => t,
        Err(_) => return refused(StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down"),
    };
    if let Err(e) = s.ingest.stored(ticket).await {
        return refused(StatusCode::SERVICE_UNAVAILABLE, format!("not stored: {e}"));
    }
    if let Some(message) = local {
        s.broker.publish(message);
    }
    tracing::info!(topic = %req.topic, id = %id, "message published by the administrator");
    Json(json!({ "id": id, "topic": req.topic })).into_response()
}

/// Whether `ct` is a media type as `POST /api/publish` takes one: `type/subtype`, lowercase, and not a CloudEvents
/// format (a CloudEvent goes in `event`).
fn media_type(ct: &str) -> bool {
    let Some((kind, sub)) = ct.split_once('/') else { return false };
    !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_lowercase())
        && !sub.is_empty()
        && sub.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && !ct.starts_with("application/cloudevents")
}

/// `POST /api/reload`: as SIGHUP.
async fn reload(State(s): State<AdminState>) -> Response {
    let reloader = Arc::clone(&s.reloader);
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(report)) => Json(json!(report)).into_response(),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": e.to_string(), "file": e.file, "key": e.key, "problem": e.problem })),
        )
            .into_response(),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed: {e}")),
    }
}
