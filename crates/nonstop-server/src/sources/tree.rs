//! The files of a source at a commit, one file of a folder source, and agent paths mapped
//! to repository paths by suffix.

use super::commit::At;
use super::git::{Blob, GitBackend};
use super::registry::Source;
use super::spec::{SourceSpec, is_text_path, skipped_dir};
use super::{MAX_FILE_BYTES, MAX_FILES};
use crate::error::ApiError;
use axum::http::StatusCode;
use std::path::Path;

/// The files of a local folder, relative, sorted, at most `MAX_FILES`.
pub(crate) fn walk_folder(root: &Path) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    let mut truncated = false;
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Ok(ft) = e.file_type() else { continue };
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if ft.is_dir() {
                if !skipped_dir(&name) {
                    stack.push((e.path(), rel));
                }
            } else if ft.is_file() && is_text_path(&rel) {
                if out.len() >= MAX_FILES {
                    truncated = true;
                    break;
                }
                out.push(rel);
            }
        }
    }
    out.sort();
    (out, truncated)
}

pub(crate) fn tree_of(
    source: &Source,
    git: &dyn GitBackend,
    at: &At,
) -> Result<(Vec<String>, bool), ApiError> {
    match &source.spec {
        SourceSpec::Folder { path } => Ok(walk_folder(path)),
        SourceSpec::Git(g) => {
            let commit = at.commit.as_deref().unwrap_or("HEAD");
            let dir = g.subdir.as_deref().unwrap_or("");
            let mut files: Vec<String> = git
                .list(&source.repo, commit, dir)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?
                .into_iter()
                .filter(|p| is_text_path(p) && !p.split('/').any(|c| c.starts_with('.')))
                .collect();
            let truncated = files.len() > MAX_FILES;
            files.truncate(MAX_FILES);
            Ok((files, truncated))
        }
    }
}

/// The longest-suffix matches of an agent's `path` among `files`, by whole path parts.
pub fn suffix_matches<'a>(files: &'a [String], path: &str) -> (usize, Vec<&'a str>) {
    let want: Vec<&str> = path.split(['/', '\\']).filter(|c| !c.is_empty()).collect();
    let mut best = 0;
    let mut found = Vec::new();
    for f in files {
        let n = f
            .split('/')
            .rev()
            .zip(want.iter().rev())
            .take_while(|(a, b)| a == *b)
            .count();
        if n == 0 || n < best {
            continue;
        }
        if n > best {
            best = n;
            found.clear();
        }
        found.push(f.as_str());
    }
    (best, found)
}

pub(crate) fn read_folder_file(root: &Path, path: &str) -> Result<Blob, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{path} is not in the folder {}: pick a file from the tree",
                root.display()
            ),
        )
    };
    let root = root.canonicalize().map_err(|_| missing())?;
    let full = root.join(path).canonicalize().map_err(|_| missing())?;
    // A symbolic link may not lead out of the folder.
    if !full.starts_with(&root) || !full.is_file() {
        return Err(missing());
    }
    let size = std::fs::metadata(&full).map_err(|_| missing())?.len();
    if size > MAX_FILE_BYTES {
        return Ok(Blob { size, bytes: None });
    }
    let bytes = std::fs::read(&full).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {path}: {e}"),
        )
    })?;
    Ok(Blob {
        size,
        bytes: Some(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_suffix_wins_and_ties_are_ambiguous() {
        let files: Vec<String> = [
            "src/cart.rs",
            "shop/src/cart.rs",
            "src/main.rs",
            "b/x.c",
            "a/x.c",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            suffix_matches(&files, "/home/ci/shop/src/cart.rs"),
            (3, vec!["shop/src/cart.rs"])
        );
        assert_eq!(
            suffix_matches(&files, "/build/x.c"),
            (1, vec!["b/x.c", "a/x.c"])
        );
        assert_eq!(suffix_matches(&files, "/nowhere.rs").1.len(), 0);
        assert_eq!(
            suffix_matches(&files, "src/main.rs"),
            (2, vec!["src/main.rs"])
        );
    }
}
