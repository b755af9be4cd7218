//! An `embassy-net-driver` for the SMSC LAN9118 Ethernet controller of the mps2 boards, as QEMU models it
//! (`hw/net/lan9118.c`; facts in `../shared/reference/qemu-network.md`): MMIO at `0x4020_0000`, frames through
//! the TX/RX data FIFOs as little-endian words. The receiver is polled by embassy-net and woken by the controller's
//! RX interrupt (NVIC line 13): with no frame waiting it arms the interrupt and parks its waker; the interrupt
//! masks itself and wakes the stack, so the core sleeps until a frame arrives or a timer is due.
//!
//! `unsafe` is confined to the register accessors (and the signature cortex-m-rt demands of the interrupt handler).

use core::sync::atomic::{AtomicU32, Ordering};
use core::task::Context;

use embassy_net_driver::{Capabilities, Driver, HardwareAddress, LinkState, RxToken, TxToken};
use embassy_sync::waitqueue::AtomicWaker;

const BASE: usize = 0x4020_0000;
const RX_DATA: usize = 0x00;
const TX_DATA: usize = 0x20;
const RX_STATUS: usize = 0x40;
const TX_STATUS: usize = 0x48;
const ID_REV: usize = 0x50;
const IRQ_CFG: usize = 0x54;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5C;
const BYTE_TEST: usize = 0x64;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7C;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const MAC_CSR_CMD: usize = 0xA4;
const MAC_CSR_DATA: usize = 0xA8;
const MAC_CR: u32 = 1;
const ADDRH: u32 = 2;
const ADDRL: u32 = 3;
/// The largest Ethernet frame without FCS.
const MTU: usize = 1514;
/// INT_STS/INT_EN: a status word entered the RX status FIFO (QEMU sets it on every frame; write 1 to clear).
const RSFL: u32 = 1 << 3;
/// The controller's line on the NVIC (mps2-an386).
const IRQ: u16 = 13;
/// NVIC Interrupt Set-Enable Register 0 (lines 0 to 31).
const NVIC_ISER0: usize = 0xE000_E100;

/// The receiver's waker, woken by the RX interrupt.
static RX_WAKER: AtomicWaker = AtomicWaker::new();
/// RX interrupts taken since start.
static RX_INTERRUPTS: AtomicU32 = AtomicU32::new(0);

/// How many RX interrupts woke the receiver since start.
pub fn rx_interrupts() -> u32 {
    RX_INTERRUPTS.load(Ordering::Relaxed)
}

/// Why the controller did not come up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// BYTE_TEST did not read 0x8765_4321: no LAN9118 here.
    NotFound,
    /// The soft reset or the power-management ready bit never completed.
    Timeout,
}

fn read(offset: usize) -> u32 {
    // SAFETY: BASE + offset is one of the LAN9118 registers listed above, an aligned 32-bit MMIO word that QEMU
    // implements for mps2-an386; reading it has no effect beyond the controller.
    unsafe { core::ptr::read_volatile((BASE + offset) as *const u32) }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((BASE + offset) as *mut u32, value) }
}

/// Enables the controller's line in the NVIC.
fn nvic_enable() {
    // SAFETY: NVIC_ISER0 is the architectural set-enable register of every Cortex-M; writing a 1 bit enables only
    // that line, and the handler for line 13 (`DefaultHandler` below) touches nothing but the controller and the
    // waker, both safe from interrupt context.
    unsafe { core::ptr::write_volatile(NVIC_ISER0 as *mut u32, 1 << IRQ) }
}

/// The controller's interrupt: masks it (QEMU keeps the status bit set until it is cleared) and wakes the receiver,
/// which clears the bit and re-arms it once the FIFO is empty.
fn on_interrupt() {
    write(INT_EN, 0);
    RX_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    RX_WAKER.wake();
}

/// Every device interrupt lands here (the board has no PAC vector table); only the controller's is expected.
#[cortex_m_rt::exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == IRQ as i16 {
        on_interrupt();
    } else {
        // Nothing else is enabled: a stray interrupt means the firmware is broken; fail the run.
        crate::exit(false);
    }
}

fn wait_until(mut done: impl FnMut() -> bool) -> Result<(), InitError> {
    for _ in 0..1_000_000 {
        if done() {
            return Ok(());
        }
    }
    Err(InitError::Timeout)
}

fn mac_csr(index: u32, value: Option<u32>) -> Result<u32, InitError> {
    wait_until(|| read(MAC_CSR_CMD) & (1 << 31) == 0)?;
    match value {
        Some(v) => {
            write(MAC_CSR_DATA, v);
            write(MAC_CSR_CMD, (1 << 31) | index);
        }
        None => write(MAC_CSR_CMD, (1 << 31) | (1 << 30) | index),
    }
    wait_until(|| read(MAC_CSR_CMD) & (1 << 31) == 0)?;
    Ok(read(MAC_CSR_DATA))
}

/// The controller, brought up.
pub struct Lan9118 {
    mac: [u8; 6],
}

impl Lan9118 {
    /// Resets and starts the controller: TX and RX on, full duplex, the interrupt line configured (`IRQ_CFG`:
    /// after reset QEMU holds the line asserted until it is set) and enabled in the NVIC; the RX interrupt itself
    /// is armed by the receiver when it runs out of frames.
    pub fn new() -> Result<Self, InitError> {
        if read(BYTE_TEST) != 0x8765_4321 || read(ID_REV) >> 16 != 0x0118 {
            return Err(InitError::NotFound);
        }
        write(HW_CFG, 1);
        wait_until(|| read(HW_CFG) & 1 == 0)?;
        wait_until(|| read(PMT_CTRL) & 1 != 0)?;
        let low = mac_csr(ADDRL, None)?.to_le_bytes();
        let high = mac_csr(ADDRH, None)?.to_le_bytes();
        let mac = [low[0], low[1], low[2], low[3], high[0], high[1]];
        write(TX_CFG, 0x6);
        mac_csr(MAC_CR, Some((1 << 20) | (1 << 3) | (1 << 2)))?;
        write(INT_STS, u32::MAX);
        write(INT_EN, 0);
        write(IRQ_CFG, 0x111);
        nvic_enable();
        Ok(Lan9118 { mac })
    }
}

/// A received frame, already read out of the FIFO.
pub struct Rx {
    frame: [u8; MTU],
    len: usize,
}

/// Room to send one frame.
pub struct Tx;

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, f: F) -> R {
        f(&mut self.frame[..self.len])
    }
}

impl TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = [0u8; MTU];
        let len = len.min(MTU);
        let result = f(&mut frame[..len]);
        // Command A: first and last segment, this many bytes; command B: the packet length.
        write(TX_DATA, (1 << 13) | (1 << 12) | len as u32);
        write(TX_DATA, len as u32);
        for word in frame[..len].chunks(4) {
            let mut bytes = [0u8; 4];
            bytes[..word.len()].copy_from_slice(word);
            write(TX_DATA, u32::from_le_bytes(bytes));
        }
        // Drain the TX status FIFO so it never fills.
        while (read(TX_FIFO_INF) >> 16) & 0xff != 0 {
            let _ = read(TX_STATUS);
        }
        result
    }
}

impl Driver for Lan9118 {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(Rx, Tx)> {
        // Arrivals so far are looked at now; one after this sets the bit again.
        write(INT_STS, RSFL);
        if (read(RX_FIFO_INF) >> 16) & 0xff == 0 {
            RX_WAKER.register(cx.waker());
            // Fires at once if a frame arrived since the bit was cleared.
            write(INT_EN, RSFL);
            return None;
        }
        let status = read(RX_STATUS);
        let len = ((status >> 16) & 0x3fff) as usize;
        let mut rx = Rx { frame: [0u8; MTU], len: len.saturating_sub(4).min(MTU) };
        for i in 0..len.div_ceil(4) {
            let word = read(RX_DATA).to_le_bytes();
            for (k, byte) in word.into_iter().enumerate() {
                if let Some(slot) = rx.frame.get_mut(i * 4 + k) {
                    *slot = byte;
                }
            }
        }
        if status & (1 << 15) != 0 {
            // An errored frame: dropped, and the next one is looked at when polled again.
            cx.waker().wake_by_ref();
            return None;
        }
        Some((rx, Tx))
    }

    fn transmit(&mut self, _cx: &mut Context<'_>) -> Option<Tx> {
        Some(Tx)
    }

    fn link_state(&mut self, _cx: &mut Context<'_>) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        // About the RX FIFO's 10.5 KB: a one-frame burst makes smoltcp advertise a one-segment window.
        caps.max_burst_size = Some(6);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
