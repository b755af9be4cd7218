//! normalize: every accepted message becomes a CloudEvent, with the same rules in the gateway (device messages)
//! and in the `edge-agent` bridge (an existing broker's messages).
//!
//! A message that already is a CloudEvent (a CloudEvents protocol binding, binary or structured) is validated and
//! kept as it is. Any other message is wrapped with the default mapping of docs/decisions.md, then the first matching
//! mapping rule may set `type`, `source`, `subject`, extensions and the uplink route. Pure functions: the
//! receive time and ids come in as arguments, so tests pin them.

mod amqp_headers;
mod rules;

use std::sync::Arc;

use crate::pipeline::Route;
use crate::spool::WhenFull;
use crate::trace;
pub use amqp_headers::cloudevent_headers;
use chrono::{DateTime, SecondsFormat, Utc};
use meshgate_protocols::cloudevents::{
    CloudEvent, CloudEventError, Data, HeaderValue, decode_amqp, decode_mqtt, is_media_type,
};
use meshgate_protocols::mqtt::{Properties, Version};
pub use rules::{Pattern, Rule, RuleConfig, Vars};

/// The protocol a message came over: its name goes into event sources, the `protocol` extension and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 and 5 over TCP (a device of the gateway, or a broker the edge-agent bridges).
    Mqtt,
    /// AMQP 0-9-1 over TCP.
    Amqp,
    /// CloudEvents over WebSocket (`cloudevents.json`; MQTT over WebSocket counts as MQTT).
    Ws,
}

impl Protocol {
    /// Every protocol, in metric order.
    pub const ALL: [Protocol; 3] = [Protocol::Mqtt, Protocol::Amqp, Protocol::Ws];

    /// The name used in event sources, the `protocol` extension and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Mqtt => "mqtt",
            Protocol::Amqp => "amqp",
            Protocol::Ws => "ws",
        }
    }
}

/// A message as a listener received it, before mapping.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// The protocol it came over.
    pub protocol: Protocol,
    /// The device's client id (MQTT) or connection name.
    pub client_id: &'a str,
    /// The topic mapping rules match (for AMQP, the routing key read as a topic).
    pub topic: &'a str,
    /// The `subject` when it is not the topic (AMQP: the routing key as sent).
    pub subject: Option<&'a str>,
    /// The protocol's content type, if it carries one.
    pub content_type: Option<&'a str>,
    /// The message body.
    pub payload: &'a [u8],
}

/// An MQTT PUBLISH as normalize needs it.
#[derive(Debug, Clone, Copy)]
pub struct MqttInbound<'a> {
    /// The connection's protocol level.
    pub version: Version,
    /// The device's client id.
    pub client_id: &'a str,
    /// The topic (after topic-alias resolution).
    pub topic: &'a str,
    /// The PUBLISH properties (MQTT 5).
    pub properties: &'a Properties<'a>,
    /// The payload.
    pub payload: &'a [u8],
}

/// An AMQP basic.publish as normalize needs it.
#[derive(Debug, Clone, Copy)]
pub struct AmqpInbound<'a> {
    /// The connection's name for the device (its `connection_name`, else its user name).
    pub client_id: &'a str,
    /// The exchange (empty for the default exchange).
    pub exchange: &'a str,
    /// The routing key as sent.
    pub routing_key: &'a str,
    /// The routing key read as a topic (`.` and `/` swapped), which mapping rules match.
    pub topic: &'a str,
    /// The `content-type` property.
    pub content_type: Option<&'a str>,
    /// The application headers that CloudEvents attributes can travel in.
    pub headers: &'a [(String, HeaderValue)],
    /// The body.
    pub body: &'a [u8],
}

/// A normalized message: the event, where it goes, and what a full spool may do with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The CloudEvent.
    pub event: CloudEvent,
    /// The uplinks it goes to.
    pub route: Route,
    /// What a full spool does with it if nobody waits for its acknowledgement.
    pub when_full: WhenFull,
}

/// Turns inbound messages into CloudEvents.
#[derive(Debug, Clone)]
pub struct Normalizer {
    gateway_id: Arc<str>,
    rules: Vec<Rule>,
}

impl Normalizer {
    /// A normalizer for a gateway id and its (validated) rules.
    pub fn new(gateway_id: &str, rules: &[RuleConfig]) -> Result<Normalizer, String> {
        let rules = rules.iter().cloned().map(Rule::new).collect::<Result<_, _>>()?;
        Ok(Normalizer { gateway_id: gateway_id.into(), rules })
    }

    fn first_match<'t>(&self, topic: &'t str) -> Option<(&Rule, Vec<(&str, &'t str)>)> {
        self.rules.iter().find_map(|r| r.matches(topic).map(|c| (r, c)))
    }

    /// Normalizes an MQTT PUBLISH: a CloudEvent in either binding mode is kept, anything else is wrapped.
    /// An invalid CloudEvent is an error (MQTT 5 answers 0x99).
    pub fn mqtt(
        &self,
        msg: &MqttInbound<'_>,
        id: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<Normalized, CloudEventError> {
        if let Some(event) = decode_mqtt(msg.version, msg.properties, msg.payload)? {
            return Ok(self.kept(event, msg.topic));
        }
        let content_type = if msg.version.is_v5() { msg.properties.content_type } else { None };
        let inbound = Inbound {
            protocol: Protocol::Mqtt,
            client_id: msg.client_id,
            topic: msg.topic,
            subject: None,
            content_type,
            payload: msg.payload,
        };
        let mut normalized = self.wrap(&inbound, id, now)?;
        // A plain message's trace context travels as MQTT 5 user properties (W3C's MQTT convention).
        if msg.version.is_v5() {
            let user = &msg.properties.user_properties;
            trace::adopt_context(&mut normalized.event, |name| user.iter().find(|p| p.name == name).map(|p| p.value));
        }
        Ok(normalized)
    }

    /// A structured CloudEvent as it came (WebSocket `cloudevents.json`): kept, routed by the first rule matching
    /// `topic` (its subject).
    ///
    /// An event marked as come from the mesh ([`crate::downlink::ORIGIN_EXTENSION`]: a device republished a
    /// command it received) goes to no uplink, so it never loops back up; local subscribers still get it.
    pub fn kept(&self, event: CloudEvent, topic: &str) -> Normalized {
        let rule = self.first_match(topic).map(|(r, _)| r);
        let route = if event.extensions.contains_key(crate::downlink::ORIGIN_EXTENSION) {
            Route::Uplinks(Arc::from([]))
        } else {
            rule.and_then(Rule::route).cloned().map_or(Route::All, Route::Uplinks)
        };
        let when_full = rule.map_or(WhenFull::Block, Rule::when_full);
        Normalized { event, route, when_full }
    }

    /// Normalizes an AMQP message: `cloudEvents_`/`cloudEvents:` headers (binary mode) or the content type
    /// `application/cloudevents+json` (structured) keep the event; anything else is wrapped with the routing key
    /// as `subject` and the exchange in the `exchange` extension. An invalid CloudEvent is an error (basic.nack).
    pub fn amqp(
        &self,
        msg: &AmqpInbound<'_>,
        id: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<Normalized, CloudEventError> {
        let headers = msg.headers.iter().map(|(k, v)| (k.as_str(), v));
        if let Some(event) = decode_amqp(msg.content_type, headers, msg.body)? {
            return Ok(self.kept(event, msg.topic));
        }
        let inbound = Inbound {
            protocol: Protocol::Amqp,
            client_id: msg.client_id,
            topic: msg.topic,
            subject: Some(msg.routing_key),
            content_type: msg.content_type,
            payload: msg.body,
        };
        let mut normalized = self.wrap(&inbound, id, now)?;
        // A plain message's trace context travels as `traceparent`/`tracestate` application headers.
        trace::adopt_context(&mut normalized.event, |name| {
            msg.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| match v {
                HeaderValue::String(s) => Some(s.as_str()),
                _ => None,
            })
        });
        if !msg.exchange.is_empty() {
            normalized.event.extensions.entry("exchange".into()).or_insert_with(|| msg.exchange.into());
        }
        Ok(normalized)
    }

    /// Wraps a message that is not a CloudEvent with the default mapping and the first matching rule.
    pub fn wrap(&self, msg: &Inbound<'_>, id: uuid::Uuid, now: DateTime<Utc>) -> Result<Normalized, CloudEventError> {
        let protocol = msg.protocol.as_str();
        // MQTT's Content Type (and an AMQP content-type) may be any string; only a media type can be the event's
        // `datacontenttype`. Any other is kept as the `{protocol}contenttype` extension, and the data sniffed.
        let (media_type, foreign) = match msg.content_type {
            Some(ct) if is_media_type(ct) => (Some(ct), None),
            other => (None, other),
        };
        let (data, sniffed) = Data::from_bytes(media_type, msg.payload);
        let mut event = CloudEvent {
            id: id.to_string(),
            source: format!("/meshgate/{}/{protocol}/{}", uri_segment(&self.gateway_id), uri_segment(msg.client_id)),
            ty: format!("io.meshgate.{protocol}.message"),
            datacontenttype: media_type.or(sniffed).map(String::from),
            subject: Some(msg.subject.unwrap_or(msg.topic).to_string()),
            time: Some(now.to_rfc3339_opts(SecondsFormat::Micros, true)),
            data,
            ..CloudEvent::default()
        };
        let matched = self.first_match(msg.topic);
        let vars = Vars {
            captures: matched.as_ref().map(|(_, c)| c.clone()).unwrap_or_default(),
            topic: msg.topic,
            client_id: msg.client_id,
            gateway_id: &self.gateway_id,
            protocol,
        };
        let device = vars.captures.iter().find(|(n, _)| *n == "deviceid").map_or(msg.client_id, |(_, v)| *v);
        event.extensions.insert("deviceid".into(), device.into());
        event.extensions.insert("gatewayid".into(), (*self.gateway_id).into());
        event.extensions.insert("protocol".into(), protocol.into());
        if let Some(ct) = foreign.filter(|ct| !ct.is_empty() && !ct.chars().any(char::is_control)) {
            event.extensions.insert(format!("{protocol}contenttype"), ct.into());
        }
        let mut route = Route::All;
        let mut when_full = WhenFull::Block;
        if let Some((rule, _)) = &matched {
            rule.apply(&mut event, &vars);
            if let Some(r) = rule.route() {
                route = Route::Uplinks(Arc::clone(r));
            }
            when_full = rule.when_full();
        }
        event.validate()?;
        Ok(Normalized { event, route, when_full })
    }
}

/// A device's connection changed: `connected` or `disconnected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// The device connected.
    Connected,
    /// The device's connection ended.
    Disconnected,
}

impl Normalizer {
    /// A lifecycle event (`io.meshgate.device.connected` / `.disconnected`) for `client_id` on `protocol`, with
    /// `data` describing the connection (and, for a disconnect, the reason).
    pub fn lifecycle(
        &self,
        what: Lifecycle,
        protocol: Protocol,
        client_id: &str,
        data: serde_json::Value,
        id: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> CloudEvent {
        let kind = match what {
            Lifecycle::Connected => "connected",
            Lifecycle::Disconnected => "disconnected",
        };
        let mut event = CloudEvent {
            id: id.to_string(),
            source: format!(
                "/meshgate/{}/{}/{}",
                uri_segment(&self.gateway_id),
                protocol.as_str(),
                uri_segment(client_id)
            ),
            ty: format!("io.meshgate.device.{kind}"),
            datacontenttype: Some("application/json".into()),
            subject: Some(client_id.to_string()),
            time: Some(now.to_rfc3339_opts(SecondsFormat::Micros, true)),
            data: Some(Data::Json(data)),
            ..CloudEvent::default()
        };
        event.extensions.insert("deviceid".into(), client_id.into());
        event.extensions.insert("gatewayid".into(), (*self.gateway_id).into());
        event.extensions.insert("protocol".into(), protocol.as_str().into());
        event
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any client id makes a valid URI-reference.
fn uri_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_protocols::cloudevents::ExtensionValue;
    use meshgate_protocols::mqtt::{PropertyList, UserProperty};

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn run(
        n: &Normalizer,
        version: Version,
        client_id: &str,
        topic: &str,
        properties: &Properties<'_>,
        payload: &[u8],
    ) -> Result<(CloudEvent, Route), CloudEventError> {
        n.mqtt(&MqttInbound { version, client_id, topic, properties, payload }, id(), now()).map(|n| (n.event, n.route))
    }

    fn id() -> uuid::Uuid {
        uuid::Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001)
    }

    #[test]
    fn plain_messages_get_the_default_mapping() {
        let n = Normalizer::new("edge-1", &[]).unwrap();
        let (e, route) =
            run(&n, Version::V311, "dev 7", "plant/line1/temp", &Properties::default(), b"{\"t\":21.5}").unwrap();
        assert_eq!(e.source, "/meshgate/edge-1/mqtt/dev%207");
        assert_eq!(e.ty, "io.meshgate.mqtt.message");
        assert_eq!(e.subject.as_deref(), Some("plant/line1/temp"));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(e.time.as_deref(), Some("2026-11-23T12:00:00.000000Z"));
        assert_eq!(e.id, id().to_string());
        assert_eq!(e.extensions.get("deviceid"), Some(&ExtensionValue::from("dev 7")));
        assert_eq!(e.extensions.get("gatewayid"), Some(&ExtensionValue::from("edge-1")));
        assert_eq!(e.extensions.get("protocol"), Some(&ExtensionValue::from("mqtt")));
        assert_eq!(route, Route::All);
        let (e, _) = run(&n, Version::V5, "d", "t", &Properties::default(), &[0xff, 0x00]).unwrap();
        assert_eq!(e.datacontenttype.as_deref(), Some("application/octet-stream"));
    }

    #[test]
    fn any_mqtt_content_type_is_wrapped_and_kept_aside() {
        let n = Normalizer::new("edge-1", &[]).unwrap();
        let properties =
            Properties { content_type: Some("My name"), payload_format_utf8: Some(true), ..Properties::default() };
        let (e, _) = run(&n, Version::V5, "d", "t", &properties, b"hello").unwrap();
        assert_eq!(e.extensions.get("mqttcontenttype"), Some(&ExtensionValue::from("My name")));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/octet-stream"), "sniffed");
        let json = Properties { content_type: Some("json please"), ..Properties::default() };
        let (e, _) = run(&n, Version::V5, "d", "t", &json, b"{\"a\":1}").unwrap();
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        let media = Properties { content_type: Some("text/plain; charset=utf-8"), ..Properties::default() };
        let (e, _) = run(&n, Version::V5, "d", "t", &media, b"hi").unwrap();
        assert_eq!(e.datacontenttype.as_deref(), Some("text/plain; charset=utf-8"));
        assert!(!e.extensions.contains_key("mqttcontenttype"), "a media type is the datacontenttype itself");
    }

    #[test]
    fn the_first_matching_rule_sets_attributes_and_route() {
        let rules: Vec<RuleConfig> = toml::from_str::<toml::Table>(
            r##"
            [[rules]]
            topic = "devices/{deviceid}/events/{kind}"
            type = "com.example.{kind}"
            source = "/plants/north/{deviceid}"
            extensions = { site = "north" }
            uplinks = ["local"]
            when_full = "drop-oldest"
            [[rules]]
            topic = "#"
            type = "never.used.for.devices"
            "##,
        )
        .unwrap()["rules"]
            .clone()
            .try_into()
            .unwrap();
        let n = Normalizer::new("edge-1", &rules).unwrap();
        let (e, route) = run(&n, Version::V5, "c1", "devices/d9/events/temp", &Properties::default(), b"1").unwrap();
        assert_eq!(e.ty, "com.example.temp");
        assert_eq!(e.source, "/plants/north/d9");
        assert_eq!(e.extensions.get("deviceid"), Some(&ExtensionValue::from("d9")));
        assert_eq!(e.extensions.get("site"), Some(&ExtensionValue::from("north")));
        assert_eq!(route, Route::Uplinks(vec![Arc::<str>::from("local")].into()));
        let inbound = MqttInbound {
            version: Version::V5,
            client_id: "c1",
            topic: "devices/d9/events/temp",
            properties: &Properties::default(),
            payload: b"1",
        };
        assert_eq!(n.mqtt(&inbound, id(), now()).unwrap().when_full, WhenFull::DropOldest);
        let other = MqttInbound { topic: "elsewhere", ..inbound };
        assert_eq!(n.mqtt(&other, id(), now()).unwrap().when_full, WhenFull::Block);
    }

    #[test]
    fn cloudevents_keep_their_attributes_and_invalid_ones_are_errors() {
        let n = Normalizer::new("edge-1", &[]).unwrap();
        let attrs = [
            UserProperty { name: "specversion", value: "1.0" },
            UserProperty { name: "id", value: "x-1" },
            UserProperty { name: "source", value: "/own" },
            UserProperty { name: "type", value: "own.type" },
        ];
        let props = Properties { user_properties: PropertyList::new(&attrs), ..Properties::default() };
        let (e, _) = run(&n, Version::V5, "c", "t", &props, b"").unwrap();
        assert_eq!((e.id.as_str(), e.source.as_str(), e.ty.as_str()), ("x-1", "/own", "own.type"));
        assert!(e.extensions.is_empty() && e.time.is_none() && e.subject.is_none());
        let bad = Properties { user_properties: PropertyList::new(&attrs[..2]), ..Properties::default() };
        assert!(
            n.mqtt(
                &MqttInbound { version: Version::V5, client_id: "c", topic: "t", properties: &bad, payload: b"" },
                id(),
                now()
            )
            .is_err()
        );
    }
}
