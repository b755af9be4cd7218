//! Append-only JSON-lines files in which every append is whole or absent.
//!
//! A write can stop part-way: the disk fills (`ENOSPC` after a short write) or the process is killed between two
//! `write` calls. The bytes already written would then run into the next append and corrupt both lines. This file
//! remembers where its last whole append ended; an append that fails is cut back to it, an append that follows a
//! failed cut repairs the tail first, and opening a file cuts a torn last line left by a crash. A cut line was
//! never reported as written, so whoever owns the data (the spool) still holds it and sends it again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// An open JSON-lines file, positioned after its last whole line.
#[derive(Debug)]
pub struct JsonLinesFile {
    file: File,
    path: PathBuf,
    /// Where the last whole append ended: everything past it is a torn write.
    end: u64,
}

impl JsonLinesFile {
    /// Opens `path` for appending (creating it and its directories), cutting a torn last line.
    pub fn open(path: &Path) -> std::io::Result<JsonLinesFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        let end = last_line_end(&mut file, len)?;
        if end < len {
            tracing::warn!(file = %path.display(), offset = end, bytes = len - end, "cutting a torn last line");
            file.set_len(end)?;
            file.sync_data()?;
        }
        Ok(JsonLinesFile { file, path: path.to_owned(), end })
    }

    /// Appends `lines` (whole lines, each ending in `\n`) and syncs the data. On error nothing of `lines` stays
    /// in the file, or what stays is cut before the next append.
    pub fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        debug_assert!(lines.last().is_none_or(|&b| b == b'\n'), "appends are whole lines");
        if self.file.metadata()?.len() != self.end {
            tracing::warn!(file = %self.path.display(), offset = self.end, "cutting the tail of a failed append");
            self.file.set_len(self.end)?;
        }
        match self.file.write_all(lines).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.end += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Best effort now; the next append checks again.
                let _ = self.file.set_len(self.end);
                Err(e)
            }
        }
    }
}

/// The offset just past the last `\n` in the first `len` bytes of `file` (0 when there is none).
fn last_line_end(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut chunk = [0u8; 4096];
    let mut upto = len;
    while upto > 0 {
        let start = upto.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(upto - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        upto = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_cuts_a_torn_last_line_and_keeps_whole_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/events.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A whole line, then a line torn by a crash (longer than one read chunk, so the scan crosses chunks).
        let torn = format!("{{\"id\":\"2\",\"data\":\"{}", "x".repeat(10_000));
        std::fs::write(&path, format!("{{\"id\":\"1\"}}\n{torn}")).unwrap();
        let mut file = JsonLinesFile::open(&path).unwrap();
        file.append(b"{\"id\":\"3\"}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"id\":\"1\"}\n{\"id\":\"3\"}\n");
    }

    #[test]
    fn a_file_without_any_whole_line_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"id\":").unwrap();
        JsonLinesFile::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn bytes_left_by_a_failed_append_are_cut_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = JsonLinesFile::open(&path).unwrap();
        file.append(b"{\"id\":\"1\"}\n").unwrap();
        // What a short write before ENOSPC leaves behind when the cut back failed too.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"id\":\"2\",\"da").unwrap();
        file.append(b"{\"id\":\"2\"}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"id\":\"1\"}\n{\"id\":\"2\"}\n");
    }
}
