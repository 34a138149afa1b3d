//! The file target: one JSON line per delivery, the response form of DESIGN.md (with the
//! delivery's `id`), appended and fsync'd per batch; at `max_size` the file is renamed to
//! `PATH.1` (the one before to `PATH.2`, up to [`KEEP`]) and a new one started.

use crate::{Delivery, Outcome, Payload, SendFuture, Sink, SinkLimits};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rotated files kept beside the current one.
pub const KEEP: u32 = 5;

/// Appends deliveries to a file.
pub struct FileSink {
    path: PathBuf,
    max_size: u64,
    /// One writer at a time (the pipeline sends one batch at a time per target anyway).
    lock: Arc<Mutex<()>>,
}

impl FileSink {
    /// A sink writing to `path`, rotating at `max_size` bytes.
    pub fn new(path: impl AsRef<Path>, max_size: u64) -> FileSink {
        FileSink {
            path: path.as_ref().to_path_buf(),
            max_size,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn line(d: &Delivery) -> String {
        let mut v = match &d.payload {
            Payload::Response(r) => serde_json::to_value(r),
            Payload::Metric {
                agent,
                service,
                series,
                time_ms,
            } => serde_json::to_value(series).map(|mut s| {
                s["agent"] = agent.as_str().into();
                s["service"] = service.as_str().into();
                s["time_ms"] = (*time_ms).into();
                s
            }),
        }
        .unwrap_or(serde_json::Value::Null);
        v["id"] = d.id.as_str().into();
        if let Some(link) = &d.link {
            v["link"] = link.as_str().into();
        }
        v.to_string()
    }

    fn rotate(path: &Path) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut p = path.to_path_buf().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(numbered(KEEP));
        for n in (1..KEEP).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(path, numbered(1))
    }

    /// Appends `text` (whole lines), rotating first when the file has reached `max_size`.
    fn append(path: &Path, max_size: u64, text: &str) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        if size > 0 && size >= max_size {
            Self::rotate(path)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()
    }
}

impl Sink for FileSink {
    fn limits(&self) -> SinkLimits {
        SinkLimits {
            max_batch: 1000,
            min_interval: Duration::ZERO,
            timeout: Duration::from_secs(30),
        }
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        let mut text = String::new();
        for d in batch {
            text.push_str(&Self::line(d));
            text.push('\n');
        }
        let (path, max_size, lock) = (self.path.clone(), self.max_size, self.lock.clone());
        Box::pin(async move {
            let written = tokio::task::spawn_blocking(move || {
                let _one_writer = lock.lock().unwrap_or_else(|p| p.into_inner());
                Self::append(&path, max_size, &text)
            })
            .await;
            let outcome = match written {
                Ok(Ok(())) => Outcome::Sent,
                Ok(Err(e)) => Outcome::Retry {
                    after: None,
                    reason: format!("cannot write {}: {e}", self.path.display()),
                },
                Err(e) => Outcome::Retry {
                    after: None,
                    reason: format!("the file writer failed: {e}"),
                },
            };
            vec![outcome; batch.len()]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_model::Response;

    fn delivery(n: u32) -> Delivery {
        let response: Response = serde_json::from_value(serde_json::json!({
            "rule": "r1", "agent": "a1", "service": "shop", "time": "2026-12-04T00:00:00Z",
            "thread": "main", "location": {"file": "src/main.rs", "line": n, "function": "main"},
            "message": format!("hit {n}"), "frames": [], "locals": {}
        }))
        .unwrap();
        Delivery {
            id: format!("d{n}"),
            payload: Payload::Response(response),
            link: None,
        }
    }

    #[tokio::test]
    async fn lines_are_appended_and_the_file_rotates_at_its_size() {
        let dir = nonstop_testkit::tempdir("file-sink");
        let path = dir.join("out/responses.jsonl");
        let sink = FileSink::new(&path, 8192);
        let batch: Vec<Delivery> = (1..=3).map(delivery).collect();
        assert_eq!(sink.send(&batch).await, vec![Outcome::Sent; 3]);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["id"], "d2");
        assert_eq!(lines[1]["message"], "hit 2");
        assert_eq!(lines[1]["location"]["line"], 2);

        // Past 8 KB the next batch starts a new file; the old one is PATH.1.
        for k in 0..10 {
            let batch: Vec<Delivery> = (10 * k..10 * k + 10).map(delivery).collect();
            sink.send(&batch).await;
        }
        let rotated = std::fs::read_to_string(dir.join("out/responses.jsonl.1")).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(rotated.len() >= 8192, "{}", rotated.len());
        assert!(current.len() < rotated.len() + 2048);
        let total = (1..=KEEP)
            .filter_map(|n| {
                std::fs::read_to_string(dir.join(format!("out/responses.jsonl.{n}"))).ok()
            })
            .map(|t| t.lines().count())
            .sum::<usize>()
            + current.lines().count();
        assert_eq!(total, 103);
    }
}
