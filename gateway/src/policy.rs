//! The part of the configuration a reload replaces while devices stay connected: device users and their
//! password hashes, the ACL, the client-id rules, the CloudEvents mapping rules and `[limits]`.
//!
//! Connections read it through a [`PolicyCell`]: the policy in force and a generation number. A connection keeps
//! the policy it last saw in a [`DevicePolicy`] and looks at the generation (one relaxed load) before it judges a
//! publish or a subscription; when a reload moved it on, the connection takes the new policy and derives its
//! device's ACL again, so a revoked right is revoked for connections already open, without a lock on the path of
//! every message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::acl::{Acl, DeviceAcl};
use crate::auth::Authenticator;
use crate::auth::client_id::ClientIdRules;
use crate::config::Config;
use crate::limits::LimitsConfig;
use crate::normalize::Normalizer;

/// Device users, rules and limits in force.
#[derive(Debug)]
pub struct Policy {
    /// Device credentials.
    pub auth: Authenticator,
    /// Publish and subscribe rules.
    pub acl: Acl,
    /// Which client ids a device may use.
    pub client_ids: ClientIdRules,
    /// Message → CloudEvent, with the mapping rules.
    pub normalizer: Arc<Normalizer>,
    /// `[limits]`: connections made after a reload get the new ones.
    pub limits: LimitsConfig,
}

impl Policy {
    /// The policy of `config`. `previous` (on a reload) keeps the login guard's failure history, so a reload
    /// does not forgive an attacker's backoff.
    pub fn of(config: &Config, previous: Option<&Policy>) -> Result<Policy, String> {
        let auth = match previous {
            Some(p) => p.auth.reconfigured(&config.auth),
            None => Authenticator::new(&config.auth),
        };
        Ok(Policy {
            auth,
            acl: Acl::new(config.auth.acl.clone(), config.auth.acl_default),
            client_ids: config.auth.client_ids(),
            normalizer: Arc::new(Normalizer::new(&config.gateway.id, &config.rules)?),
            limits: config.limits,
        })
    }
}

/// The policy in force, swapped whole by a reload.
#[derive(Debug)]
pub struct PolicyCell {
    generation: AtomicU64,
    current: RwLock<Arc<Policy>>,
}

impl PolicyCell {
    /// A cell holding `policy` (generation 0).
    pub fn new(policy: Policy) -> PolicyCell {
        PolicyCell { generation: AtomicU64::new(0), current: RwLock::new(Arc::new(policy)) }
    }

    /// The policy in force.
    pub fn load(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// How many times the policy was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `policy` in force; connections take it at their next publish or subscription.
    pub fn replace(&self, policy: Policy) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policy);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A connection's view of the policy: the one it last saw, and its device's ACL under it.
#[derive(Debug)]
pub struct DevicePolicy {
    seen: u64,
    policy: Arc<Policy>,
    /// The user name or certificate name the rules know the device by (`None`: anonymous).
    identity: Option<String>,
    client_id: String,
    acl: DeviceAcl,
}

impl DevicePolicy {
    /// The view of a connection that has not logged in yet: the policy in force, an empty ACL.
    pub fn new(cell: &PolicyCell) -> DevicePolicy {
        let seen = cell.generation();
        DevicePolicy { seen, policy: cell.load(), identity: None, client_id: String::new(), acl: DeviceAcl::default() }
    }

    /// The device logged in as `identity` with `client_id`: its ACL under the policy in force.
    pub fn admit(&mut self, cell: &PolicyCell, identity: Option<&str>, client_id: &str) -> &DeviceAcl {
        self.refresh(cell);
        self.identity = identity.map(String::from);
        self.client_id = client_id.to_string();
        self.acl = self.policy.acl.for_device(identity, client_id);
        &self.acl
    }

    /// Takes the policy a reload put in force, if any; returns whether it did (and the ACL was derived again).
    pub fn refresh(&mut self, cell: &PolicyCell) -> bool {
        let generation = cell.generation();
        if generation == self.seen {
            return false;
        }
        self.seen = generation;
        self.policy = cell.load();
        self.acl = self.policy.acl.for_device(self.identity.as_deref(), &self.client_id);
        true
    }

    /// The policy in force (taken anew when a reload replaced it).
    pub fn current(&mut self, cell: &PolicyCell) -> &Policy {
        self.refresh(cell);
        &self.policy
    }

    /// The device's ACL under the policy in force.
    pub fn acl(&mut self, cell: &PolicyCell) -> &DeviceAcl {
        self.refresh(cell);
        &self.acl
    }

    /// The policy as last taken (no look at the cell).
    pub fn policy_seen(&self) -> &Policy {
        &self.policy
    }

    /// The device's ACL as last derived (no look at the cell).
    pub fn acl_seen(&self) -> &DeviceAcl {
        &self.acl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshgate.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), std::iter::empty()).unwrap()
    }

    #[test]
    fn a_connection_takes_a_replaced_policy_and_derives_its_acl_again() {
        let open = config("[auth]\nallow_anonymous = true\n");
        let cell = PolicyCell::new(Policy::of(&open, None).unwrap());
        let mut device = DevicePolicy::new(&cell);
        assert!(device.admit(&cell, Some("d1"), "c1").may_publish("a/b"));
        let closed =
            config("[auth]\nallow_anonymous = true\n[[auth.acl]]\nuser = \"d1\"\nallow_publish = [\"x/{clientid}\"]\n");
        let previous = cell.load();
        cell.replace(Policy::of(&closed, Some(&previous)).unwrap());
        assert!(device.acl_seen().may_publish("a/b"), "nothing changes before the connection looks");
        assert!(!device.acl(&cell).may_publish("a/b"), "the revoked right is revoked for the open connection");
        assert!(device.acl(&cell).may_publish("x/c1"));
        assert!(!device.refresh(&cell), "taken once");
    }
}
