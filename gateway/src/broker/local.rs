//! The broker as the gateway runs it: the sans-IO [`Broker`] behind a mutex, the wakers of connected clients,
//! and persistence of retained messages and persistent sessions in `{data_dir}/broker/`.
//!
//! A retained publish is appended to `retained.log` and fsynced before the publish goes on to the spool, so a
//! retained message a device was acknowledged for survives a crash. At start the log is replayed over
//! `retained.json` and compacted into it (write, fsync, rename); the maintenance task compacts it again when it
//! grows, and shutdown does too. Sessions that outlive their connection are written to `sessions.json` at
//! shutdown, and every [`SESSION_SNAPSHOT_INTERVAL`] while the broker changes, so a crash loses at most that much
//! of what was queued for offline subscribers. The broker's lock is never held across an await.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{Broker, BrokerConfig, Message, Session};

/// How often sessions are checked for expiry.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(500);

/// How often, at most, persistent sessions are snapshotted while the broker changes.
pub const SESSION_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(2);

/// The size at which `retained.log` is compacted into `retained.json`.
const RETAINED_LOG_COMPACT_BYTES: u64 = 4 * 1024 * 1024;

/// Connected clients: their connection's id and the notifier its driver waits on.
type Wakers = HashMap<Arc<str>, (u64, Arc<Notify>)>;

/// The running broker, shared by every connection.
#[derive(Debug)]
pub struct LocalBroker {
    core: Mutex<Broker>,
    wakers: Mutex<Wakers>,
    dir: PathBuf,
    /// `retained.log`, appended under this lock (on the blocking pool, never across an await).
    retained_log: Arc<Mutex<std::fs::File>>,
    retained_dirty: AtomicBool,
    /// Set by every change through [`LocalBroker::with`]; cleared by a session snapshot.
    sessions_dirty: AtomicBool,
    changed: Notify,
}

/// The format of `sessions.json`: 2 since session names have a namespace per protocol.
const SESSIONS_FORMAT: u32 = 2;

/// `sessions.json`, as written now or by a version before [`SESSIONS_FORMAT`] 2 (a bare list).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum StoredSessions {
    /// `{"format": 2, "sessions": [...]}`.
    Current {
        /// [`SESSIONS_FORMAT`].
        format: u32,
        /// Sessions by name.
        sessions: Vec<(String, Session)>,
    },
    /// A bare list, from before namespaces: renamed by [`super::session_name::from_unversioned`].
    Unversioned(Vec<(String, Session)>),
}

impl StoredSessions {
    fn into_sessions(self) -> Vec<(String, Session)> {
        match self {
            StoredSessions::Current { sessions, .. } => sessions,
            StoredSessions::Unversioned(sessions) => {
                sessions.into_iter().map(|(n, s)| (super::session_name::from_unversioned(n), s)).collect()
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    meshgate_edge_agent::spool::record::now_ms()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Applies `retained.log` over `retained` (a set or, with an empty payload, a clear per line); a torn last line
/// is ignored. Returns how many lines applied.
fn replay_retained_log(path: &Path, retained: &mut Vec<Message>) -> std::io::Result<usize> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut applied = 0;
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(m) = serde_json::from_slice::<Message>(line) else {
            tracing::warn!(path = %path.display(), "unreadable retained-log line skipped (torn write)");
            continue;
        };
        retained.retain(|r| r.topic != m.topic);
        if !m.payload.is_empty() {
            retained.push(m);
        }
        applied += 1;
    }
    Ok(applied)
}

/// Replaces `path` atomically: write a temporary file, fsync it, rename it over, fsync the directory.
fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    // Streamed through a small buffer: a large session store never exists as one string in memory.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::fs::File::create(&tmp)?);
    serde_json::to_writer(&mut out, value).map_err(std::io::Error::other)?;
    out.flush()?;
    let f = out.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl LocalBroker {
    /// Opens the broker state in `dir` (created if needed): retained messages and persistent sessions.
    pub fn open(dir: &Path, config: BrokerConfig) -> std::io::Result<LocalBroker> {
        std::fs::create_dir_all(dir)?;
        let mut retained: Vec<Message> = read_json(&dir.join("retained.json"))?.unwrap_or_default();
        let log_path = dir.join("retained.log");
        let replayed = replay_retained_log(&log_path, &mut retained)?;
        if replayed > 0 {
            write_json(&dir.join("retained.json"), &retained)?;
        }
        let retained_log = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&log_path)?;
        let sessions = read_json::<StoredSessions>(&dir.join("sessions.json"))?.map(StoredSessions::into_sessions);
        let sessions = sessions.unwrap_or_default();
        if !retained.is_empty() || !sessions.is_empty() {
            tracing::info!(retained = retained.len(), sessions = sessions.len(), "broker state restored");
        }
        let core = Broker::restore(config, sessions, retained, now_ms());
        Ok(LocalBroker {
            core: Mutex::new(core),
            wakers: Mutex::new(HashMap::new()),
            dir: dir.to_path_buf(),
            retained_log: Arc::new(Mutex::new(retained_log)),
            retained_dirty: AtomicBool::new(false),
            sessions_dirty: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    /// Runs `f` on the broker under its lock (never across an await).
    pub fn with<R>(&self, f: impl FnOnce(&mut Broker) -> R) -> R {
        self.sessions_dirty.store(true, Ordering::Relaxed);
        self.quietly(f)
    }

    /// Reads the broker under its lock without marking it changed (metrics, snapshots).
    pub fn read<R>(&self, f: impl FnOnce(&Broker) -> R) -> R {
        self.quietly(|b| f(b))
    }

    fn quietly<R>(&self, f: impl FnOnce(&mut Broker) -> R) -> R {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut core)
    }

    /// Registers connection `conn_id` as `client`'s; returns the notifier it waits on for deliveries.
    pub fn attach(&self, client: &str, conn_id: u64) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.attach_with(client, conn_id, Arc::clone(&notify));
        notify
    }

    /// Registers connection `conn_id` as `client`'s, waking `notify` for deliveries (one connection serving
    /// several sessions, as AMQP consumers of several queues do, waits on one notifier).
    pub fn attach_with(&self, client: &str, conn_id: u64, notify: Arc<Notify>) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        wakers.insert(client.into(), (conn_id, notify));
    }

    /// Unregisters connection `conn_id` of `client`, unless a newer connection took the client id; returns
    /// whether it was still the client's connection.
    pub fn detach(&self, client: &str, conn_id: u64) -> bool {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if wakers.get(client).is_some_and(|(id, _)| *id == conn_id) {
            wakers.remove(client);
            return true;
        }
        false
    }

    /// Whether `client` has a live connection.
    pub fn is_attached(&self, client: &str) -> bool {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner()).contains_key(client)
    }

    /// Wakes `client`'s connection, if it has one, to send what is queued.
    pub fn wake(&self, client: &str) {
        let wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = wakers.get(client) {
            n.notify_one();
        }
    }

    /// `client`'s connection ended (see [`Broker::disconnect`]); wakes the clients it handed messages to.
    pub fn disconnect(&self, client: &str, expiry_secs: Option<u32>) {
        let woken = self.with(|b| b.disconnect(client, expiry_secs, now_ms()));
        for c in woken {
            self.wake(&c);
        }
    }

    /// Publishes a message to local subscribers (and the retained store).
    pub fn publish(&self, message: Message) {
        let retain = message.retain;
        let woken = self.with(|b| b.publish(message, now_ms()));
        for client in woken {
            self.wake(&client);
        }
        if retain {
            self.retained_dirty.store(true, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// Makes a retained publish durable before it is acknowledged: one JSON line in `retained.log`, fsynced.
    pub async fn log_retained(&self, message: &Message) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let log = Arc::clone(&self.retained_log);
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
            f.write_all(&line)?;
            f.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Compacts the retained messages into `retained.json` and empties the log, when the log has grown (or
    /// `force`).
    fn save_retained(&self, force: bool) -> std::io::Result<()> {
        let mut log = self.retained_log.lock().unwrap_or_else(|p| p.into_inner());
        let size = log.metadata()?.len();
        if !force && size < RETAINED_LOG_COMPACT_BYTES {
            return Ok(());
        }
        // Under the log's lock, so no append lands between the snapshot and the truncation.
        let retained: Vec<Message> = self.read(|b| b.retained().cloned().collect());
        write_json(&self.dir.join("retained.json"), &retained)?;
        log.set_len(0)?;
        use std::io::Seek;
        log.seek(std::io::SeekFrom::Start(0))?;
        log.sync_all()
    }

    fn save_sessions(&self) -> std::io::Result<()> {
        self.sessions_dirty.store(false, Ordering::Relaxed);
        let sessions: Vec<(String, Session)> =
            self.read(|b| b.persistent_sessions().map(|(c, s)| (c.to_string(), s.clone())).collect());
        write_json(&self.dir.join("sessions.json"), &StoredSessions::Current { format: SESSIONS_FORMAT, sessions })
    }

    /// Writes the persistent sessions now (their queues included), so what was handed to them survives a crash;
    /// the downlinks call it before they acknowledge to the mesh.
    pub async fn persist_sessions(self: &Arc<Self>) -> std::io::Result<()> {
        let broker = Arc::clone(self);
        tokio::task::spawn_blocking(move || broker.save_sessions()).await.map_err(std::io::Error::other)?
    }

    /// Writes retained messages and persistent sessions (at shutdown).
    pub fn save(&self) -> std::io::Result<()> {
        self.save_retained(true)?;
        self.save_sessions()
    }

    /// Expires sessions and writes retained changes until `stop`; then saves everything.
    pub async fn run_maintenance(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_snapshot = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
                _ = self.changed.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let (expired, woken) = self.quietly(|b| b.expire_sessions(now_ms()));
            if !expired.is_empty() {
                self.sessions_dirty.store(true, Ordering::Relaxed);
                tracing::debug!(count = expired.len(), "sessions expired");
            }
            for c in woken {
                self.wake(&c);
            }
            if last_snapshot.elapsed() >= SESSION_SNAPSHOT_INTERVAL && self.sessions_dirty.load(Ordering::Relaxed) {
                last_snapshot = tokio::time::Instant::now();
                let me = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || me.save_sessions()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot write the session snapshot"),
                    Err(e) => tracing::error!(error = %e, "session snapshot failed"),
                }
            }
            if !self.retained_dirty.swap(false, Ordering::AcqRel) {
                continue;
            }
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.save_retained(false)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot write retained messages"),
                Err(e) => tracing::error!(error = %e, "retained writer failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::session_name;
    use meshgate_protocols::mqtt::Version;

    fn session(owner: &str) -> Session {
        let mut s = Session::new(Version::V311, u32::MAX);
        s.owner = owner.into();
        s
    }

    #[test]
    fn a_session_store_from_before_namespaces_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<(String, Session)> =
            vec![("amqp:q-dev1".into(), session("device-1")), ("sensor-7".into(), session("device-7"))];
        std::fs::write(dir.path().join("sessions.json"), serde_json::to_vec(&old).unwrap()).unwrap();
        let broker = LocalBroker::open(dir.path(), BrokerConfig::with_max_queued(10)).unwrap();
        broker.read(|b| {
            assert_eq!(b.owner_of(&session_name::amqp_queue("q-dev1")), Some("device-1"), "the queue, tagged");
            assert_eq!(b.owner_of("amqp:q-dev1"), None, "no MQTT client id names it");
            assert_eq!(b.owner_of("sensor-7"), Some("device-7"));
        });
        // Saved in the current format, and read back the same.
        broker.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join("sessions.json")).unwrap();
        assert!(text.starts_with("{\"format\":2,"), "{text}");
        drop(broker);
        let again = LocalBroker::open(dir.path(), BrokerConfig::with_max_queued(10)).unwrap();
        assert_eq!(
            again.read(|b| b.owner_of(&session_name::amqp_queue("q-dev1")).map(String::from)),
            Some("device-1".into())
        );
    }
}
