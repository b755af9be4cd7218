//! `[[uplinks]] kind = "nats"`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::client_tls::ClientTls;

/// How events are laid out on NATS (the CloudEvents NATS binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatsMode {
    /// Attributes as `ce-` headers, `datacontenttype` as `content-type`, the data as the payload.
    #[default]
    Binary,
    /// `application/cloudevents+json` payloads.
    Structured,
}

/// Settings of a NATS JetStream uplink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsUplinkConfig {
    /// The name routes refer to.
    pub name: String,
    /// The server: `nats://host:port` (or `tls://host:port`, which requires TLS).
    #[serde(default = "default_url")]
    pub url: String,
    /// Subject template: `{subject}` (`/` becomes `.`), `{type}`, `{source}`, `{id}`, extensions by name.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// The subject of an event whose template renders empty (an event without a subject).
    #[serde(default = "default_fallback_subject")]
    pub default_subject: String,
    /// A stream to create if missing (file storage, `stream_subjects`); unset: the server must have a stream
    /// that takes the subjects.
    #[serde(default)]
    pub stream: Option<String>,
    /// The subjects of a created stream; default: the subject template's literal prefix followed by `>`.
    #[serde(default)]
    pub stream_subjects: Vec<String>,
    /// The duplicate window of a created stream, in milliseconds: how long JetStream remembers a `Nats-Msg-Id`.
    #[serde(default = "default_duplicate_window_ms")]
    pub duplicate_window_ms: u64,
    /// Binary (default) or structured mode.
    #[serde(default)]
    pub mode: NatsMode,
    /// Credentials: user name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Credentials: password.
    #[serde(default)]
    pub password: Option<String>,
    /// Credentials: a token.
    #[serde(default)]
    pub token: Option<String>,
    /// Credentials: an NKey seed (`SU...`).
    #[serde(default)]
    pub nkey_seed: Option<String>,
    /// Credentials: a `.creds` file (JWT and seed), relative to the data directory.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// TLS: the server's CA and an optional client certificate; set for a server that requires TLS.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// Events awaiting their PubAck at once (spread over the devices of a batch; each device's events go one
    /// after another, so their order in the stream is the device's).
    #[serde(default = "default_inflight")]
    pub inflight: usize,
    /// How long connecting, or one PubAck, may take before the attempt counts as failed and is retried.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Where events JetStream refuses for good go, relative to the data directory (default
    /// `{name}-dead-letter.jsonl`).
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_subject() -> String {
    "{subject}".into()
}
fn default_fallback_subject() -> String {
    "meshgate".into()
}
fn default_duplicate_window_ms() -> u64 {
    // JetStream's own default.
    120_000
}
fn default_inflight() -> usize {
    256
}
fn default_timeout_ms() -> u64 {
    10_000
}

impl NatsUplinkConfig {
    /// Checks the keys; the error names the key (relative to the uplink's table) and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, p: &str| Err((k.to_string(), p.to_string()));
        if !(self.url.starts_with("nats://") || self.url.starts_with("tls://")) {
            return err("url", "must start with `nats://` or `tls://`");
        }
        if self.inflight == 0 {
            return err("inflight", "must be at least 1");
        }
        if super::subject::sanitize(&self.default_subject) != self.default_subject {
            return err("default_subject", "is not a NATS subject (tokens separated by `.`, no wildcards or spaces)");
        }
        if self.user.is_some() != self.password.is_some() {
            return err(if self.user.is_some() { "password" } else { "user" }, "is needed with the other");
        }
        let credentials =
            [self.user.is_some(), self.token.is_some(), self.nkey_seed.is_some(), self.creds_file.is_some()];
        if credentials.iter().filter(|c| **c).count() > 1 {
            return err("token", "only one of user/password, token, nkey_seed and creds_file may be set");
        }
        if let Some(stream) = &self.stream {
            if stream.is_empty() || stream.contains(['.', '*', '>', ' ', '/', '\\']) {
                return err("stream", "must be a stream name (no `.`, `*`, `>`, `/`, `\\` or spaces)");
            }
            if self.stream_subjects().is_empty() {
                return err(
                    "stream_subjects",
                    "is needed when the subject template has no literal prefix to derive it from",
                );
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// The subjects of a created stream: `stream_subjects`, or the template's literal prefix up to its last `.`
    /// followed by `>` (`site7.{subject}` → `site7.>`).
    pub fn stream_subjects(&self) -> Vec<String> {
        if !self.stream_subjects.is_empty() {
            return self.stream_subjects.clone();
        }
        let literal = self.subject.split('{').next().unwrap_or_default();
        match literal.rsplit_once('.') {
            Some((prefix, _)) if !prefix.is_empty() => vec![format!("{prefix}.>")],
            _ => Vec::new(),
        }
    }

    /// The dead-letter file's path relative to the data directory.
    pub fn dead_letter_path(&self) -> PathBuf {
        crate::uplink::dead_letter::path_for(&self.name, self.dead_letter_path.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> NatsUplinkConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn stream_subjects_come_from_the_template_and_bad_keys_are_named() {
        let c = parse("name = \"js\"\nsubject = \"site7.{subject}\"\nstream = \"EDGE\"\n");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.stream_subjects(), ["site7.>"]);
        let c = parse("name = \"js\"\nstream = \"EDGE\"\n");
        assert_eq!(c.validate().unwrap_err().0, "stream_subjects");
        let c = parse("name = \"js\"\nstream = \"EDGE\"\nstream_subjects = [\"devices.>\"]\n");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(parse("name = \"js\"\nurl = \"http://x\"\n").validate().unwrap_err().0, "url");
        assert_eq!(parse("name = \"js\"\nuser = \"u\"\n").validate().unwrap_err().0, "password");
        assert_eq!(parse("name = \"js\"\ntoken = \"t\"\nnkey_seed = \"S\"\n").validate().unwrap_err().0, "token");
        assert_eq!(parse("name = \"js\"\ndefault_subject = \"a b\"\n").validate().unwrap_err().0, "default_subject");
        assert!(toml::from_str::<NatsUplinkConfig>("name = \"js\"\nbogus = 1\n").is_err());
    }
}
