//! Reads arbitrary bytes as the answers of an EventMesh runtime: a gRPC answer (protobuf CloudEvent, read for its
//! status and mapped back to the event model) and an HTTP answer body (`retCode` JSON). Neither may panic, and
//! every event the gRPC mapping accepts is valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_protocols::eventmesh::grpc::{CloudEvent, answer_status, to_event};
use meshgate_protocols::eventmesh::http::Answer;
use meshgate_protocols::eventmesh::status::{grpc_verdict, http_verdict};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = CloudEvent::decode(data) {
        let (code, _) = answer_status(&message);
        if let Some(code) = code {
            let _ = grpc_verdict(code);
        }
        if let Ok(event) = to_event(&message) {
            assert_eq!(event.validate(), Ok(()));
        }
    }
    if let Ok(answer) = Answer::parse(data) {
        let _ = http_verdict(answer.ret_code);
    }
});
