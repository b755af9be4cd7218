//! What a `cloudevents.json` text message asks for, decided without IO: subscribe, unsubscribe, publish an event,
//! or a refusal with the reason the device is told. The session ([`super::events`]) acts on it.

use meshgate_protocols::cloudevents::CloudEvent;
use serde_json::Value;

use crate::limits::LimitsConfig;

/// One text message, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `{"subscribe":"FILTER"}`.
    Subscribe(String),
    /// `{"unsubscribe":"FILTER"}`.
    Unsubscribe(String),
    /// A valid structured CloudEvent to publish.
    Publish(Box<CloudEvent>),
    /// Refused: nacked with `reason` (`id` when the event had a readable one).
    Refused {
        /// The event's id, if readable.
        id: Option<String>,
        /// What the device is told.
        reason: String,
        /// Why, for the metrics.
        kind: Refusal,
    },
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON (nested deeper than the JSON parser's limit included).
    NotJson,
    /// JSON, but not a valid CloudEvent.
    InvalidEvent,
    /// A subject with more levels than `limits.max_topic_levels`.
    TooDeep,
}

impl Request {
    /// Reads one text message. JSON nested more than 128 levels deep is refused by the parser (serde_json's
    /// recursion limit), so no message makes the gateway recurse further than that.
    pub fn parse(text: &[u8], limits: &LimitsConfig) -> Request {
        let value: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) => return Request::Refused { id: None, reason: format!("not JSON: {e}"), kind: Refusal::NotJson },
        };
        if let Some(filter) = value.get("subscribe").and_then(Value::as_str) {
            return Request::Subscribe(filter.to_string());
        }
        if let Some(filter) = value.get("unsubscribe").and_then(Value::as_str) {
            return Request::Unsubscribe(filter.to_string());
        }
        let id = value.get("id").and_then(Value::as_str).map(String::from);
        let event = match CloudEvent::from_json_value(value) {
            Ok(e) => e,
            Err(e) => {
                let reason = format!("invalid CloudEvent: {e}");
                return Request::Refused { id, reason, kind: Refusal::InvalidEvent };
            }
        };
        if !limits.topic_depth_ok(event.subject.as_deref().unwrap_or_default()) {
            let reason = format!("subject deeper than {} levels (limits.max_topic_levels)", limits.max_topic_levels);
            return Request::Refused { id: Some(event.id), reason, kind: Refusal::TooDeep };
        }
        Request::Publish(Box::new(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Request {
        Request::parse(text.as_bytes(), &LimitsConfig::default())
    }

    #[test]
    fn each_kind_of_message_is_told_apart() {
        assert_eq!(parse(r#"{"subscribe":"a/#"}"#), Request::Subscribe("a/#".into()));
        assert_eq!(parse(r#"{"unsubscribe":"a/#"}"#), Request::Unsubscribe("a/#".into()));
        let event = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"a/b"}"#;
        assert!(matches!(parse(event), Request::Publish(e) if e.id == "1"));
        assert!(matches!(parse("{"), Request::Refused { id: None, kind: Refusal::NotJson, .. }));
        let bad = r#"{"specversion":"0.3","id":"2"}"#;
        assert!(matches!(parse(bad), Request::Refused { id: Some(i), kind: Refusal::InvalidEvent, .. } if i == "2"));
    }

    #[test]
    fn deep_json_and_deep_subjects_are_refused() {
        let deep = format!(
            r#"{{"specversion":"1.0","id":"3","source":"/s","type":"t","data":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(parse(&deep), Request::Refused { kind: Refusal::NotJson, .. }));
        let subject = "a/".repeat(200);
        let event = format!(r#"{{"specversion":"1.0","id":"4","source":"/s","type":"t","subject":"{subject}"}}"#);
        assert!(matches!(parse(&event), Request::Refused { kind: Refusal::TooDeep, .. }));
    }

    proptest! {
        #[test]
        fn any_text_is_understood_without_panicking(text in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Request::Publish(e) = Request::parse(&text, &LimitsConfig::default()) {
                prop_assert!(LimitsConfig::default().topic_depth_ok(e.subject.as_deref().unwrap_or_default()));
            }
        }
    }
}
