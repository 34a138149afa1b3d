//! `nonstop demo`: the server, the demo shop under the agent, and steady traffic to the shop.
//!
//! Everything runs on this machine until Ctrl-C: the server in this process, the shop as a child
//! started exactly as `nonstop run --service shop` would start it, and one thread sending the shop a
//! few requests a second (carts, checkouts with and without coupons, customers of every tier,
//! several countries, now and then a mistake).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cmd_run::{AgentEnv, beside_executable, find_agent_library, find_program};

/// The shop's pricing module, compiled in so the line suggested below always matches the shop's source.
const PRICING_SOURCE: &str = include_str!("../../../examples/shop/src/pricing.rs");
/// That file's path as the shop's debug info names it (relative to the workspace).
pub const PRICING_FILE: &str = "examples/shop/src/pricing.rs";
/// The comment that marks the line the demo suggests for a first rule.
const DEMO_MARKER: &str = "// nonstop-demo:";
/// How long the shop may take to say where it listens.
const SHOP_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of one request to the shop.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `nonstop demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address the server (API and web UI) listens on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Data folder of the server; default the one `nonstop serve` uses, so `nonstop rules` and
    /// `nonstop tail` find its token.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Address the demo shop listens on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub shop_listen: String,
    /// Requests per second sent to the shop.
    #[arg(long, default_value_t = 3.0)]
    pub rate: f64,
}

/// Runs `nonstop demo` until Ctrl-C, SIGTERM, or the shop exits.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let rate = if args.rate.is_finite() && args.rate > 0.0 {
        args.rate.min(1000.0)
    } else {
        bail!("--rate must be a positive number of requests per second");
    };
    // Find everything before starting anything, so a missing piece stops the demo at once.
    let shop_bin = find_shop_binary()?;
    let library = find_agent_library()?;
    let default_data = nonstop_server::default_data_dir();
    let data = args.data.clone().unwrap_or_else(|| default_data.clone());

    let runtime = nonstop_server::runtime().context("cannot start the async runtime")?;
    let mut config = nonstop_server::Config::new(args.listen, data.clone());
    // The web IDE shows the shop's code from this checkout when it is there.
    let shop_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
    if let Ok(path) = shop_source.canonicalize() {
        config.sources = vec![(
            "shop".to_string(),
            nonstop_server::sources::SourceSpec::Folder { path },
        )];
    }
    let server = runtime
        .block_on(nonstop_server::serve(config))
        .map_err(|err| {
            let hint = match err {
                nonstop_server::ServeError::Bind { .. } => {
                    " (is `nonstop serve` or another demo running? pick another address with --listen)"
                }
                _ => "",
            };
            anyhow::anyhow!("cannot start the server: {err}{hint}")
        })?;
    let addr = server.addr();
    let Some(tokens) = server.tokens().cloned() else {
        bail!("the server started without tokens");
    };

    let server_url = format!("http://{addr}");
    let agent = AgentEnv {
        library,
        server: server_url.clone(),
        token: Some(tokens.agent.clone()),
        service: "shop".to_string(),
    };
    let result = (|| {
        let mut shop = ShopProcess::start(&shop_bin, &args.shop_listen, &agent)?;
        let traffic = Traffic::start(shop.addr, Duration::from_secs_f64(1.0 / rate));
        print_welcome(
            &server_url,
            &tokens.admin,
            shop.addr,
            data != default_data,
            addr,
        );
        let exited = runtime.block_on(wait_for_stop(&mut shop.child));
        let stats = traffic.stop();
        shop.stop();
        eprintln!(
            "nonstop demo: stopped; sent {} requests to the shop, {} placed an order",
            stats.requests, stats.orders
        );
        Ok::<_, anyhow::Error>(match exited {
            None => ExitCode::SUCCESS,
            Some(status) => {
                eprintln!("nonstop demo: the shop exited ({status}); stopping");
                ExitCode::FAILURE
            }
        })
    })();
    runtime.block_on(server.shutdown());
    result
}

/// The `shop` binary: next to the `nonstop` executable (cargo builds both into `target/<profile>/`),
/// or in `../lib/nonstop/`.
fn find_shop_binary() -> anyhow::Result<PathBuf> {
    let candidates = beside_executable("shop", &["", "../lib/nonstop"])?;
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "cannot find the demo shop (looked for {}); build it with `cargo build --release -p shop -p nonstop-agent`",
        looked.join(", ")
    )
}

/// Waits for Ctrl-C or SIGTERM (returns `None`) or for `child` to exit (returns its status).
async fn wait_for_stop(child: &mut Child) -> Option<ExitStatus> {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let exited = async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) => {}
                // Cannot tell; keep the demo up and let Ctrl-C end it.
                Err(_) => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term => None,
        status = exited => Some(status),
    }
}

fn print_welcome(
    server_url: &str,
    admin_token: &str,
    shop: SocketAddr,
    custom_data: bool,
    addr: SocketAddr,
) {
    let line = demo_line();
    let mut out = String::new();
    out.push_str("nonstop demo: running; Ctrl-C stops everything\n\n");
    out.push_str(&format!(
        "  web UI and API   {server_url}/?token={admin_token}\n"
    ));
    out.push_str(&format!(
        "  demo shop        http://{shop}/products   (service \"shop\", under the agent, getting a few requests a second)\n\n"
    ));
    out.push_str("Try, in another terminal:\n");
    if addr.port() != 7070 || !addr.ip().is_loopback() {
        out.push_str(&format!("  export NONSTOP_SERVER={server_url}\n"));
    }
    if custom_data {
        out.push_str(&format!("  export NONSTOP_TOKEN={admin_token}\n"));
    }
    let nonstop = self_command();
    out.push_str(&format!(
        "  {nonstop} rules add {PRICING_FILE}:{line} --service shop --snapshot\n"
    ));
    out.push_str(&format!(
        "  {nonstop} rules add {PRICING_FILE}:{line} --service shop --log \"{{reason}}: {{cents}} cents off\"\n"
    ));
    out.push_str(&format!(
        "  {nonstop} rules add {PRICING_FILE}:{line} --service shop --metric discount_cents=cents --kind histogram --tag reason=reason\n"
    ));
    out.push_str(&format!("  {nonstop} tail\n"));
    out.push_str(&format!("  {nonstop} agents\n"));
    out.push_str(&format!(
        "  curl -H \"Authorization: Bearer {admin_token}\" {server_url}/metrics\n"
    ));
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// How to call this `nonstop` from a shell: `nonstop` when that is what `PATH` finds, else its path
/// (relative to the current folder when it is below it, as `target/release/nonstop` is).
fn self_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "nonstop".to_string();
    };
    let on_path = find_program(std::ffi::OsStr::new("nonstop"))
        .ok()
        .and_then(|path| path.canonicalize().ok());
    if on_path.is_some_and(|path| exe.canonicalize().is_ok_and(|exe| exe == path)) {
        return "nonstop".to_string();
    }
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf));
    match relative {
        Some(path) => path.display().to_string(),
        None => exe.display().to_string(),
    }
}

/// The line of the shop's discount computation that the demo suggests: the first line of code after
/// the marker comment.
pub fn demo_line() -> usize {
    line_after_marker(PRICING_SOURCE, DEMO_MARKER).unwrap_or(1)
}

/// The 1-based number of the first line after the comment holding `marker` that is neither blank nor
/// a comment.
fn line_after_marker(source: &str, marker: &str) -> Option<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let start = lines.iter().position(|line| line.contains(marker))?;
    (start + 1..lines.len())
        .find(|&index| {
            let line = lines[index].trim();
            !line.is_empty() && !line.starts_with("//")
        })
        .map(|index| index + 1)
}

/// The shop, running as a child process; killed when dropped.
struct ShopProcess {
    child: Child,
    addr: SocketAddr,
}

impl ShopProcess {
    /// Starts `shop --listen LISTEN` under the agent and waits until it says where it listens.
    fn start(shop: &Path, listen: &str, agent: &AgentEnv) -> anyhow::Result<ShopProcess> {
        let mut command = Command::new(shop);
        command
            .args(["--listen", listen])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        agent.apply(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start the demo shop {}", shop.display()))?;
        let Some(stdout) = child.stdout.take() else {
            bail!("the demo shop has no stdout");
        };
        let (sender, receiver) = mpsc::channel();
        thread::Builder::new()
            .name("demo-shop-stdout".into())
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                for line in lines.by_ref() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.strip_prefix("shop: listening on http://") {
                        let _ = sender.send(addr.trim().to_string());
                        break;
                    }
                }
                // Keep reading so the shop never blocks on a full pipe.
                lines.for_each(drop);
            })
            .context("cannot start a thread")?;
        let mut shop = ShopProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let addr = match receiver.recv_timeout(SHOP_START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let status = shop.child.try_wait().ok().flatten();
                match status {
                    Some(status) => bail!("the demo shop exited at start ({status})"),
                    None => bail!(
                        "the demo shop did not start listening within {} s",
                        SHOP_START_TIMEOUT.as_secs()
                    ),
                }
            }
        };
        shop.addr = addr
            .parse()
            .with_context(|| format!("the demo shop printed a bad address: {addr:?}"))?;
        Ok(shop)
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ShopProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the traffic thread did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// Requests answered by the shop (any status).
    pub requests: u64,
    /// Checkouts that placed an order.
    pub orders: u64,
}

/// A thread sending the shop steady traffic until stopped.
struct Traffic {
    stop: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<()>>,
    requests: Arc<AtomicU64>,
    orders: Arc<AtomicU64>,
}

impl Traffic {
    /// Starts sending one request every `interval` to the shop at `addr`.
    fn start(addr: SocketAddr, interval: Duration) -> Traffic {
        let (stop, stopped) = mpsc::channel::<()>();
        let requests = Arc::new(AtomicU64::new(0));
        let orders = Arc::new(AtomicU64::new(0));
        let counters = (Arc::clone(&requests), Arc::clone(&orders));
        let thread = thread::Builder::new()
            .name("demo-traffic".into())
            .spawn(move || {
                let mut shopper = Shopper::new(seed());
                loop {
                    // Sleeping on the stop channel: a stop (or the sender gone) ends the loop at once.
                    match stopped.recv_timeout(interval) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let (method, target) = shopper.next_request();
                    if let Ok((status, body)) = request(addr, method, &target) {
                        counters.0.fetch_add(1, Ordering::Relaxed);
                        if status == 201 {
                            counters.1.fetch_add(1, Ordering::Relaxed);
                            shopper.placed_order(&body);
                        }
                    }
                }
            })
            .ok();
        Traffic {
            stop,
            thread,
            requests,
            orders,
        }
    }

    /// Stops the thread (within one request's timeout) and says what it did.
    fn stop(mut self) -> TrafficStats {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        TrafficStats {
            requests: self.requests.load(Ordering::Relaxed),
            orders: self.orders.load(Ordering::Relaxed),
        }
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32) | 1
}

const CUSTOMERS: &[&str] = &["alice", "bob", "carol", "dave", "erin", "frank"];
const SKUS: &[&str] = &["BOOK-RUST", "MUG-CRAB", "TSHIRT-L", "STICKER", "KB-LTD"];
/// Coupons, with `""` (none) most often and one that does not exist.
const COUPONS: &[&str] = &["", "", "", "SAVE10", "FIVEOFF", "VIP25", "FREESTUFF"];
/// Countries, with one the shop does not ship to.
const COUNTRIES: &[&str] = &["US", "US", "DE", "FR", "GB", "NL", "JP", "CA", "ZZ"];

/// Plays customers: a visit fills a cart (sometimes changes its mind), looks at it, checks out,
/// and looks at the order.
struct Shopper {
    rng: u64,
    plan: Vec<(&'static str, String)>,
    last_order: Option<u64>,
}

impl Shopper {
    fn new(seed: u64) -> Shopper {
        Shopper {
            rng: seed.max(1),
            plan: Vec::new(),
            last_order: None,
        }
    }

    /// xorshift64: plenty for picking customers and products.
    fn next(&mut self, below: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % below.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.next(items.len())]
    }

    fn next_request(&mut self) -> (&'static str, String) {
        if self.plan.is_empty() {
            self.plan_visit();
        }
        self.plan.remove(0)
    }

    fn plan_visit(&mut self) {
        let customer = self.pick(CUSTOMERS);
        if self.next(8) == 0 {
            self.plan.push(("GET", "/products".to_string()));
        }
        let items = 1 + self.next(3);
        for _ in 0..items {
            let sku = self.pick(SKUS);
            // Mostly a few units; now and then a bulk order of stickers.
            let (sku, qty) = if self.next(10) == 0 {
                ("STICKER", 10 + self.next(10))
            } else {
                (sku, 1 + self.next(3))
            };
            self.plan
                .push(("POST", format!("/cart/{customer}/add?sku={sku}&qty={qty}")));
        }
        if self.next(5) == 0 {
            let sku = self.pick(SKUS);
            self.plan
                .push(("POST", format!("/cart/{customer}/remove?sku={sku}&qty=1")));
        }
        self.plan.push(("GET", format!("/cart/{customer}")));
        let coupon = self.pick(COUPONS);
        let country = self.pick(COUNTRIES);
        self.plan.push((
            "POST",
            format!("/cart/{customer}/checkout?coupon={coupon}&country={country}"),
        ));
        if let Some(id) = self.last_order.filter(|_| self.next(3) == 0) {
            self.plan.push(("GET", format!("/orders/{id}")));
        }
    }

    fn placed_order(&mut self, body: &str) {
        let id = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|order| order.get("id").and_then(serde_json::Value::as_u64));
        if id.is_some() {
            self.last_order = id;
        }
    }
}

/// One HTTP/1.1 request with an empty body; returns the status and the body.
fn request(addr: SocketAddr, method: &str, target: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    // The shop closes the connection after each response; cap what we keep all the same.
    stream.take(1 << 20).read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_line_is_the_code_after_the_marker() {
        let source = "a\n// nonstop-demo: x\n// more\n\n  code();\n";
        assert_eq!(line_after_marker(source, DEMO_MARKER), Some(5));
        assert_eq!(line_after_marker("a\n", DEMO_MARKER), None);
    }

    #[test]
    fn the_demo_line_is_inside_the_discount_loop() {
        let line = demo_line();
        let text = PRICING_SOURCE.lines().nth(line - 1).unwrap_or_default();
        assert!(text.contains("applied.push("), "line {line}: {text}");
    }

    #[test]
    fn a_visit_fills_a_cart_then_checks_out() {
        let mut shopper = Shopper::new(42);
        let mut visit = vec![shopper.next_request()];
        while !visit.last().is_some_and(|(_, t)| t.contains("/checkout")) {
            visit.push(shopper.next_request());
        }
        let customer = visit[visit.len() - 1]
            .1
            .split('/')
            .nth(2)
            .unwrap_or_default()
            .to_string();
        assert!(CUSTOMERS.contains(&customer.as_str()));
        assert!(
            visit
                .iter()
                .any(|(m, t)| *m == "POST" && t.contains("/add?sku="))
        );
        assert!(
            visit
                .iter()
                .all(|(_, t)| t == "/products" || t.contains(&customer))
        );
    }
}
