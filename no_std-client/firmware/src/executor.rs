//! A one-future executor that sleeps: it polls when woken and otherwise waits in WFI, so the core (and the host
//! CPU under QEMU, where WFE does nothing) idles between interrupts. Wakers set a flag; any interrupt (SysTick,
//! the Ethernet controller, the UART) ends the WFI, and the flag says whether to poll.

use core::future::Future;
use core::pin::pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

static WOKEN: AtomicBool = AtomicBool::new(true);

fn raw() -> RawWaker {
    RawWaker::new(core::ptr::null(), &VTABLE)
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(|_| raw(), wake, wake, |_| {});

fn wake(_: *const ()) {
    WOKEN.store(true, Ordering::Release);
}

/// Runs `future` to completion.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    // SAFETY: the vtable's functions ignore the data pointer, which is null; the waker is 'static in effect.
    let waker = unsafe { Waker::from_raw(raw()) };
    let mut cx = Context::from_waker(&waker);
    loop {
        if WOKEN.swap(false, Ordering::AcqRel) {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
        } else {
            // An interrupt between the swap and here still ends the WFI (its pending bit is set).
            cortex_m::asm::wfi();
        }
    }
}
