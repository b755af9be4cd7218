//! The board on QEMU's user network: the LAN9118 under embassy-net with the static address QEMU's user network
//! expects (10.0.2.15/24, router 10.0.2.2), the gateway's endpoint from the semihosting command line, and the
//! loop that runs the network and one application future to a pass or fail exit.

use core::future::Future;

use cortex_m_semihosting::hprintln;
use embassy_futures::select::{Either, select};
use embassy_net::{Config, IpEndpoint, Ipv4Address, Ipv4Cidr, Runner, Stack, StackResources, StaticConfigV4};
use embassy_time::{Duration, with_timeout};

use crate::lan9118::Lan9118;

/// The host, as QEMU's user network shows it to the board.
pub const HOST: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);

/// The gateway: 10.0.2.2 at `port=N` from the semihosting command line (1883 without one), which QEMU's user
/// network forwards to the host's 127.0.0.1:N.
pub fn gateway() -> IpEndpoint {
    let port = crate::semihosting_arg("port").and_then(|p| p.parse().ok()).unwrap_or(1883u16);
    IpEndpoint::new(HOST.into(), port)
}

/// Brings the controller up and makes the stack on it; exits with a failure when there is no controller.
pub fn stack<const SOCKETS: usize>(resources: &mut StackResources<SOCKETS>) -> (Stack<'_>, Runner<'_, Lan9118>) {
    if let Some(p) = cortex_m::Peripherals::take() {
        crate::time::start(p.SYST);
    }
    let driver = match Lan9118::new() {
        Ok(driver) => driver,
        Err(e) => {
            hprintln!("failed: LAN9118 {:?}", e);
            crate::exit(false)
        }
    };
    let config = Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(Ipv4Address::new(10, 0, 2, 15), 24),
        gateway: Some(HOST),
        dns_servers: Default::default(),
    });
    embassy_net::new(driver, config, resources, 0x6d65_7368)
}

/// Runs the network and `app` on the sleeping executor until `app` ends or `limit` passes, then exits: 0 when
/// `app` succeeded, 1 (after printing the failed step) otherwise.
pub fn run(mut runner: Runner<'_, Lan9118>, limit: Duration, app: impl Future<Output = Result<(), &'static str>>) -> ! {
    let outcome = crate::executor::block_on(select(runner.run(), with_timeout(limit, app)));
    let ok = match outcome {
        Either::First(never) => match never {},
        Either::Second(Ok(Ok(()))) => true,
        Either::Second(Ok(Err(step))) => {
            hprintln!("failed: {}", step);
            false
        }
        Either::Second(Err(_)) => {
            hprintln!("failed: timed out");
            false
        }
    };
    crate::exit(ok)
}
