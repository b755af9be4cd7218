//! The minimal publish firmware without the client (the same startup, UART, time driver and exit), the size
//! report's baseline (`minimal`).
#![no_std]
#![no_main]

use panic_semihosting as _;

#[cortex_m_rt::entry]
fn main() -> ! {
    if let Some(p) = cortex_m::Peripherals::take() {
        meshgate_firmware::time::start(p.SYST);
    }
    let uart = meshgate_firmware::uart::Uart::uart0();
    meshgate_firmware::exit(embassy_futures::block_on(meshgate_firmware::minimal::baseline(uart)))
}
