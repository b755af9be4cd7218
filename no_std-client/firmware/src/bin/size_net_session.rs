//! One CloudEvent through the async session over a TCP connection on the board's Ethernet, for the size report
//! (`minimal`): MQTT 5 by default, 3.1.1 with `--no-default-features`. Its baseline is `size_net_baseline`.
#![no_std]
#![no_main]

use panic_semihosting as _;

meshgate_firmware::size_firmware!(ethernet, meshgate_firmware::minimal::session_event_tcp);
