//! One CloudEvent through the async session, for the size report (`minimal`): MQTT 5 by default, 3.1.1 with `--no-default-features`.
#![no_std]
#![no_main]

use meshgate_firmware::minimal::Buffers;
use panic_semihosting as _;

#[cortex_m_rt::entry]
fn main() -> ! {
    static mut OUTBOX: [u8; 512] = [0; 512];
    static mut RX: [u8; 256] = [0; 256];
    static mut TX: [u8; 512] = [0; 512];
    static mut JSON: [u8; 256] = [0; 256];
    let buffers = Buffers { outbox: OUTBOX, rx: RX, tx: TX, json: JSON };
    if let Some(p) = cortex_m::Peripherals::take() {
        meshgate_firmware::time::start(p.SYST);
    }
    let uart = meshgate_firmware::uart::Uart::uart0();
    meshgate_firmware::exit(embassy_futures::block_on(meshgate_firmware::minimal::session_event(uart, buffers)))
}
