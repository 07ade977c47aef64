//! A sandbox's file tree in memory: absolute paths to files and
//! directories. The agent refuses a path that is not already confined
//! (absolute, no `.` or `..`, no empty component), so a host that forgot
//! [`crate::confine`] fails its test instead of reaching a file it should
//! not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use agent_proto::{DirEntry, ErrorKind, FileKind, FileStat, RemoteError};

use super::lock;

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>),
    Dir,
}

/// One sandbox's files; clones share them ([`Files::copy`] does not).
#[derive(Debug, Clone, Default)]
pub struct Files {
    tree: Arc<Mutex<BTreeMap<String, Node>>>,
}

/// `path` if it is absolute and confined, else why not.
fn checked(path: &str) -> Result<&str, RemoteError> {
    let confined = path == "/"
        || (path.starts_with('/')
            && !path.ends_with('/')
            && path[1..]
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != ".."));
    if confined && !path.contains('\0') {
        Ok(path)
    } else {
        Err(RemoteError::new(
            ErrorKind::InvalidInput,
            format!("{path:?} is not a confined absolute path"),
        ))
    }
}

fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(0) | None => None,
        Some(at) => Some(&path[..at]),
    }
}

fn not_found(path: &str) -> RemoteError {
    RemoteError::new(ErrorKind::NotFound, format!("{path}: no such file"))
}

fn stat_of(node: &Node) -> FileStat {
    let (kind, size, mode) = match node {
        Node::File(bytes) => (FileKind::File, bytes.len() as u64, 0o644),
        Node::Dir => (FileKind::Dir, 0, 0o755),
    };
    FileStat {
        kind,
        size,
        mode,
        uid: 0,
        gid: 0,
        modified_unix_ms: 0,
        link_target: None,
    }
}

impl Files {
    /// An independent copy (what a fork's disk starts with).
    pub fn copy(&self) -> Files {
        Files {
            tree: Arc::new(Mutex::new(lock(&self.tree).clone())),
        }
    }

    /// The content of the file at absolute `path`.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        match lock(&self.tree).get(path) {
            Some(Node::File(bytes)) => Some(bytes.clone()),
            _ => None,
        }
    }

    /// Writes the file at absolute `path`, creating its parents.
    pub fn write(&self, path: &str, bytes: impl Into<Vec<u8>>) -> Result<(), RemoteError> {
        let path = checked(path)?;
        if path == "/" {
            return Err(RemoteError::new(
                ErrorKind::IsADirectory,
                "/ is a directory",
            ));
        }
        let mut tree = lock(&self.tree);
        let mut dir = parent(path);
        while let Some(at) = dir.filter(|d| *d != "/") {
            match tree.get(at) {
                Some(Node::File(_)) => {
                    return Err(RemoteError::new(
                        ErrorKind::NotADirectory,
                        format!("{at} is a file"),
                    ));
                }
                Some(Node::Dir) => break,
                None => {
                    tree.insert(at.to_owned(), Node::Dir);
                }
            }
            dir = parent(at);
        }
        if let Some(Node::Dir) = tree.get(path) {
            return Err(RemoteError::new(
                ErrorKind::IsADirectory,
                format!("{path} is a directory"),
            ));
        }
        tree.insert(path.to_owned(), Node::File(bytes.into()));
        Ok(())
    }

    /// Every file and directory, sorted.
    pub fn paths(&self) -> Vec<String> {
        lock(&self.tree).keys().cloned().collect()
    }

    /// Bytes of all files together.
    pub fn bytes(&self) -> u64 {
        lock(&self.tree)
            .values()
            .map(|node| match node {
                Node::File(bytes) => bytes.len() as u64,
                Node::Dir => 0,
            })
            .sum()
    }

    pub(super) fn stat(&self, path: &str) -> Result<FileStat, RemoteError> {
        let path = checked(path)?;
        if path == "/" {
            return Ok(stat_of(&Node::Dir));
        }
        lock(&self.tree)
            .get(path)
            .map(stat_of)
            .ok_or_else(|| not_found(path))
    }

    pub(super) fn list(&self, path: &str) -> Result<Vec<DirEntry>, RemoteError> {
        let path = checked(path)?;
        let tree = lock(&self.tree);
        match tree.get(path) {
            Some(Node::File(_)) => {
                return Err(RemoteError::new(
                    ErrorKind::NotADirectory,
                    format!("{path} is a file"),
                ));
            }
            None if path != "/" => return Err(not_found(path)),
            _ => {}
        }
        let prefix = if path == "/" {
            "/".to_owned()
        } else {
            format!("{path}/")
        };
        Ok(tree
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| !p[prefix.len()..].contains('/'))
            .map(|(p, node)| DirEntry {
                name: p[prefix.len()..].to_owned(),
                stat: stat_of(node),
            })
            .collect())
    }

    pub(super) fn mkdir(&self, path: &str) -> Result<(), RemoteError> {
        let path = checked(path)?;
        let mut tree = lock(&self.tree);
        let mut at = Some(path);
        while let Some(dir) = at.filter(|d| *d != "/") {
            match tree.get(dir) {
                Some(Node::File(_)) => {
                    return Err(RemoteError::new(
                        ErrorKind::NotADirectory,
                        format!("{dir} is a file"),
                    ));
                }
                Some(Node::Dir) => {}
                None => {
                    tree.insert(dir.to_owned(), Node::Dir);
                }
            }
            at = parent(dir);
        }
        Ok(())
    }

    pub(super) fn remove(&self, path: &str, recursive: bool) -> Result<(), RemoteError> {
        let path = checked(path)?;
        if path == "/" {
            return Err(RemoteError::new(
                ErrorKind::InvalidInput,
                "refusing to remove /",
            ));
        }
        let mut tree = lock(&self.tree);
        if !tree.contains_key(path) {
            return Err(not_found(path));
        }
        let prefix = format!("{path}/");
        let below: Vec<String> = tree
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        if !below.is_empty() && !recursive {
            return Err(RemoteError::new(
                ErrorKind::DirectoryNotEmpty,
                format!("{path} is not empty"),
            ));
        }
        for p in below {
            tree.remove(&p);
        }
        tree.remove(path);
        Ok(())
    }
}
