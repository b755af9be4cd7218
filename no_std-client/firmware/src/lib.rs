//! Board support for running `meshgate-client` on QEMU's `mps2-an386` (Cortex-M4F): the CMSDK UART as an
//! `embedded_io_async` transport, the LAN9118 Ethernet controller under embassy-net, an embassy-time driver on
//! SysTick, a sleeping executor, and the semihosting exit that makes a firmware run pass or fail.
//!
//! QEMU connects the board's first UART to whatever `-serial` names; `-serial tcp:127.0.0.1:1883` makes it a TCP
//! connection to an MQTT server, so the client's bytes reach a real gateway without a network stack on the board.
#![no_std]

pub mod executor;
pub mod lan9118;
pub mod minimal;
pub mod net;
pub mod time;
pub mod uart;

use cortex_m_semihosting::debug;

/// Starts the board: the 1 ms SysTick that embassy-time reads, and UART0.
pub fn board() -> uart::Uart {
    if let Some(p) = cortex_m::Peripherals::take() {
        time::start(p.SYST);
    }
    uart::Uart::uart0()
}

/// The value of `name=VALUE` on the semihosting command line (QEMU's `-semihosting-config ...,arg=name=VALUE`).
pub fn semihosting_arg(name: &str) -> Option<heapless::String<16>> {
    let mut buf = [0u8; 128];
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: SYS_GET_CMDLINE writes at most `block[1]` bytes into `buf` and the length into `block[1]`; both
    // live across the call.
    let failed =
        unsafe { cortex_m_semihosting::syscall1(cortex_m_semihosting::nr::GET_CMDLINE, block.as_mut_ptr() as usize) };
    if failed != 0 {
        return None;
    }
    let line = core::str::from_utf8(buf.get(..block[1])?).ok()?;
    let value = line.split(' ').find_map(|arg| arg.strip_prefix(name)?.strip_prefix('='))?;
    heapless::String::try_from(value).ok()
}

/// Ends the QEMU run with exit code 0 (`ok`) or 1.
pub fn exit(ok: bool) -> ! {
    debug::exit(if ok { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE });
    // Only reached without a debugger or emulator to exit to.
    loop {
        cortex_m::asm::wfi();
    }
}
