//! Property tests for the EventMesh wire formats: TCP frames round-trip and are found in any stream of bytes
//! without panicking; any valid event survives the gRPC mapping (the identity added as attributes).
#![cfg(feature = "eventmesh")]

mod strategies;

use meshgate_protocols::cloudevents::ExtensionValue;
use meshgate_protocols::eventmesh::grpc::{CloudEvent as ProtoEvent, publish_request, to_event};
use meshgate_protocols::eventmesh::tcp::{Command, Frame, FrameError, Header};
use meshgate_protocols::eventmesh::{Identity, mesh_event};
use proptest::prelude::*;
use prost::Message as _;

fn frame() -> impl Strategy<Value = Frame> {
    (
        proptest::sample::select(Command::ALL),
        any::<i32>(),
        proptest::option::of("[ -~é]{0,20}"),
        proptest::option::of("[0-9]{1,10}"),
        proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,8}".prop_map(serde_json::Value::from), 0..3),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(cmd, code, desc, seq, properties, body)| Frame {
            header: Header { cmd, code, desc, seq, properties },
            body,
        })
}

fn identity() -> Identity {
    Identity {
        env: "PRD".into(),
        idc: "DEFAULT".into(),
        sys: "0000".into(),
        ip: "127.0.0.1".into(),
        pid: "1".into(),
        username: "u".into(),
        password: "p".into(),
        token: Some("tok".into()),
        language: "RUST".into(),
        producer_group: "g".into(),
    }
}

proptest! {
    #[test]
    fn frames_round_trip_and_every_prefix_is_incomplete(f in frame()) {
        let mut wire = Vec::new();
        f.encode(&mut wire).unwrap();
        prop_assert_eq!(Frame::decode(&wire), Ok((f.clone(), wire.len())));
        for cut in 0..wire.len() {
            let is_incomplete = matches!(Frame::decode(&wire[..cut]), Err(FrameError::Incomplete { .. }));
            prop_assert!(is_incomplete, "prefix {}", cut);
        }
        // Two frames back to back come apart where they should.
        let mut two = wire.clone();
        two.extend_from_slice(&wire);
        prop_assert_eq!(Frame::decode(&two).map(|(_, used)| used), Ok(wire.len()));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(mut bytes in proptest::collection::vec(any::<u8>(), 0..256), magic in any::<bool>()) {
        if magic {
            let mut framed = b"EventMesh0000".to_vec();
            framed.append(&mut bytes);
            bytes = framed;
        }
        if let Ok((f, used)) = Frame::decode(&bytes) {
            prop_assert!(used <= bytes.len());
            let mut again = Vec::new();
            f.encode(&mut again).unwrap();
            prop_assert_eq!(Frame::decode(&again).map(|(g, _)| g), Ok(f));
        }
    }

    #[test]
    fn valid_events_survive_the_grpc_mapping(e in strategies::event(), topic in "[a-z/]{1,12}") {
        let mesh = mesh_event(&e, &topic, 4000);
        let wire = publish_request(&mesh, &identity()).encode_to_vec();
        let back = to_event(&ProtoEvent::decode(wire.as_slice()).unwrap()).unwrap();
        let mut expected = mesh.clone();
        for (k, v) in [("env", "PRD"), ("idc", "DEFAULT"), ("sys", "0000"), ("ip", "127.0.0.1"), ("pid", "1"),
            ("username", "u"), ("passwd", "p"), ("token", "tok"), ("language", "RUST"), ("producergroup", "g"),
            ("protocoltype", "cloudevents"), ("protocolversion", "1.0"), ("protocoldesc", "grpc-cloud-event")] {
            expected.extensions.insert(k.into(), ExtensionValue::String(v.into()));
        }
        expected.extensions.insert("seqnum".into(), expected.extensions["uniqueid"].clone());
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn arbitrary_protobuf_never_panics_the_mapping(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(message) = ProtoEvent::decode(bytes.as_slice())
            && let Ok(event) = to_event(&message)
        {
            prop_assert_eq!(event.validate(), Ok(()));
        }
    }
}
