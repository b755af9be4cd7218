//! The minimal publish firmware the size report measures (docs/benchmarks.md): connect, publish one message at
//! QoS 1, wait for its acknowledgement, disconnect. Each `size_*` binary runs one variant at the protocol level its
//! build chose (MQTT 5 with the default `mqtt5` feature, 3.1.1 without); `size_baseline` is the same firmware
//! without the client, so a variant's size minus the baseline's is what the client costs.
//!
//! - [`session_event`]: the async [`Session`] publishing a CloudEvent (`size_session` on the UART,
//!   `size_net_session` on Ethernet, whose baseline is `size_net_baseline`);
//! - [`core_publish`] with a CloudEvent (`size_core`) or a plain payload (`size_mqtt`): the sans-IO [`Client`]
//!   driven by a read/write loop, as a C client such as coreMQTT is driven.

use core::future::Future;

use embassy_net::StackResources;
use embassy_net::tcp::TcpSocket;
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

/// The `main` of a size build: the application's [`Buffers`] as statics (`.bss`), and `$run(transport, buffers)`
/// to completion on the board's UART (`uart`) or on a TCP connection to the gateway over its Ethernet (`ethernet`,
/// through [`over_ethernet`]); the exit code says whether the publish was acknowledged.
#[macro_export]
macro_rules! size_firmware {
    (uart, $run:expr) => {
        $crate::size_firmware!(@main [] buffers => {
            $crate::exit(embassy_futures::block_on($run($crate::board(), buffers)))
        });
    };
    (ethernet, $run:expr) => {
        $crate::size_firmware!(@main [
            static mut RESOURCES: embassy_net::StackResources<1> = embassy_net::StackResources::new();
            static mut SOCKET_RX: [u8; 1024] = [0; 1024];
            static mut SOCKET_TX: [u8; 1024] = [0; 1024];
        ] buffers => {
            $crate::minimal::over_ethernet(RESOURCES, SOCKET_RX, SOCKET_TX, buffers, $run)
        });
    };
    (@main [$($statics:tt)*] $buffers:ident => $body:block) => {
        #[cortex_m_rt::entry]
        fn main() -> ! {
            static mut OUTBOX: [u8; 512] = [0; 512];
            static mut RX: [u8; 256] = [0; 256];
            static mut TX: [u8; 512] = [0; 512];
            static mut JSON: [u8; 256] = [0; 256];
            $($statics)*
            let $buffers = $crate::minimal::Buffers { outbox: OUTBOX, rx: RX, tx: TX, json: JSON };
            $body
        }
    };
}

/// Brings the network up, opens a TCP connection to the gateway ([`crate::net::gateway`]) and runs
/// `run(socket, buffers)` on it (`buffers`: the client's [`Buffers`], or `()` for the baseline); exits with its
/// verdict.
pub fn over_ethernet<B, F: Future<Output = bool>>(
    resources: &'static mut StackResources<1>,
    socket_rx: &'static mut [u8],
    socket_tx: &'static mut [u8],
    buffers: B,
    run: impl FnOnce(TcpSocket<'static>, B) -> F,
) -> ! {
    let (stack, runner) = crate::net::stack(resources);
    let mut socket = TcpSocket::new(stack, socket_rx, socket_tx);
    crate::net::run(runner, embassy_time::Duration::from_secs(30), async move {
        socket.connect(crate::net::gateway()).await.map_err(|_| "TCP connect")?;
        if run(socket, buffers).await { Ok(()) } else { Err("publish") }
    })
}

fn connect_packet() -> Connect<'static> {
    Connect { version: VERSION, keep_alive: 30, client_id: "mps2-1", ..Connect::default() }
}

/// One CloudEvent through the async session on the board's UART; returns whether it was acknowledged.
pub async fn session_event(uart: Uart, buffers: Buffers) -> bool {
    session_event_over(uart, buffers).await
}

/// [`session_event`] on a TCP connection over the board's Ethernet.
pub async fn session_event_tcp(socket: TcpSocket<'static>, buffers: Buffers) -> bool {
    session_event_over(socket, buffers).await
}

// Both entry points are plain functions: instantiated in this crate, the client's code comes out of LTO the same
// size as in the firmware a user builds (a generic entry point instantiated in each binary measured 0.6 to 2 KiB
// larger for the same code).
async fn session_event_over<T: Read + Write>(io: T, buffers: Buffers) -> bool {
    let Buffers { outbox, rx, tx, .. } = buffers;
    let mut session: Session<'_, T, 4> = Session::new(io, Client::new(VERSION, outbox), rx, tx);
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
pub async fn baseline<T: Read + Write>(mut io: T) -> bool {
    const CONNECT: &[u8] = b"\x10\x12\x00\x04MQTT\x05\x02\x00\x1e\x00\x00\x06mps2-1";
    let (mut reply, mut echo) = ([0u8; 8], [0u8; 8]);
    if io.write_all(CONNECT).await.is_err() || io.read_exact(&mut reply).await.is_err() {
        return false;
    }
    let n = usize::from(reply[1]).min(reply.len());
    echo[..n].copy_from_slice(&reply[..n]);
    io.write_all(&echo[..n]).await.is_ok()
}
