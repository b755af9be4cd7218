//! Decodes arbitrary bytes as a stream of EventMesh TCP frames, as the uplink reads a runtime's socket: the
//! decoder never panics, never claims more bytes than it was given, and every frame it accepts re-encodes to
//! bytes that decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_protocols::eventmesh::tcp::Frame;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((frame, used)) = Frame::decode(rest) {
        assert!(used > 0 && used <= rest.len());
        let mut again = Vec::new();
        frame.encode(&mut again).expect("a decoded frame fits");
        assert_eq!(Frame::decode(&again).map(|(f, _)| f), Ok(frame));
        rest = &rest[used..];
    }
});
