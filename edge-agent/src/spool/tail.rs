//! The spool's in-memory tail: the newest committed records, as the writer had them, so an uplink reader that
//! keeps up takes them from memory instead of reading back what was just written. Bounded in bytes
//! ([`super::SpoolConfig::memory_tail_bytes`]): the oldest records leave first, and a reader that has fallen behind
//! them (or starts after a restart) reads the segment files as before, then finds the tail again once it caught up.
//!
//! The tail holds every id of a commit, in order, with no gaps: records only for in-process consumers (and
//! companions) stand as empty places, which uplink readers pass over as they pass over them on disk.

use std::collections::VecDeque;
use std::sync::Arc;

use super::StoredRecord;

/// Committed records, newest last (see the module doc).
#[derive(Debug, Default)]
pub(super) struct Tail {
    /// `(id, record)`; `None` where the record is not for uplinks.
    records: VecDeque<(u64, Option<Arc<StoredRecord>>)>,
    bytes: usize,
    max_bytes: usize,
}

impl Tail {
    pub(super) fn new(max_bytes: usize) -> Tail {
        Tail { records: VecDeque::new(), bytes: 0, max_bytes }
    }

    /// Whether the tail keeps anything (`spool.memory_tail_bytes` is not 0).
    pub(super) fn is_enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// Appends a committed record (ids increase by one from the last), dropping the oldest past the bound.
    pub(super) fn push(&mut self, id: u64, record: Option<Arc<StoredRecord>>) {
        if !self.is_enabled() {
            return;
        }
        if self.records.back().is_some_and(|(last, _)| *last + 1 != id) {
            // Ids the writer skipped (recovery's quarantine): the tail starts again, without a gap in it.
            self.clear();
        }
        self.bytes += record.as_ref().map_or(16, |r| r.size_hint());
        self.records.push_back((id, record));
        while self.bytes > self.max_bytes {
            let Some((_, old)) = self.records.pop_front() else { break };
            self.bytes = self.bytes.saturating_sub(old.as_ref().map_or(16, |r| r.size_hint()));
        }
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// Up to `max` records for uplinks from id `next` on, with their ids, into `out`; returns the id after the
    /// last one looked at (`next` itself when the reader is at the end: nothing newer yet), or `None` when the
    /// tail does not reach back to `next`, or is empty.
    pub(super) fn read(&self, next: u64, max: usize, out: &mut Vec<(u64, Arc<StoredRecord>)>) -> Option<u64> {
        let first = self.records.front()?.0;
        let start = usize::try_from(next.checked_sub(first)?).ok()?;
        if start > self.records.len() {
            return None;
        }
        let mut after = next;
        for (id, record) in self.records.iter().skip(start) {
            if out.len() >= max {
                break;
            }
            if let Some(record) = record {
                out.push((*id, Arc::clone(record)));
            }
            after = id + 1;
        }
        Some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CloudEvent;
    use crate::pipeline::Route;

    fn record(n: u64) -> Arc<StoredRecord> {
        let event = CloudEvent { id: format!("e{n}"), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() };
        Arc::new(StoredRecord::new(event, &Route::All))
    }

    #[test]
    fn a_reader_finds_what_the_tail_holds_and_nothing_older_or_newer() {
        let mut tail = Tail::new(usize::MAX);
        for id in 5..=9 {
            tail.push(id, (id != 7).then(|| record(id)));
        }
        let mut out = Vec::new();
        assert_eq!(tail.read(4, 10, &mut out), None, "older than the tail: from disk");
        assert_eq!(tail.read(10, 10, &mut out), Some(10), "at the end: nothing newer yet");
        assert!(out.is_empty());
        assert_eq!(tail.read(11, 10, &mut out), None, "beyond what the tail knows");
        assert_eq!(tail.read(6, 2, &mut out), Some(9), "an empty place is passed over");
        assert_eq!(out.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [6, 8]);
    }

    #[test]
    fn the_tail_keeps_to_its_bound_and_never_holds_a_gap() {
        // Room for three records (ids of two digits take a byte more).
        let one = record(10).size_hint();
        let mut tail = Tail::new(one * 3);
        for id in 1..=10 {
            tail.push(id, Some(record(id)));
        }
        let mut out = Vec::new();
        assert_eq!(tail.read(7, 10, &mut out), None, "the oldest left");
        assert_eq!(tail.read(8, 10, &mut out), Some(11));
        tail.push(20, Some(record(20)));
        out.clear();
        assert_eq!(tail.read(10, 10, &mut out), None, "a gap starts the tail again");
        assert_eq!(tail.read(20, 10, &mut out), Some(21));
    }
}
