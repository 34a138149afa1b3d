//! Test support shared by every nonstop crate's tests and benches (a dev-dependency only):
//!
//! - [`tool`]: the external programs tests use (gdb, gcc, `llvm-dwarfdump`, …), found on
//!   the `PATH` or the test fails with one line naming the Debian package to install;
//! - [`fixture`]: fixture programs (`.rs` with rustc, `.c` with gcc, `.cpp` with g++)
//!   built once per content in the target dir, safe under parallel test processes;
//! - [`agent_library`]: `libnonstop_agent.so`, brought up to date;
//! - [`free_port`], [`wait_for`], [`ServerProcess`]: loopback servers and waiting for
//!   events with a deadline instead of sleeping;
//! - [`tls`]: certificates made in-process (rcgen), so TLS tests never skip;
//! - [`postgres`]: a throwaway PostgreSQL cluster per test process, a database per test.
//!
//! Everything here panics with a message saying what to do: it runs only inside tests.

pub mod fixture;
pub mod postgres;
pub mod tls;
pub mod tool;

pub use fixture::{Fixture, marks};
pub use tool::tool;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace's root folder.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|e| panic!("cannot find the workspace above the testkit: {e}"))
}

/// The profile folder the running test or bench binary lives in (`target/debug` or
/// `target/release`): the binary is `PROFILE/deps/NAME-HASH`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no current executable: {e}"));
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in PROFILE/deps/", exe.display()))
        .to_path_buf()
}

/// The cargo target folder of the running test (the parent of [`profile_dir`]).
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent", profile.display()))
        .to_path_buf()
}

/// The cargo that builds this workspace: `$CARGO` when run by cargo, else `cargo`.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace());
    cmd
}

/// Runs `cargo build --quiet ARGS` into a target dir of its own, `TARGET/side/NAME` (the
/// tests share `NAME` = `tests`, so the agent's dependencies build once), and returns that
/// build's profile folder. For binaries a test runs as processes: a
/// `cargo build -p X` resolves features for `X` alone, and building that into the test's
/// own target dir would replace the `rlib`s other test and doc-test binaries link against
/// (rustc then fails with E0460 "found possibly newer version of crate").
pub fn cargo_build_aside(name: &str, args: &[&str]) -> PathBuf {
    let profile = profile_dir();
    let release = profile.file_name().is_some_and(|n| n == "release");
    let dir = target_dir().join("side").join(name);
    let mut cmd = cargo();
    cmd.args(["build", "--quiet"])
        .args(args)
        .arg("--target-dir")
        .arg(&dir);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
    dir.join(if release { "release" } else { "debug" })
}

/// The agent library (`libnonstop_agent.so`), built once per test process into a side
/// target dir ([`cargo_build_aside`]): cargo builds the agent's `rlib` for tests but does not
/// always rebuild the `cdylib` beside it when a dependency changed, and building it into
/// the test's own target dir would replace the `rlib` other tests link against.
pub fn agent_library() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile = cargo_build_aside("tests", &["-p", "nonstop-agent", "--lib"]);
            let lib = profile.join("libnonstop_agent.so");
            assert!(lib.exists(), "{} missing after the build", lib.display());
            lib
        })
        .clone()
}

/// A fresh, empty folder under the target dir for one test: unique per process and call.
pub fn tempdir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = target_dir().join("tmp").join(format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// First and count of the ports [`free_port`] hands out: below the kernel's ephemeral range
/// (32768 and up), from which `bind(…:0)` and outgoing connections take theirs.
const PORTS: (u32, u32) = (20_000, 12_000);

/// A loopback port nobody listens on right now, and that no other call of this process
/// returned. The ports come from below the ephemeral range: a port picked by `bind(…:0)` and
/// dropped can be handed out again at once to another test's `bind(…:0)` before the server it
/// was meant for binds it (then that server exits and its test talks to the wrong one). Each
/// process starts at its own place in the range, so two test processes rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (first, count) = PORTS;
    let start = std::process::id().wrapping_mul(97) % count;
    for _ in 0..count {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + (start + n) % count;
        if let Ok(port) = u16::try_from(port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in {first}..{}", first + count)
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `within`; then fails the test
/// saying `what` did not happen.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Kills the process and waits for it.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `nonstop serve` process on a loopback port with its data folder, stopped when dropped.
pub struct ServerProcess {
    child: ChildGuard,
    pub port: u16,
    pub url: String,
    pub data: PathBuf,
}

impl ServerProcess {
    /// Starts `NONSTOP serve --listen 127.0.0.1:PORT --data DATA EXTRA…` and waits (20 s at
    /// most) until it accepts connections and, unless `--no-auth`, its tokens are in DATA (the
    /// server writes them before it binds: a port that accepts before they exist is not this
    /// server's). Its standard error goes to `DATA/server.log`, shown when it exits early.
    pub fn start(nonstop: &Path, port: u16, data: &Path, extra: &[&str]) -> ServerProcess {
        std::fs::create_dir_all(data)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", data.display()));
        let log_path = data.join("server.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let mut cmd = Command::new(nonstop);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = ChildGuard(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}")),
        );
        let tokens = !extra.contains(&"--no-auth");
        wait_for(
            "the server accepts connections",
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = child.0.try_wait() {
                    let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!("{cmd:?} exited with {status} before listening: {said}");
                }
                let ours = !tokens
                    || (data.join("admin.token").exists() && data.join("agent.token").exists());
                if !ours {
                    return None;
                }
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()
            },
        );
        ServerProcess {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            data: data.to_path_buf(),
        }
    }

    /// The server's `admin` or `agent` token (`DATA/WHICH.token`).
    pub fn token(&self, which: &str) -> String {
        let path = self.data.join(format!("{which}.token"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server and waits until it is gone.
    pub fn kill(self) {
        self.child.kill();
    }
}
