//! Result and decision publishers: where the records of the bridge go (JSON Lines to stdout and a file here;
//! NATS subjects and JetStream with `rune serve` on NATS). One trait, several sinks, all fed the same records.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::ResultEnvelope;

/// Why a record could not be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct PublishError {
    pub sink: String,
    pub message: String,
}

/// A sink for results and decisions. Implementations must not lose a record silently: an error is returned
/// (and logged by the caller), never swallowed.
pub trait Publish: Send + Sync + 'static {
    /// One run result.
    fn result<'a>(&'a self, envelope: &'a ResultEnvelope) -> BoxFuture<'a, Result<(), PublishError>>;
    /// One decision of the rules engine (`Decision::to_json`), for the rule it belongs to.
    fn decision<'a>(&'a self, rule: &'a str, decision: &'a Value) -> BoxFuture<'a, Result<(), PublishError>>;
    /// At shutdown: waits until the results this sink kept for later delivery are delivered, or until `deadline`;
    /// returns the run ids still undelivered. A sink that delivers before `result` returns has nothing to wait for.
    fn drain(&self, _deadline: tokio::time::Instant) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async { Vec::new() })
    }
}

/// Every record to every sink, in order; the first error is returned after all sinks were tried.
#[derive(Clone, Default)]
pub struct Publishers(pub Vec<Arc<dyn Publish>>);

impl Publish for Publishers {
    fn result<'a>(&'a self, envelope: &'a ResultEnvelope) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let mut first = Ok(());
            for p in &self.0 {
                if let Err(e) = p.result(envelope).await {
                    tracing::error!(error = %e, run_id = %envelope.run_id, "result not published");
                    first = first.and(Err(e));
                }
            }
            first
        })
    }

    fn decision<'a>(&'a self, rule: &'a str, decision: &'a Value) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let mut first = Ok(());
            for p in &self.0 {
                if let Err(e) = p.decision(rule, decision).await {
                    tracing::error!(error = %e, rule, "decision not published");
                    first = first.and(Err(e));
                }
            }
            first
        })
    }

    fn drain(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            let mut left = Vec::new();
            for p in &self.0 {
                left.extend(p.drain(deadline).await);
            }
            left
        })
    }
}

/// JSON Lines: one record per line, to stdout and/or appended to a file (flushed per record).
pub struct JsonLines {
    stdout: Option<Mutex<tokio::io::Stdout>>,
    file: Option<(PathBuf, Mutex<tokio::fs::File>)>,
}

impl JsonLines {
    /// Opens (creates, appends to) `file` when given.
    pub async fn open(stdout: bool, file: Option<&Path>) -> Result<JsonLines, PublishError> {
        let file = match file {
            Some(path) => {
                let f = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await.map_err(|e| {
                    PublishError { sink: path.display().to_string(), message: format!("cannot open: {e}") }
                })?;
                Some((path.to_owned(), Mutex::new(f)))
            }
            None => None,
        };
        Ok(JsonLines { stdout: stdout.then(|| Mutex::new(tokio::io::stdout())), file })
    }

    async fn write(&self, record: &Value) -> Result<(), PublishError> {
        let mut line = serde_json::to_vec(record)
            .map_err(|e| PublishError { sink: "jsonl".into(), message: format!("cannot encode: {e}") })?;
        line.push(b'\n');
        if let Some(out) = &self.stdout {
            let mut out = out.lock().await;
            let written = async {
                out.write_all(&line).await?;
                out.flush().await
            };
            written.await.map_err(|e| PublishError { sink: "stdout".into(), message: e.to_string() })?;
        }
        if let Some((path, file)) = &self.file {
            let mut f = file.lock().await;
            let written = async {
                f.write_all(&line).await?;
                f.flush().await
            };
            written.await.map_err(|e| PublishError { sink: path.display().to_string(), message: e.to_string() })?;
        }
        Ok(())
    }
}

impl Publish for JsonLines {
    fn result<'a>(&'a self, envelope: &'a ResultEnvelope) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let value = serde_json::to_value(envelope)
                .map_err(|e| PublishError { sink: "jsonl".into(), message: format!("cannot encode: {e}") })?;
            self.write(&value).await
        })
    }

    fn decision<'a>(&'a self, _rule: &'a str, decision: &'a Value) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.write(decision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_lines_append_one_record_per_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("out.jsonl");
        let sink = JsonLines::open(false, Some(&path)).await.unwrap_or_else(|e| panic!("{e}"));
        for i in 0..3 {
            let d = serde_json::json!({"record": "decision", "n": i, "text": "line\nbreak"});
            sink.decision("r", &d).await.unwrap_or_else(|e| panic!("{e}"));
        }
        drop(sink);
        let again = JsonLines::open(false, Some(&path)).await.unwrap_or_else(|e| panic!("{e}"));
        again.decision("r", &serde_json::json!({"n": 3})).await.unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[1]["n"], 1);
        assert_eq!(lines[3]["n"], 3);
    }

    #[tokio::test]
    async fn an_unwritable_file_is_an_error_naming_it() {
        let err = JsonLines::open(false, Some(Path::new("/nonexistent-dir/x.jsonl"))).await.err();
        assert!(err.is_some_and(|e| e.sink.contains("nonexistent-dir")));
    }
}
