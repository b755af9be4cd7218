//! The CMSDK APB UART of the mps2 boards (UART0 at `0x4000_4000`), polled, as an `embedded_io_async` byte stream.
//!
//! Registers (ARM DDI 0479): `DATA` (+0x00), `STATE` (+0x04: bit 0 TX buffer full, bit 1 RX buffer full), `CTRL`
//! (+0x08: bit 0 TX enable, bit 1 RX enable), `BAUDDIV` (+0x10, at least 16). QEMU holds one received byte at a
//! time and stops reading its backend while it is unread, so nothing is lost when the firmware is slow.

use core::convert::Infallible;
use core::future::poll_fn;
use core::task::Poll;

const UART0: usize = 0x4000_4000;
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const TX_FULL: u32 = 1 << 0;
const RX_FULL: u32 = 1 << 1;
const TX_ENABLE: u32 = 1 << 0;
const RX_ENABLE: u32 = 1 << 1;

/// UART0, enabled for sending and receiving.
pub struct Uart {
    base: usize,
}

impl Uart {
    /// Takes UART0 and enables it. Call once: two handles would interleave bytes.
    pub fn uart0() -> Self {
        let uart = Uart { base: UART0 };
        uart.write_reg(BAUDDIV, 16);
        uart.write_reg(CTRL, TX_ENABLE | RX_ENABLE);
        uart
    }

    fn read_reg(&self, offset: usize) -> u32 {
        // SAFETY: `base + offset` is a register of the UART, a valid, aligned MMIO word on this board.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn write_reg(&self, offset: usize, value: u32) {
        // SAFETY: as in `read_reg`; writing these registers has no effect beyond the UART.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }
}

impl embedded_io_async::ErrorType for Uart {
    type Error = Infallible;
}

impl embedded_io_async::Read for Uart {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        poll_fn(|cx| {
            let mut n = 0;
            for slot in buf.iter_mut() {
                if self.read_reg(STATE) & RX_FULL == 0 {
                    break;
                }
                *slot = self.read_reg(DATA) as u8;
                n += 1;
            }
            if n > 0 {
                Poll::Ready(Ok(n))
            } else {
                // Polled: no interrupt wakes this task, so ask to be polled again.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await
    }
}

impl embedded_io_async::Write for Uart {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &byte in buf {
            while self.read_reg(STATE) & TX_FULL != 0 {}
            self.write_reg(DATA, u32::from(byte));
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        // Each byte is in the UART when `write` returns.
        Ok(())
    }
}
