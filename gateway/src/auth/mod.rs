//! Device authentication: user names with Argon2id password hashes from the config, and the anonymous switch.
//!
//! The same credentials serve every protocol. Hashes are PHC strings (`$argon2id$v=19$...`) printed by
//! `meshgate hash-password`; plain-text passwords are never accepted in the config.
//!
//! Under attack ([`guard`]): verifications run a bounded number at a time, failures slow the source address and
//! the user name down exponentially, an unknown user name is verified against a dummy hash with the configured
//! users' parameters (so timing does not tell which names exist), and failures are logged, rate-limited, with the
//! peer address and the user name, and counted in `meshgate_auth_failures_total`.
//!
//! Which client ids a device may use: [`client_id`].

pub mod client_id;
pub mod guard;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Argon2, PasswordHash as PhcHash};
use serde::{Deserialize, Deserializer};

use crate::config::AuthConfig;
use crate::metrics::{Metrics, Protocol};
use guard::LoginGuard;

/// A validated PHC password hash string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl<'de> Deserialize<'de> for PasswordHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let phc = PhcHash::new(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "not a password hash ({e}); run `meshgate hash-password` and paste what it prints"
            ))
        })?;
        if !phc.algorithm.as_str().starts_with("argon2") {
            return Err(serde::de::Error::custom("only Argon2 hashes are supported"));
        }
        Ok(PasswordHash(s))
    }
}

/// Hashes a password with Argon2id and a random salt, as `meshgate hash-password` prints it.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// The outcome of checking a device's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The device may connect.
    Allowed,
    /// Credentials were given and are wrong (MQTT 5 0x86, 3.1.1 return code 4).
    BadCredentials,
    /// No credentials, and anonymous devices are not allowed (MQTT 5 0x87, 3.1.1 return code 5).
    NotAuthorized,
}

/// Where a login comes from, for backoff, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFrom {
    /// The peer's address, when the transport has one.
    pub addr: Option<IpAddr>,
    /// The listener's protocol.
    pub protocol: Protocol,
}

/// Checks credentials against the configured users.
#[derive(Debug, Clone)]
pub struct Authenticator {
    allow_anonymous: bool,
    users: Arc<HashMap<String, String>>,
    guard: Arc<LoginGuard>,
    /// A hash of a random password with the first user's parameters, verified for unknown names.
    dummy: Arc<OnceLock<String>>,
    metrics: Option<Arc<Metrics>>,
}

impl Authenticator {
    /// An authenticator for `[auth]`.
    pub fn new(config: &AuthConfig) -> Self {
        let users = config.users.iter().map(|u| (u.username.clone(), u.password_hash.0.clone())).collect();
        Authenticator {
            allow_anonymous: config.allow_anonymous,
            users: Arc::new(users),
            guard: Arc::new(LoginGuard::new(config)),
            dummy: Arc::new(OnceLock::new()),
            metrics: None,
        }
    }

    /// The users and the anonymous switch of `config`, keeping this authenticator's login guard (the failure
    /// history and backoff of a reload's predecessor) and its metrics.
    pub fn reconfigured(&self, config: &AuthConfig) -> Self {
        let users = config.users.iter().map(|u| (u.username.clone(), u.password_hash.0.clone())).collect();
        Authenticator {
            allow_anonymous: config.allow_anonymous,
            users: Arc::new(users),
            guard: Arc::clone(&self.guard),
            dummy: Arc::new(OnceLock::new()),
            metrics: self.metrics.clone(),
        }
    }

    /// Whether `username` is a configured user.
    pub fn knows(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// Counts failures in `metrics` (`meshgate_auth_failures_total`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks a user name and password. Argon2 is deliberately slow, so this runs on the blocking pool, a bounded
    /// number at a time, after the backoff that recent failures of this source or name earned.
    pub async fn check(&self, username: Option<&str>, password: Option<&[u8]>, from: LoginFrom) -> AuthOutcome {
        let Some(username) = username else {
            let outcome = if self.allow_anonymous && password.is_none() {
                AuthOutcome::Allowed
            } else if password.is_some() {
                AuthOutcome::BadCredentials
            } else {
                AuthOutcome::NotAuthorized
            };
            if outcome != AuthOutcome::Allowed {
                self.failed(None, from, outcome);
            }
            return outcome;
        };
        let delay = self.guard.delay(from.addr, Some(username), Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let known = self.users.get(username).cloned();
        let password = password.map(<[u8]>::to_vec);
        let verified = match self.guard.verification_slot().await {
            None => false,
            Some(_slot) => {
                let first = self.users.values().next().cloned();
                let dummy = Arc::clone(&self.dummy);
                tokio::task::spawn_blocking(move || {
                    // An unknown name, or no password, costs a verification all the same.
                    let hash = known.as_deref().unwrap_or_else(|| dummy.get_or_init(|| dummy_hash(first.as_deref())));
                    let candidate = password.as_deref().unwrap_or_default();
                    let ok =
                        PhcHash::new(hash).is_ok_and(|phc| Argon2::default().verify_password(candidate, &phc).is_ok());
                    ok && known.is_some() && password.is_some()
                })
                .await
                .unwrap_or(false)
            }
        };
        if verified {
            self.guard.succeeded(from.addr, Some(username));
            AuthOutcome::Allowed
        } else {
            self.failed(Some(username), from, AuthOutcome::BadCredentials);
            AuthOutcome::BadCredentials
        }
    }

    /// Records, counts and (rate-limited) logs a refused login.
    fn failed(&self, username: Option<&str>, from: LoginFrom, outcome: AuthOutcome) {
        let now = Instant::now();
        self.guard.failed(from.addr, username, now);
        if let Some(m) = &self.metrics {
            m.auth_failed(from.protocol);
        }
        if let Some(suppressed) = self.guard.may_log(now) {
            let peer = from.addr.map_or_else(|| "-".to_string(), |a| a.to_string());
            tracing::warn!(
                protocol = from.protocol.as_str(),
                peer,
                user = username.unwrap_or("-"),
                ?outcome,
                suppressed,
                "device login refused"
            );
        }
    }

    /// Checks credentials from a protocol whose clients always present some (AMQP PLAIN: lapin and pika send
    /// `guest`/`guest` unless told otherwise). A configured user must give its password; any other name is an
    /// anonymous device, let in only with `allow_anonymous`. Returns the outcome and whether the name is a
    /// configured user (the identity ACL rules see).
    pub async fn check_presented(&self, username: &str, password: &[u8], from: LoginFrom) -> (AuthOutcome, bool) {
        if self.users.contains_key(username) {
            (self.check(Some(username), Some(password), from).await, true)
        } else if self.allow_anonymous {
            (AuthOutcome::Allowed, false)
        } else {
            // Verified against the dummy hash: an unknown name takes as long as a wrong password.
            (self.check(Some(username), Some(password), from).await, false)
        }
    }
}

/// A hash of a random password with the parameters of `like` (a configured user's hash), or Argon2's defaults.
fn dummy_hash(like: Option<&str>) -> String {
    let params = like.and_then(|h| PhcHash::new(h).ok()).and_then(|phc| argon2::Params::try_from(&phc).ok());
    let argon = match params {
        Some(p) => Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p),
        None => Argon2::default(),
    };
    let salt = SaltString::generate(&mut OsRng);
    let secret = SaltString::generate(&mut OsRng);
    argon.hash_password(secret.as_str().as_bytes(), &salt).map(|h| h.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserConfig;

    #[tokio::test]
    async fn hashed_users_are_checked_and_anonymous_follows_the_switch() {
        let hash = hash_password("s3cret").unwrap();
        let user = UserConfig { username: "d1".into(), password_hash: PasswordHash(hash) };
        let auth =
            Authenticator::new(&AuthConfig { allow_anonymous: false, users: vec![user], ..AuthConfig::default() });
        let from = LoginFrom { addr: None, protocol: Protocol::Mqtt };
        assert_eq!(auth.check(Some("d1"), Some(b"s3cret"), from).await, AuthOutcome::Allowed);
        assert_eq!(auth.check(Some("d1"), Some(b"wrong"), from).await, AuthOutcome::BadCredentials);
        assert_eq!(auth.check(Some("nobody"), Some(b"s3cret"), from).await, AuthOutcome::BadCredentials);
        assert_eq!(auth.check(Some("d1"), None, from).await, AuthOutcome::BadCredentials);
        assert_eq!(auth.check(None, None, from).await, AuthOutcome::NotAuthorized);
        let open = Authenticator::new(&AuthConfig { allow_anonymous: true, ..AuthConfig::default() });
        assert_eq!(open.check(None, None, from).await, AuthOutcome::Allowed);
    }

    #[tokio::test]
    async fn unknown_names_cost_a_verification_and_failures_are_counted_and_slowed() {
        let hash = hash_password("s3cret").unwrap();
        let user = UserConfig { username: "d1".into(), password_hash: PasswordHash(hash) };
        let config = AuthConfig { users: vec![user], backoff_base_ms: 50, ..AuthConfig::default() };
        let metrics = Arc::new(Metrics::default());
        let auth = Authenticator::new(&config).with_metrics(Arc::clone(&metrics));
        let from = LoginFrom { addr: Some(IpAddr::from([192, 0, 2, 1])), protocol: Protocol::Amqp };
        assert_eq!(auth.check_presented("nobody", b"x", from).await, (AuthOutcome::BadCredentials, false));
        assert!(auth.dummy.get().is_some_and(|h| h.starts_with("$argon2id$")), "the dummy hash was verified");
        assert_eq!(auth.guard.delay(from.addr, None, Instant::now()), std::time::Duration::from_millis(50));
        assert!(metrics.render().contains("meshgate_auth_failures_total{protocol=\"amqp\"} 1"));
        assert_eq!(auth.check(Some("d1"), Some(b"s3cret"), from).await, AuthOutcome::Allowed);
        assert_eq!(auth.guard.delay(from.addr, Some("d1"), Instant::now()), std::time::Duration::ZERO, "forgiven");
    }

    #[test]
    fn plain_text_is_not_a_hash() {
        let r: Result<PasswordHash, _> = serde_json::from_str("\"hunter2\"");
        assert!(r.unwrap_err().to_string().contains("meshgate hash-password"));
    }
}
