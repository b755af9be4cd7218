//! The dead-letter file: events an uplink will never deliver (poison for the destination, unroutable), one JSON
//! object per line with the reason, fsynced before the event counts as handled.
//!
//! ```json
//! {"at":"2026-12-01T10:00:00.123Z","uplink":"mesh","endpoint":"10.0.0.7:10105","code":7,"reason":"...","event":{...}}
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::jsonl::JsonLinesFile;
use crate::CloudEvent;

/// Why an event was set aside.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter<'a> {
    /// The uplink that refused it.
    pub uplink: &'a str,
    /// The endpoint that answered, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<&'a str>,
    /// The destination's status code, if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// The destination's words, or ours.
    pub reason: &'a str,
}

/// Where an uplink's dead letters go, relative to the data directory: `configured`, else
/// `{uplink}-dead-letter.jsonl`.
pub fn path_for(uplink: &str, configured: Option<&Path>) -> PathBuf {
    configured.map_or_else(|| PathBuf::from(format!("{uplink}-dead-letter.jsonl")), Path::to_path_buf)
}

/// An append-only dead-letter file; clones append to the same open file.
#[derive(Debug, Clone)]
pub struct DeadLetterFile {
    path: PathBuf,
    /// Opened on the first dead letter.
    file: Arc<Mutex<Option<JsonLinesFile>>>,
}

#[derive(Serialize)]
struct Line<'a> {
    at: String,
    #[serde(flatten)]
    why: &'a DeadLetter<'a>,
    event: &'a CloudEvent,
}

impl DeadLetterFile {
    /// A dead-letter file at `path` (created, with its directory, on first use).
    pub fn new(path: &Path) -> DeadLetterFile {
        DeadLetterFile { path: path.to_owned(), file: Arc::default() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event with its reason and syncs the file. Blocking: call from a blocking context or accept a
    /// short stall (dead letters are rare by nature).
    pub fn append(&self, event: &CloudEvent, why: &DeadLetter<'_>) -> std::io::Result<()> {
        let at = crate::spool::record::now_ms();
        let at = meshgate_protocols::cloudevents::format_timestamp(
            i64::try_from(at / 1000).unwrap_or(i64::MAX),
            u32::try_from(at % 1000).unwrap_or(0) * 1_000_000,
        )
        .unwrap_or_default();
        let mut line = serde_json::to_vec(&Line { at, why, event }).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = match &mut *file {
            Some(file) => file,
            None => file.insert(JsonLinesFile::open(&self.path)?),
        };
        file.append(&line)
    }

    /// Appends one event on the blocking pool (the write is fsynced) and counts it in `stats`; the uplink's
    /// answer for the event, whatever its kind: the error says why the event could not be set aside.
    pub async fn set_aside(
        &self,
        event: &CloudEvent,
        why: &DeadLetter<'_>,
        stats: &super::UplinkStats,
    ) -> Result<(), super::UplinkError> {
        tracing::warn!(uplink = why.uplink, event = %event.id, endpoint = ?why.endpoint, code = ?why.code, reason = why.reason, "the destination refused the event for good; dead-lettered");
        let (file, event) = (self.clone(), event.clone());
        let (uplink, endpoint, code, reason) =
            (why.uplink.to_string(), why.endpoint.map(str::to_string), why.code, why.reason.to_string());
        let written = tokio::task::spawn_blocking(move || {
            let why = DeadLetter { uplink: &uplink, endpoint: endpoint.as_deref(), code, reason: &reason };
            file.append(&event, &why)
        })
        .await
        .map_err(std::io::Error::other)?;
        written?;
        stats.dead_lettered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dead_letter_is_one_line_with_its_reason_and_event() {
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::new(&dir.path().join("dl/x.jsonl"));
        let event = CloudEvent { id: "1".into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() };
        let why = DeadLetter { uplink: "mesh", endpoint: Some("h:1"), code: Some(7), reason: "body error" };
        file.append(&event, &why).unwrap();
        file.append(&event, &why).unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["reason"], "body error");
        assert_eq!(lines[0]["code"], 7);
        assert_eq!(lines[0]["endpoint"], "h:1");
        assert_eq!(lines[0]["event"]["id"], "1");
        assert!(lines[0]["at"].as_str().unwrap().ends_with('Z'));
    }
}
