//! Segment files: naming, listing, and the recovery scan that validates every record and cuts damage out.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use super::record::{self, Frame};

/// A segment file and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The file.
    pub path: PathBuf,
    /// The id its name carries: no record in it is older.
    pub base_id: u64,
    /// The newest record id in it, if any.
    pub last_id: Option<u64>,
    /// Its size in bytes.
    pub bytes: u64,
    /// How many records it holds.
    pub records: u64,
    /// Whether every record in it is droppable (a full spool may then delete it unconfirmed).
    pub droppable: bool,
}

/// The file name of the segment whose records start at `base_id`.
pub fn file_name(base_id: u64) -> String {
    format!("{base_id:020}.seg")
}

/// Segment files in `dir`, oldest first.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id {
            found.push((id, path));
        }
    }
    found.sort();
    Ok(found)
}

/// What recovery did to one segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repair {
    /// Records found valid.
    pub records: u64,
    /// Bytes cut from a torn tail.
    pub torn_bytes: u64,
    /// Corrupt stretches moved to the quarantine directory.
    pub quarantined: u64,
}

/// Validates every record of a segment. A torn tail is cut off; a corrupt record and everything after it in the
/// segment (its length can no longer be trusted to find the next record) is copied to `quarantine` and cut off.
/// Returns the segment as it now is.
pub fn recover(base_id: u64, path: &Path, quarantine: &Path) -> std::io::Result<(Segment, Repair)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut scratch = AlignedVec::new();
    let mut offset = 0usize;
    let mut last_id = None;
    let mut droppable = true;
    let mut repair = Repair::default();
    loop {
        let rest = bytes.get(offset..).unwrap_or_default();
        match record::decode(rest, &mut scratch) {
            Frame::Record(id, rec, len) if last_id.is_none_or(|last| id > last) && id >= base_id => {
                last_id = Some(id);
                droppable &= rec.droppable;
                offset += len;
                repair.records += 1;
            }
            Frame::End => break,
            Frame::Torn => {
                repair.torn_bytes = rest.len() as u64;
                tracing::warn!(segment = %path.display(), offset, bytes = rest.len(), "cutting a torn tail");
                break;
            }
            // `decode` never skips; a skipped frame would be a valid record, treated as one out of order.
            Frame::Record(..) | Frame::Skipped(..) | Frame::Corrupt(_) => {
                let why = match record::decode(rest, &mut scratch) {
                    Frame::Corrupt(why) => why,
                    _ => "record id out of order",
                };
                fs::create_dir_all(quarantine)?;
                let name = format!("{}.{offset}.bad", file_name(base_id));
                fs::write(quarantine.join(&name), rest)?;
                repair.quarantined += 1;
                tracing::error!(segment = %path.display(), offset, why, quarantined = %name, "quarantined corrupt records");
                break;
            }
        }
    }
    if offset < bytes.len() {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(offset as u64)?;
        f.sync_all()?;
    }
    let segment = Segment {
        path: path.to_path_buf(),
        base_id,
        last_id,
        bytes: offset as u64,
        records: repair.records,
        droppable,
    };
    Ok((segment, repair))
}
