//! The publish example: a device on QEMU's mps2-an386 whose UART QEMU connects to a gateway
//! (`-serial tcp:127.0.0.1:1883`). It connects as `mps2-1` (MQTT 5, a persistent session), subscribes to its
//! commands, publishes three temperature CloudEvents in binary mode at QoS 1, waits for their acknowledgements,
//! then for one command, which it prints, and disconnects. Exit code 0 when all of that happened within 30 s.
#![no_std]
#![no_main]

use cortex_m_semihosting::hprintln;
use embassy_time::{Duration, with_timeout};
use meshgate_client::cloudevents::{EventAttributes, EventData, EventIds};
use meshgate_client::mqtt::{Connect, Properties, QoS, SubscribeFilter, SubscriptionOptions, Version};
use meshgate_client::{Client, Event, Session};
use meshgate_firmware::uart::Uart;
use panic_semihosting as _;

const DEVICE: &str = "mps2-1";

#[cortex_m_rt::entry]
fn main() -> ! {
    let uart = meshgate_firmware::board();
    let outcome = embassy_futures::block_on(with_timeout(Duration::from_secs(30), run(uart)));
    let ok = match outcome {
        Ok(Ok(())) => true,
        Ok(Err(step)) => {
            hprintln!("failed: {}", step);
            false
        }
        Err(_) => {
            hprintln!("failed: timed out");
            false
        }
    };
    meshgate_firmware::exit(ok)
}

async fn run(uart: Uart) -> Result<(), &'static str> {
    let (mut outbox, mut rx, mut tx) = ([0u8; 1024], [0u8; 512], [0u8; 512]);
    let client: Client<'_, 4> = Client::new(Version::V5, &mut outbox);
    let mut session = Session::new(uart, client, &mut rx, &mut tx);
    let connect = Connect {
        version: Version::V5,
        clean_start: false,
        keep_alive: 30,
        client_id: DEVICE,
        properties: Properties { session_expiry_interval: Some(600), ..Properties::default() },
        ..Connect::default()
    };
    session.connect(&connect).await.map_err(|_| "connect")?;
    hprintln!("connected");
    let commands = [SubscribeFilter {
        filter: "devices/mps2-1/commands/#",
        options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() },
    }];
    session.subscribe(1, &commands).await.map_err(|_| "subscribe")?;
    let mut ids = EventIds::new(DEVICE, 0);
    let mut acknowledged = 0;
    for reading in ["{\"celsius\":21.5}", "{\"celsius\":21.75}", "{\"celsius\":22}"] {
        let mut id = [0u8; 20];
        let attrs = EventAttributes {
            id: ids.next(&mut id).map_err(|_| "event id")?,
            source: "/devices/mps2-1",
            ty: "com.example.temperature",
            subject: Some("room-4"),
            time: None,
            datacontenttype: Some("application/json"),
            extensions: &[("board", "mps2-an386")],
        };
        let topic = "devices/mps2-1/events/temperature";
        session
            .publish_event(topic, QoS::AtLeastOnce, &attrs, EventData::Json(reading))
            .await
            .map_err(|_| "publish")?;
    }
    let mut commanded = false;
    while acknowledged < 3 || !commanded {
        match session.receive().await.map_err(|_| "receive")? {
            Event::Acknowledged { .. } => {
                acknowledged += 1;
                if acknowledged == 3 {
                    hprintln!("3 events acknowledged");
                }
            }
            Event::Message(command) => {
                let payload = core::str::from_utf8(command.payload).unwrap_or("(binary)");
                hprintln!("command {} {}", command.topic, payload);
                commanded = true;
            }
            _ => {}
        }
    }
    session.disconnect().await.map_err(|_| "disconnect")
}
