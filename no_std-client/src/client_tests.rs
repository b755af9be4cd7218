//! Host-only tests of the protocol state: every scenario of [`crate::selftest`] (which also runs as firmware on
//! QEMU), and random server bytes.

use meshgate_protocols::mqtt::Properties;

use super::*;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Err(failure) = crate::selftest::$name() {
                    panic!("{failure}");
                }
            }
        )*
    };
}

scenarios!(
    publishes_stay_within_the_servers_limits,
    unacknowledged_publishes_are_resent_with_dup,
    received_messages_are_acknowledged,
    keep_alive_pings_and_gives_up,
    refusals_and_server_mistakes_are_errors,
    mqtt_3_1_1_publishes_and_resends,
    hostile_bytes_are_errors_not_panics,
);

#[cfg(feature = "qos2")]
scenarios!(qos2_publish_completes_and_resumes_at_pubrel, qos2_messages_are_delivered_once);

#[test]
fn every_scenario_is_listed_for_the_firmware_runner() {
    let expected = if cfg!(feature = "qos2") { 9 } else { 7 };
    assert_eq!(crate::selftest::SCENARIOS.len(), expected);
}

fn connected(arena: &mut [u8]) -> Client<'_, 4> {
    let mut c = Client::new(Version::V5, arena);
    let mut out = [0u8; 64];
    let connect = Connect { version: Version::V5, client_id: "dev-1", ..Connect::default() };
    c.connect(&connect, 0, &mut out).unwrap();
    let mut ack = [0u8; 16];
    let n = Packet::ConnAck(ConnAck { properties: Properties::default(), ..ConnAck::default() })
        .encode(Version::V5, &mut ack)
        .unwrap();
    c.handle(&ack[..n], 0).unwrap();
    c
}

proptest::proptest! {
    /// Whatever a hostile server sends, the client answers with an event or an error, never a panic, and never
    /// claims more bytes than it was given.
    #[test]
    fn arbitrary_server_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let mut arena = [0u8; 128];
        let mut c = connected(&mut arena);
        let mut out = [0u8; 128];
        let publish = Publish { topic: "t", qos: QoS::AtLeastOnce, payload: b"1", ..Publish::default() };
        let _ = c.publish(&publish, 0, &mut out);
        let mut rest = bytes.as_slice();
        while let Ok(Some((used, _))) = c.handle(rest, 0) {
            proptest::prop_assert!(used <= rest.len() && used > 0);
            rest = &rest[used..];
            let _ = c.poll_transmit(0, &mut out);
        }
    }
}
