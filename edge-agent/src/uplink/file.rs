//! The embedded default uplink: a JSON-lines file of structured-mode CloudEvents, one event per line, fsynced
//! before a batch counts as delivered.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::runtime::RuntimeFlavor;

use super::jsonl::JsonLinesFile;
use super::{BoxFuture, Uplink, UplinkError};
use crate::CloudEvent;

/// Appends events to a file, one JSON object per line; a batch is in the file whole or not at all.
pub struct FileUplink {
    /// Locked only inside the blocking write, never across an await.
    file: Arc<Mutex<JsonLinesFile>>,
    /// Reused between batches so a commit allocates nothing once warm.
    buf: Vec<u8>,
}

impl FileUplink {
    /// Opens (creating if needed) the file for appending, and its parent directories.
    pub async fn open(path: &Path) -> Result<FileUplink, UplinkError> {
        let path = path.to_owned();
        let file =
            tokio::task::spawn_blocking(move || JsonLinesFile::open(&path)).await.map_err(std::io::Error::other)??;
        Ok(FileUplink { file: Arc::new(Mutex::new(file)), buf: Vec::with_capacity(64 * 1024) })
    }
}

impl Uplink for FileUplink {
    fn send<'a>(&'a mut self, batch: &'a [&'a CloudEvent]) -> BoxFuture<'a, Result<(), UplinkError>> {
        Box::pin(async move {
            let mut buf = std::mem::take(&mut self.buf);
            let file = Arc::clone(&self.file);
            let multi_thread = tokio::runtime::Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread;
            let result = if multi_thread {
                // Encoding and writing block this worker, not the connections: the runtime hands its other tasks
                // to another worker meanwhile, and no thread hop is needed for the write.
                tokio::task::block_in_place(|| encode(batch, &mut buf).and_then(|()| append(&file, &buf)))
            } else {
                encode(batch, &mut buf)?;
                let (returned, result) = tokio::task::spawn_blocking(move || {
                    let result = append(&file, &buf);
                    (buf, result)
                })
                .await
                .map_err(std::io::Error::other)?;
                buf = returned;
                result
            };
            self.buf = buf;
            result.map_err(UplinkError::Io)
        })
    }
}

/// One JSON line per event into `buf` (cleared first).
fn encode(batch: &[&CloudEvent], buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    for event in batch {
        serde_json::to_writer(&mut *buf, event).map_err(std::io::Error::other)?;
        buf.push(b'\n');
    }
    Ok(())
}

/// Appends the encoded lines, whole or not at all, and syncs them.
fn append(file: &Mutex<JsonLinesFile>, lines: &[u8]) -> std::io::Result<()> {
    file.lock().unwrap_or_else(std::sync::PoisonError::into_inner).append(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_one_json_event_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/events.jsonl");
        let mut uplink = FileUplink::open(&path).await.unwrap();
        let event = CloudEvent { id: "1".into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() };
        uplink.send(&[&event, &event]).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(CloudEvent::from_json_slice(lines[0].as_bytes()).unwrap(), event);
    }
}
