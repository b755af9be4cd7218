//! The client riding out a gateway restart on the board's Ethernet. A persistent MQTT 5 session publishes
//! [`TOTAL`] CloudEvents at QoS 1, one every 100 ms with at most [`WINDOW`] unacknowledged. When the connection
//! breaks (the test freezes the gateway, kills it and starts it again on the same port), the firmware reopens the
//! socket every 250 ms until the gateway answers; the client resends what was unacknowledged (DUP) and publishing
//! goes on. It disconnects and exits 0 once every event is acknowledged, printing the reconnections and resends.
#![no_std]
#![no_main]

use core::fmt::Write as _;

use cortex_m_semihosting::hprintln;
use embassy_net::tcp::TcpSocket;
use embassy_net::{IpEndpoint, StackResources};
use embassy_time::{Duration, Timer};
use meshgate_client::cloudevents::{EventAttributes, EventData, EventIds};
use meshgate_client::mqtt::{Connect, Properties, QoS, Version};
use meshgate_client::{Client, Event, Session};
use meshgate_firmware::net;
use panic_semihosting as _;

const DEVICE: &str = "mps2-net-2";
/// Events to deliver.
const TOTAL: u32 = 16;
/// Publishes in flight at most (the client's outbox slots).
const WINDOW: usize = 4;

type NetSession<'a> = Session<'a, TcpSocket<'a>, WINDOW>;

/// Publishes event number `n` (id `mps2-net-2-{n}`, data `{"seq":n}`).
async fn publish(session: &mut NetSession<'_>, n: u32) -> Result<(), ()> {
    let mut id = [0u8; 24];
    let id = EventIds::new(DEVICE, n - 1).next(&mut id).map_err(|_| ())?;
    let mut data = heapless::String::<24>::new();
    write!(data, "{{\"seq\":{n}}}").map_err(|_| ())?;
    let attrs = EventAttributes {
        id,
        source: "/devices/mps2-net-2",
        ty: "com.example.counter",
        subject: None,
        time: None,
        datacontenttype: Some("application/json"),
        extensions: &[],
    };
    let topic = "devices/mps2-net-2/events/counter";
    session.publish_event(topic, QoS::AtLeastOnce, &attrs, EventData::Json(&data)).await.map(|_| ()).map_err(|_| ())
}

/// Opens the connection, retrying every 250 ms for up to 30 s while the gateway is away.
async fn reopen(session: &mut NetSession<'_>, gateway: IpEndpoint, connect: &Connect<'_>) -> Result<(), &'static str> {
    for _ in 0..120 {
        if session.open(gateway, connect).await.is_ok() {
            return Ok(());
        }
        Timer::after_millis(250).await;
    }
    Err("the gateway did not come back")
}

#[cortex_m_rt::entry]
fn main() -> ! {
    let mut resources = StackResources::<2>::new();
    let (stack, runner) = net::stack(&mut resources);
    let (mut socket_rx, mut socket_tx) = ([0u8; 2048], [0u8; 2048]);
    let mut socket = TcpSocket::new(stack, &mut socket_rx, &mut socket_tx);
    socket.set_timeout(Some(Duration::from_secs(10)));
    let (mut outbox, mut rx, mut tx) = ([0u8; 1024], [0u8; 512], [0u8; 512]);
    let client: Client<'_, WINDOW> = Client::new(Version::V5, &mut outbox);
    let mut session = Session::new(socket, client, &mut rx, &mut tx);
    let gateway = net::gateway();
    net::run(runner, Duration::from_secs(60), async {
        let properties = Properties { session_expiry_interval: Some(3600), ..Properties::default() };
        let connect = Connect {
            version: Version::V5,
            clean_start: false,
            keep_alive: 10,
            client_id: DEVICE,
            properties,
            ..Connect::default()
        };
        reopen(&mut session, gateway, &connect).await?;
        hprintln!("connected to {}", gateway);
        let (mut published, mut acknowledged, mut reconnects, mut resent) = (0u32, 0u32, 0u32, 0usize);
        while acknowledged < TOTAL {
            let in_flight = session.client().in_flight();
            let step = if published < TOTAL && in_flight < WINDOW {
                Timer::after_millis(100).await;
                let sent = publish(&mut session, published + 1).await;
                // Kept by the client (and so resent if need be) even when the connection broke under it.
                if session.client().in_flight() > in_flight {
                    published += 1;
                }
                sent
            } else {
                match session.receive().await {
                    Ok(Event::Acknowledged { .. }) => {
                        acknowledged += 1;
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(_) => Err(()),
                }
            };
            if step.is_err() {
                let unacknowledged = session.client().in_flight();
                hprintln!("connection lost with {} unacknowledged; reconnecting", unacknowledged);
                reopen(&mut session, gateway, &connect).await?;
                reconnects += 1;
                resent += unacknowledged;
                hprintln!("reconnected; {} resent", unacknowledged);
            }
        }
        hprintln!("{} events acknowledged after {} reconnections, {} resent", TOTAL, reconnects, resent);
        session.disconnect().await.map_err(|_| "disconnect")
    })
}
