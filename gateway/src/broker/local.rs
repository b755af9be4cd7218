//! The broker as the gateway runs it: the sans-IO [`Broker`] behind a mutex, the wakers of connected clients,
//! and persistence of retained messages and persistent sessions in `{data_dir}/broker/`.
//!
//! Retained messages are written to `retained.json` (write, fsync, rename) by the maintenance task shortly after
//! each change, and at shutdown; sessions that outlive their connection are written to `sessions.json` at
//! shutdown. Both are read back at start. The lock is never held across an await.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{Broker, BrokerConfig, Message, Session};

/// How often sessions are checked for expiry.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(500);

/// Connected clients: their connection's id and the notifier its driver waits on.
type Wakers = HashMap<Arc<str>, (u64, Arc<Notify>)>;

/// The running broker, shared by every connection.
#[derive(Debug)]
pub struct LocalBroker {
    core: Mutex<Broker>,
    wakers: Mutex<Wakers>,
    dir: PathBuf,
    retained_dirty: AtomicBool,
    changed: Notify,
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

/// Replaces `path` atomically: write a temporary file, fsync it, rename it over, fsync the directory.
fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
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
        let retained: Vec<Message> = read_json(&dir.join("retained.json"))?.unwrap_or_default();
        let sessions: Vec<(String, Session)> = read_json(&dir.join("sessions.json"))?.unwrap_or_default();
        if !retained.is_empty() || !sessions.is_empty() {
            tracing::info!(retained = retained.len(), sessions = sessions.len(), "broker state restored");
        }
        let core = Broker::restore(config, sessions, retained, now_ms());
        Ok(LocalBroker {
            core: Mutex::new(core),
            wakers: Mutex::new(HashMap::new()),
            dir: dir.to_path_buf(),
            retained_dirty: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    /// Runs `f` on the broker under its lock (never across an await).
    pub fn with<R>(&self, f: impl FnOnce(&mut Broker) -> R) -> R {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut core)
    }

    /// Registers connection `conn_id` as `client`'s; returns the notifier it waits on for deliveries.
    pub fn attach(&self, client: &str, conn_id: u64) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        wakers.insert(client.into(), (conn_id, Arc::clone(&notify)));
        notify
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

    fn save_retained(&self) -> std::io::Result<()> {
        if self.retained_dirty.swap(false, Ordering::AcqRel) {
            let retained: Vec<Message> = self.with(|b| b.retained().cloned().collect());
            if let Err(e) = write_json(&self.dir.join("retained.json"), &retained) {
                self.retained_dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes retained messages and persistent sessions (at shutdown).
    pub fn save(&self) -> std::io::Result<()> {
        self.retained_dirty.store(true, Ordering::Release);
        self.save_retained()?;
        let sessions: Vec<(String, Session)> =
            self.with(|b| b.persistent_sessions().map(|(c, s)| (c.to_string(), s.clone())).collect());
        write_json(&self.dir.join("sessions.json"), &sessions)
    }

    /// Expires sessions and writes retained changes until `stop`; then saves everything.
    pub async fn run_maintenance(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
                _ = self.changed.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let expired = self.with(|b| b.expire_sessions(now_ms()));
            if !expired.is_empty() {
                tracing::debug!(count = expired.len(), "sessions expired");
            }
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.save_retained()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot write retained messages"),
                Err(e) => tracing::error!(error = %e, "retained writer failed"),
            }
        }
    }
}
