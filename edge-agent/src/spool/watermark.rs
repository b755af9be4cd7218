//! Appends resolved by a watermark: each append takes a [`Ticket`] (its place in the writer's queue), and after
//! every commit the writer publishes the highest ticket whose outcome is known. Whoever waits for appends compares
//! its tickets with that one number: one wake-up per commit for a connection with many appends in flight, no
//! channel per append.
//!
//! Commits succeed far more often than they fail, so failures are kept apart: the ticket ranges of the last
//! [`FAILURES_KEPT`] failed commits. An older failure is forgotten, and any ticket at or below the newest forgotten
//! one that is no longer found is answered as failed: a device is then asked to send again (at least once holds),
//! never told a lost message was stored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::{Shared, SpoolError};

/// Failed commits remembered by ticket range.
const FAILURES_KEPT: usize = 256;

/// An append's place in the writer's queue: tickets increase in the order appends enter it, and the writer commits
/// in that order. Resolve one with [`Durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub(super) u64);

/// The writer's side: the highest resolved ticket and the failures.
pub(super) struct Outcomes {
    resolved: watch::Sender<u64>,
    failures: Mutex<Failures>,
    /// The writer has ended: what it did not resolve never will be.
    closed: AtomicBool,
    /// A commit has failed since the spool opened: until then no outcome needs to look at `failures` (and take
    /// its lock).
    any_failed: AtomicBool,
}

#[derive(Default)]
struct Failures {
    /// `(first, last, error)` of recent failed commits, oldest first.
    ranges: VecDeque<(u64, u64, SpoolError)>,
    /// The last ticket of the newest failure no longer in `ranges`.
    forgotten_through: u64,
}

impl Outcomes {
    pub(super) fn new() -> Outcomes {
        Outcomes {
            resolved: watch::channel(0).0,
            failures: Mutex::default(),
            closed: AtomicBool::new(false),
            any_failed: AtomicBool::new(false),
        }
    }

    /// The writer ended; wakes every waiter.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.resolved.send_modify(|_| {});
    }

    fn failures(&self) -> MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every ticket up to `last` is durable, except those of recorded failures.
    pub(super) fn committed(&self, last: Ticket) {
        self.resolved.send_replace(last.0);
    }

    /// The outcome of `ticket` when the writer had resolved every ticket up to `resolved`.
    fn outcome(&self, ticket: Ticket, resolved: u64) -> Option<Result<(), SpoolError>> {
        if ticket.0 > resolved {
            return self.closed.load(Ordering::Acquire).then_some(Err(SpoolError::Stopped));
        }
        if !self.any_failed.load(Ordering::Acquire) {
            return Some(Ok(()));
        }
        let failures = self.failures();
        if let Some((_, _, e)) = failures.ranges.iter().find(|(first, last, _)| (*first..=*last).contains(&ticket.0)) {
            return Some(Err(e.clone()));
        }
        if ticket.0 <= failures.forgotten_through && failures.ranges.front().is_none_or(|(f, _, _)| ticket.0 < *f) {
            return Some(Err(SpoolError::Io("the outcome of this append is no longer known".into())));
        }
        Some(Ok(()))
    }

    /// The tickets `first..=last` could not be stored.
    pub(super) fn failed(&self, first: Ticket, last: Ticket, error: SpoolError) {
        {
            let mut failures = self.failures();
            if failures.ranges.len() == FAILURES_KEPT
                && let Some((_, forgotten, _)) = failures.ranges.pop_front()
            {
                failures.forgotten_through = forgotten;
            }
            failures.ranges.push_back((first.0, last.0, error));
        }
        self.any_failed.store(true, Ordering::Release);
        self.resolved.send_replace(last.0);
    }
}

/// A watch on the spool's appends: tells whether a [`Ticket`] is durable, and waits for the writer to move. One per
/// waiter (a connection), cheap to create.
pub struct Durable {
    shared: Arc<Shared>,
    resolved: watch::Receiver<u64>,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable").field("resolved", &*self.resolved.borrow()).finish()
    }
}

impl Clone for Durable {
    fn clone(&self) -> Self {
        Durable::new(Arc::clone(&self.shared))
    }
}

impl Durable {
    pub(super) fn new(shared: Arc<Shared>) -> Durable {
        let resolved = shared.outcomes.resolved.subscribe();
        Durable { shared, resolved }
    }

    /// The outcome of `ticket` if the writer has reached it: `Ok` once durable, the error if its commit failed.
    /// When the writer is gone, whatever it did not reach is [`SpoolError::Stopped`].
    pub fn outcome(&self, ticket: Ticket) -> Option<Result<(), SpoolError>> {
        let resolved = *self.resolved.borrow();
        self.shared.outcomes.outcome(ticket, resolved)
    }

    /// Waits until the writer resolves more appends or ends (returns at once if it did since the last call).
    pub async fn changed(&mut self) {
        // The sender lives in the shared state this watch holds: the channel never closes.
        let _ = self.resolved.changed().await;
    }

    /// Waits for the outcome of `ticket`.
    pub async fn wait(&mut self, ticket: Ticket) -> Result<(), SpoolError> {
        loop {
            if let Some(outcome) = self.outcome(ticket) {
                return outcome;
            }
            self.changed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(outcomes: &Outcomes, ticket: u64) -> Option<Result<(), SpoolError>> {
        outcomes.outcome(Ticket(ticket), *outcomes.resolved.borrow())
    }

    #[test]
    fn tickets_resolve_by_the_watermark_and_a_failed_commit_stays_failed() {
        let outcomes = Outcomes::new();
        assert_eq!(at(&outcomes, 1), None, "nothing committed yet");
        outcomes.committed(Ticket(3));
        assert_eq!(at(&outcomes, 3), Some(Ok(())));
        assert_eq!(at(&outcomes, 4), None);
        let disk_full = SpoolError::Io("no space".into());
        outcomes.failed(Ticket(4), Ticket(6), disk_full.clone());
        outcomes.committed(Ticket(9));
        assert_eq!(at(&outcomes, 2), Some(Ok(())));
        assert_eq!(at(&outcomes, 5), Some(Err(disk_full)), "a later commit does not make a failed one durable");
        assert_eq!(at(&outcomes, 7), Some(Ok(())));
        outcomes.close();
        assert_eq!(at(&outcomes, 10), Some(Err(SpoolError::Stopped)), "what the writer never reached is refused");
    }

    #[test]
    fn a_forgotten_failure_is_answered_as_failed_never_as_durable() {
        let outcomes = Outcomes::new();
        for n in 0..=FAILURES_KEPT as u64 {
            outcomes.failed(Ticket(2 * n + 1), Ticket(2 * n + 1), SpoolError::Io("io".into()));
            outcomes.committed(Ticket(2 * n + 2));
        }
        let unknown = SpoolError::Io("the outcome of this append is no longer known".into());
        assert_eq!(at(&outcomes, 1), Some(Err(unknown)));
        assert_eq!(at(&outcomes, 2), Some(Ok(())), "past the newest forgotten failure, outcomes are exact");
        let newest = 2 * FAILURES_KEPT as u64 + 2;
        assert_eq!(at(&outcomes, newest), Some(Ok(())));
        assert!(matches!(at(&outcomes, newest - 1), Some(Err(_))));
    }
}
