//! The session store: one file per persistent session in `{data_dir}/broker/sessions/`, so a round writes only
//! the sessions that changed (a busy gateway with a large offline queue rewrites that one queue, not every
//! session).
//!
//! Each file is `{"format":3,"name":…,"session":…}`, replaced atomically (write a temporary file, fsync, rename);
//! the directory is fsynced once per round. A session that ended, or no longer outlives its connection, has its
//! file deleted. A file that cannot be read is renamed `*.unreadable`, logged, and the gateway starts without it.
//! `sessions.json` from before (format 2, or a bare list from before namespaces) is migrated to
//! files at the first start and removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Session;

/// The format of a session file: 3 since sessions are stored one per file.
const FORMAT: u32 = 3;

/// A session file, as written.
#[derive(serde::Serialize)]
struct SessionFile<'a> {
    format: u32,
    name: &'a str,
    session: &'a Session,
}

/// A session file, as read.
#[derive(serde::Deserialize)]
struct StoredSession {
    /// The session's name.
    name: String,
    /// The session.
    session: Session,
}

/// `sessions.json`, as written before [`FORMAT`] 3: `{"format":2,"sessions":[...]}` or, before namespaces, a bare
/// list.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum LegacySessions {
    /// `{"format": 2, "sessions": [...]}`.
    Current {
        /// Sessions by name.
        sessions: Vec<(String, Session)>,
    },
    /// A bare list, from before namespaces: renamed by [`super::session_name::from_unversioned`].
    Unversioned(Vec<(String, Session)>),
}

impl LegacySessions {
    fn into_sessions(self) -> Vec<(String, Session)> {
        match self {
            LegacySessions::Current { sessions } => sessions,
            LegacySessions::Unversioned(sessions) => {
                sessions.into_iter().map(|(n, s)| (super::session_name::from_unversioned(n), s)).collect()
            }
        }
    }
}

/// Queued messages up to which a session's file is rewritten whenever it changed; a longer queue is rewritten
/// once the spool holds at least as many records again after its stored state (see [`SessionStore::defers`]).
pub const REWRITE_FLOOR: usize = 1024;

/// What the store knows of one session's file.
#[derive(Debug, Clone, Copy)]
struct StoredFile {
    /// The file's number (its name).
    number: u64,
    /// The spool position its state includes ([`Session::routed_through`]).
    stamp: u64,
    /// Messages queued in it.
    queued: usize,
}

/// The session files of one broker directory.
#[derive(Debug)]
pub struct SessionStore {
    dir: PathBuf,
    /// Each stored session's file.
    files: HashMap<Arc<str>, StoredFile>,
    next_file: u64,
    /// Whether the store was created by this start (no earlier version of the gateway left sessions here).
    fresh: bool,
}

/// Replaces `path` atomically: write a temporary file, fsync it, rename it over (the caller fsyncs the directory).
pub(super) fn write_atomically<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    // Streamed through a small buffer: a large session never exists as one string in memory.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::fs::File::create(&tmp)?);
    serde_json::to_writer(&mut out, value).map_err(std::io::Error::other)?;
    out.flush()?;
    let f = out.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Fsyncs a directory, so the renames and deletions in it are durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl SessionStore {
    /// Opens the store under `broker_dir` and reads every stored session, migrating `sessions.json`.
    pub fn open(broker_dir: &Path) -> std::io::Result<(SessionStore, Vec<(String, Session)>)> {
        let dir = broker_dir.join("sessions");
        let legacy = broker_dir.join("sessions.json");
        let fresh = !dir.exists() && !legacy.exists();
        std::fs::create_dir_all(&dir)?;
        let mut store = SessionStore { dir, files: HashMap::new(), next_file: 1, fresh };
        let mut sessions = Vec::new();
        for entry in std::fs::read_dir(&store.dir)? {
            let path = entry?.path();
            let number = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
            let Some(number) = number.filter(|_| path.extension().is_some_and(|e| e == "json")) else {
                // A temporary file a crash left behind: its rename never happened.
                if path.extension().is_some_and(|e| e == "tmp") {
                    std::fs::remove_file(&path)?;
                }
                continue;
            };
            let stored: StoredSession = match serde_json::from_slice(&std::fs::read(&path)?) {
                Ok(s) => s,
                Err(e) => {
                    // Damage (the files are replaced atomically, so not a torn write): set aside, never a crash loop.
                    let aside = path.with_extension("unreadable");
                    tracing::error!(file = %path.display(), error = %e, "unreadable session file set aside");
                    std::fs::rename(&path, &aside)?;
                    continue;
                }
            };
            store.next_file = store.next_file.max(number + 1);
            let file = StoredFile { number, stamp: stored.session.routed_through, queued: stored.session.queued() };
            store.files.insert(stored.name.as_str().into(), file);
            sessions.push((stored.name, stored.session));
        }
        if legacy.exists() {
            let bytes = std::fs::read(&legacy)?;
            let old: LegacySessions = serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", legacy.display())))?;
            let old = old.into_sessions();
            let changes: Vec<(Arc<str>, Option<Session>)> =
                old.iter().map(|(n, s)| (Arc::from(n.as_str()), Some(s.clone()))).collect();
            store.write(&changes)?;
            std::fs::remove_file(&legacy)?;
            sync_dir(broker_dir)?;
            tracing::info!(sessions = old.len(), "sessions.json migrated to one file per session");
            sessions.extend(old);
        }
        Ok((store, sessions))
    }

    /// Whether this start created the store (nothing was stored by an earlier run).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Writes each changed session (`Some`) or deletes its file (`None`), then fsyncs the directory.
    pub fn write(&mut self, changes: &[(Arc<str>, Option<Session>)]) -> std::io::Result<()> {
        let mut touched = false;
        for (name, session) in changes {
            match session {
                Some(session) => {
                    let number = match self.files.get(name) {
                        Some(f) => f.number,
                        None => {
                            self.next_file += 1;
                            self.next_file - 1
                        }
                    };
                    let file = SessionFile { format: FORMAT, name, session };
                    write_atomically(&self.path(number), &file)?;
                    let stored = StoredFile { number, stamp: session.routed_through, queued: session.queued() };
                    self.files.insert(Arc::clone(name), stored);
                    touched = true;
                }
                None => {
                    if let Some(file) = self.files.remove(name) {
                        match std::fs::remove_file(self.path(file.number)) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                            _ => touched = true,
                        }
                    }
                }
            }
        }
        // Nothing written or deleted (a session that never outlived its connection): no directory to sync.
        if touched { sync_dir(&self.dir) } else { Ok(()) }
    }

    /// Whether a round at spool position `position` may leave `name`'s changes for later (its `queued` messages
    /// now): a session stored with more than [`REWRITE_FLOOR`] messages queued, at both its last write and now,
    /// is rewritten once the records after its stored state number at least the floor plus that queue. So a long
    /// offline queue that keeps growing is written once per doubling (its messages wait in the spool, routed
    /// again at start), not once per round; a session never stored, ended, or short is always written.
    pub fn defers(&self, name: &str, position: u64, queued: usize) -> bool {
        let Some(file) = self.files.get(name) else { return false };
        let size = file.queued.min(queued);
        size > REWRITE_FLOOR && position.saturating_sub(file.stamp) < (REWRITE_FLOOR + size) as u64
    }

    /// The spool position `name`'s stored state includes, if it is stored.
    pub fn stamp(&self, name: &str) -> Option<u64> {
        self.files.get(name).map(|f| f.stamp)
    }

    /// Sessions stored.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no session is stored.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:016}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_protocols::mqtt::Version;

    #[test]
    fn sessions_round_trip_and_a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, sessions) = SessionStore::open(dir.path()).unwrap();
        assert!(sessions.is_empty() && store.is_fresh());
        let changes: Vec<(Arc<str>, Option<Session>)> = vec![
            (Arc::from("a"), Some(Session::new(Version::V5, 60))),
            (Arc::from("b"), Some(Session::new(Version::V311, u32::MAX))),
        ];
        store.write(&changes).unwrap();
        store.write(&[(Arc::from("a"), None)]).unwrap();
        let (store, sessions) = SessionStore::open(dir.path()).unwrap();
        assert!(!store.is_fresh());
        assert_eq!(sessions.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["b"]);
        let file = std::fs::read_dir(dir.path().join("sessions")).unwrap().next().unwrap().unwrap().path();
        std::fs::write(&file, b"{\"format\":3,\"name\":").unwrap();
        std::fs::write(dir.path().join("sessions").join("0000000000000009.tmp"), b"half").unwrap();
        let (_, sessions) = SessionStore::open(dir.path()).unwrap();
        assert!(sessions.is_empty());
        let names: Vec<String> = std::fs::read_dir(dir.path().join("sessions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "the temporary file is gone: {names:?}");
        assert!(names[0].ends_with(".unreadable"), "{names:?}");
    }
}
