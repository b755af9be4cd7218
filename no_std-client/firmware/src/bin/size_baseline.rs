//! The minimal publish firmware without the client (the same startup, UART, time driver and exit), the size
//! report's baseline (`minimal`).
#![no_std]
#![no_main]

use panic_semihosting as _;

#[cortex_m_rt::entry]
fn main() -> ! {
    let uart = meshgate_firmware::board();
    meshgate_firmware::exit(embassy_futures::block_on(meshgate_firmware::minimal::baseline(uart)))
}
