//! `[[uplinks]] kind = "http"`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::client_tls::ClientTls;

/// The CloudEvents HTTP binding's content mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpMode {
    /// One event per request: attributes as `ce-` headers, the data as the body.
    #[default]
    Binary,
    /// One event per request: `application/cloudevents+json`.
    Structured,
    /// Up to `max_batch` events per request: `application/cloudevents-batch+json`.
    Batch,
}

/// Settings of an HTTP (CloudEvents HTTP binding) uplink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUplinkConfig {
    /// The name routes refer to.
    pub name: String,
    /// Where events are POSTed: `http://` or `https://`.
    pub url: String,
    /// Binary (default), structured or batch mode.
    #[serde(default)]
    pub mode: HttpMode,
    /// Batch mode: the most events per request.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Headers sent with every request (an API key, a routing header).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer ...`.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// How long one request may take (connecting included) before it counts as failed and is retried.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at once (binary and structured modes; each device's events go one after another, so a
    /// receiver sees them in order). Batch mode sends its requests one after another.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The longest `Retry-After` honoured (a longer one is cut to this), in milliseconds.
    #[serde(default = "default_retry_after_max_ms")]
    pub retry_after_max_ms: u64,
    /// TLS for `https://`: the receiver's CA (the web roots when unset) and an optional client certificate.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// Where refused events go, relative to the data directory (default `{name}-dead-letter.jsonl`).
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
}

fn default_max_batch() -> usize {
    100
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_concurrency() -> usize {
    8
}
fn default_retry_after_max_ms() -> u64 {
    300_000
}

impl HttpUplinkConfig {
    /// Checks the keys; the error names the key (relative to the uplink's table) and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, p: String| Err((k.to_string(), p));
        match self.url.parse::<hyper::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            Ok(_) => return err("url", format!("`{}` is not an http:// or https:// URL", self.url)),
            Err(e) => return err("url", format!("`{}`: {e}", self.url)),
        }
        if self.max_batch == 0 {
            return err("max_batch", "must be at least 1".into());
        }
        if self.concurrency == 0 {
            return err("concurrency", "must be at least 1".into());
        }
        for (name, value) in &self.headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return err("headers", format!("`{name}` is not a header name"));
            }
            if hyper::header::HeaderValue::from_str(value).is_err() {
                return err("headers", format!("the value of `{name}` is not a header value"));
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// The dead-letter file's path relative to the data directory.
    pub fn dead_letter_path(&self) -> PathBuf {
        crate::uplink::dead_letter::path_for(&self.name, self.dead_letter_path.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> HttpUplinkConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn urls_headers_and_sizes_are_checked() {
        let ok = parse("name = \"h\"\nurl = \"https://mesh.example/events\"\nheaders = { x-api-key = \"k\" }\n");
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.dead_letter_path(), PathBuf::from("h-dead-letter.jsonl"));
        assert_eq!(parse("name = \"h\"\nurl = \"ftp://x/\"\n").validate().unwrap_err().0, "url");
        assert_eq!(parse("name = \"h\"\nurl = \"http://x/\"\nmax_batch = 0\n").validate().unwrap_err().0, "max_batch");
        let bad = parse("name = \"h\"\nurl = \"http://x/\"\nheaders = { \"a b\" = \"v\" }\n");
        assert_eq!(bad.validate().unwrap_err().0, "headers");
        assert!(toml::from_str::<HttpUplinkConfig>("name = \"h\"\nurl = \"http://x/\"\nbogus = 1\n").is_err());
    }
}
