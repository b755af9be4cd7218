//! The spool: an append-only, group-committed log of events on disk, between the listeners and the uplinks.
//!
//! Invariants:
//! - A record is durable once the fsync covering it returned; only then does its append resolve, and only then
//!   may a device be acknowledged. Readers never see a record that is not durable.
//! - Record ids increase strictly in file order, across segments and restarts (gaps appear only where recovery
//!   quarantined damage).
//! - Each consumer (an uplink) has a cursor in the ledger: the highest id its uplink confirmed. A segment file is
//!   deleted once every consumer's cursor has passed its last record, and never while it is the active segment.
//! - The spool never holds more than `max_bytes`: a full spool makes appends wait (backpressure); it never drops
//!   what it has stored.
//!
//! On disk, in the spool directory: `NNNNNNNNNNNNNNNNNNNN.seg` segment files named by the first id they may hold
//! (records framed as in [`record`]), `ledger.json` with the cursors, and `quarantine/` with any corrupt stretches
//! that recovery cut out.
//!
//! Appends are group-committed by one writer thread: it takes every append waiting in its queue (up to
//! `max_batch`), writes them with one `write`, and covers them with one `fdatasync`. Light traffic gets an fsync
//! per event; heavy traffic gets batches as large as the time one fsync takes.
//!
//! Records routed only to consumers inside the process (names starting with `@`, [`StoredRecord::is_local`]) are
//! for the gateway's broker rather than an uplink: it keeps there the messages it routes to persistent sessions,
//! so they can be routed again after a crash. An append may carry such a record as a *companion*, written right
//! before its event in the same `write` (a write torn by a crash can then leave a companion without its event, never
//! an event without its companion; the reader of companions checks that the event follows). After each commit the writer hands the batch's local records, in id order,
//! to the hook set with [`Spool::on_commit`], before any append of the batch resolves: whatever the hook does with
//! them happens before anyone is acknowledged.

pub mod ledger;
pub mod reader;
pub mod record;
pub mod segment;
mod tail;
mod watermark;
mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use self::ledger::Ledger;
pub use self::reader::Reader;
pub use self::record::StoredRecord;
use self::segment::Segment;
use self::watermark::Outcomes;
pub use self::watermark::{Durable, Ticket};
use crate::trace::TraceSpan;

/// `[spool]`: bounds of the spool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// The directory; relative paths are under the data directory.
    pub dir: PathBuf,
    /// The most bytes the segment files may hold; a full spool slows devices down.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Appends that may wait for the writer before appenders themselves wait.
    pub queue_capacity: usize,
    /// Bytes of appends (their data and attributes) that may wait for the writer before appenders themselves
    /// wait: with large messages the count alone would let the queue hold gigabytes. A record larger than this
    /// waits until it has the queue to itself.
    pub queue_bytes: u64,
    /// The most appends one fsync covers.
    pub max_batch: usize,
    /// Bytes of the newest committed records kept in memory for the uplinks, so one that keeps up does not read
    /// back what was just written (0: none; uplinks then always read the segment files).
    pub memory_tail_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("spool"),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            queue_capacity: 8192,
            queue_bytes: 64 << 20,
            max_batch: 4096,
            memory_tail_bytes: 8 << 20,
        }
    }
}

/// What an append does when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Wait for space: the listener stops reading, the device slows down. The default, and the only choice for
    /// anything a device was promised.
    #[default]
    Block,
    /// QoS 0 telemetry only, by explicit opt-in: discard the oldest segments holding nothing but such telemetry.
    DropOldest,
}

/// Why an append did not become durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// Writing or syncing failed (disk full, I/O error); nothing of the batch counts as stored.
    #[error("spool write failed: {0}")]
    Io(String),
    /// The spool is shutting down.
    #[error("the spool is stopped")]
    Stopped,
}

/// What recovery found when the spool opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records found.
    pub records: u64,
    /// Segments whose torn tail was cut.
    pub torn_tails: u64,
    /// Corrupt stretches quarantined.
    pub quarantined: u64,
}

pub(crate) struct State {
    segments: VecDeque<Segment>,
    total_bytes: u64,
    ledger: Ledger,
    consumers: Vec<String>,
    dropped: u64,
}

impl State {
    /// Takes the segments before the active one whose records every consumer confirmed out of the spool (their
    /// bytes no longer count); the caller deletes their files with [`delete_segments`], after unlocking.
    fn take_acked(&mut self) -> Vec<Segment> {
        let low = self.low_water();
        let mut taken = Vec::new();
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.last_id.is_none_or(|l| l <= low)) {
            if let Some(seg) = self.segments.pop_front() {
                self.total_bytes = self.total_bytes.saturating_sub(seg.bytes);
                taken.push(seg);
            }
        }
        taken
    }

    /// Deletes the oldest non-active segment made only of droppable records, confirmed or not. Returns whether one
    /// was found.
    fn evict_droppable(&mut self) -> std::io::Result<bool> {
        let active = self.segments.len().saturating_sub(1);
        let Some(i) = self.segments.iter().take(active).position(|s| s.droppable && s.records > 0) else {
            return Ok(false);
        };
        let Some(seg) = self.segments.remove(i) else { return Ok(false) };
        std::fs::remove_file(&seg.path)?;
        self.total_bytes = self.total_bytes.saturating_sub(seg.bytes);
        self.dropped += seg.records;
        tracing::warn!(
            records = seg.records,
            segment = seg.base_id,
            "spool full: dropped the oldest drop-oldest telemetry"
        );
        Ok(true)
    }

    /// Whether every record of the active segment is confirmed by every consumer.
    fn active_fully_acked(&self) -> bool {
        let low = self.low_water();
        self.segments.back().is_some_and(|s| s.bytes > 0 && s.last_id.is_none_or(|l| l <= low))
    }

    /// The lowest cursor over all consumers: everything up to it may be deleted.
    fn low_water(&self) -> u64 {
        self.consumers.iter().map(|c| self.ledger.cursors.get(c).copied().unwrap_or(0)).min().unwrap_or(u64::MAX)
    }
}

/// Deletes the files of segments taken out of the spool; returns whether there were any.
fn delete_segments(segments: Vec<Segment>) -> std::io::Result<bool> {
    let freed = !segments.is_empty();
    for seg in segments {
        std::fs::remove_file(&seg.path)?;
    }
    Ok(freed)
}

pub(crate) struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    /// Held while the ledger file is written, so ledger writes happen one at a time; taken before `state`, and
    /// `state` is never held while writing.
    ledger_file: Mutex<()>,
    /// Signalled when acknowledgements free space.
    space: Condvar,
    durable: watch::Sender<u64>,
    /// The outcome of every append, by [`Ticket`]: the writer moves it after each commit.
    outcomes: Outcomes,
    /// The newest committed records, for uplink readers that keep up.
    tail: Mutex<tail::Tail>,
    healthy: AtomicBool,
    quarantined: AtomicU64,
    commits: AtomicU64,
    on_commit: Mutex<Option<CommitHook>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tail(&self) -> MutexGuard<'_, tail::Tail> {
        self.tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Called by the writer after every successful commit, before the batch's appends resolve: the batch's local
/// records (companions, and appends routed only to `@` consumers) with their ids, in order, and the highest id the
/// commit made durable.
/// Companions move into the hook (no copy of their data on the writer's thread).
pub type CommitHook = Box<dyn FnMut(Vec<(u64, StoredRecord)>, u64) + Send>;

struct Append {
    record: StoredRecord,
    /// Written right before `record`, in the same commit (see the module doc).
    companion: Option<StoredRecord>,
    /// Its place in the queue's order: the writer resolves appends by it.
    ticket: Ticket,
    /// A place in its connection's share of the queue, handed back when the writer is done with the append.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Its bytes of [`SpoolConfig::queue_bytes`], handed back when the writer is done with the append.
    _bytes: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The event's `ingest` span, ended by the writer once the commit holding it is durable.
    span: Option<TraceSpan>,
}

/// A handle for reading and confirming; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.shared.dir).finish_non_exhaustive()
    }
}

/// A handle for appending; cheap to clone. When every appender is gone, the writer commits what is queued and
/// ends.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Append>,
    /// The next append's [`Ticket`]; held while the append enters the queue, so tickets follow queue order.
    next_ticket: Arc<Mutex<u64>>,
    shared: Arc<Shared>,
    /// [`SpoolConfig::queue_bytes`], in permits of one byte (at most `u32::MAX`).
    bytes: Arc<tokio::sync::Semaphore>,
    queue_bytes: u32,
}

/// The writer thread; join it after dropping every [`Appender`] to know every queued append is committed.
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Waits for the writer to commit what is queued and end.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Spool {
    /// Opens (creating or recovering) the spool in `dir` for `consumers`, and starts its writer thread.
    /// Consumers the ledger knows but `consumers` does not name are forgotten, so they hold nothing back.
    pub fn open(
        dir: &Path,
        config: &SpoolConfig,
        consumers: &[&str],
    ) -> std::io::Result<(Spool, Appender, WriterThread, Recovery)> {
        std::fs::create_dir_all(dir)?;
        let mut ledger = Ledger::load(dir)?;
        ledger.cursors.retain(|name, _| consumers.contains(&name.as_str()));
        let mut segments = VecDeque::new();
        let mut recovery = Recovery::default();
        let quarantine = dir.join("quarantine");
        for (base_id, path) in segment::list(dir)? {
            let (seg, repair) = segment::recover(base_id, &path, &quarantine)?;
            recovery.records += repair.records;
            recovery.torn_tails += u64::from(repair.torn_bytes > 0);
            recovery.quarantined += repair.quarantined;
            segments.push_back(seg);
        }
        let last_record = segments.iter().rev().find_map(|s| s.last_id).unwrap_or(0);
        let last_base = segments.back().map_or(0, |s| s.base_id);
        let last_cursor = ledger.cursors.values().copied().max().unwrap_or(0);
        let next_id = last_record.max(last_cursor).max(last_base.saturating_sub(1)) + 1;
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let state = State {
            segments,
            total_bytes,
            ledger,
            consumers: consumers.iter().map(|c| c.to_string()).collect(),
            dropped: 0,
        };
        let (durable, _) = watch::channel(next_id - 1);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            ledger_file: Mutex::new(()),
            space: Condvar::new(),
            durable,
            outcomes: Outcomes::new(),
            tail: Mutex::new(tail::Tail::new(usize::try_from(config.memory_tail_bytes).unwrap_or(usize::MAX))),
            healthy: AtomicBool::new(true),
            quarantined: AtomicU64::new(recovery.quarantined),
            commits: AtomicU64::new(0),
            on_commit: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let writer = writer::Writer::new(Arc::clone(&shared), config, next_id)?;
        let handle = std::thread::Builder::new().name("spool-writer".into()).spawn(move || writer.run(rx))?;
        if recovery != Recovery::default() {
            tracing::info!(?recovery, next_id, "spool recovered");
        }
        let queue_bytes = u32::try_from(config.queue_bytes.max(1)).unwrap_or(u32::MAX);
        let bytes = Arc::new(tokio::sync::Semaphore::new(queue_bytes as usize));
        let appender =
            Appender { tx, next_ticket: Arc::new(Mutex::new(1)), shared: Arc::clone(&shared), bytes, queue_bytes };
        Ok((Spool { shared }, appender, WriterThread(handle), recovery))
    }

    /// A reader for `consumer`, starting after its cursor. An uplink's reader passes over the records only for
    /// in-process consumers without decoding them; an in-process consumer's (`@…`) reads everything.
    pub fn reader(&self, consumer: &str) -> Reader {
        let cursor = self.shared.lock().ledger.cursors.get(consumer).copied().unwrap_or(0);
        Reader::new(Arc::clone(&self.shared), cursor, !consumer.starts_with('@'))
    }

    /// Records that `consumer` confirmed everything up to `id`, durably, and deletes segments nobody needs.
    ///
    /// The ledger file is written outside the state lock, which the writer thread takes for every commit: a
    /// cursor's fsyncs never hold up an acknowledgement to a device. The in-memory cursor moves only once the new
    /// ledger is durable, so no segment is deleted on the strength of a cursor a crash could roll back.
    pub fn ack(&self, consumer: &str, id: u64) -> std::io::Result<()> {
        // One ledger write at a time, each from the cursors as they are when it starts: none overwrites a newer one.
        let _writing = self.shared.ledger_file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ledger = {
            let state = self.shared.lock();
            if state.ledger.cursors.get(consumer).is_some_and(|&cursor| id <= cursor) {
                return Ok(());
            }
            state.ledger.clone()
        };
        ledger.cursors.insert(consumer.to_string(), id);
        ledger.store(&self.shared.dir)?;
        let acked = {
            let mut state = self.shared.lock();
            state.ledger = ledger;
            state.take_acked()
        };
        if delete_segments(acked)? {
            self.shared.space.notify_all();
        }
        Ok(())
    }

    /// Sets the hook the writer calls after every commit (see [`CommitHook`]), replacing any before it.
    pub fn on_commit(&self, hook: CommitHook) {
        *self.shared.on_commit.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(hook);
    }

    /// The highest durable record id; changes as commits land.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// Whether the last commit succeeded.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Bytes held in segment files.
    pub fn bytes(&self) -> u64 {
        self.shared.lock().total_bytes
    }

    /// Segment files held (the active one included).
    pub fn segments(&self) -> usize {
        self.shared.lock().segments.len()
    }

    /// The id of the newest durable record (0: none yet).
    pub fn last_durable(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// Corrupt stretches quarantined since the spool opened (recovery included).
    pub fn quarantined(&self) -> u64 {
        self.shared.quarantined.load(Ordering::Relaxed)
    }

    /// Droppable records discarded to make room since the spool opened.
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }

    /// Group commits (fsyncs of a batch) since the spool opened.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// The cursor of a consumer.
    pub fn cursor(&self, consumer: &str) -> u64 {
        self.shared.lock().ledger.cursors.get(consumer).copied().unwrap_or(0)
    }
}

impl Appender {
    /// Appends a record, waiting while the queue is full. The ticket tells when it is durable (see [`Durable`]).
    pub async fn append(&self, record: StoredRecord) -> Result<Ticket, SpoolError> {
        self.append_with(record, None, None).await
    }

    /// [`Appender::append`] with a `companion` record written right before `record`, in the same commit (see the
    /// module doc), holding `slot` (a place in its connection's share of the queue) until the writer is done with
    /// them.
    pub async fn append_with(
        &self,
        record: StoredRecord,
        companion: Option<StoredRecord>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<Ticket, SpoolError> {
        self.append_traced(record, companion, slot, None).await
    }

    /// [`Appender::append_with`] carrying the event's `ingest` span, which ends when the append is durable.
    pub async fn append_traced(
        &self,
        record: StoredRecord,
        companion: Option<StoredRecord>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
        span: Option<TraceSpan>,
    ) -> Result<Ticket, SpoolError> {
        let size = record.size_hint() + companion.as_ref().map_or(0, StoredRecord::size_hint);
        let size = u32::try_from(size).unwrap_or(u32::MAX).clamp(1, self.queue_bytes);
        let bytes = Arc::clone(&self.bytes).acquire_many_owned(size).await.map_err(|_| SpoolError::Stopped)?;
        let place = self.tx.reserve().await.map_err(|_| SpoolError::Stopped)?;
        // The ticket is taken and the append queued under one lock: the writer meets tickets in increasing order.
        let mut next = self.next_ticket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ticket = Ticket(*next);
        *next += 1;
        place.send(Append { record, companion, ticket, _slot: slot, _bytes: Some(bytes), span });
        Ok(ticket)
    }

    /// A watch on the appends' outcomes, for waiting on tickets.
    pub fn durable(&self) -> Durable {
        Durable::new(Arc::clone(&self.shared))
    }

    /// Appends that can be queued now without waiting: the credit listeners pace their devices by.
    pub fn credits(&self) -> usize {
        if self.bytes.available_permits() == 0 { 0 } else { self.tx.capacity() }
    }

    /// The queue's bound ([`SpoolConfig::queue_capacity`]).
    pub fn max_credits(&self) -> usize {
        self.tx.max_capacity()
    }
}

#[cfg(test)]
mod tests;
