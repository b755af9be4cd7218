//! Decodes arbitrary bytes as a stream of MQTT packets at both protocol levels. Checks that decoding never panics,
//! never claims more bytes than it was given, and that whatever decodes re-encodes to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_protocols::mqtt::{Packet, Version};

fuzz_target!(|data: &[u8]| {
    for version in [Version::V311, Version::V5] {
        let mut rest = data;
        while let Ok((packet, used)) = Packet::decode(rest, version, 1 << 20) {
            assert!(used > 0 && used <= rest.len());
            let mut buf = vec![0u8; packet.encoded_len(version)];
            let n = packet.encode(version, &mut buf).expect("a decoded packet encodes");
            let (again, again_used) = Packet::decode(&buf[..n], version, 1 << 20).expect("re-encoded packet decodes");
            assert_eq!(again, packet);
            assert_eq!(again_used, n);
            rest = &rest[used..];
        }
    }
});
