//! Reading the spool in order for one consumer: durable records only, across segments, from the consumer's cursor.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use rkyv::util::AlignedVec;

use super::record::{self, Frame, HEADER_LEN};
use super::{Shared, StoredRecord};

/// A consumer's position in the spool. Blocking file IO: call it from a blocking context.
pub struct Reader {
    shared: Arc<Shared>,
    /// The next id wanted (everything below was returned or confirmed).
    next_id: u64,
    open: Option<OpenSegment>,
    scratch: AlignedVec,
    buf: Vec<u8>,
    /// An uplink's reader: records only for in-process consumers are passed over without being decoded.
    skip_local: bool,
}

struct OpenSegment {
    base_id: u64,
    file: File,
    offset: u64,
}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>, cursor: u64, skip_local: bool) -> Reader {
        Reader { shared, next_id: cursor + 1, open: None, scratch: AlignedVec::new(), buf: Vec::new(), skip_local }
    }

    /// Up to `max` records for this uplink's reader from the spool's in-memory tail, in order, with their ids, when
    /// the tail holds the current position (no file IO: call it anywhere); `None` when it does not (the reader fell
    /// behind, or it reads for an in-process consumer): then [`Reader::read_batch`] reads the files.
    pub fn read_from_tail(&mut self, max: usize) -> Option<Vec<(u64, Arc<StoredRecord>)>> {
        if !self.skip_local {
            return None;
        }
        let mut out = Vec::new();
        let after = self.shared.tail().read(self.next_id, max, &mut out)?;
        self.next_id = after;
        // The open segment's position is stale now; a later read from the files finds its place again.
        self.open = None;
        Some(out)
    }

    /// Up to `max` durable records from the current position, in order, with their ids.
    pub fn read_batch(&mut self, max: usize) -> std::io::Result<Vec<(u64, StoredRecord)>> {
        self.read_batch_bounded(max, usize::MAX)
    }

    /// [`Reader::read_batch`], stopping also once the records read hold `max_bytes` (at least one record is
    /// read): a reader far behind on large events does not pull a thousand of them into memory at once.
    pub fn read_batch_bounded(&mut self, max: usize, max_bytes: usize) -> std::io::Result<Vec<(u64, StoredRecord)>> {
        let durable = *self.shared.durable.borrow();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max && bytes < max_bytes && self.next_id <= durable {
            if self.open.is_none() && !self.open_segment_for_next()? {
                break;
            }
            match self.read_next(durable)? {
                Some((id, record)) => {
                    self.next_id = id + 1;
                    bytes = bytes.saturating_add(record.size_hint());
                    out.push((id, record));
                }
                None => {
                    // The end of this segment: move on to a later one, if there is one.
                    let base = self.open.as_ref().map_or(0, |o| o.base_id);
                    let later = self.shared.lock().segments.iter().map(|s| s.base_id).find(|&b| b > base);
                    match later {
                        Some(next_base) => {
                            self.next_id = self.next_id.max(next_base);
                            self.open = None;
                        }
                        None => break,
                    }
                }
            }
        }
        Ok(out)
    }

    /// Opens the segment holding `next_id` (the newest whose base is not above it), positioned at its start.
    fn open_segment_for_next(&mut self) -> std::io::Result<bool> {
        let chosen = {
            let state = self.shared.lock();
            let first = state.segments.front().map(|s| s.base_id);
            if let Some(first) = first
                && self.next_id < first
            {
                // Everything before the oldest segment was deleted after every consumer confirmed it.
                self.next_id = first;
            }
            state.segments.iter().rev().find(|s| s.base_id <= self.next_id).map(|s| (s.base_id, s.path.clone()))
        };
        let Some((base_id, path)) = chosen else { return Ok(false) };
        let file = File::open(path)?;
        self.open = Some(OpenSegment { base_id, file, offset: 0 });
        Ok(true)
    }

    /// The next record at or after `next_id` and not above `durable` in the open segment; `None` at its end.
    fn read_next(&mut self, durable: u64) -> std::io::Result<Option<(u64, StoredRecord)>> {
        let Some(open) = self.open.as_mut() else { return Ok(None) };
        loop {
            open.file.seek(SeekFrom::Start(open.offset))?;
            let mut header = [0u8; HEADER_LEN];
            if !read_full(&mut open.file, &mut header)? {
                return Ok(None);
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let id = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
            if id > durable {
                return Ok(None);
            }
            self.buf.clear();
            self.buf.extend_from_slice(&header);
            self.buf.resize(HEADER_LEN + len.min(record::MAX_RECORD_LEN), 0);
            if !read_full(&mut open.file, &mut self.buf[HEADER_LEN..])? {
                return Ok(None);
            }
            match record::decode_unless_local(&self.buf, &mut self.scratch, self.skip_local) {
                Frame::Record(id, rec, size) => {
                    open.offset += size as u64;
                    if id >= self.next_id {
                        return Ok(Some((id, *rec)));
                    }
                }
                Frame::Skipped(id, size) => {
                    open.offset += size as u64;
                    self.next_id = self.next_id.max(id + 1);
                }
                // Recovery validated every record below the durable mark; damage here is new. Skip the segment's
                // rest rather than loop on it, and count it.
                _ => {
                    self.shared.quarantined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(
                        segment = open.base_id,
                        offset = open.offset,
                        "unreadable spool record; skipping the rest of the segment"
                    );
                    return Ok(None);
                }
            }
        }
    }
}

/// Fills `buf` completely; `false` if the file ends first.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => return Ok(false),
            n => filled += n,
        }
    }
    Ok(true)
}
