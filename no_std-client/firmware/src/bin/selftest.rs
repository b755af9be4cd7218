//! Runs every scenario of `meshgate_client::selftest` on the target and exits through semihosting with 0 when
//! all pass, 1 when one fails (a panic exits with 1 too).
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use meshgate_client::selftest::SCENARIOS;
use panic_semihosting as _;

#[entry]
fn main() -> ! {
    let mut failed = 0;
    for (name, run) in SCENARIOS {
        match run() {
            Ok(()) => hprintln!("ok   {}", name),
            Err(failure) => {
                failed += 1;
                hprintln!("FAIL {}: {}", name, failure);
            }
        }
    }
    hprintln!("{} scenarios, {} failed (qos2: {})", SCENARIOS.len(), failed, cfg!(feature = "qos2"));
    // The client's own RAM on this target (its buffers are the application's).
    hprintln!("size_of Client<'_, 4>: {} bytes", core::mem::size_of::<meshgate_client::Client<'static, 4>>());
    meshgate_firmware::exit(failed == 0)
}
