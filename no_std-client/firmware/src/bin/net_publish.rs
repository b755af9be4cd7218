//! The client on the board's Ethernet: LAN9118 + embassy-net with the static address QEMU's user network expects
//! (10.0.2.15/24), then `meshgate-client` to the gateway at 10.0.2.2:PORT (`port=NNNN` on the semihosting command
//! line; the host's 127.0.0.1:PORT). It publishes three CloudEvents in MQTT 5 binary mode at QoS 1, waits for
//! their acknowledgements and for one command on `devices/mps2-net-1/commands/#`, disconnects, reconnects on the
//! same socket as an MQTT 3.1.1 device publishing two structured-mode events, disconnects, and exits 0.
#![no_std]
#![no_main]

use cortex_m_semihosting::hprintln;
use embassy_net::StackResources;
use embassy_net::tcp::TcpSocket;
use embassy_time::{Duration, Instant};
use meshgate_client::cloudevents::{EventAttributes, EventData, EventIds};
use meshgate_client::mqtt::{Connect, QoS, SubscribeFilter, SubscriptionOptions, Version};
use meshgate_client::{Client, Event, Session};
use meshgate_firmware::{lan9118, net};
use panic_semihosting as _;

const DEVICE: &str = "mps2-net-1";

/// Publishes one temperature event per reading at QoS 1 (binary mode on MQTT 5, structured on 3.1.1, as the
/// session speaks) and waits until the gateway acknowledged them all.
async fn publish_readings(
    session: &mut Session<'_, TcpSocket<'_>, 4>,
    ids: &mut EventIds<'_>,
    readings: &[&str],
) -> Result<(), &'static str> {
    for reading in readings {
        let mut id = [0u8; 24];
        let attrs = EventAttributes {
            id: ids.next(&mut id).map_err(|_| "id")?,
            source: "/devices/mps2-net-1",
            ty: "com.example.temperature",
            subject: Some("lab"),
            time: None,
            datacontenttype: Some("application/json"),
            extensions: &[("link", "lan9118")],
        };
        let topic = "devices/mps2-net-1/events/temperature";
        let data = EventData::Json(reading);
        session.publish_event(topic, QoS::AtLeastOnce, &attrs, data).await.map_err(|_| "publish")?;
    }
    let mut acknowledged = 0;
    while acknowledged < readings.len() {
        if let Event::Acknowledged { .. } = session.receive().await.map_err(|_| "receive")? {
            acknowledged += 1;
        }
    }
    Ok(())
}

#[cortex_m_rt::entry]
fn main() -> ! {
    let mut resources = StackResources::<2>::new();
    let (stack, runner) = net::stack(&mut resources);
    let (mut socket_rx, mut socket_tx) = ([0u8; 2048], [0u8; 2048]);
    let mut socket = TcpSocket::new(stack, &mut socket_rx, &mut socket_tx);
    socket.set_timeout(Some(Duration::from_secs(10)));
    let (mut outbox, mut rx, mut tx) = ([0u8; 1024], [0u8; 512], [0u8; 512]);
    let client: Client<'_, 4> = Client::new(Version::V5, &mut outbox);
    let mut session = Session::new(socket, client, &mut rx, &mut tx);
    let gateway = net::gateway();
    net::run(runner, Duration::from_secs(40), async {
        let connect = Connect { version: Version::V5, keep_alive: 30, client_id: DEVICE, ..Connect::default() };
        session.open(gateway, &connect).await.map_err(|_| "open")?;
        hprintln!("connected to {}", gateway);
        let mut ids = EventIds::new(DEVICE, 0);
        publish_readings(&mut session, &mut ids, &["{\"celsius\":20.5}", "{\"celsius\":20.75}", "{\"celsius\":21}"])
            .await?;
        hprintln!("3 events acknowledged");
        let commands = [SubscribeFilter {
            filter: "devices/mps2-net-1/commands/#",
            options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() },
        }];
        session.subscribe(1, &commands).await.map_err(|_| "subscribe")?;
        loop {
            match session.receive().await.map_err(|_| "receive")? {
                Event::Subscribed { .. } => hprintln!("waiting for a command"),
                Event::Message(command) => {
                    let payload = core::str::from_utf8(command.payload).unwrap_or("(binary)");
                    hprintln!("command {} {}", command.topic, payload);
                    break;
                }
                _ => {}
            }
        }
        session.disconnect().await.map_err(|_| "disconnect")?;
        // The same socket, now as an MQTT 3.1.1 device: structured-mode events.
        let connect = Connect { version: Version::V311, keep_alive: 30, client_id: "mps2-net-1-v311", ..connect };
        session.open(gateway, &connect).await.map_err(|_| "open 3.1.1")?;
        publish_readings(&mut session, &mut ids, &["{\"celsius\":19.5}", "{\"celsius\":19.25}"]).await?;
        hprintln!("2 structured events acknowledged");
        hprintln!("{} RX interrupts in {} ms", lan9118::rx_interrupts(), Instant::now().as_millis());
        session.disconnect().await.map_err(|_| "disconnect")
    })
}
