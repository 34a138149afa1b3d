//! The Debug Adapter Protocol's base protocol: each message is a `Content-Length: N`
//! header block, a blank line, and N bytes of JSON.

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

/// Largest message accepted from the client; a larger Content-Length is a broken client.
const MAX_MESSAGE: usize = 64 << 20;

/// Reads the next message; `None` when the client closed the stream.
pub fn read_message(r: &mut impl BufRead) -> Result<Option<Value>> {
    let mut length: Option<usize> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            if length.is_none() {
                return Ok(None);
            }
            bail!("the client closed the stream inside a message's headers");
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if length.is_some() {
                break;
            }
            continue;
        }
        if let Some((name, value)) = l.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            let n: usize = value
                .trim()
                .parse()
                .with_context(|| format!("bad Content-Length header {l:?}"))?;
            if n > MAX_MESSAGE {
                bail!("a message of {n} bytes is over the limit of {MAX_MESSAGE}");
            }
            length = Some(n);
        }
    }
    let mut body = vec![0; length.unwrap_or(0)];
    r.read_exact(&mut body)
        .context("the client closed the stream inside a message")?;
    serde_json::from_slice(&body)
        .map(Some)
        .context("a message is not JSON")
}

/// Writes messages to the client, numbering them; shared by the request loop and the
/// threads that forward breakpoint changes and responses.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Mutex<(u64, Box<dyn Write + Send>)>>,
}

impl Writer {
    /// A writer over `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Writer {
        Writer {
            inner: Arc::new(Mutex::new((0, out))),
        }
    }

    fn send(&self, mut message: Value) -> Result<()> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| anyhow::anyhow!("the DAP writer is poisoned"))?;
        let (seq, out) = &mut *guard;
        *seq += 1;
        message["seq"] = json!(*seq);
        let body = serde_json::to_vec(&message)?;
        write!(out, "Content-Length: {}\r\n\r\n", body.len())?;
        out.write_all(&body)?;
        out.flush()?;
        Ok(())
    }

    /// An event.
    pub fn event(&self, event: &str, body: Value) -> Result<()> {
        self.send(json!({"type": "event", "event": event, "body": body}))
    }

    /// A successful response to `request`.
    pub fn respond(&self, request: &Value, body: Value) -> Result<()> {
        self.send(json!({
            "type": "response",
            "request_seq": request["seq"],
            "command": request["command"],
            "success": true,
            "body": body,
        }))
    }

    /// A failed response to `request`, with a message the editor shows.
    pub fn fail(&self, request: &Value, message: &str) -> Result<()> {
        self.send(json!({
            "type": "response",
            "request_seq": request["seq"],
            "command": request["command"],
            "success": false,
            "message": message,
            "body": {"error": {"id": 1, "format": message, "showUser": true}},
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_by_their_content_length() {
        let input = b"Content-Length: 13\r\n\r\n{\"seq\":1}    Content-Length: 2\r\n\r\n{}";
        let mut r = std::io::BufReader::new(&input[..]);
        assert_eq!(read_message(&mut r).unwrap(), Some(json!({"seq": 1})));
        assert_eq!(read_message(&mut r).unwrap(), Some(json!({})));
        assert_eq!(read_message(&mut r).unwrap(), None);
    }

    #[test]
    fn a_truncated_message_is_an_error() {
        let mut r = std::io::BufReader::new(&b"Content-Length: 10\r\n\r\n{}"[..]);
        assert!(read_message(&mut r).is_err());
    }
}
