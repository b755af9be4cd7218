//! Who is connected under which client id, so a new connection with the same id takes the session over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

/// Live connections by client id. The lock is only held for a map operation, never across an await.
#[derive(Debug, Default)]
pub struct Registry {
    live: Mutex<HashMap<String, (u64, oneshot::Sender<()>)>>,
    next_id: AtomicU64,
}

/// A connection's registration: its id and the signal that another connection took its client id over.
#[derive(Debug)]
pub struct Registration {
    /// Unique per connection.
    pub conn_id: u64,
    /// Resolves when a newer connection with the same client id arrives.
    pub taken_over: oneshot::Receiver<()>,
}

impl Registry {
    /// Registers `client_id`, telling the connection that held it (if any) that it was taken over.
    pub fn register(&self, client_id: &str) -> Registration {
        let conn_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, taken_over) = oneshot::channel();
        let previous = match self.live.lock() {
            Ok(mut live) => live.insert(client_id.to_string(), (conn_id, tx)),
            Err(poisoned) => poisoned.into_inner().insert(client_id.to_string(), (conn_id, tx)),
        };
        if let Some((_, old)) = previous {
            let _ = old.send(());
        }
        Registration { conn_id, taken_over }
    }

    /// Removes the registration of `conn_id`, unless a newer connection already holds the client id.
    pub fn unregister(&self, client_id: &str, conn_id: u64) {
        let mut live = match self.live.lock() {
            Ok(live) => live,
            Err(poisoned) => poisoned.into_inner(),
        };
        if live.get(client_id).is_some_and(|(id, _)| *id == conn_id) {
            live.remove(client_id);
        }
    }

    /// How many client ids are connected.
    pub fn len(&self) -> usize {
        self.live.lock().map_or(0, |l| l.len())
    }

    /// Whether nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_connection_takes_the_client_id_over() {
        let r = Registry::default();
        let mut first = r.register("c");
        let second = r.register("c");
        assert!(first.taken_over.try_recv().is_ok());
        r.unregister("c", first.conn_id);
        assert_eq!(r.len(), 1, "the old connection must not remove the new one");
        r.unregister("c", second.conn_id);
        assert!(r.is_empty());
    }
}
