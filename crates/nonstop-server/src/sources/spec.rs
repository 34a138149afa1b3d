//! What a source is: a local folder or a Git repository, and the checks on its names and
//! paths.

use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// Where a service's code is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SourceSpec {
    /// A Git repository.
    Git(GitSource),
    /// A folder on the server's machine.
    Folder {
        /// The folder.
        path: PathBuf,
    },
}

/// A Git repository as a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Where to clone from: `https://…`, `http://…`, `git://…`, `ssh://…`, `file://…` or a path.
    pub url: String,
    /// The branch whose head is shown when the agents' commit is unknown (default: the
    /// repository's default branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// An access token for HTTPS (sent as basic auth, user `x-access-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The folder of the repository that holds the service's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdir: Option<String>,
}

impl SourceSpec {
    /// Parses the command line's `SERVICE=/path` or `SERVICE=URL[#branch]`.
    pub fn parse_arg(arg: &str) -> Result<(String, SourceSpec), String> {
        let (service, target) = arg.split_once('=').ok_or_else(|| {
            format!("--source {arg:?}: write SERVICE=/path/to/folder or SERVICE=URL[#branch]")
        })?;
        check_service(service)?;
        let spec = if target.contains("://") || target.ends_with(".git") {
            let (url, branch) = match target.split_once('#') {
                Some((u, b)) => (u, Some(b.to_string())),
                None => (target, None),
            };
            SourceSpec::Git(GitSource {
                url: url.to_string(),
                branch,
                token: None,
                subdir: None,
            })
        } else {
            SourceSpec::Folder {
                path: PathBuf::from(target),
            }
        };
        spec.check()?;
        Ok((service.to_string(), spec))
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        match self {
            SourceSpec::Folder { path } if !path.is_absolute() => Err(format!(
                "source folder {} is not an absolute path: give the full path",
                path.display()
            )),
            SourceSpec::Folder { .. } => Ok(()),
            SourceSpec::Git(g) => {
                if g.url.is_empty() || g.url.starts_with('-') || g.url.contains(['\n', '\0']) {
                    return Err(format!("invalid repository URL {:?}", g.url));
                }
                if let Some(b) = &g.branch
                    && !is_ref_name(b)
                {
                    return Err(format!("invalid branch name {b:?}"));
                }
                if let Some(s) = &g.subdir {
                    relative_path(s).map_err(|e| format!("subdir: {e}"))?;
                }
                Ok(())
            }
        }
    }

    /// The spec as the API shows it: the token replaced by `has_token`.
    pub(crate) fn view(&self) -> serde_json::Value {
        match self {
            SourceSpec::Folder { path } => serde_json::json!({"kind": "folder", "path": path}),
            SourceSpec::Git(g) => serde_json::json!({
                "kind": "git", "url": g.url, "branch": g.branch, "subdir": g.subdir,
                "has_token": g.token.is_some(),
            }),
        }
    }
}

pub(crate) fn check_service(service: &str) -> Result<(), String> {
    if crate::validate::is_valid_id(service) {
        Ok(())
    } else {
        Err(format!(
            "invalid service name {service:?}: 1-64 letters, digits, `-`, `_` or `.`"
        ))
    }
}

pub(crate) fn is_ref_name(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 200
        && !b.starts_with(['-', '/', '.'])
        && !b.contains("..")
        && !b.ends_with(['/', '.'])
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./+".contains(&c))
}

pub(crate) fn is_commit_id(c: &str) -> bool {
    (4..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A checked relative path: no `..`, no root, no empty parts; `/`-separated.
pub(crate) fn relative_path(p: &str) -> Result<String, String> {
    let p = p.trim_matches('/');
    if p.is_empty() || p.contains('\0') || p.contains('\\') {
        return Err(format!("invalid path {p:?}"));
    }
    for c in Path::new(p).components() {
        match c {
            Component::Normal(_) => {}
            _ => return Err(format!("invalid path {p:?}: use a path inside the source")),
        }
    }
    Ok(p.to_string())
}

/// Whether the tree shows a file: code and text, by extension or well-known name.
pub fn is_text_path(path: &str) -> bool {
    const NAMES: &[&str] = &[
        "Makefile",
        "makefile",
        "GNUmakefile",
        "CMakeLists.txt",
        "Dockerfile",
        "LICENSE",
        "README",
        "build.rs",
        "meson.build",
    ];
    const EXTS: &[&str] = &[
        "rs", "c", "h", "cc", "cpp", "cxx", "c++", "hpp", "hh", "hxx", "h++", "inl", "ipp", "s",
        "S", "asm", "toml", "md", "txt", "json", "yaml", "yml", "ini", "cfg", "conf", "sh", "bash",
        "py", "go", "js", "mjs", "ts", "html", "css", "proto", "sql", "cmake", "mk", "ld", "lds",
        "x", "in", "am", "ac", "m4", "gradle", "java", "kt", "zig", "nim", "lua", "rb", "pl",
        "xml", "csv", "rst", "adoc", "lock",
    ];
    let name = path.rsplit('/').next().unwrap_or(path);
    if NAMES.contains(&name) {
        return true;
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() || name.starts_with('.') => EXTS.contains(&ext),
        _ => false,
    }
}

/// Folders never listed from a local folder source.
pub(crate) fn skipped_dir(name: &str) -> bool {
    name.starts_with('.') || matches!(name, "target" | "node_modules" | "build" | "__pycache__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_arguments_parse_and_bad_ones_say_why() {
        assert_eq!(
            SourceSpec::parse_arg("shop=/srv/shop").unwrap(),
            (
                "shop".into(),
                SourceSpec::Folder {
                    path: "/srv/shop".into()
                }
            )
        );
        let (_, g) = SourceSpec::parse_arg("shop=https://example.invalid/shop.git#main").unwrap();
        assert!(
            matches!(g, SourceSpec::Git(GitSource { ref branch, .. }) if branch.as_deref() == Some("main"))
        );
        assert!(
            SourceSpec::parse_arg("shop")
                .unwrap_err()
                .contains("SERVICE=")
        );
        assert!(
            SourceSpec::parse_arg("shop=relative/dir")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(SourceSpec::parse_arg("shop=git://h/r.git#-x").is_err());
    }

    #[test]
    fn paths_stay_inside_and_text_files_are_picked() {
        assert!(relative_path("../etc/passwd").is_err());
        assert!(relative_path("src/../../x").is_err());
        assert_eq!(relative_path("/src/cart.rs").unwrap(), "src/cart.rs");
        assert!(is_text_path("src/cart.rs") && is_text_path("Makefile") && is_text_path("a/b.hpp"));
        assert!(!is_text_path("logo.png") && !is_text_path("a/bin"));
    }
}
