//! The writer thread: group commit. One `write` and one `fdatasync` for every append waiting when it wakes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use super::segment::{self, Segment};
use super::{Append, Shared, SpoolConfig, SpoolError, delete_segments, record};

pub(super) struct Writer {
    shared: Arc<Shared>,
    max_bytes: u64,
    segment_bytes: u64,
    max_batch: usize,
    next_id: u64,
    active: File,
    buf: Vec<u8>,
    /// Where each record's archive is built before it is framed into `buf`.
    scratch: rkyv::util::AlignedVec,
}

fn io_error(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Io(e.to_string())
}

impl Writer {
    /// Opens the newest segment for appending, or creates the first one.
    pub(super) fn new(shared: Arc<Shared>, config: &SpoolConfig, next_id: u64) -> std::io::Result<Writer> {
        let existing = shared.lock().segments.back().map(|s| s.path.clone());
        let active = match existing {
            Some(path) => OpenOptions::new().append(true).open(path)?,
            None => Self::create_segment(&shared, next_id)?,
        };
        Ok(Writer {
            shared,
            max_bytes: config.max_bytes,
            segment_bytes: config.segment_bytes.max(1),
            max_batch: config.max_batch.max(1),
            next_id,
            active,
            buf: Vec::with_capacity(1 << 20),
            scratch: rkyv::util::AlignedVec::new(),
        })
    }

    fn create_segment(shared: &Shared, base_id: u64) -> std::io::Result<File> {
        let path = shared.dir.join(segment::file_name(base_id));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        File::open(&shared.dir)?.sync_all()?;
        let segment = Segment { path, base_id, last_id: None, bytes: 0, records: 0, droppable: true };
        shared.lock().segments.push_back(segment);
        Ok(file)
    }

    /// Commits batches until every appender is gone and the queue is empty.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Append>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            let tickets = batch.first().map(|a| a.ticket).zip(batch.last().map(|a| a.ticket));
            match self.commit(&batch, &rx) {
                Ok(first) => self.complete(&mut batch, first),
                Err(e) => {
                    for span in batch.drain(..).filter_map(|a| a.span) {
                        span.fail(&e.to_string());
                    }
                    if let Some((first, last)) = tickets {
                        self.shared.outcomes.failed(first, last, e);
                    }
                }
            }
        }
        self.shared.outcomes.close();
    }

    /// Writes and syncs a batch; returns the id of its first record.
    fn commit(&mut self, batch: &[Append], rx: &mpsc::Receiver<Append>) -> Result<u64, SpoolError> {
        self.buf.clear();
        let mut id = self.next_id;
        for append in batch {
            for record in append.companion.iter().chain(std::iter::once(&append.record)) {
                record::encode(id, record, &mut self.buf, &mut self.scratch).map_err(io_error)?;
                id += 1;
            }
        }
        let records = id - self.next_id;
        let len = self.buf.len() as u64;
        let droppable = batch.iter().all(|a| a.record.droppable && a.companion.is_none());
        if !self.wait_for_space(len, droppable, rx).map_err(io_error)? {
            // Shutting down with the spool full: these appends were never acknowledged; refuse them.
            return Err(SpoolError::Stopped);
        }
        let active_bytes = self.shared.lock().segments.back().map_or(0, |s| s.bytes);
        if active_bytes > 0 && active_bytes + len > self.segment_bytes {
            self.active = Self::create_segment(&self.shared, self.next_id).map_err(io_error)?;
        }
        let before = self.active.metadata().map_err(io_error)?.len();
        let written = self.active.write_all(&self.buf).and_then(|()| self.active.sync_data());
        if let Err(e) = written {
            // Leave no partial batch behind for the next commit to follow.
            let _ = self.active.set_len(before);
            self.shared.healthy.store(false, Ordering::Relaxed);
            tracing::error!(error = %e, records = batch.len(), "spool commit failed; refusing the batch");
            return Err(io_error(e));
        }
        let first = self.next_id;
        let last = first + records - 1;
        self.next_id = last + 1;
        {
            let mut state = self.shared.lock();
            if let Some(seg) = state.segments.back_mut() {
                seg.last_id = Some(last);
                seg.bytes += len;
                seg.records += records;
                seg.droppable &= droppable;
            }
            state.total_bytes += len;
        }
        self.shared.healthy.store(true, Ordering::Relaxed);
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        Ok(first)
    }

    /// Completes a committed batch whose first record is `first`: hands its local records with their ids to the
    /// commit hook, if one is set (moved, not copied), puts the rest in the in-memory tail for the uplinks, then
    /// publishes the new durable id and resolves the batch's tickets. The appends' queue shares are handed back
    /// last, and their `ingest` spans end.
    fn complete(&self, batch: &mut Vec<Append>, first: u64) {
        let mut id = first;
        let mut local = Vec::new();
        let mut last_ticket = None;
        let mut shares = Vec::with_capacity(batch.len());
        {
            let mut tail = self.shared.tail();
            let keep = tail.is_enabled();
            for Append { record, companion, ticket, _slot, _bytes, span } in batch.drain(..) {
                for record in companion.into_iter().chain(std::iter::once(record)) {
                    if record.is_local() {
                        tail.push(id, None);
                        local.push((id, record));
                    } else if keep {
                        tail.push(id, Some(Arc::new(record)));
                    }
                    id += 1;
                }
                last_ticket = Some(ticket);
                // An `ingest` span ends when its commit is durable: with the shares, after the watermark moved.
                shares.push((_slot, _bytes, span));
            }
        }
        if let Some(hook) = self.shared.on_commit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            hook(local, id - 1);
        }
        self.shared.durable.send_replace(id - 1);
        if let Some(last) = last_ticket {
            self.shared.outcomes.committed(last);
        }
        drop(shares);
    }

    /// Blocks while `len` more bytes would overflow `max_bytes` (backpressure), freeing a fully confirmed active
    /// segment by starting a new one. A batch of droppable records first evicts the oldest segments made only of
    /// droppable records (never one holding anything else). An empty spool takes any batch. Returns `false` if
    /// every appender is gone while waiting (shutdown), so a full spool never holds the process up.
    fn wait_for_space(&mut self, len: u64, droppable: bool, rx: &mpsc::Receiver<Append>) -> std::io::Result<bool> {
        loop {
            let mut state = self.shared.lock();
            if state.total_bytes == 0 || state.total_bytes + len <= self.max_bytes {
                return Ok(true);
            }
            if rx.is_closed() {
                return Ok(false);
            }
            if droppable && state.evict_droppable()? {
                continue;
            }
            if state.active_fully_acked() {
                drop(state);
                self.active = Self::create_segment(&self.shared, self.next_id)?;
                let acked = self.shared.lock().take_acked();
                if delete_segments(acked)? {
                    continue;
                }
                state = self.shared.lock();
            }
            let (guard, _) = self
                .shared
                .space
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            drop(guard);
        }
    }
}
