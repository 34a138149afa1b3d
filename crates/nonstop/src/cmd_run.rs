//! `nonstop run [--server URL] [--service NAME] -- PROGRAM [ARGS…]`: runs any native program with the
//! agent preloaded.
//!
//! The program replaces `nonstop` in the same process (`exec`), so it keeps the pid, the signals
//! (Ctrl-C, `kill`), the terminal and the exit status it would have had without nonstop; only its
//! environment differs:
//!
//! | variable | value |
//! | --- | --- |
//! | `LD_PRELOAD` | the agent library, before what was there |
//! | `NONSTOP_SERVER` | `--server`, else `$NONSTOP_SERVER`, else `http://127.0.0.1:7070` |
//! | `NONSTOP_TOKEN` | `--token`, else `$NONSTOP_TOKEN`, else `agent.token` in the data folder |
//! | `NONSTOP_SERVICE` | `--service`, else the program's file name |

use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

/// The agent library's file name, as cargo builds it (`target/<profile>/libnonstop_agent.so`).
pub const AGENT_LIB_NAME: &str = "libnonstop_agent.so";
/// Where agents connect when neither `--server` nor `NONSTOP_SERVER` says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";
/// How to build the agent library, for error messages.
const BUILD_AGENT_HINT: &str = "build it with `cargo build --release -p nonstop-agent`";

/// Arguments of `nonstop run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The nonstop server the agent connects to.
    #[arg(long, env = "NONSTOP_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// The agent token; by default read from `agent.token` in the data folder.
    #[arg(long, env = "NONSTOP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The service name the agent reports (default: the program's file name).
    #[arg(long)]
    pub service: Option<String>,
    /// The program to run, then its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM [ARGS]"
    )]
    pub command: Vec<OsString>,
}

/// Runs `nonstop run`: replaces this process with the program; when it cannot, says why and exits 1.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Exit 1, like a shell that cannot start a program, whatever code other commands use for errors.
    let Err(err) = exec(args);
    eprintln!("nonstop: {err:#}");
    Ok(ExitCode::FAILURE)
}

/// Replaces this process with the program under the agent; returns only when it could not.
fn exec(args: RunArgs) -> anyhow::Result<Infallible> {
    let Some((program, program_args)) = args.command.split_first() else {
        bail!("nothing to run: give a program after `--`");
    };
    let path = find_program(program)?;
    let agent = AgentEnv::resolve(&args.server, args.token, args.service.as_deref(), program)?;
    if agent.token.is_none() && std::env::var_os("NONSTOP_RULES").is_none() {
        eprintln!(
            "nonstop: no agent token (--token, NONSTOP_TOKEN or agent.token in the data folder); \
             the server will refuse the agent unless it needs none"
        );
    }
    let mut command = Command::new(&path);
    command.arg0(program).args(program_args);
    agent.apply(&mut command);
    // `exec` returns only when the program could not be started.
    let err = command.exec();
    Err(cannot_run(program, &err))
}

/// The environment that puts a program under the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEnv {
    /// The agent library to preload.
    pub library: PathBuf,
    /// `NONSTOP_SERVER`.
    pub server: String,
    /// `NONSTOP_TOKEN`, when one was found.
    pub token: Option<String>,
    /// `NONSTOP_SERVICE`.
    pub service: String,
}

impl AgentEnv {
    /// Finds the agent library and the token, and names the service.
    ///
    /// `token` is what the user gave (`--token` or `NONSTOP_TOKEN`); without it, `agent.token` in the
    /// default data folder is used when it exists.
    pub fn resolve(
        server: &str,
        token: Option<String>,
        service: Option<&str>,
        program: &OsStr,
    ) -> anyhow::Result<AgentEnv> {
        let library = find_agent_library()?;
        let token = match token {
            Some(token) => Some(token),
            None => read_agent_token()?,
        };
        let service = match service {
            Some(service) => service.to_string(),
            None => Path::new(program)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "unknown".to_string()),
        };
        Ok(AgentEnv {
            library,
            server: server.to_string(),
            token,
            service,
        })
    }

    /// Sets the agent's variables on `command` (`LD_PRELOAD` goes before what the environment has).
    pub fn apply(&self, command: &mut Command) {
        let existing = std::env::var_os("LD_PRELOAD").unwrap_or_default();
        command.env("LD_PRELOAD", prepend_preload(&self.library, &existing));
        command.env("NONSTOP_SERVER", &self.server);
        command.env("NONSTOP_SERVICE", &self.service);
        if let Some(token) = &self.token {
            command.env("NONSTOP_TOKEN", token);
        }
    }
}

/// `library` followed by the entries of `existing` (colon- or space-separated), without a duplicate of it.
fn prepend_preload(library: &Path, existing: &OsStr) -> OsString {
    let mut value = OsString::from(library);
    let existing = existing.to_string_lossy();
    for entry in existing.split([':', ' ']).filter(|entry| !entry.is_empty()) {
        if Path::new(entry) != library {
            value.push(":");
            value.push(entry);
        }
    }
    value
}

/// Finds `libnonstop_agent.so`: `$NONSTOP_AGENT_LIB` when set (an explicit choice wins), else next to
/// the `nonstop` executable, else in `../lib/nonstop/` from it.
pub fn find_agent_library() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NONSTOP_AGENT_LIB").filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "the agent library NONSTOP_AGENT_LIB={} does not exist; {BUILD_AGENT_HINT}, or unset NONSTOP_AGENT_LIB",
            path.display()
        );
    }
    let candidates = beside_executable(AGENT_LIB_NAME, &["", "../lib/nonstop"])?;
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "cannot find the agent library {AGENT_LIB_NAME} (looked in {}); {BUILD_AGENT_HINT}, or set NONSTOP_AGENT_LIB to its path",
        looked.join(", ")
    )
}

/// `name` in each of `folders`, relative to the folder of the running `nonstop` executable.
pub fn beside_executable(name: &str, folders: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("cannot find the nonstop executable's path")?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    Ok(folders
        .iter()
        .map(|folder| {
            if folder.is_empty() {
                dir.join(name)
            } else {
                normalize(&dir.join(folder)).join(name)
            }
        })
        .collect())
}

/// Drops `..` components lexically, so messages show `/usr/lib/nonstop`, not `/usr/bin/../lib/nonstop`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The agent token from `agent.token` in the default data folder, if the file exists.
fn read_agent_token() -> anyhow::Result<Option<String>> {
    let path = nonstop_server::default_data_dir().join("agent.token");
    match std::fs::read_to_string(&path) {
        Ok(token) => Ok(Some(token.trim().to_string())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => {
            Err(err).with_context(|| format!("cannot read the agent token {}", path.display()))
        }
    }
}

/// The program to run: `program` itself when it has a `/`, else the first executable of that name on `PATH`.
pub fn find_program(program: &OsStr) -> anyhow::Result<PathBuf> {
    let not_found = || cannot_run(program, &io::Error::from(io::ErrorKind::NotFound));
    if program.is_empty() {
        return Err(not_found());
    }
    if program.as_encoded_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return if path.exists() {
            Ok(path)
        } else {
            Err(not_found())
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
        .ok_or_else(not_found)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The error for a program that could not be started.
pub fn cannot_run(program: &OsStr, err: &io::Error) -> anyhow::Error {
    let program = program.to_string_lossy();
    match err.kind() {
        io::ErrorKind::NotFound => {
            anyhow::anyhow!("cannot run {program}: no such file; give a path or a program on PATH")
        }
        io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("cannot run {program}: permission denied (is it executable?)")
        }
        _ => anyhow::anyhow!("cannot run {program}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_goes_first_and_only_once() {
        let lib = Path::new("/opt/libnonstop_agent.so");
        assert_eq!(
            prepend_preload(lib, OsStr::new("")),
            "/opt/libnonstop_agent.so"
        );
        assert_eq!(
            prepend_preload(lib, OsStr::new("/a.so /b.so:/opt/libnonstop_agent.so")),
            "/opt/libnonstop_agent.so:/a.so:/b.so"
        );
    }

    #[test]
    fn parent_folders_are_folded() {
        assert_eq!(
            normalize(Path::new("/usr/bin/../lib/nonstop")),
            Path::new("/usr/lib/nonstop")
        );
    }
}
