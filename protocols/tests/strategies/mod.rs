//! Proptest strategies shared by the property tests: valid CloudEvents of every shape.
#![allow(dead_code)]

use meshgate_protocols::cloudevents::{CloudEvent, Data, ExtensionValue};
use proptest::prelude::*;

/// Short text with non-ASCII characters.
pub fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ./:_é€-]{1,16}"
}

/// A valid event: optional subject and time, extensions of every type, JSON, binary or no data.
pub fn event() -> impl Strategy<Value = CloudEvent> {
    (
        text(),
        "/[a-z0-9/]{0,12}",
        "[a-z.]{1,16}",
        proptest::option::of(text()),
        proptest::option::of(Just("2026-11-23T12:00:00.25Z".to_string())),
        proptest::collection::btree_map(
            "[a-z][a-z0-9]{0,8}".prop_filter("reserved", |n| {
                !["id", "source", "type", "subject", "time", "data", "specversion", "dataschema", "datacontenttype"]
                    .contains(&n.as_str())
            }),
            prop_oneof![
                text().prop_map(ExtensionValue::String),
                any::<bool>().prop_map(ExtensionValue::Boolean),
                any::<i32>().prop_map(|i| ExtensionValue::Integer(i64::from(i)))
            ],
            0..4,
        ),
        prop_oneof![
            Just(None),
            text().prop_map(|s| Some(Data::Json(serde_json::Value::String(s)))),
            proptest::collection::vec(any::<u8>(), 1..32).prop_map(|b| Some(Data::Binary(b))),
            any::<i64>().prop_map(|i| Some(Data::Json(serde_json::json!({"n": i, "ok": true})))),
        ],
    )
        .prop_map(|(id, source, ty, subject, time, extensions, data)| CloudEvent {
            id,
            source,
            ty,
            subject,
            time,
            extensions,
            datacontenttype: match &data {
                Some(Data::Binary(_)) => Some("application/octet-stream".into()),
                Some(_) => Some("application/json".into()),
                None => None,
            },
            data,
            ..CloudEvent::default()
        })
}
