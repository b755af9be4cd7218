//! Reads arbitrary bytes as a `traceparent` and a `tracestate`. Checks that parsing never panics and that every
//! context it accepts prints back to a value that parses to the same context.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_protocols::trace_context::{TraceParent, is_valid_tracestate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(tp) = TraceParent::parse(text) {
        assert!(tp.trace_id != [0; 16] && tp.parent_id != [0; 8]);
        assert_eq!(TraceParent::parse(&tp.to_string()), Some(tp));
    }
    if is_valid_tracestate(text) {
        assert!(text.len() <= meshgate_protocols::trace_context::MAX_TRACESTATE_LEN);
    }
});
