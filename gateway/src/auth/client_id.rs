//! Which client ids a device may use: `auth.clientid_must_match` and `auth.clientid_from_certificate`, applied
//! to MQTT client ids and `cloudevents.json` client names before any session is looked at.
//!
//! - `clientid_must_match`: a pattern, `{username}` standing for the device's user name (or certificate name)
//!   and a trailing `*` for any rest: `"{username}"` (the id is the user name), `"{username}-*"` (a prefix),
//!   `"sensor-*"`. A device that sends no client id is given one that fits: the pattern itself when it has no
//!   `*`, else its prefix followed by a unique suffix.
//! - `clientid_from_certificate`: a device authenticated by a client certificate is its certificate name; it may
//!   send that name or none, any other is refused.
//!
//! A refused id gets MQTT 5 CONNACK 0x85 Client Identifier not valid, 3.1.1 return code 2, WebSocket close 1008.

/// The configured client-id rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdRules {
    /// `auth.clientid_must_match`.
    pub must_match: Option<String>,
    /// `auth.clientid_from_certificate`.
    pub from_certificate: bool,
}

/// The client id a device is to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId {
    /// The id.
    pub id: String,
    /// Whether the gateway chose it (the device sent none).
    pub assigned: bool,
}

/// Why a presented client id is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIdRefused {
    /// It does not fit `auth.clientid_must_match` for this user.
    Mismatch,
    /// It is not the device's certificate name (`auth.clientid_from_certificate`).
    NotCertificateName,
}

impl std::fmt::Display for ClientIdRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientIdRefused::Mismatch => "client id does not match auth.clientid_must_match",
            ClientIdRefused::NotCertificateName => "client id is not the certificate name",
        })
    }
}

impl ClientIdRules {
    /// Checks a `clientid_must_match` pattern: `{username}` anywhere, `*` only at the end.
    pub fn validate_pattern(pattern: &str) -> Result<(), String> {
        let body = pattern.strip_suffix('*').unwrap_or(pattern);
        if body.contains('*') {
            return Err("`*` may only end the pattern".into());
        }
        if pattern.is_empty() {
            return Err("must not be empty (leave it out to allow any client id)".into());
        }
        Ok(())
    }

    /// The name of a device on a protocol where it is optional and has a default of its own (a `cloudevents.json`
    /// client's or an AMQP device's user name): `presented` when given and no rule applies, `default()` when
    /// nothing was presented and no rule applies, else as [`ClientIdRules::resolve`].
    pub fn name(
        &self,
        presented: Option<&str>,
        default: impl FnOnce() -> String,
        user: Option<&str>,
        certificate: Option<&str>,
    ) -> Result<String, ClientIdRefused> {
        let presented = presented.filter(|p| !p.is_empty());
        if presented.is_none() && self.must_match.is_none() && !self.from_certificate {
            return Ok(default());
        }
        let fresh = || uuid::Uuid::now_v7().simple().to_string();
        self.resolve(presented.unwrap_or_default(), user, certificate, fresh).map(|c| c.id)
    }

    /// The client id of a device that presented `presented` (empty: none), authenticated as `user` (if anyone),
    /// with certificate name `certificate` (if it used one). `fresh` is a unique suffix, used when the gateway
    /// has to choose an id.
    pub fn resolve(
        &self,
        presented: &str,
        user: Option<&str>,
        certificate: Option<&str>,
        fresh: impl FnOnce() -> String,
    ) -> Result<ClientId, ClientIdRefused> {
        if let Some(name) = certificate.filter(|_| self.from_certificate) {
            return match presented {
                "" => Ok(ClientId { id: name.to_string(), assigned: true }),
                p if p == name => Ok(ClientId { id: name.to_string(), assigned: false }),
                _ => Err(ClientIdRefused::NotCertificateName),
            };
        }
        let Some(pattern) = &self.must_match else {
            return Ok(match presented {
                "" => ClientId { id: format!("mg-{}", fresh()), assigned: true },
                p => ClientId { id: p.to_string(), assigned: false },
            });
        };
        if pattern.contains("{username}") && user.is_none_or(str::is_empty) {
            return Err(ClientIdRefused::Mismatch);
        }
        let filled = pattern.replace("{username}", user.unwrap_or_default());
        let (prefix, exact) = match filled.strip_suffix('*') {
            Some(prefix) => (prefix, false),
            None => (filled.as_str(), true),
        };
        match presented {
            "" if exact => Ok(ClientId { id: filled.clone(), assigned: true }),
            "" => Ok(ClientId { id: format!("{prefix}{}", fresh()), assigned: true }),
            p if (exact && p == prefix) || (!exact && p.starts_with(prefix)) => {
                Ok(ClientId { id: p.to_string(), assigned: false })
            }
            _ => Err(ClientIdRefused::Mismatch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> String {
        "0001".into()
    }

    fn rules(pattern: Option<&str>, from_certificate: bool) -> ClientIdRules {
        ClientIdRules { must_match: pattern.map(String::from), from_certificate }
    }

    #[test]
    fn without_rules_any_id_goes_and_none_gets_one() {
        let r = rules(None, false);
        assert_eq!(r.resolve("x", Some("u"), None, fresh), Ok(ClientId { id: "x".into(), assigned: false }));
        assert_eq!(r.resolve("", None, None, fresh), Ok(ClientId { id: "mg-0001".into(), assigned: true }));
    }

    #[test]
    fn the_pattern_binds_the_id_to_the_user() {
        let exact = rules(Some("{username}"), false);
        assert_eq!(exact.resolve("device-1", Some("device-1"), None, fresh).map(|c| c.id), Ok("device-1".into()));
        assert_eq!(exact.resolve("device-1", Some("device-2"), None, fresh), Err(ClientIdRefused::Mismatch));
        assert_eq!(exact.resolve("device-1x", Some("device-1"), None, fresh), Err(ClientIdRefused::Mismatch));
        assert_eq!(exact.resolve("", Some("device-2"), None, fresh).map(|c| c.id), Ok("device-2".into()));
        assert_eq!(exact.resolve("", None, None, fresh), Err(ClientIdRefused::Mismatch), "anonymous has no name");
        let prefix = rules(Some("{username}-*"), false);
        assert_eq!(prefix.resolve("d1-a", Some("d1"), None, fresh).map(|c| c.id), Ok("d1-a".into()));
        assert_eq!(prefix.resolve("d1", Some("d1"), None, fresh), Err(ClientIdRefused::Mismatch));
        assert_eq!(prefix.resolve("d2-a", Some("d1"), None, fresh), Err(ClientIdRefused::Mismatch));
        assert_eq!(prefix.resolve("", Some("d1"), None, fresh).map(|c| c.id), Ok("d1-0001".into()));
        let fixed = rules(Some("sensor-*"), false);
        assert!(
            fixed.resolve("sensor-9", None, None, fresh).is_ok() && fixed.resolve("lamp", None, None, fresh).is_err()
        );
    }

    #[test]
    fn a_certificate_names_the_client_when_asked() {
        let r = rules(Some("{username}-*"), true);
        assert_eq!(r.resolve("", None, Some("cam-1"), fresh), Ok(ClientId { id: "cam-1".into(), assigned: true }));
        assert_eq!(r.resolve("cam-1", None, Some("cam-1"), fresh).map(|c| c.assigned), Ok(false));
        assert_eq!(r.resolve("cam-2", None, Some("cam-1"), fresh), Err(ClientIdRefused::NotCertificateName));
        assert!(r.resolve("u-x", Some("u"), None, fresh).is_ok(), "without a certificate the pattern rules");
    }

    #[test]
    fn an_optional_name_falls_back_to_the_protocols_default_only_without_rules() {
        let default = || "user-7".to_string();
        let none = rules(None, false);
        assert_eq!(none.name(None, default, Some("u"), None), Ok("user-7".into()));
        assert_eq!(none.name(Some(""), default, Some("u"), None), Ok("user-7".into()));
        assert_eq!(none.name(Some("lamp"), default, Some("u"), None), Ok("lamp".into()));
        let exact = rules(Some("{username}"), false);
        assert_eq!(exact.name(None, default, Some("u"), None), Ok("u".into()), "the rule's name, not the default");
        assert_eq!(exact.name(Some("lamp"), default, Some("u"), None), Err(ClientIdRefused::Mismatch));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(ClientIdRules::validate_pattern("{username}-*").is_ok());
        assert!(ClientIdRules::validate_pattern("a*b").is_err());
        assert!(ClientIdRules::validate_pattern("").is_err());
    }
}
