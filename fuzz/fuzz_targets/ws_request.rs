//! Feeds arbitrary bytes to the `cloudevents.json` session as text messages (split where the first byte says):
//! understanding a message never panics, JSON of any depth is refused without deep recursion, and an event let
//! through to publish has a subject within `limits.max_topic_levels`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_gateway::limits::LimitsConfig;
use meshgate_gateway::ws::request::Request;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let limits = LimitsConfig { max_topic_levels: 4, ..LimitsConfig::default() };
    let pieces: Vec<&[u8]> = if split == 0 { vec![rest] } else { rest.split(|&b| b == split).collect() };
    for text in pieces {
        if let Request::Publish(event) = Request::parse(text, &limits) {
            assert!(limits.topic_depth_ok(event.subject.as_deref().unwrap_or_default()));
            assert!(!event.id.is_empty());
        }
    }
});
