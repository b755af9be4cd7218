//! The gRPC CloudEvent messages (package `org.apache.eventmesh.cloudevents.v1`, runtime port 10205) and the
//! mapping between them and [`CloudEvent`].
//!
//! The message types are generated at build time from this crate's `proto/` files (protox + prost-build; no
//! system `protoc`). Their layout is the CNCF CloudEvents protobuf format; the runtime reads its routing and
//! identity from `attributes` as `ce_string` values: `env idc ip pid sys username passwd language` (else
//! status 6), `uniqueid producergroup subject ttl` and non-empty data in the field the content type calls for
//! (else status 7). Its answer is a CloudEvent whose `statuscode` attribute is `"0"` on success.

mod generated {
    //! The message types prost-build generated from `proto/` (documented there).
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/org.apache.eventmesh.cloudevents.v1.rs"));
}

pub use generated::*;

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use self::cloud_event::cloud_event_attribute_value::Attr;
use self::cloud_event::{CloudEventAttributeValue, Data as ProtoData};
use super::{Identity, PROTOCOL_TYPE, PROTOCOL_VERSION};
use crate::cloudevents::{self, CloudEventError, Data, ExtensionValue, SPEC_VERSION, is_json_content_type};

/// The full method path of `PublisherService/publish`.
pub const PUBLISH_PATH: &str = "/org.apache.eventmesh.cloudevents.v1.PublisherService/publish";
/// The full method path of `PublisherService/batchPublish`.
pub const BATCH_PUBLISH_PATH: &str = "/org.apache.eventmesh.cloudevents.v1.PublisherService/batchPublish";
/// The full method path of `HeartbeatService/heartbeat`.
pub const HEARTBEAT_PATH: &str = "/org.apache.eventmesh.cloudevents.v1.HeartbeatService/heartbeat";

/// A `ce_string` attribute value.
pub fn ce_string(s: impl Into<String>) -> CloudEventAttributeValue {
    CloudEventAttributeValue { attr: Some(Attr::CeString(s.into())) }
}

/// Which data field the runtime checks for a content type: `text_data` for `text/*`, JSON and XML types,
/// `proto_data` for `application/protobuf`, `binary_data` for anything else (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataField {
    /// `text_data` (7).
    Text,
    /// `binary_data` (6).
    Binary,
    /// `proto_data` (8).
    Proto,
}

/// The data field the runtime expects for `datacontenttype`.
pub fn data_field(content_type: Option<&str>) -> DataField {
    let Some(ct) = content_type else { return DataField::Binary };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence.starts_with("text/")
        || essence == "application/json"
        || essence == "application/xml"
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
    {
        DataField::Text
    } else if essence == "application/protobuf" {
        DataField::Proto
    } else {
        DataField::Binary
    }
}

/// The `publish` request for a mesh event (see [`super::mesh_event`]: topic as `subject`, `uniqueid` and `ttl`
/// extensions set): every attribute of the event, then the identity and protocol attributes, which take
/// precedence over extensions of the same name.
pub fn publish_request(event: &cloudevents::CloudEvent, identity: &Identity) -> CloudEvent {
    let mut attributes = BTreeMap::new();
    for (name, value) in &event.extensions {
        let attr = match value {
            ExtensionValue::String(s) => Attr::CeString(s.clone()),
            ExtensionValue::Boolean(b) => Attr::CeBoolean(*b),
            ExtensionValue::Integer(i) => match i32::try_from(*i) {
                Ok(i) => Attr::CeInteger(i),
                Err(_) => Attr::CeString(i.to_string()),
            },
        };
        attributes.insert(name.clone(), CloudEventAttributeValue { attr: Some(attr) });
    }
    if let Some(ct) = &event.datacontenttype {
        attributes.insert("datacontenttype".into(), ce_string(ct.as_str()));
    }
    if let Some(schema) = &event.dataschema {
        attributes.insert("dataschema".into(), CloudEventAttributeValue { attr: Some(Attr::CeUri(schema.clone())) });
    }
    if let Some(subject) = &event.subject {
        attributes.insert("subject".into(), ce_string(subject.as_str()));
    }
    if let Some(time) = &event.time {
        let attr = match cloudevents::parse_timestamp(time) {
            Ok((seconds, nanos)) => {
                Attr::CeTimestamp(prost_types::Timestamp { seconds, nanos: i32::try_from(nanos).unwrap_or(0) })
            }
            Err(_) => Attr::CeString(time.clone()),
        };
        attributes.insert("time".into(), CloudEventAttributeValue { attr: Some(attr) });
    }
    insert_identity(&mut attributes, identity);
    for (name, value) in
        [("protocoltype", PROTOCOL_TYPE), ("protocolversion", PROTOCOL_VERSION), ("protocoldesc", "grpc-cloud-event")]
    {
        attributes.insert(name.into(), ce_string(value));
    }
    if let Some(ExtensionValue::String(seq)) = event.extensions.get("uniqueid") {
        attributes.insert("seqnum".into(), ce_string(seq.as_str()));
    }
    CloudEvent {
        id: event.id.clone(),
        source: event.source.clone(),
        spec_version: SPEC_VERSION.into(),
        r#type: event.ty.clone(),
        attributes,
        data: proto_data(event),
    }
}

/// The identity attributes every request carries, as `ce_string`: `env idc ip pid sys username passwd language
/// producergroup`, and `token` when there is one.
fn insert_identity(attributes: &mut BTreeMap<String, CloudEventAttributeValue>, identity: &Identity) {
    for (name, value) in [
        ("env", &identity.env),
        ("idc", &identity.idc),
        ("ip", &identity.ip),
        ("pid", &identity.pid),
        ("sys", &identity.sys),
        ("username", &identity.username),
        ("passwd", &identity.password),
        ("language", &identity.language),
        ("producergroup", &identity.producer_group),
    ] {
        attributes.insert(name.into(), ce_string(value.as_str()));
    }
    if let Some(token) = &identity.token {
        attributes.insert("token".into(), ce_string(token.as_str()));
    }
}

/// A producer's `HeartbeatService/heartbeat` request: the identity, `clienttype` 1 (PUB) as `ce_integer` (the one
/// attribute the runtime does not read as a string), JSON data `[]` (no topics). `id` names the request.
pub fn producer_heartbeat(identity: &Identity, id: &str) -> CloudEvent {
    let mut attributes = BTreeMap::new();
    insert_identity(&mut attributes, identity);
    attributes.insert("datacontenttype".into(), ce_string("application/json"));
    attributes.insert("clienttype".into(), CloudEventAttributeValue { attr: Some(Attr::CeInteger(1)) });
    CloudEvent {
        id: id.into(),
        source: "/".into(),
        spec_version: SPEC_VERSION.into(),
        r#type: "org.apache.eventmesh".into(),
        attributes,
        data: Some(ProtoData::TextData("[]".into())),
    }
}

fn proto_data(event: &cloudevents::CloudEvent) -> Option<ProtoData> {
    let text_wanted = data_field(event.datacontenttype.as_deref()) == DataField::Text;
    match &event.data {
        None => None,
        Some(Data::Json(v)) if text_wanted => Some(ProtoData::TextData(v.to_string())),
        Some(Data::Json(v)) => Some(ProtoData::BinaryData(v.to_string().into_bytes())),
        Some(Data::Text(s)) if text_wanted => Some(ProtoData::TextData(s.clone())),
        Some(Data::Text(s)) => Some(ProtoData::BinaryData(s.clone().into_bytes())),
        Some(Data::Binary(b)) if text_wanted => match core::str::from_utf8(b) {
            Ok(s) => Some(ProtoData::TextData(s.into())),
            Err(_) => Some(ProtoData::BinaryData(b.clone())),
        },
        Some(Data::Binary(b)) => Some(ProtoData::BinaryData(b.clone())),
    }
}

/// A `ce_string` attribute's value, if the attribute is present as a string.
pub fn string_attribute<'a>(event: &'a CloudEvent, name: &str) -> Option<&'a str> {
    match event.attributes.get(name).and_then(|v| v.attr.as_ref()) {
        Some(Attr::CeString(s)) => Some(s),
        _ => None,
    }
}

/// The status of a runtime's answer: `statuscode` parsed (None if absent or not a number) and
/// `responsemessage`.
pub fn answer_status(answer: &CloudEvent) -> (Option<i32>, &str) {
    let code = string_attribute(answer, "statuscode").and_then(|s| s.trim().parse().ok());
    (code, string_attribute(answer, "responsemessage").unwrap_or_default())
}

/// Reads a protobuf CloudEvent back into the model: spec attributes to their fields, every other attribute an
/// extension (bytes as base64, timestamps as RFC 3339), `text_data` as JSON or text by content type. The result
/// is validated.
pub fn to_event(message: &CloudEvent) -> Result<cloudevents::CloudEvent, CloudEventError> {
    if message.spec_version != SPEC_VERSION {
        return Err(CloudEventError::UnsupportedSpecVersion(message.spec_version.clone()));
    }
    let mut event = cloudevents::CloudEvent {
        id: message.id.clone(),
        source: message.source.clone(),
        ty: message.r#type.clone(),
        ..cloudevents::CloudEvent::default()
    };
    for (name, value) in &message.attributes {
        let Some(attr) = &value.attr else { continue };
        let as_string = match attr {
            Attr::CeBoolean(b) => {
                event.extensions.insert(name.clone(), ExtensionValue::Boolean(*b));
                continue;
            }
            Attr::CeInteger(i) => {
                event.extensions.insert(name.clone(), ExtensionValue::Integer(i64::from(*i)));
                continue;
            }
            Attr::CeString(s) | Attr::CeUri(s) | Attr::CeUriRef(s) => s.clone(),
            Attr::CeBytes(b) => BASE64.encode(b),
            Attr::CeTimestamp(t) => u32::try_from(t.nanos)
                .ok()
                .and_then(|n| cloudevents::format_timestamp(t.seconds, n))
                .ok_or_else(|| CloudEventError::InvalidAttribute { name: name.clone(), reason: "is out of range" })?,
        };
        match name.as_str() {
            "datacontenttype" => event.datacontenttype = Some(as_string),
            "dataschema" => event.dataschema = Some(as_string),
            "subject" => event.subject = Some(as_string),
            "time" => event.time = Some(as_string),
            _ => {
                event.extensions.insert(name.clone(), ExtensionValue::String(as_string));
            }
        }
    }
    event.data = match &message.data {
        None => None,
        Some(ProtoData::TextData(s)) if event.datacontenttype.as_deref().is_some_and(is_json_content_type) => {
            match serde_json::from_str(s) {
                Ok(v) => Some(Data::Json(v)),
                Err(_) => Some(Data::Text(s.clone())),
            }
        }
        Some(ProtoData::TextData(s)) => Some(Data::Text(s.clone())),
        Some(ProtoData::BinaryData(b)) => Some(Data::Binary(b.clone())),
        Some(ProtoData::ProtoData(any)) => Some(Data::Binary(any.value.clone())),
    };
    event.validate()?;
    Ok(event)
}
