//! Browsing a branch's files: the entries of a directory and the content of
//! a file at a branch's head, read with gitoxide. All functions block; call
//! them from a blocking task.

use std::path::Path;

use api_types::repos::{EntryKind, TreeEntry as Entry};
use gix::bstr::ByteSlice;

use super::inspect::{Result, err, open};

/// Files larger than this are not read whole.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// What a path names at a branch's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Directories first, then files, each sorted by name.
    Dir(Vec<Entry>),
    /// The content of a file of at most [`MAX_FILE_BYTES`].
    File(Vec<u8>),
    /// A larger file, not read (a small push can inflate to gigabytes):
    /// its object id and size. [`super::blob_head`] reads its beginning.
    LargeFile { id: gix::ObjectId, size: u64 },
}

/// What `path` ("" for the root) is at the head of `branch`; `None` when
/// the branch or the path does not exist.
pub fn at_branch(git_dir: &Path, branch: &str, path: &str) -> Result<Option<Node>> {
    let repo = open(git_dir)?;
    let Some(mut reference) = repo
        .try_find_reference(format!("refs/heads/{branch}").as_str())
        .map_err(err)?
    else {
        return Ok(None);
    };
    let tree = reference
        .peel_to_commit()
        .map_err(err)?
        .tree()
        .map_err(err)?;
    let path = path.trim_matches('/');
    let object = if path.is_empty() {
        tree.detach().attach(&repo)
    } else {
        let Some(entry) = tree.lookup_entry_by_path(path).map_err(err)? else {
            return Ok(None);
        };
        if !(entry.mode().is_tree() || entry.mode().is_blob()) {
            return Ok(None);
        }
        if entry.mode().is_blob() {
            let id = entry.oid().to_owned();
            let size = repo.find_header(id).map_err(err)?.size();
            if size > MAX_FILE_BYTES as u64 {
                return Ok(Some(Node::LargeFile { id, size }));
            }
        }
        entry.object().map_err(err)?
    };
    match object.kind {
        gix::object::Kind::Tree => {
            let tree = object.into_tree();
            let mut entries = Vec::new();
            for entry in tree.iter() {
                let entry = entry.map_err(err)?;
                let mode = entry.mode();
                let kind = if mode.is_tree() {
                    EntryKind::Dir
                } else if mode.is_link() {
                    EntryKind::Symlink
                } else if mode.is_commit() {
                    EntryKind::Submodule
                } else {
                    EntryKind::File
                };
                entries.push(Entry {
                    name: entry.filename().to_str_lossy().into_owned(),
                    kind,
                });
            }
            entries.sort_by(|a, b| {
                (a.kind != EntryKind::Dir, &a.name).cmp(&(b.kind != EntryKind::Dir, &b.name))
            });
            Ok(Some(Node::Dir(entries)))
        }
        gix::object::Kind::Blob => Ok(Some(Node::File(object.detach().data))),
        _ => Ok(None),
    }
}
