//! Who is connected under which session name, and as which user, so a new connection of the same user takes the
//! session over and a connection of another user is refused without disturbing the one connected.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

/// One live connection.
#[derive(Debug)]
struct Live {
    conn_id: u64,
    owner: String,
    taken_over: oneshot::Sender<()>,
}

/// Live connections by session name (an MQTT client id, or a tagged name of [`crate::broker::session_name`]).
/// The lock is only held for a map operation, never across an await.
#[derive(Debug, Default)]
pub struct Registry {
    live: Mutex<HashMap<String, Live>>,
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

/// The name is held by a connection of another user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldByAnother;

impl Registry {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `name` for a connection of `owner`, telling the connection of the same owner that held it (if
    /// any) that it was taken over; refused while a connection of another owner holds it.
    pub fn register(&self, name: &str, owner: &str) -> Result<Registration, HeldByAnother> {
        let conn_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, taken_over) = oneshot::channel();
        let mut live = self.live();
        if live.get(name).is_some_and(|l| l.owner != owner) {
            return Err(HeldByAnother);
        }
        let previous = live.insert(name.to_string(), Live { conn_id, owner: owner.to_string(), taken_over: tx });
        drop(live);
        if let Some(old) = previous {
            let _ = old.taken_over.send(());
        }
        Ok(Registration { conn_id, taken_over })
    }

    /// Removes the registration of `conn_id`, unless a newer connection already holds the name.
    pub fn unregister(&self, name: &str, conn_id: u64) {
        let mut live = self.live();
        if live.get(name).is_some_and(|l| l.conn_id == conn_id) {
            live.remove(name);
        }
    }

    /// How many names are connected.
    pub fn len(&self) -> usize {
        self.live().len()
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
    fn a_second_connection_of_the_owner_takes_the_name_over() {
        let r = Registry::default();
        let mut first = r.register("c", "alice").unwrap();
        let second = r.register("c", "alice").unwrap();
        assert!(first.taken_over.try_recv().is_ok());
        r.unregister("c", first.conn_id);
        assert_eq!(r.len(), 1, "the old connection must not remove the new one");
        r.unregister("c", second.conn_id);
        assert!(r.is_empty());
    }

    #[test]
    fn another_user_cannot_take_a_live_name() {
        let r = Registry::default();
        let mut alice = r.register("c", "alice").unwrap();
        assert_eq!(r.register("c", "bob").err(), Some(HeldByAnother));
        assert!(alice.taken_over.try_recv().is_err(), "alice keeps her connection");
        r.unregister("c", alice.conn_id);
        assert!(r.register("c", "bob").is_ok(), "a name nobody holds is free (sessions are the broker's)");
    }
}
