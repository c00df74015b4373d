//! A commit's tree as files, read without a work tree: what a static site is deployed from.

use gix_hash::ObjectId;
use gix_object::Kind;

use crate::{Error, Repository};

/// One file or symlink of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeItem {
    /// Its path (`/`-separated, relative to the root).
    pub path: String,
    /// What it is.
    pub kind: TreeItemKind,
}

/// What a [`TreeItem`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeItemKind {
    /// A regular file: its blob and that blob's size, read by [`Repository::read_blob`]
    /// when it is needed.
    File {
        /// The blob.
        oid: ObjectId,
        /// Its size in bytes.
        size: u64,
    },
    /// A symbolic link and its target.
    Symlink(String),
}

/// Bounds on what [`Repository::tree_items`] reads.
#[derive(Debug, Clone, Copy)]
pub struct TreeLimits {
    /// The most entries of any kind (files, symlinks, directories, submodules), each visit
    /// of a subtree shared by several paths counted again.
    pub max_items: usize,
    /// The most bytes of all paths together.
    pub max_path_bytes: u64,
    /// The most bytes of all files together.
    pub max_bytes: u64,
    /// The most bytes of one file (or symlink target): a larger one is refused before it is
    /// read, by the size its object says.
    pub max_file_bytes: u64,
    /// The most bytes of a symlink's target: a longer one is refused before it is read.
    pub max_link_bytes: u64,
    /// The deepest directory nesting.
    pub max_depth: usize,
}

impl Repository {
    /// Every file and symlink of the tree of `commit` (a commit, or a tag of one), files by
    /// their blobs (sized, not read) and symlinks with their targets; submodules are left
    /// out. Over a limit of `limits`, or a name that is not UTF-8 or holds a `/`:
    /// [`Error::Corrupt`] naming the commit and why.
    pub fn tree_items(
        &self,
        commit: &ObjectId,
        limits: TreeLimits,
    ) -> Result<Vec<TreeItem>, Error> {
        let mut objects = self.objects();
        let (target, kind) = objects.peel(commit)?;
        if kind != Kind::Commit {
            return Err(Error::NotOurRef { oid: *commit });
        }
        let refuse = |reason: String| Error::Corrupt {
            oid: *commit,
            reason,
        };
        let root = objects.commit(&target)?.tree;
        let mut items = Vec::new();
        let mut bytes = 0u64;
        let (mut seen, mut path_bytes) = (0usize, 0u64);
        let mut stack: Vec<(String, ObjectId, usize)> = vec![(String::new(), root, 0)];
        while let Some((prefix, tree, depth)) = stack.pop() {
            if depth > limits.max_depth {
                return Err(refuse(format!(
                    "directories deeper than {}",
                    limits.max_depth
                )));
            }
            let (kind, data) = objects.read(&tree)?;
            if kind != Kind::Tree {
                return Err(Error::Corrupt {
                    oid: tree,
                    reason: "expected a tree".into(),
                });
            }
            let mut entries = Vec::new();
            let mut at = 0;
            while at < data.len() {
                // Read as git reads a tree, modes judged by their file type bits (as the
                // walks that fetch and keep the objects judge them).
                let corrupt = |reason: String| Error::Corrupt { oid: tree, reason };
                let (entry, next) =
                    crate::objects::tree_entry(data, at, self.object_format()).map_err(corrupt)?;
                let raw = &data[at..next];
                at = next;
                let filename = crate::objects::tree_entry_name(raw);
                let mode = raw.split(|&b| b == b' ').next().unwrap_or_default();
                let mode =
                    crate::objects::mode_bits(mode).map_err(corrupt)? & crate::objects::FILE_TYPE;
                let name = std::str::from_utf8(filename)
                    .ok()
                    .filter(|n| !n.contains('/') && !n.is_empty())
                    .ok_or_else(|| {
                        refuse(format!(
                            "a name that is not one: {:?}",
                            bstr::BStr::new(filename)
                        ))
                    })?;
                let path = if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}/{name}")
                };
                seen += 1;
                path_bytes += path.len() as u64;
                if seen > limits.max_items {
                    return Err(refuse(format!("more than {} entries", limits.max_items)));
                }
                if path_bytes > limits.max_path_bytes {
                    return Err(refuse(format!(
                        "more than {} bytes of paths",
                        limits.max_path_bytes
                    )));
                }
                entries.push((path, mode, entry.oid));
            }
            for (path, mode, oid) in entries {
                if mode == crate::objects::DIRECTORY {
                    stack.push((path, oid, depth + 1));
                    continue;
                }
                // A gitlink (a submodule's commit): nothing to check out.
                if mode != crate::objects::REGULAR && mode != crate::objects::SYMLINK {
                    continue;
                }
                let link = mode == crate::objects::SYMLINK;
                // Sized, not read: a large object is refused unread (one a compressed pack
                // holds in a few bytes would be inflated whole otherwise).
                let (kind, size) = objects.header(&oid)?.ok_or(Error::Corrupt {
                    oid,
                    reason: "a tree names an object that is not there".into(),
                })?;
                if kind != Kind::Blob {
                    return Err(Error::Corrupt {
                        oid,
                        reason: "expected a blob".into(),
                    });
                }
                if size > limits.max_file_bytes {
                    return Err(refuse(format!(
                        "{path}: more than {} bytes",
                        limits.max_file_bytes
                    )));
                }
                // Targets are read now and kept: only short ones.
                if link && size > limits.max_link_bytes {
                    return Err(refuse(format!(
                        "symlink {path}: a target of more than {} bytes",
                        limits.max_link_bytes
                    )));
                }
                bytes += size;
                if bytes > limits.max_bytes {
                    return Err(refuse(format!(
                        "more than {} bytes of files",
                        limits.max_bytes
                    )));
                }
                let kind = if link {
                    let (_, data) = objects.read(&oid)?;
                    let target = std::str::from_utf8(data).map_err(|_| {
                        refuse(format!("symlink {path} to a name that is not UTF-8"))
                    })?;
                    TreeItemKind::Symlink(target.to_owned())
                } else {
                    TreeItemKind::File { oid, size }
                };
                items.push(TreeItem { path, kind });
            }
        }
        items.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(items)
    }

    /// The content of the blob `oid`, if it is at most `most` bytes (by the size its object
    /// says, before it is read): [`Error::Corrupt`] otherwise, or when it is no blob. Many
    /// reads go faster through one [`BlobReader`] ([`Repository::blob_reader`]), whose cache
    /// of delta bases they share.
    pub fn read_blob(&self, oid: &ObjectId, most: u64) -> Result<Vec<u8>, Error> {
        self.blob_reader().read(oid, most)
    }

    /// A reader of blobs, keeping the delta bases it decoded for the next reads.
    pub fn blob_reader(&self) -> BlobReader {
        BlobReader {
            objects: self.objects(),
        }
    }
}

/// Reads blobs of one [`Repository`] (see [`Repository::blob_reader`]).
pub struct BlobReader {
    objects: crate::objects::Objects,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader").finish_non_exhaustive()
    }
}

impl BlobReader {
    /// [`Repository::read_blob`].
    pub fn read(&mut self, oid: &ObjectId, most: u64) -> Result<Vec<u8>, Error> {
        let objects = &mut self.objects;
        let corrupt = |reason: &str| Error::Corrupt {
            oid: *oid,
            reason: reason.into(),
        };
        match objects.header(oid)? {
            None => return Err(corrupt("not there")),
            Some((Kind::Blob, size)) if size <= most => {}
            Some((Kind::Blob, _)) => return Err(corrupt(&format!("more than {most} bytes"))),
            Some(_) => return Err(corrupt("expected a blob")),
        }
        // Handed over, not kept: a reader kept for the next reads holds no large file.
        let (kind, data) = objects.read_owned(oid)?;
        if kind != Kind::Blob || data.len() as u64 > most {
            return Err(corrupt("not the blob its header says"));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitcache_testkit::git::{commit_all, git_stdout};

    /// A repository whose one commit holds `files`: its folder, the repository, the commit.
    fn committed(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, Repository, ObjectId) {
        committed_as(|work| {
            for (name, content) in files {
                std::fs::write(work.join(name), content).unwrap();
            }
        })
    }

    /// A repository whose one commit holds what `write` puts in its work tree.
    fn committed_as(
        write: impl FnOnce(&std::path::Path),
    ) -> (tempfile::TempDir, Repository, ObjectId) {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("w");
        std::fs::create_dir_all(&work).unwrap();
        git_stdout(&work, &["init", "-q", "-b", "main"]);
        write(&work);
        commit_all(&work, "files");
        let tip = ObjectId::from_hex(git_stdout(&work, &["rev-parse", "HEAD"]).trim().as_bytes())
            .unwrap();
        let repo = Repository::open(work.join(".git")).unwrap();
        (dir, repo, tip)
    }

    /// Limits of ten items in four levels, `max_file_bytes` a file and `max_bytes` in all.
    fn limits(max_file_bytes: u64, max_bytes: u64) -> TreeLimits {
        TreeLimits {
            max_items: 10,
            max_path_bytes: 100,
            max_bytes,
            max_file_bytes,
            max_link_bytes: 16,
            max_depth: 4,
        }
    }

    /// A file over the bound for one file is refused by its object's size, before it is
    /// read; under it, the tree is listed, and the file read by its blob.
    #[test]
    fn a_file_over_its_bound_is_refused_unread() {
        // Zeros: a few bytes in the pack, 300 once inflated.
        let (_dir, repo, tip) = committed(&[
            ("small.txt", b"small\n".to_vec()),
            ("big.bin", vec![0u8; 300]),
        ]);
        let err = repo.tree_items(&tip, limits(299, 1000)).unwrap_err();
        assert!(
            err.to_string().contains("big.bin: more than 299 bytes"),
            "{err}"
        );
        let items = repo.tree_items(&tip, limits(300, 1000)).unwrap();
        let paths: Vec<&str> = items.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["big.bin", "small.txt"]);
        let TreeItemKind::File { oid, size } = items[0].kind else {
            panic!("{:?} is a file", items[0]);
        };
        assert_eq!(size, 300);
        assert!(repo.read_blob(&oid, 299).is_err(), "over its bound");
        assert_eq!(repo.read_blob(&oid, 300).unwrap(), vec![0u8; 300]);
        assert!(repo.read_blob(&tip, 1000).is_err(), "a commit is no blob");
    }

    /// Modes are judged as git judges them, by their file type bits: `40755` is a directory,
    /// `644` and `140000` are gitlinks (nothing to check out, whatever they name).
    #[test]
    fn modes_are_judged_as_git_judges_them() {
        let (dir, _repo, _tip) = committed(&[("f", b"f\n".to_vec())]);
        let git_dir = dir.path().join("w/.git");
        let write = |kind: &str, data: &[u8]| {
            let out = gitcache_testkit::git::git_with_input(
                &git_dir,
                &["hash-object", "-t", kind, "-w", "--literally", "--stdin"],
                data,
            );
            ObjectId::from_hex(String::from_utf8(out).unwrap().trim().as_bytes()).unwrap()
        };
        let blob = write("blob", b"inside\n");
        let entry = |mode: &str, name: &str, id: &ObjectId| {
            let mut bytes = format!("{mode} {name}\0").into_bytes();
            bytes.extend_from_slice(id.as_bytes());
            bytes
        };
        let inner = write("tree", &entry("100644", "file", &blob));
        let missing = ObjectId::from_hex(&[b'3'; 40]).unwrap();
        let mut root = entry("40755", "d", &inner);
        root.extend(entry("100644", "f", &blob));
        root.extend(entry("644", "g", &missing));
        root.extend(entry("140000", "x", &missing));
        let root = write("tree", &root);
        let commit = write(
            "commit",
            format!("tree {root}\nauthor A <a@b> 1 +0000\ncommitter A <a@b> 1 +0000\n\nodd\n")
                .as_bytes(),
        );
        let repo = Repository::open(&git_dir).unwrap();
        let items = repo.tree_items(&commit, limits(100, 1000)).unwrap();
        let paths: Vec<&str> = items.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["d/file", "f"]);
    }

    /// A reader kept for many reads hands each blob over and holds on to no large one.
    #[test]
    fn a_blob_reader_keeps_no_large_blob() {
        let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        let (_dir, repo, tip) = committed(&[("big", big.clone()), ("small", b"s".to_vec())]);
        let items = repo.tree_items(&tip, limits(4 << 20, 8 << 20)).unwrap();
        let mut reader = repo.blob_reader();
        for item in &items {
            let TreeItemKind::File { oid, size } = item.kind else {
                panic!("{item:?} is a file");
            };
            let read = reader.read(&oid, size).unwrap();
            assert_eq!(read.len() as u64, size);
            assert!(reader.objects.buffer_capacity() <= 1 << 20, "{}", item.path);
        }
        assert_eq!(reader.read(&oid_of(&items, "big"), 3 << 20).unwrap(), big);
    }

    fn oid_of(items: &[TreeItem], path: &str) -> ObjectId {
        match items.iter().find(|i| i.path == path).map(|i| &i.kind) {
            Some(TreeItemKind::File { oid, .. }) => *oid,
            other => panic!("{path}: {other:?}"),
        }
    }

    /// The files of a tree together over their bound are refused by their sizes, none read.
    #[test]
    fn files_over_their_bound_together_are_refused() {
        let (_dir, repo, tip) = committed(&[
            ("a", vec![b'a'; 400]),
            ("b", vec![b'b'; 400]),
            ("c", vec![b'c'; 400]),
        ]);
        let err = repo.tree_items(&tip, limits(1000, 1199)).unwrap_err();
        assert!(
            err.to_string().contains("more than 1199 bytes of files"),
            "{err}"
        );
        assert_eq!(repo.tree_items(&tip, limits(1000, 1200)).unwrap().len(), 3);
    }

    /// A symlink whose target is over its bound is refused before it is read; a short one
    /// is read.
    #[test]
    fn a_long_symlink_target_is_refused_unread() {
        let (_dir, repo, tip) = committed_as(|work| {
            std::os::unix::fs::symlink("a".repeat(17), work.join("long")).unwrap();
        });
        let err = repo.tree_items(&tip, limits(1000, 1000)).unwrap_err();
        assert!(
            err.to_string()
                .contains("symlink long: a target of more than 16 bytes"),
            "{err}"
        );
        let (_dir, repo, tip) = committed_as(|work| {
            std::os::unix::fs::symlink("a".repeat(16), work.join("short")).unwrap();
        });
        let items = repo.tree_items(&tip, limits(1000, 1000)).unwrap();
        assert_eq!(items[0].kind, TreeItemKind::Symlink("a".repeat(16)));
    }
}
