//! Sources: where the web IDE reads a service's code.
//!
//! A service maps to a [`SourceSpec`]: a local folder, or a Git repository (URL, branch,
//! optional access token, optional sub-folder). Git repositories are cloned bare under
//! `DATA/sources/` and fetched in the background ([`REFRESH`]); files are read **at the
//! commit the service's agents report** (their hello's `commit`), and at the branch head,
//! with a warning in the answer, when that commit is unknown or not in the repository.
//!
//! Git work goes through the small [`GitBackend`] trait. Its implementation today runs the
//! `git` program ([`GitCli`]) with a deadline per command and no prompts, which keeps the
//! server's build light; a pure-Rust backend can take its place behind the same trait.
//!
//! Routes (admin token):
//! - `GET /api/v1/services`: services known from agents or sources, with source status;
//! - `GET|PUT /api/v1/services/{service}/source`: the source (`{url, branch, token, subdir}`
//!   or `{path}`); the token is never shown back;
//! - `GET /api/v1/services/{service}/files?commit=`: the file tree (text and code files,
//!   at most [`MAX_FILES`]);
//! - `GET /api/v1/services/{service}/files/{*path}?commit=`: one file (at most
//!   [`MAX_FILE_BYTES`]);
//! - `GET /api/v1/services/{service}/resolve?path=`: an agent's file path (absolute, from
//!   debug info) mapped to a repository path by the longest suffix match.
//!
//! | module | job |
//! | --- | --- |
//! | [`spec`] | what a source is (folder or Git), checked names and paths |
//! | [`git`] | Git in-process (`gix`): clone/fetch with progress, commits, trees, blobs |
//! | [`registry`] | the sources of a server, kept in the store, synced in the background |
//! | [`commit`] | which commit a read is at, and the warning when it falls back |
//! | [`tree`] | the files of a tree, one file of a folder, agent paths by suffix |
//! | `handlers` | the HTTP routes |

pub mod commit;
pub mod git;
mod handlers;
pub mod registry;
pub mod spec;
pub mod tree;

pub(crate) use handlers::{get_source, list_files, list_services, put_source, read_file, resolve};
pub(crate) use registry::Sources;
pub use spec::{GitSource, SourceSpec, is_text_path};
pub use tree::suffix_matches;

use std::time::Duration;

/// Most files a tree lists; a larger repository is cut with `truncated: true`.
pub const MAX_FILES: usize = 20_000;
/// Largest file the IDE shows.
pub const MAX_FILE_BYTES: u64 = 2 << 20;
/// How often Git sources are fetched in the background.
pub const REFRESH: Duration = Duration::from_secs(60);
/// Shortest time between two fetches asked for by a commit the repository lacks.
pub(crate) const ON_DEMAND_FETCH: Duration = Duration::from_secs(10);
/// Longest a clone or fetch may take.
pub(crate) const NETWORK_DEADLINE: Duration = Duration::from_secs(120);
/// Longest a local git command (list, read) may take.
pub(crate) const LOCAL_DEADLINE: Duration = Duration::from_secs(20);
