//! Golden bytes for the EventMesh wire formats, written from the project's reference on the runtime
//! (`reference/eventmesh-protocols.md`), not from this crate's encoders: the expected bytes below are spelled
//! out by hand, so a mistake cannot hide by being made the same way in our client and in our test doubles.
#![cfg(feature = "eventmesh")]

use meshgate_protocols::cloudevents::{CloudEvent, Data};
use meshgate_protocols::eventmesh::grpc::{self, publish_request};
use meshgate_protocols::eventmesh::http::{publish_form, publish_headers};
use meshgate_protocols::eventmesh::tcp::{Command, Frame, FrameError, Header};
use meshgate_protocols::eventmesh::{Identity, mesh_event};
use prost::Message as _;

fn identity() -> Identity {
    Identity {
        env: "PRD".into(),
        idc: "DEFAULT".into(),
        sys: "0000".into(),
        ip: "10.0.0.7".into(),
        pid: "4242".into(),
        username: "eventmesh".into(),
        password: "pass".into(),
        token: None,
        language: "RUST".into(),
        producer_group: "meshgate".into(),
    }
}

// ---- TCP: "EventMesh" | "0000" | u32 BE package length = 13 + header + body | u32 BE header length | header | body

#[test]
fn a_heartbeat_frame_has_the_v1_9_length_rule() {
    let header = br#"{"cmd":"HEARTBEAT_REQUEST","code":0,"seq":"1"}"#; // 46 bytes
    let mut expected = b"EventMesh0000".to_vec();
    expected.extend_from_slice(&[0, 0, 0, 59]); // 13 + 46 + 0
    expected.extend_from_slice(&[0, 0, 0, 46]);
    expected.extend_from_slice(header);

    let frame = Frame { header: Header::new(Command::HeartbeatRequest, "1"), body: Vec::new() };
    let mut wire = Vec::new();
    frame.encode(&mut wire).unwrap();
    assert_eq!(wire, expected);
    assert_eq!(wire.len(), 21 + 46, "a frame is 21 + header + body bytes");
    assert_eq!(Frame::decode(&expected), Ok((frame, expected.len())));
}

#[test]
fn a_message_frame_carries_properties_and_a_body() {
    let header =
        br#"{"cmd":"ASYNC_MESSAGE_TO_SERVER","code":0,"seq":"42","properties":{"protocoltype":"cloudevents"}}"#;
    let mut expected = b"EventMesh0000".to_vec();
    expected.extend_from_slice(&[0, 0, 0, 114]); // 13 + 97 + 4
    expected.extend_from_slice(&[0, 0, 0, 97]);
    expected.extend_from_slice(header);
    expected.extend_from_slice(b"{}\r\n");

    let mut h = Header::new(Command::AsyncMessageToServer, "42");
    h.properties.insert("protocoltype".into(), "cloudevents".into());
    let frame = Frame { header: h, body: b"{}\r\n".to_vec() };
    let mut wire = Vec::new();
    frame.encode(&mut wire).unwrap();
    assert_eq!(wire, expected);
}

#[test]
fn an_ack_from_the_runtime_decodes_with_its_seq_code_and_desc() {
    // As the Java runtime's Jackson writes it: every field, nulls included, unknown ones ignored.
    let header = br#"{"cmd":"ASYNC_MESSAGE_TO_SERVER_ACK","code":1,"desc":"Tps overload, global flow control","seq":"0000000042","properties":null,"extra":1}"#;
    let mut wire = b"EventMesh0000".to_vec();
    wire.extend_from_slice(&((13 + header.len()) as u32).to_be_bytes());
    wire.extend_from_slice(&(header.len() as u32).to_be_bytes());
    wire.extend_from_slice(header);
    // A partial frame is incomplete, never an error.
    assert!(matches!(Frame::decode(&wire[..30]), Err(FrameError::Incomplete { .. })));
    let (frame, used) = Frame::decode(&wire).unwrap();
    assert_eq!(used, wire.len());
    assert_eq!(frame.header.cmd, Command::AsyncMessageToServerAck);
    assert_eq!(frame.header.code, 1);
    assert_eq!(frame.header.seq.as_deref(), Some("0000000042"));
    assert_eq!(frame.header.desc.as_deref(), Some("Tps overload, global flow control"));
}

#[test]
fn the_pre_1_9_length_rule_is_refused() {
    // Before 1.9 (and in the Go SDK) the package length was 8 + header + body: 5 short of the real frame.
    let header = br#"{"cmd":"HEARTBEAT_REQUEST","code":0,"seq":"1"}"#;
    let mut wire = b"EventMesh0000".to_vec();
    wire.extend_from_slice(&((8 + header.len()) as u32).to_be_bytes());
    wire.extend_from_slice(&(header.len() as u32).to_be_bytes());
    wire.extend_from_slice(header);
    assert_eq!(Frame::decode(&wire), Err(FrameError::BadLength));
}

// ---- HTTP: POST / with code 104, lowercase identity headers, form fields producergroup and content

#[test]
fn an_http_publish_has_the_request_code_headers_and_form_body() {
    let headers = publish_headers(&identity());
    let expected: Vec<(&str, &str)> = vec![
        ("code", "104"),
        ("version", "1.0"),
        ("env", "PRD"),
        ("idc", "DEFAULT"),
        ("ip", "10.0.0.7"),
        ("pid", "4242"),
        ("sys", "0000"),
        ("username", "eventmesh"),
        ("passwd", "pass"),
        ("language", "RUST"),
        ("protocoltype", "cloudevents"),
        ("protocolversion", "1.0"),
        ("protocoldesc", "http"),
    ];
    assert_eq!(headers.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(), expected);
    assert_eq!(
        publish_form("meshgate", r#"{"id":"a b","data":"é"}"#),
        "producergroup=meshgate&content=%7B%22id%22%3A%22a+b%22%2C%22data%22%3A%22%C3%A9%22%7D"
    );
}

// ---- gRPC: the CloudEvent message, field numbers 1-8, attributes as map<string, CloudEventAttributeValue>

#[test]
fn a_protobuf_cloudevent_has_the_cncf_field_numbers() {
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert("subject".to_string(), grpc::ce_string("a"));
    let message = grpc::CloudEvent {
        id: "1".into(),
        source: "/s".into(),
        spec_version: "1.0".into(),
        r#type: "t".into(),
        attributes,
        data: Some(grpc::cloud_event::Data::TextData("x".into())),
    };
    let expected: Vec<u8> = [
        &[0x0a, 1][..],
        b"1", // id = 1, length-delimited
        &[0x12, 2],
        b"/s", // source = 2
        &[0x1a, 3],
        b"1.0", // spec_version = 3
        &[0x22, 1],
        b"t",        // type = 4
        &[0x2a, 14], // attributes = 5: one map entry of 14 bytes
        &[0x0a, 7],
        b"subject", // entry key = 1
        &[0x12, 3, 0x1a, 1],
        b"a", // entry value = 2: CloudEventAttributeValue { ce_string = 3 }
        &[0x3a, 1],
        b"x", // text_data = 7
    ]
    .concat();
    assert_eq!(message.encode_to_vec(), expected);
}

/// A minimal protobuf reader written for this test: (field number, wire type, payload) of each field.
fn fields(mut b: &[u8]) -> Vec<(u64, u8, Vec<u8>)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let (field, wire) = (key >> 3, (key & 7) as u8);
        let payload = match wire {
            0 => varint(&mut b).to_le_bytes().to_vec(),
            2 => {
                let len = varint(&mut b) as usize;
                let (p, rest) = b.split_at(len);
                b = rest;
                p.to_vec()
            }
            other => panic!("unexpected wire type {other}"),
        };
        out.push((field, wire, payload));
    }
    out
}

#[test]
fn a_grpc_publish_carries_every_required_attribute_as_ce_string() {
    let mut event = CloudEvent {
        id: "e-1".into(),
        source: "/meshgate/edge-1/mqtt/d7".into(),
        ty: "io.meshgate.mqtt.message".into(),
        datacontenttype: Some("application/json".into()),
        time: Some("2026-12-01T00:00:01.5Z".into()),
        data: Some(Data::Json(serde_json::json!({"t": 21.5}))),
        ..CloudEvent::default()
    };
    event.extensions.insert("deviceid".into(), "d7".into());
    let wire = publish_request(&mesh_event(&event, "devices/d7", 4000), &identity()).encode_to_vec();

    let top = fields(&wire);
    let strings: Vec<(u64, String)> =
        top.iter().filter(|f| f.0 <= 4).map(|f| (f.0, String::from_utf8(f.2.clone()).unwrap())).collect();
    assert_eq!(
        strings,
        [
            (1, "e-1".into()),
            (2, "/meshgate/edge-1/mqtt/d7".into()),
            (3, "1.0".into()),
            (4, "io.meshgate.mqtt.message".into())
        ]
    );
    let mut attributes = std::collections::BTreeMap::new();
    for entry in top.iter().filter(|f| f.0 == 5) {
        let kv = fields(&entry.2);
        assert_eq!((kv[0].0, kv[1].0), (1, 2), "map entries are key = 1, value = 2");
        let value = fields(&kv[1].2);
        attributes.insert(String::from_utf8(kv[0].2.clone()).unwrap(), (value[0].0, value[0].2.clone()));
    }
    let ce_string = |name: &str| -> String {
        let (tag, bytes) = attributes.get(name).unwrap_or_else(|| panic!("attribute {name} missing"));
        assert_eq!(*tag, 3, "{name} must be ce_string (3), the runtime reads it with getCeString()");
        String::from_utf8(bytes.clone()).unwrap()
    };
    for (name, value) in [
        ("env", "PRD"),
        ("idc", "DEFAULT"),
        ("ip", "10.0.0.7"),
        ("pid", "4242"),
        ("sys", "0000"),
        ("username", "eventmesh"),
        ("passwd", "pass"),
        ("language", "RUST"),
        ("producergroup", "meshgate"),
        ("subject", "devices/d7"),
        ("ttl", "4000"),
        ("protocoltype", "cloudevents"),
        ("protocolversion", "1.0"),
        ("datacontenttype", "application/json"),
        ("deviceid", "d7"),
    ] {
        assert_eq!(ce_string(name), value, "{name}");
    }
    assert_eq!(ce_string("uniqueid").len(), 30);
    let (tag, ts) = &attributes["time"];
    assert_eq!(*tag, 7, "time is ce_timestamp (7)");
    let ts = fields(ts);
    assert_eq!(ts[0].0, 1);
    assert_eq!(u64::from_le_bytes(ts[0].2.clone().try_into().unwrap()), 1_796_083_201, "seconds");
    assert_eq!(u64::from_le_bytes(ts[1].2.clone().try_into().unwrap()), 500_000_000, "nanos");
    // JSON data goes in text_data (7): the runtime checks text_data for application/json.
    let text: Vec<_> = top.iter().filter(|f| f.0 == 7).collect();
    assert_eq!(text.len(), 1);
    assert_eq!(text[0].2, br#"{"t":21.5}"#);
    assert!(!top.iter().any(|f| f.0 == 6 || f.0 == 8));
}
