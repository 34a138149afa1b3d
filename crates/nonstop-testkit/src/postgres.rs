//! A throwaway PostgreSQL cluster for tests: [`Cluster::shared`] starts one per test process
//! (`initdb` + `pg_ctl` in a temporary folder, on a loopback port, trust authentication for
//! the user `nonstop`), and [`Cluster::database`] makes a fresh database for one test,
//! dropped when the [`Database`] is.
//!
//! The binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/*/bin`, or
//! the `PATH`); without them the test fails with a line naming the package, never skips.
//! PostgreSQL refuses to run as root, so under root (as CI runs) the cluster runs as the
//! `postgres` user (or `nobody`). A watchdog process stops the cluster and removes its
//! folder once the test process is gone, however it ended.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The user the tests' databases belong to.
pub const USER: &str = "nonstop";

/// A running throwaway cluster.
pub struct Cluster {
    bin: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    dir: PathBuf,
}

/// A database of its own for one test; dropped (connections closed) when this is.
pub struct Database {
    /// `postgres://nonstop@127.0.0.1:PORT/NAME`.
    pub url: String,
    /// Its name.
    pub name: String,
    cluster: &'static Cluster,
}

/// Where `initdb`, `pg_ctl` and `createdb` are: the newest `/usr/lib/postgresql/N/bin`,
/// else the folder of `initdb` on the `PATH`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if let Some(initdb) = crate::tool::find("initdb")
        && let Some(dir) = initdb.parent()
    {
        return dir.to_path_buf();
    }
    panic!(
        "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on the PATH): \
         `apt-get install -y postgresql` (Debian's package; scripts/test installs it)"
    )
}

/// The uid and gid of `name` from `/etc/passwd`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Who runs the cluster: `None` for the current user, else a user other than root.
fn cluster_user() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    if me.is_ok_and(|uid| uid != 0) {
        return None;
    }
    Some(
        user_ids("postgres")
            .or_else(|| user_ids("nobody"))
            .unwrap_or_else(|| {
                panic!("running as root and there is no `postgres` or `nobody` user to run PostgreSQL as: create one (`useradd postgres`)")
            }),
    )
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({cmd:?}): {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// The cluster of this test process, started on first use.
    pub fn shared() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(Cluster::start)
    }

    fn start() -> Cluster {
        let bin = bin_dir();
        let user = cluster_user();
        let dir = std::env::temp_dir().join(format!(
            "nonstop-pg-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("cannot hand {} to uid {uid}: {e}", dir.display()));
        }
        let as_user = |program: &str| {
            let mut cmd = Command::new(bin.join(program));
            cmd.current_dir(&dir).env_remove("PGDATA");
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid).env("HOME", &dir);
            }
            cmd
        };
        let data = dir.join("data");
        let mut initdb = as_user("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        run(initdb, "initdb");

        // Stops the cluster and removes its folder when this process is gone.
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             kill -QUIT $(head -n 1 {data}/postmaster.pid) 2>/dev/null; sleep 1; rm -rf {dir}",
            pid = std::process::id(),
            data = data.display(),
            dir = dir.display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();

        let port = crate::free_port();
        let mut start = as_user("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=300",
                dir.display()
            ))
            .arg("start");
        let started = start.output();
        if !started.as_ref().is_ok_and(|o| o.status.success()) {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            panic!("pg_ctl start failed: {started:?}\n{log}");
        }
        Cluster { bin, port, dir }
    }

    /// The folder the cluster lives in (its `log` file included).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER]);
        cmd
    }

    /// A fresh, empty database.
    pub fn database(&'static self) -> Database {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut create = self.client("createdb");
        create.arg(&name);
        run(create, "createdb");
        Database {
            url: self.url(&name),
            name,
            cluster: self,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let mut drop = self.cluster.client("dropdb");
        drop.args(["--force", "--if-exists", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = drop.status();
    }
}
