//! Two embassy-net stacks joined in memory: a pair of IP-medium drivers whose frames go through bounded queues,
//! so a device's real `TcpSocket` path (smoltcp's TCP, the stack's runner, embassy-time) runs inside `cargo test`.
//! A full queue drops the frame, as a congested link does; TCP retransmits it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use embassy_net_driver::{Capabilities, Driver, HardwareAddress, LinkState, RxToken, TxToken};

/// Frames in flight in one direction.
const QUEUE_FRAMES: usize = 64;
/// The link's IP MTU.
const MTU: usize = 1500;

#[derive(Default)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    /// The receiving end's runner, waiting for a frame.
    waker: Option<Waker>,
}

type Shared = Arc<Mutex<Queue>>;

/// One end of the link, an embassy-net `Driver`.
pub struct LinkEnd {
    rx: Shared,
    tx: Shared,
}

/// A link: the two ends, each to be given to its own stack.
pub fn link() -> (LinkEnd, LinkEnd) {
    let (a, b) = (Shared::default(), Shared::default());
    (LinkEnd { rx: a.clone(), tx: b.clone() }, LinkEnd { rx: b, tx: a })
}

/// A received frame.
pub struct Rx(Vec<u8>);

/// Room to send one frame into the peer's queue.
pub struct Tx(Shared);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, f: F) -> R {
        f(&mut self.0)
    }
}

impl TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        let mut queue = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queue.frames.len() < QUEUE_FRAMES {
            queue.frames.push_back(frame);
        }
        if let Some(waker) = queue.waker.take() {
            waker.wake();
        }
        result
    }
}

impl Driver for LinkEnd {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(Rx, Tx)> {
        let mut queue = self.rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match queue.frames.pop_front() {
            Some(frame) => Some((Rx(frame), Tx(self.tx.clone()))),
            None => {
                queue.waker = Some(cx.waker().clone());
                None
            }
        }
    }

    fn transmit(&mut self, _cx: &mut Context<'_>) -> Option<Tx> {
        Some(Tx(self.tx.clone()))
    }

    fn link_state(&mut self, _cx: &mut Context<'_>) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ip
    }
}
