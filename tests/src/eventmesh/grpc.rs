//! The gRPC double: `PublisherService` and `HeartbeatService` as the runtime implements them
//! (`ServiceUtils.java`, `PublishCloudEventsProcessor`, `BatchPublishCloudEventProcessor`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use meshgate_protocols::eventmesh::grpc::cloud_event::cloud_event_attribute_value::Attr;
use meshgate_protocols::eventmesh::grpc::cloud_event::{CloudEventAttributeValue, Data};
use meshgate_protocols::eventmesh::grpc::{CloudEvent, CloudEventBatch};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use super::{Decision, State, Stored};

mod stubs {
    #![allow(missing_docs, non_camel_case_types, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/org.apache.eventmesh.cloudevents.v1.rs"));
}

use stubs::heartbeat_service_server::{HeartbeatService, HeartbeatServiceServer};
use stubs::publisher_service_server::{PublisherService, PublisherServiceServer};

/// Serves until the double's runtime is dropped.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let double = Double { state };
    let _ = tonic::transport::Server::builder()
        .add_service(PublisherServiceServer::new(double.clone()))
        .add_service(HeartbeatServiceServer::new(double))
        .serve_with_incoming(incoming)
        .await;
}

#[derive(Clone)]
struct Double {
    state: Arc<State>,
}

/// `getCeString()`: the value if the attribute is a `ce_string`, else "".
fn ce_string<'a>(event: &'a CloudEvent, key: &str) -> &'a str {
    match event.attributes.get(key).and_then(|v| v.attr.as_ref()) {
        Some(Attr::CeString(s)) => s,
        _ => "",
    }
}

/// `ServiceUtils.validateCloudEventAttributes`: status 6 when an identity attribute is blank or `pid` is not
/// numeric.
fn header_ok(event: &CloudEvent) -> bool {
    ["env", "idc", "ip", "pid", "sys", "username", "passwd", "language"]
        .iter()
        .all(|k| !ce_string(event, k).trim().is_empty())
        && ce_string(event, "pid").chars().all(|c| c.is_ascii_digit())
}

/// `ServiceUtils.validateCloudEventData`: status 7 when `uniqueid`, `producergroup`, `subject` or `ttl` is blank,
/// or the data field the content type calls for is empty.
fn body_ok(event: &CloudEvent) -> bool {
    let required =
        ["uniqueid", "producergroup", "subject", "ttl"].iter().all(|k| !ce_string(event, k).trim().is_empty());
    let ct = ce_string(event, "datacontenttype").to_ascii_lowercase();
    let textual = ct.starts_with("text/")
        || ct == "application/json"
        || ct == "application/xml"
        || ct.ends_with("+json")
        || ct.ends_with("+xml");
    let data = match (&event.data, textual, ct == "application/protobuf") {
        (Some(Data::TextData(t)), true, _) => !t.is_empty(),
        (Some(Data::ProtoData(_)), _, true) => true,
        (Some(Data::BinaryData(b)), false, false) => !b.is_empty(),
        _ => false,
    };
    required && data
}

fn answer(code: i32, message: &str) -> Response<CloudEvent> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut event = CloudEvent {
        id: uuid::Uuid::now_v7().to_string(),
        source: "/".into(),
        spec_version: "1.0".into(),
        r#type: "org.apache.eventmesh".into(),
        ..CloudEvent::default()
    };
    let string = |s: String| CloudEventAttributeValue { attr: Some(Attr::CeString(s)) };
    event.attributes.insert("statuscode".into(), string(code.to_string()));
    event.attributes.insert("responsemessage".into(), string(message.into()));
    event.attributes.insert(
        "time".into(),
        CloudEventAttributeValue {
            attr: Some(Attr::CeTimestamp(::prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            })),
        },
    );
    Response::new(event)
}

/// The event as structured JSON, read attribute by attribute.
fn to_json(event: &CloudEvent) -> Value {
    let mut map = Map::new();
    map.insert("specversion".into(), event.spec_version.clone().into());
    map.insert("id".into(), event.id.clone().into());
    map.insert("source".into(), event.source.clone().into());
    map.insert("type".into(), event.r#type.clone().into());
    for (k, v) in &event.attributes {
        let value = match &v.attr {
            Some(Attr::CeString(s) | Attr::CeUri(s) | Attr::CeUriRef(s)) => Value::from(s.clone()),
            Some(Attr::CeBoolean(b)) => Value::from(*b),
            Some(Attr::CeInteger(i)) => Value::from(*i),
            Some(Attr::CeBytes(b)) => Value::from(base64::engine::general_purpose::STANDARD.encode(b)),
            Some(Attr::CeTimestamp(t)) => Value::from(format!("@{}.{:09}", t.seconds, t.nanos)),
            None => continue,
        };
        map.insert(k.clone(), value);
    }
    let json_ct = ce_string(event, "datacontenttype").contains("json");
    match &event.data {
        Some(Data::TextData(t)) if json_ct => {
            map.insert("data".into(), serde_json::from_str(t).unwrap_or_else(|_| Value::from(t.clone())));
        }
        Some(Data::TextData(t)) => {
            map.insert("data".into(), Value::from(t.clone()));
        }
        Some(Data::BinaryData(b)) => {
            map.insert("data_base64".into(), Value::from(base64::engine::general_purpose::STANDARD.encode(b)));
        }
        Some(Data::ProtoData(_)) | None => {}
    }
    Value::Object(map)
}

impl Double {
    fn check(&self, event: &CloudEvent) -> Option<Response<CloudEvent>> {
        if !header_ok(event) {
            self.state.refused.fetch_add(1, Ordering::SeqCst);
            return Some(answer(6, "eventMesh protocol header err"));
        }
        if !body_ok(event) {
            self.state.refused.fetch_add(1, Ordering::SeqCst);
            return Some(answer(7, "eventMesh protocol body err"));
        }
        None
    }

    async fn decided(&self) -> Option<Response<CloudEvent>> {
        match self.state.decide() {
            Decision::Store => None,
            Decision::Overload => Some(answer(1, "eventMesh overload, try later")),
            Decision::RateLimited => Some(answer(21, "eventMesh send message speed over limit")),
            Decision::Stall => std::future::pending().await,
        }
    }

    fn store(&self, event: &CloudEvent, topic: &str, group: &str) {
        self.state.store(Stored { event: to_json(event), topic: topic.into(), producer_group: group.into() });
    }
}

#[tonic::async_trait]
impl PublisherService for Double {
    async fn publish(&self, request: Request<CloudEvent>) -> Result<Response<CloudEvent>, Status> {
        let event = request.into_inner();
        if let Some(refusal) = self.check(&event) {
            return Ok(refusal);
        }
        if let Some(busy) = self.decided().await {
            return Ok(busy);
        }
        let topic = ce_string(&event, "subject").to_string();
        self.store(&event, &topic, ce_string(&event, "producergroup"));
        Ok(answer(0, &format!("success SendResult[topic={topic}, messageId={}]", event.id)))
    }

    async fn request_reply(&self, _: Request<CloudEvent>) -> Result<Response<CloudEvent>, Status> {
        Err(Status::unimplemented("request-reply is not part of this double"))
    }

    async fn publish_one_way(&self, _: Request<CloudEvent>) -> Result<Response<()>, Status> {
        // The runtime does not implement it either.
        Err(Status::unimplemented("publishOneWay"))
    }

    async fn batch_publish(&self, request: Request<CloudEventBatch>) -> Result<Response<CloudEvent>, Status> {
        self.state.batches.fetch_add(1, Ordering::SeqCst);
        let batch = request.into_inner();
        for event in &batch.events {
            if let Some(refusal) = self.check(event) {
                return Ok(refusal);
            }
        }
        if let Some(busy) = self.decided().await {
            return Ok(busy);
        }
        // The runtime takes topic and producer group from the first event, and answers once the events are
        // submitted, not stored.
        let Some(first) = batch.events.first() else { return Ok(answer(10, "eventMesh batch err")) };
        let (topic, group) = (ce_string(first, "subject").to_string(), ce_string(first, "producergroup").to_string());
        for event in &batch.events {
            self.store(event, &topic, &group);
        }
        Ok(answer(0, "batch publish success"))
    }

    async fn batch_publish_one_way(&self, _: Request<CloudEventBatch>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("batchPublishOneWay"))
    }
}

#[tonic::async_trait]
impl HeartbeatService for Double {
    async fn heartbeat(&self, request: Request<CloudEvent>) -> Result<Response<CloudEvent>, Status> {
        let event = request.into_inner();
        if !header_ok(&event) {
            return Ok(answer(6, "eventMesh protocol header err"));
        }
        let client_type = event.attributes.get("clienttype").and_then(|v| v.attr.as_ref());
        if !matches!(client_type, Some(Attr::CeInteger(1 | 2))) {
            return Ok(answer(19, "eventMesh heartbeat err: clienttype"));
        }
        self.state.heartbeats.fetch_add(1, Ordering::SeqCst);
        Ok(answer(0, "heartbeat success"))
    }
}
