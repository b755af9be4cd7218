//! An embassy-time driver on SysTick: a 1 ms tick counted in the exception handler, which also wakes the timers
//! that expired (a bounded queue of 16). Nothing spins: between events the core sleeps in [`crate::executor`].

use core::cell::RefCell;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::Waker;

use cortex_m::interrupt::Mutex;
use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use embassy_time_queue_utils::queue_generic::ConstGenericQueue;

/// mps2-an386's CPU clock, which SysTick counts.
const CPU_HZ: u32 = 25_000_000;

/// Milliseconds since start; wraps after 49 days (a device's driver would keep 64 bits).
static MILLIS: AtomicU32 = AtomicU32::new(0);

static TIMERS: Mutex<RefCell<ConstGenericQueue<16>>> = Mutex::new(RefCell::new(ConstGenericQueue::new()));

/// Starts the 1 ms tick.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CPU_HZ / 1000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

fn now_ticks() -> u64 {
    u64::from(MILLIS.load(Ordering::Relaxed)) * (embassy_time_driver::TICK_HZ / 1000)
}

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
    let now = now_ticks();
    cortex_m::interrupt::free(|cs| {
        let _ = TIMERS.borrow(cs).borrow_mut().next_expiration(now);
    });
}

struct SysTickDriver;

impl embassy_time_driver::Driver for SysTickDriver {
    fn now(&self) -> u64 {
        now_ticks()
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        if at <= now_ticks() {
            waker.wake_by_ref();
            return;
        }
        cortex_m::interrupt::free(|cs| {
            let _ = TIMERS.borrow(cs).borrow_mut().schedule_wake(at, waker);
        });
    }
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver);
