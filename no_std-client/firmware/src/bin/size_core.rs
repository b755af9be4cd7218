//! One CloudEvent through the sans-IO client, for the size report (`minimal`): MQTT 5 by default, 3.1.1 with `--no-default-features`.
#![no_std]
#![no_main]

use panic_semihosting as _;

#[cortex_m_rt::entry]
fn main() -> ! {
    if let Some(p) = cortex_m::Peripherals::take() {
        meshgate_firmware::time::start(p.SYST);
    }
    let uart = meshgate_firmware::uart::Uart::uart0();
    meshgate_firmware::exit(embassy_futures::block_on(meshgate_firmware::minimal::core_publish::<true>(uart)))
}
