//! One CloudEvent through the async session, for the size report (`minimal`): MQTT 5 by default, 3.1.1 with
//! `--no-default-features`.
#![no_std]
#![no_main]

use panic_semihosting as _;

meshgate_firmware::size_firmware!(uart, meshgate_firmware::minimal::session_event);
