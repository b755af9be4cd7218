//! Device authentication: user names with Argon2id password hashes from the config, and the anonymous switch.
//!
//! The same credentials serve every protocol. Hashes are PHC strings (`$argon2id$v=19$...`) printed by
//! `meshgate hash-password`; plain-text passwords are never accepted in the config.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Argon2, PasswordHash as PhcHash};
use serde::{Deserialize, Deserializer};

use crate::config::AuthConfig;

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

/// Checks credentials against the configured users.
#[derive(Debug, Clone)]
pub struct Authenticator {
    allow_anonymous: bool,
    users: Arc<HashMap<String, String>>,
}

impl Authenticator {
    /// An authenticator for `[auth]`.
    pub fn new(config: &AuthConfig) -> Self {
        let users = config.users.iter().map(|u| (u.username.clone(), u.password_hash.0.clone())).collect();
        Authenticator { allow_anonymous: config.allow_anonymous, users: Arc::new(users) }
    }

    /// Checks a user name and password. Argon2 is deliberately slow, so this runs on the blocking pool.
    pub async fn check(&self, username: Option<&str>, password: Option<&[u8]>) -> AuthOutcome {
        let Some(username) = username else {
            return if self.allow_anonymous && password.is_none() {
                AuthOutcome::Allowed
            } else if password.is_some() {
                AuthOutcome::BadCredentials
            } else {
                AuthOutcome::NotAuthorized
            };
        };
        let (Some(hash), Some(password)) = (self.users.get(username).cloned(), password.map(<[u8]>::to_vec)) else {
            return AuthOutcome::BadCredentials;
        };
        let verified = tokio::task::spawn_blocking(move || {
            PhcHash::new(&hash).is_ok_and(|phc| Argon2::default().verify_password(&password, &phc).is_ok())
        })
        .await
        .unwrap_or(false);
        if verified { AuthOutcome::Allowed } else { AuthOutcome::BadCredentials }
    }

    /// Checks credentials from a protocol whose clients always present some (AMQP PLAIN: lapin and pika send
    /// `guest`/`guest` unless told otherwise). A configured user must give its password; any other name is an
    /// anonymous device, let in only with `allow_anonymous`. Returns the outcome and whether the name is a
    /// configured user (the identity ACL rules see).
    pub async fn check_presented(&self, username: &str, password: &[u8]) -> (AuthOutcome, bool) {
        if self.users.contains_key(username) {
            (self.check(Some(username), Some(password)).await, true)
        } else if self.allow_anonymous {
            (AuthOutcome::Allowed, false)
        } else {
            (AuthOutcome::BadCredentials, false)
        }
    }
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
        assert_eq!(auth.check(Some("d1"), Some(b"s3cret")).await, AuthOutcome::Allowed);
        assert_eq!(auth.check(Some("d1"), Some(b"wrong")).await, AuthOutcome::BadCredentials);
        assert_eq!(auth.check(Some("nobody"), Some(b"s3cret")).await, AuthOutcome::BadCredentials);
        assert_eq!(auth.check(None, None).await, AuthOutcome::NotAuthorized);
        let open = Authenticator::new(&AuthConfig { allow_anonymous: true, ..AuthConfig::default() });
        assert_eq!(open.check(None, None).await, AuthOutcome::Allowed);
    }

    #[test]
    fn plain_text_is_not_a_hash() {
        let r: Result<PasswordHash, _> = serde_json::from_str("\"hunter2\"");
        assert!(r.unwrap_err().to_string().contains("meshgate hash-password"));
    }
}
