//! A tiny HTTP/1.1 server over `std::net`: one accept loop, a fixed pool of worker threads,
//! one request per connection (`Connection: close`), JSON responses.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Longest request line or header line accepted, in bytes.
const MAX_LINE: usize = 8 * 1024;
/// Most headers accepted in one request.
const MAX_HEADERS: usize = 100;
/// Largest request body accepted, in bytes.
const MAX_BODY: usize = 64 * 1024;
/// How long a connection may take to send its request or take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path without the query, percent-decoded.
    pub path: String,
    /// Query parameters, percent-decoded; the last of repeated names wins.
    pub query: HashMap<String, String>,
    /// The body (the shop's routes take none, but clients may send one).
    pub body: Vec<u8>,
}

impl Request {
    /// The query parameter `name`, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// A response with a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: serde_json::Value,
}

impl Response {
    /// A response with `status` and `body`.
    pub fn json(status: u16, body: serde_json::Value) -> Response {
        Response { status, body }
    }

    /// An error response: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, serde_json::json!({ "error": message.into() }))
    }
}

/// Handles one request; runs on a worker thread.
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// Serves connections from `listener` with `workers` threads until the listener fails.
pub fn serve(listener: TcpListener, workers: usize, handler: Arc<Handler>) -> io::Result<()> {
    let (sender, receiver) = mpsc::channel::<TcpStream>();
    let receiver = Arc::new(Mutex::new(receiver));
    for index in 0..workers.max(1) {
        let receiver = Arc::clone(&receiver);
        let handler = Arc::clone(&handler);
        thread::Builder::new()
            .name(format!("http-worker-{index}"))
            .spawn(move || worker(&receiver, &*handler))?;
    }
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if sender.send(stream).is_err() {
                    return Err(io::Error::other("all http workers stopped"));
                }
            }
            // A client that gave up before we accepted it is no reason to stop serving.
            Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn worker(receiver: &Mutex<mpsc::Receiver<TcpStream>>, handler: &Handler) {
    loop {
        // Hold the lock only while taking the next connection, not while handling it.
        let next = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(stream) = next else { return };
        // A client that hangs up mid-request is its own problem; keep serving the others.
        let _ = handle_connection(stream, handler);
    }
}

fn handle_connection(stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let response = match read_request(&mut reader) {
        Ok(request) => handler(&request),
        Err(err) if err.kind() == io::ErrorKind::InvalidData => {
            Response::error(400, err.to_string())
        }
        Err(err) => return Err(err),
    };
    write_response(stream, &response)
}

fn read_request(reader: &mut impl BufRead) -> io::Result<Request> {
    let request_line = read_line(reader)?;
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("bad request line: {request_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!("unsupported protocol version: {version}")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut content_length = 0usize;
    for _ in 0..=MAX_HEADERS {
        let line = read_line(reader)?;
        if line.is_empty() {
            let mut body = vec![0; content_length];
            reader.read_exact(&mut body)?;
            return Ok(Request {
                method: method.to_string(),
                path: percent_decode(path),
                query: parse_query(query),
                body,
            });
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = value
                .trim()
                .parse()
                .map_err(|_| invalid(format!("bad content-length: {:?}", value.trim())))?;
            if content_length > MAX_BODY {
                return Err(invalid(format!(
                    "body too large: {content_length} bytes, at most {MAX_BODY}"
                )));
            }
        }
    }
    Err(invalid(format!("more than {MAX_HEADERS} headers")))
}

/// Reads one CRLF- or LF-terminated line, without its terminator, refusing lines over [`MAX_LINE`].
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let read = reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-request",
        ));
    }
    if line.last() != Some(&b'\n') {
        return Err(invalid(format!("line longer than {MAX_LINE} bytes")));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| invalid("request is not UTF-8".to_string()))
}

fn write_response(mut stream: TcpStream, response: &Response) -> io::Result<()> {
    let body = response.body.to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        _ => "Unknown",
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Splits `a=1&b=x%20y` into decoded pairs.
pub fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (as a space); malformed escapes stay as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_with_query_and_body() {
        let raw = b"POST /cart/bob/add?sku=MUG%2DCRAB&qty=2&note=a+b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        let request = read_request(&mut &raw[..]).expect("parsed");
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/cart/bob/add");
        assert_eq!(request.param("sku"), Some("MUG-CRAB"));
        assert_eq!(request.param("qty"), Some("2"));
        assert_eq!(request.param("note"), Some("a b"));
        assert_eq!(request.body, b"abc");
    }

    #[test]
    fn refuses_garbage() {
        let err = read_request(&mut &b"hello\r\n\r\n"[..]).expect_err("bad line");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = read_request(&mut &b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"[..])
            .expect_err("bad length");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn malformed_escapes_stay_as_they_are() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
