//! The ledger: each consumer's ack cursor (the highest record id its uplink confirmed), replaced atomically.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The ledger file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Consumer (uplink) name → highest acknowledged record id.
    pub cursors: BTreeMap<String, u64>,
}

/// Where the ledger lives in a spool directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("ledger.json")
}

impl Ledger {
    /// Reads the ledger; a missing file is an empty ledger.
    pub fn load(dir: &Path) -> std::io::Result<Ledger> {
        match fs::read(path(dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the ledger durably: a temporary file, fsync, rename over the old one, fsync of the directory.
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join("ledger.json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_data()?;
        fs::rename(&tmp, path(dir))?;
        File::open(dir)?.sync_all()
    }
}
