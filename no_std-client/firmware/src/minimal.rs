//! The minimal publish firmware the size report measures (docs/benchmarks.md): connect, publish one message at
//! QoS 1, wait for its acknowledgement, disconnect. Each `size_*` binary runs one variant at the protocol level its
//! build chose (MQTT 5 with the default `mqtt5` feature, 3.1.1 without); `size_baseline` is the same firmware
//! without the client, so a variant's size minus the baseline's is what the client costs.
//!
//! - [`session_event`]: the async [`Session`] publishing a CloudEvent (`size_session`);
//! - [`core_publish`] with a CloudEvent (`size_core`) or a plain payload (`size_mqtt`): the sans-IO [`Client`]
//!   driven by a read/write loop, as a C client such as coreMQTT is driven.

use embedded_io_async::{Read, Write};
use meshgate_client::cloudevents::{
    EventAttributes, EventData, MAX_EVENT_PROPERTIES, binary_properties, write_structured,
};
use meshgate_client::mqtt::{Connect, Publish, QoS, UserProperty, Version};
use meshgate_client::{Client, Event, Session};

use crate::uart::Uart;

/// The protocol level this build measures.
pub const VERSION: Version = if cfg!(feature = "mqtt5") { Version::V5 } else { Version::V311 };

const TOPIC: &str = "devices/mps2-1/events/t";
const READING: &str = "{\"celsius\":21.5}";

fn attributes() -> EventAttributes<'static> {
    EventAttributes {
        id: "mps2-1-1",
        source: "/devices/mps2-1",
        ty: "com.example.temperature",
        subject: None,
        time: None,
        datacontenttype: Some("application/json"),
        extensions: &[],
    }
}

/// The buffers the application lends the client; the size binaries declare them as statics in `main` (.bss, as a
/// C firmware would), so they count as static RAM, not as flash that zeroes them.
pub struct Buffers {
    /// Unacknowledged publishes.
    pub outbox: &'static mut [u8; 512],
    /// Received bytes.
    pub rx: &'static mut [u8; 256],
    /// Packets to send.
    pub tx: &'static mut [u8; 512],
    /// A structured event (MQTT 3.1.1), for the sans-IO variants.
    pub json: &'static mut [u8; 256],
}

/// The `main` of a size build: the application's [`Buffers`] as statics (`.bss`), the board, and
/// `$run(uart, buffers)` to completion; the exit code says whether the publish was acknowledged.
#[macro_export]
macro_rules! size_firmware {
    ($run:expr) => {
        #[cortex_m_rt::entry]
        fn main() -> ! {
            static mut OUTBOX: [u8; 512] = [0; 512];
            static mut RX: [u8; 256] = [0; 256];
            static mut TX: [u8; 512] = [0; 512];
            static mut JSON: [u8; 256] = [0; 256];
            let buffers = $crate::minimal::Buffers { outbox: OUTBOX, rx: RX, tx: TX, json: JSON };
            $crate::exit(embassy_futures::block_on($run($crate::board(), buffers)))
        }
    };
}

fn connect_packet() -> Connect<'static> {
    Connect { version: VERSION, keep_alive: 30, client_id: "mps2-1", ..Connect::default() }
}

/// One CloudEvent through the async session; returns whether it was acknowledged.
pub async fn session_event(uart: Uart, buffers: Buffers) -> bool {
    let Buffers { outbox, rx, tx, .. } = buffers;
    let mut session: Session<'_, Uart, 4> = Session::new(uart, Client::new(VERSION, outbox), rx, tx);
    if session.connect(&connect_packet()).await.is_err() {
        return false;
    }
    let data = EventData::Json(READING);
    if session.publish_event(TOPIC, QoS::AtLeastOnce, &attributes(), data).await.is_err() {
        return false;
    }
    let acknowledged = matches!(session.receive().await, Ok(Event::Acknowledged { .. }));
    acknowledged && session.disconnect().await.is_ok()
}

/// One message through the sans-IO client: a CloudEvent (binary mode on MQTT 5, structured on 3.1.1) when
/// `EVENT`, else the reading as a plain payload. Returns whether it was acknowledged.
pub async fn core_publish<const EVENT: bool>(mut uart: Uart, buffers: Buffers) -> bool {
    let Buffers { outbox, rx, tx, json } = buffers;
    let mut slots = [UserProperty { name: "", value: "" }; MAX_EVENT_PROPERTIES];
    let mut client: Client<'_, 4> = Client::new(VERSION, outbox);
    let now = || embassy_time::Instant::now().as_millis();
    let Ok(n) = client.connect(&connect_packet(), now(), tx) else { return false };
    let Ok(()) = uart.write_all(&tx[..n]).await;
    let attrs = attributes();
    let data = EventData::Json(READING);
    let plain = Publish { topic: TOPIC, qos: QoS::AtLeastOnce, payload: READING.as_bytes(), ..Publish::default() };
    let publish = match (EVENT, VERSION.is_v5()) {
        (false, _) => plain,
        (true, true) => match binary_properties(&attrs, &mut slots) {
            Ok(properties) => Publish { properties, ..plain },
            Err(_) => return false,
        },
        (true, false) => match write_structured(&attrs, data, json) {
            Ok(len) => Publish { payload: &json[..len], ..plain },
            Err(_) => return false,
        },
    };
    let mut filled = 0;
    loop {
        let Ok(read) = uart.read(&mut rx[filled..]).await;
        filled += read;
        while let Ok(Some((used, event))) = client.handle(&rx[..filled], now()) {
            let reply = match event {
                Event::Connected { .. } => client.publish(&publish, now(), tx).map(|(n, _)| n),
                Event::Acknowledged { .. } => client.disconnect(now(), tx),
                _ => Ok(0),
            };
            let Ok(n) = reply else { return false };
            let Ok(()) = uart.write_all(&tx[..n]).await;
            if matches!(event, Event::Acknowledged { .. }) {
                return true;
            }
            filled = meshgate_client::consume(rx, used, filled);
        }
        // What the client owes: acknowledgements, resends, a due PINGREQ.
        while let Ok(n @ 1..) = client.poll_transmit(now(), tx) {
            let Ok(()) = uart.write_all(&tx[..n]).await;
        }
        if client.handle_timeout(now()).is_err() {
            return false;
        }
    }
}

/// The baseline: the same transport, sending a fixed CONNECT and reading a CONNACK's worth of bytes back, echoing
/// them through a copy of run-time length, so `memcpy` is part of the baseline as the C library's is left out of
/// coreMQTT's figure.
pub async fn baseline(mut uart: Uart) -> bool {
    const CONNECT: &[u8] = b"\x10\x12\x00\x04MQTT\x05\x02\x00\x1e\x00\x00\x06mps2-1";
    let (mut reply, mut echo) = ([0u8; 8], [0u8; 8]);
    let Ok(()) = uart.write_all(CONNECT).await;
    let Ok(()) = uart.read_exact(&mut reply).await else { return false };
    let n = usize::from(reply[1]).min(reply.len());
    echo[..n].copy_from_slice(&reply[..n]);
    uart.write_all(&echo[..n]).await.is_ok()
}
