//! The Ethernet size build without the client (the same network bring-up, TCP connection, time driver, executor
//! and exit), the baseline of `size_net_session` in the size report (`minimal`).
#![no_std]
#![no_main]

use panic_semihosting as _;

#[cortex_m_rt::entry]
fn main() -> ! {
    static mut RESOURCES: embassy_net::StackResources<1> = embassy_net::StackResources::new();
    static mut SOCKET_RX: [u8; 1024] = [0; 1024];
    static mut SOCKET_TX: [u8; 1024] = [0; 1024];
    meshgate_firmware::minimal::over_ethernet(RESOURCES, SOCKET_RX, SOCKET_TX, (), |socket, ()| {
        meshgate_firmware::minimal::baseline(socket)
    })
}
