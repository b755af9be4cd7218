//! Who may use the admin API: a caller with the admin token (`Authorization: Bearer TOKEN`, checked against the
//! Argon2 hash `[admin] token_hash`), or one whose verified TLS client certificate names one of
//! `[admin] cert_names`. Without either configured the API is locked (403 for everyone): default deny.
//!
//! The token is verified with Argon2 (on the blocking pool, one at a time); once verified, the same token is
//! compared in constant time, so a dashboard refreshing every second costs no hashing. Failures slow the next
//! verification down (doubling from 100 ms up to 5 s) and are logged with the peer, at most once a second.

use std::net::SocketAddr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The first wait after a failed token.
const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// The longest wait after failed tokens.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Requests waiting for a token verification at most; more are answered 429 at once, so a flood of guesses
/// holds no more than this many connections.
const MAX_WAITING: usize = 16;

/// What proves a caller is the administrator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminSecrets {
    /// The Argon2 PHC hash of the admin token.
    pub token_hash: Option<String>,
    /// Common names of client certificates that are the administrator (admin TLS listener only).
    pub cert_names: Vec<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Neither a token hash nor certificate names are configured.
    Locked,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not the admin token.
    Wrong,
    /// Too many token verifications are waiting already.
    Busy,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Denied::Locked => (
                StatusCode::FORBIDDEN,
                "the admin API is locked: set [admin] token_hash (meshgate hash-password) or [admin] cert_names",
            ),
            Denied::Missing => (StatusCode::UNAUTHORIZED, "an admin token is needed: Authorization: Bearer TOKEN"),
            Denied::Wrong => (StatusCode::UNAUTHORIZED, "wrong admin token"),
            Denied::Busy => (StatusCode::TOO_MANY_REQUESTS, "too many admin token checks at once; try again"),
        };
        let mut response = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"meshgate\""));
        }
        response
    }
}

/// Failed verifications in a row, and when the last one was.
#[derive(Debug)]
struct Failures {
    count: u32,
    last: Option<Instant>,
    logged: Option<Instant>,
}

/// The admin API's gate.
#[derive(Debug)]
pub struct AdminAccess {
    secrets: RwLock<AdminSecrets>,
    /// The token last verified against the hash.
    verified: Mutex<Option<Vec<u8>>>,
    /// One Argon2 verification at a time.
    slot: tokio::sync::Semaphore,
    /// Requests waiting for `slot`.
    waiting: std::sync::atomic::AtomicUsize,
    failures: Mutex<Failures>,
}

impl AdminAccess {
    /// A gate for `secrets`.
    pub fn new(secrets: AdminSecrets) -> AdminAccess {
        AdminAccess {
            secrets: RwLock::new(secrets),
            verified: Mutex::new(None),
            slot: tokio::sync::Semaphore::new(1),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            failures: Mutex::new(Failures { count: 0, last: None, logged: None }),
        }
    }

    /// Puts new secrets in force (a reload); the token verified under the old ones is forgotten.
    pub fn replace(&self, secrets: AdminSecrets) {
        let mut current = self.secrets.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != secrets {
            *current = secrets;
            *self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
    }

    /// Whether anything can open the API.
    pub fn is_locked(&self) -> bool {
        let s = self.secrets.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.token_hash.is_none() && s.cert_names.is_empty()
    }

    /// Checks a request's `Authorization` header value, or the name of the client certificate its connection
    /// verified.
    pub async fn check(
        &self,
        authorization: Option<&str>,
        cert_name: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<(), Denied> {
        let (hash, by_cert) = {
            let s = self.secrets.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            (s.token_hash.clone(), cert_name.is_some_and(|n| s.cert_names.iter().any(|c| c == n)))
        };
        if by_cert {
            return Ok(());
        }
        let Some(hash) = hash else {
            return Err(if self.is_locked() { Denied::Locked } else { Denied::Missing });
        };
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Missing)?;
        if self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_deref()
            .is_some_and(|known| same(known, token.as_bytes()))
        {
            return Ok(());
        }
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Denied::Busy);
        }
        let slot = self.slot.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(_slot) = slot else { return Err(Denied::Wrong) };
        let wait = self.backoff();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let candidate = token.as_bytes().to_vec();
        let checked = candidate.clone();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|phc| Argon2::default().verify_password(&checked, &phc).is_ok())
        })
        .await
        .unwrap_or(false);
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ok {
            failures.count = 0;
            *self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(candidate);
            return Ok(());
        }
        let now = Instant::now();
        failures.count = failures.count.saturating_add(1);
        failures.last = Some(now);
        if failures.logged.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            failures.logged = Some(now);
            let peer = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
            tracing::warn!(peer, failures = failures.count, "admin API: wrong token");
        }
        Err(Denied::Wrong)
    }

    /// How long the next verification waits after the failures in a row.
    fn backoff(&self) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(last) = failures.last.filter(|_| failures.count > 0) else { return Duration::ZERO };
        let exponent = failures.count.saturating_sub(1).min(16);
        let wanted = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX);
        wanted.saturating_sub(last.elapsed())
    }
}

/// Constant-time equality of two byte strings (the length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};

    fn hash(token: &str) -> String {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(token.as_bytes(), &salt).unwrap().to_string()
    }

    #[tokio::test]
    async fn the_token_or_a_listed_certificate_opens_the_api_and_nothing_else() {
        let locked = AdminAccess::new(AdminSecrets::default());
        assert_eq!(locked.check(Some("Bearer x"), Some("ops"), None).await, Err(Denied::Locked));
        let access =
            AdminAccess::new(AdminSecrets { token_hash: Some(hash("s3cret")), cert_names: vec!["ops".into()] });
        assert_eq!(access.check(None, None, None).await, Err(Denied::Missing));
        assert_eq!(access.check(Some("Basic czNjcmV0"), None, None).await, Err(Denied::Missing));
        assert_eq!(access.check(Some("Bearer wrong"), None, None).await, Err(Denied::Wrong));
        assert!(access.backoff() > Duration::ZERO, "a failure slows the next verification");
        assert_eq!(access.check(Some("Bearer s3cret"), None, None).await, Ok(()));
        assert_eq!(access.check(Some("Bearer s3cret"), None, None).await, Ok(()), "the verified token again");
        assert_eq!(access.check(None, Some("ops"), None).await, Ok(()));
        assert_eq!(access.check(None, Some("device-7"), None).await, Err(Denied::Missing));
        access.replace(AdminSecrets { token_hash: Some(hash("other")), cert_names: vec![] });
        assert_eq!(access.check(Some("Bearer s3cret"), None, None).await, Err(Denied::Wrong), "the old token is gone");
    }
}
