//! Hot reload, on SIGHUP and `POST /api/reload`: the configuration file is read and validated again, and what can
//! change while devices stay connected is put in force at once: device users and password hashes, the ACL and
//! client-id rules, mapping rules, `[limits]` and `[broker]` limits, `[tls]` certificates and CA files, and the
//! admin token. A file that does not load is refused with the same file/key/problem error as `meshgate check`,
//! and the configuration in force stays. What only a restart can change (binds, `data_dir`, uplinks, the spool)
//! is reported, and the values in force are kept for it.
//!
//! After a reload, open connections judge their next publish and subscription by the new rules; sessions lose
//! the subscriptions the new ACL refuses; connections of a user the file no longer lists are disconnected (MQTT 5
//! DISCONNECT 0x98, AMQP 320, WebSocket 1008).

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use meshgate_edge_agent::admin::AdminAccess;
use meshgate_edge_agent::config_file::ConfigError;
use serde::Serialize;

use crate::broker::{BrokerConfig, LocalBroker};
use crate::clients::Clients;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyCell};
use crate::tls::ServerTls;

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reloaded {
    /// The sections it changed (`auth`, `rules`, `limits`, `broker`, `tls`, `admin`).
    pub applied: Vec<&'static str>,
    /// Keys that differ in the file but change only at a restart (the values in force are kept).
    pub restart_needed: Vec<&'static str>,
    /// Connections closed because the file no longer lists their user.
    pub disconnected: usize,
    /// Subscriptions ended because the new ACL refuses them.
    pub subscriptions_ended: usize,
}

/// Reloads the configuration of a running gateway.
pub struct Reloader {
    path: Option<PathBuf>,
    in_force: Mutex<Config>,
    policy: Arc<PolicyCell>,
    tls: Option<Arc<ServerTls>>,
    broker: Arc<LocalBroker>,
    clients: Arc<Clients>,
    metrics: Arc<Metrics>,
    admin: Arc<AdminAccess>,
}

/// The parts of the gateway a reload changes.
pub struct Reloadable {
    /// The users, rules and limits.
    pub policy: Arc<PolicyCell>,
    /// The TLS server side, when `[tls]` is configured.
    pub tls: Option<Arc<ServerTls>>,
    /// The local broker (limits, session readers).
    pub broker: Arc<LocalBroker>,
    /// The client list (connections of removed users).
    pub clients: Arc<Clients>,
    /// `meshgate_config_reloads_total`.
    pub metrics: Arc<Metrics>,
    /// The admin API's token.
    pub admin: Arc<AdminAccess>,
}

/// Whether two values of a section differ.
fn differs<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

impl Reloader {
    /// A reloader of the file at `path` (`None`: the embedded defaults), with `config` in force.
    pub fn new(path: Option<PathBuf>, config: Config, parts: Reloadable) -> Reloader {
        let Reloadable { policy, tls, broker, clients, metrics, admin } = parts;
        Reloader { path, in_force: Mutex::new(config), policy, tls, broker, clients, metrics, admin }
    }

    /// Reads, validates and applies the file; blocking (it reads files), so call it off the async workers.
    pub fn reload(&self) -> Result<Reloaded, ConfigError> {
        let outcome = self.try_reload();
        self.metrics.reloaded(outcome.is_ok());
        match &outcome {
            Ok(r) => {
                tracing::info!(applied = ?r.applied, restart_needed = ?r.restart_needed, disconnected = r.disconnected, "configuration reloaded")
            }
            Err(e) => tracing::warn!(error = %e, "configuration reload refused; the configuration in force stays"),
        }
        outcome
    }

    fn try_reload(&self) -> Result<Reloaded, ConfigError> {
        let mut next = Config::load(self.path.as_deref(), std::env::vars())?;
        let file = self.path.as_ref().map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
        let refused = |key: &str, problem: String| ConfigError { file: file.clone(), key: key.into(), problem };
        let mut in_force = self.in_force.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut report = Reloaded::default();
        // What only a restart changes: noted, and the values in force kept.
        let admin = |c: &Config| c.admin.as_ref().map(|a| (a.bind, a.tls_bind, a.protect_metrics));
        let (next_admin, admin_in_force) = (admin(&next), admin(&in_force));
        let fixed: [(&'static str, bool); 11] = [
            ("gateway", differs(&next.gateway, &in_force.gateway)),
            ("listeners", differs(&next.listeners, &in_force.listeners)),
            ("uplinks", differs(&next.uplinks, &in_force.uplinks)),
            ("downlinks", differs(&next.downlinks, &in_force.downlinks)),
            ("spool", differs(&next.spool, &in_force.spool)),
            ("forwarder", differs(&next.forwarder, &in_force.forwarder)),
            ("admin.bind", next_admin.map(|a| a.0) != admin_in_force.map(|a| a.0)),
            ("admin.tls_bind", next_admin.map(|a| a.1) != admin_in_force.map(|a| a.1)),
            ("admin.protect_metrics", next_admin.map(|a| a.2) != admin_in_force.map(|a| a.2)),
            ("broker.sys_interval_secs", next.broker.sys_interval_secs != in_force.broker.sys_interval_secs),
            ("tracing", differs(&next.tracing, &in_force.tracing)),
        ];
        report.restart_needed = fixed.iter().filter(|(_, d)| *d).map(|(k, _)| *k).collect();
        next.gateway = in_force.gateway.clone();
        next.listeners = in_force.listeners.clone();
        next.uplinks = in_force.uplinks.clone();
        next.downlinks = in_force.downlinks.clone();
        next.spool = in_force.spool.clone();
        next.forwarder = in_force.forwarder;
        next.broker.sys_interval_secs = in_force.broker.sys_interval_secs;
        next.tracing = in_force.tracing.clone();
        if let (Some(n), Some(f)) = (next.admin.as_mut(), in_force.admin.as_ref()) {
            (n.bind, n.tls_bind, n.protect_metrics) = (f.bind, f.tls_bind, f.protect_metrics);
        }
        // Everything is built before anything is put in force: a file that fails half-way changes nothing.
        let current = self.policy.load();
        let policy = Policy::of(&next, Some(&current)).map_err(|p| refused("rules", p))?;
        let sections: [(&'static str, bool); 4] = [
            ("auth", differs(&next.auth, &in_force.auth)),
            ("rules", differs(&next.rules, &in_force.rules)),
            ("limits", differs(&next.limits, &in_force.limits)),
            ("broker", differs(&next.broker, &in_force.broker)),
        ];
        report.applied = sections.iter().filter(|(_, d)| *d).map(|(k, _)| *k).collect();
        // The certificates load (or the reload is refused) before anything else is put in force.
        if differs(&next.tls, &in_force.tls) {
            match (&self.tls, &next.tls) {
                (Some(server), Some(t)) => {
                    server.replace(t).map_err(|e| refused("tls", format!("{e:#}")))?;
                    report.applied.push("tls");
                }
                _ => {
                    report.restart_needed.push("tls");
                    next.tls = in_force.tls.clone();
                }
            }
        }
        let secrets = next.admin_secrets();
        if secrets != in_force.admin_secrets() {
            report.applied.push("admin");
        }
        self.admin.replace(secrets);
        self.broker.with(|b| b.set_config(BrokerConfig::new(&next.broker, &next.limits)));
        if differs(&next.auth, &in_force.auth) {
            let acl = &policy.acl;
            let owner_acl = |owner: &str, client: &str| acl.for_device((!owner.is_empty()).then_some(owner), client);
            report.subscriptions_ended = self.broker.with(|b| b.reapply_acl(owner_acl));
            let removed = |c: &crate::clients::Client| {
                let user = c.info.user.as_str();
                !user.is_empty() && current.auth.knows(user) && !policy.auth.knows(user)
            };
            report.disconnected = self.clients.kick_where(removed);
        }
        self.policy.replace(policy);
        *in_force = next;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_applies_what_it_can_reports_the_rest_and_refuses_a_bad_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshgate.toml");
        let base = format!(
            "[gateway]\ndata_dir = \"{}\"\n[listeners.mqtt]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n",
            dir.path().display()
        );
        std::fs::write(&path, &base).unwrap();
        let config = Config::load(Some(&path), std::iter::empty()).unwrap();
        let policy = Arc::new(PolicyCell::new(Policy::of(&config, None).unwrap()));
        let broker_config = BrokerConfig::new(&config.broker, &config.limits);
        let parts = Reloadable {
            policy: Arc::clone(&policy),
            tls: None,
            broker: Arc::new(LocalBroker::open(&dir.path().join("broker"), broker_config).unwrap()),
            clients: Arc::default(),
            metrics: Arc::default(),
            admin: Arc::new(AdminAccess::new(config.admin_secrets())),
        };
        let reloader = Reloader::new(Some(path.clone()), config, parts);

        let hash = crate::auth::hash_password("pw").unwrap();
        let changed = base.replace("127.0.0.1:0\"\n[admin]", "127.0.0.1:1884\"\n[admin]")
            + &format!(
                "[auth]\n[[auth.users]]\nusername = \"d1\"\npassword_hash = \"{hash}\"\n[limits]\nmax_topic_levels = 4\n"
            );
        std::fs::write(&path, &changed).unwrap();
        let report = reloader.reload().unwrap();
        assert_eq!(report.applied, ["auth", "limits"]);
        assert_eq!(report.restart_needed, ["listeners"]);
        assert!(policy.load().auth.knows("d1"));
        assert_eq!(policy.load().limits.max_topic_levels, 4);
        assert_eq!(policy.generation(), 1);

        std::fs::write(&path, changed.replace("max_topic_levels = 4", "max_topic_levels = \"many\"")).unwrap();
        let refused = reloader.reload().unwrap_err();
        assert_eq!(refused.key, "limits.max_topic_levels");
        assert_eq!(policy.generation(), 1, "nothing of a refused file is put in force");
        assert_eq!(policy.load().limits.max_topic_levels, 4);
    }
}
