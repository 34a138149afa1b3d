//! The blocking HTTP client the CLI commands share: server address, token, and errors
//! that say what to do.

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

/// Where the server is and how to prove who we are; every client command takes these.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The nonstop server.
    #[arg(long, env = "NONSTOP_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    /// The admin token (default: admin.token in the default data folder).
    #[arg(long, env = "NONSTOP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust this CA certificate (PEM) for an https:// server, e.g. its self-signed certificate.
    #[arg(long, env = "NONSTOP_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<std::path::PathBuf>,
}

/// A client of one server.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client for the server in `args`; without a token it reads the admin token from the
    /// default data folder, where a local `nonstop serve` writes it.
    pub fn new(args: &ServerArgs) -> Result<Client> {
        let token = args.token.clone().filter(|t| !t.is_empty()).or_else(|| {
            let path = nonstop_server::default_data_dir().join("admin.token");
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)));
        if let Some(path) = &args.ca_cert {
            config = config.tls_config(trusting(path)?);
        }
        Ok(Client {
            base: args.server.trim_end_matches('/').to_string(),
            token,
            agent: config.build().into(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        let cause = match e {
            ureq::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                _ => io.to_string(),
            },
            other => other.to_string(),
        };
        anyhow!(
            "cannot reach the nonstop server at {}: is `nonstop serve` running? ({cause})",
            self.base
        )
    }

    /// Turns a non-2xx answer into an error that says what to do.
    fn check(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let said = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        match status.as_u16() {
            401 | 403 => {
                bail!("the server refused the token: pass --token or set NONSTOP_TOKEN ({said})")
            }
            _ => bail!("{said} (HTTP {status})"),
        }
    }

    /// `GET path` as JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .auth(self.agent.get(self.url(path)))
            .call()
            .map_err(|e| self.unreachable(e))?;
        let mut resp = self.check(resp)?;
        resp.body_mut()
            .with_config()
            .limit(256 << 20)
            .read_json()
            .with_context(|| {
                format!("the server's answer to GET {path} is not what this nonstop expects")
            })
    }

    /// `GET path`, the answer's text as the server sent it.
    pub fn get_text(&self, path: &str) -> Result<String> {
        let resp = self
            .auth(self.agent.get(self.url(path)))
            .call()
            .map_err(|e| self.unreachable(e))?;
        let mut resp = self.check(resp)?;
        Ok(resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()?)
    }

    /// `POST path` with a JSON body, answer as JSON.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self
            .auth(self.agent.post(self.url(path)))
            .send_json(body)
            .map_err(|e| self.unreachable(e))?;
        let mut resp = self.check(resp)?;
        resp.body_mut().read_json().with_context(|| {
            format!("the server's answer to POST {path} is not what this nonstop expects")
        })
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<()> {
        let resp = self
            .auth(self.agent.delete(self.url(path)))
            .call()
            .map_err(|e| self.unreachable(e))?;
        self.check(resp)?;
        Ok(())
    }

    /// `GET path` as Server-Sent Events: an iterator over each event's data.
    /// After a reconnect, `last_event_id` asks the server for what came after that event.
    pub fn events(&self, path: &str, last_event_id: Option<&str>) -> Result<Events> {
        let mut req = self
            .auth(self.agent.get(self.url(path)))
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.call().map_err(|e| self.unreachable(e))?;
        let resp = self.check(resp)?;
        let reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
        Ok(Events {
            lines: BufReader::new(Box::new(reader)),
        })
    }
}

/// TLS that trusts only the certificates in the PEM file at `path`.
fn trusting(path: &std::path::Path) -> Result<ureq::tls::TlsConfig> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) =
            item.with_context(|| format!("{} is not PEM", path.display()))?
        {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)))
        .build())
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its `id:`, when it has one.
    pub id: Option<String>,
    /// Its `event:` type, when it has one (`None` is a `message`).
    pub event: Option<String>,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

/// The events of a Server-Sent Events stream.
pub struct Events {
    lines: BufReader<Box<dyn Read + Send>>,
}

impl Iterator for Events {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        let mut data: Option<String> = None;
        let mut id: Option<String> = None;
        let mut event: Option<String> = None;
        let mut line = String::new();
        loop {
            line.clear();
            match self.lines.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(anyhow!("the live stream broke: {e}"))),
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if let Some(data) = data.take() {
                    return Some(Ok(Event { id, event, data }));
                }
                id = None;
                event = None;
                continue;
            }
            let (field, value) = l.split_once(':').unwrap_or((l, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                "id" => id = Some(value.to_string()),
                "event" => event = Some(value.to_string()),
                // Comments (empty field) and `retry:` carry nothing we use.
                _ => {}
            }
        }
    }
}

/// Writes one line to stdout. A closed pipe (`nonstop rules list | head -1`) ends the
/// program quietly with status 0, as a filter should.
pub fn out_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("nonstop: cannot write to stdout: {e}");
        std::process::exit(2);
    }
}

/// `println!` through [`out_line`].
macro_rules! outln {
    () => {
        $crate::client::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::client::out_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
