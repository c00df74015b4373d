//! Taking a branch's tree from a repository: the branch's commit by `ls-refs`, one shallow
//! fetch of it (`deepen 1`) through gitcache's protocol v2 client, the pack indexed in a
//! scratch folder (removed once the tree is let go of, whatever happens), and the tree read
//! out a file at a time as it is deployed ([`FetchedTree`]).

use std::io::BufReader;
use std::path::Path;

use gitcache_pack::checkout::{TreeItem, TreeItemKind, TreeLimits};
use gitcache_protocol::request::{Fetch, LsRefs};
use gitcache_protocol::response::PackStream;
use gitcache_upstream::Upstream;

use crate::site::{MAX_FILE_BYTES, MAX_FILES, MAX_SITE_BYTES, SourceKind, TreeFile, TreeSource};

/// The slowest a deploy's upstream may answer: 256 KiB in every 30 seconds (whatever its
/// idle timeout), so that one that sends a byte now and then holds a deploy's slot for half
/// a minute, not the whole transfer timeout.
pub const MIN_RATE: (u64, std::time::Duration) = (256 << 10, std::time::Duration::from_secs(30));

/// How long a deploy's upstream has to start its pack: the first window of [`MIN_RATE`] (a
/// forge counts the objects of a large repository's tree before it sends any, keep-alives
/// aside).
pub const PACK_STARTS_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// The limits of a deploy's exchanges before its fetch: its listing (`ls-refs`) within a
/// minute, at [`MIN_RATE`].
pub fn listing_limits() -> gitcache_upstream::Limits {
    gitcache_upstream::Limits {
        transfer_timeout: std::time::Duration::from_secs(60),
        min_rate: Some(MIN_RATE),
        ..gitcache_upstream::Limits::default()
    }
}

/// Why a branch's tree could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The upstream could not be asked, or refused.
    #[error(transparent)]
    Upstream(#[from] gitcache_upstream::Error),
    /// The repository has no such branch.
    #[error("no branch {0:?} in the repository")]
    NoBranch(String),
    /// The branch name is not one git takes.
    #[error("not a branch name: {0:?}")]
    BadBranch(String),
    /// The answer could not be read, or its pack taken in.
    #[error("the repository's answer: {0}")]
    Answer(String),
    /// The tree could not be read, or is over the limits.
    #[error("the tree: {0}")]
    Tree(#[from] gitcache_pack::Error),
    /// The scratch folder failed.
    #[error("scratch folder: {0}")]
    Io(#[from] std::io::Error),
    /// A fetch was needed, and the disk has no room for one above the free space kept.
    #[error("no room on the disk for the repository's pack")]
    NoRoom,
}

/// A branch's tree as fetched: its paths and sizes, each file read from the repository
/// fetched for it when it is needed. That repository is in a scratch folder, removed when
/// this is dropped.
pub struct FetchedTree {
    repo: gitcache_pack::Repository,
    items: Vec<TreeItem>,
    /// Readers of its blobs, each taken for one read at a time and put back: a read finds
    /// the delta bases the ones before it decoded.
    readers: std::sync::Mutex<Vec<gitcache_pack::checkout::BlobReader>>,
    // Dropped after the repository.
    _dir: RemoveOnDrop,
}

impl std::fmt::Debug for FetchedTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedTree")
            .field("items", &self.items.len())
            .finish_non_exhaustive()
    }
}

impl FetchedTree {
    /// Every file and symlink, files read whole.
    pub fn files(&self) -> Result<Vec<TreeFile>, String> {
        (0..self.count())
            .map(|index| {
                Ok(match self.item(index) {
                    (path, SourceKind::File(_)) => TreeFile::file(path, self.read(index)?),
                    (path, SourceKind::Symlink(target)) => TreeFile::symlink(path, target),
                })
            })
            .collect()
    }
}

impl TreeSource for FetchedTree {
    fn count(&self) -> usize {
        self.items.len()
    }

    fn item(&self, index: usize) -> (&str, SourceKind<'_>) {
        let item = &self.items[index];
        let kind = match &item.kind {
            TreeItemKind::File { size, .. } => SourceKind::File(*size),
            TreeItemKind::Symlink(target) => SourceKind::Symlink(target),
        };
        (&item.path, kind)
    }

    fn read(&self, index: usize) -> Result<Vec<u8>, String> {
        let item = &self.items[index];
        match &item.kind {
            TreeItemKind::File { oid, size } => {
                let taken = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let mut reader = taken.unwrap_or_else(|| self.repo.blob_reader());
                let read = reader
                    .read(oid, *size)
                    .map_err(|err| format!("{}: {err}", item.path));
                self.readers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(reader);
                read
            }
            TreeItemKind::Symlink(_) => Err(format!("{} is a symlink", item.path)),
        }
    }
}

/// The commit at the tip of `branch` of `upstream`'s repository, and its tree (within the
/// site limits), by way of a scratch folder under `scratch`.
pub async fn branch_tree(
    upstream: &Upstream,
    branch: &str,
    scratch: &Path,
) -> Result<(String, FetchedTree), FetchError> {
    match branch_tree_unless(upstream, branch, scratch, None, MOST_PACK_BYTES).await? {
        Changed::Tree(commit, tree) => Ok((commit, *tree)),
        Changed::No => Err(FetchError::Answer("the tip was taken as deployed".into())),
    }
}

/// What [`branch_tree_unless`] found.
#[derive(Debug)]
pub enum Changed {
    /// The branch's tip is the commit deployed: nothing was fetched.
    No,
    /// The tip, and its tree.
    Tree(String, Box<FetchedTree>),
}

/// The largest pack a deploy fetches: twice what a site may hold (its history is shallow,
/// but a tree's files may compress badly).
pub const MOST_PACK_BYTES: u64 = 2 * MAX_SITE_BYTES;

/// [`branch_tree`], unless the branch's tip is `deployed` (a commit id in hex): then only the
/// branch's tip is asked (`ls-refs`), and nothing is fetched. A pack over `most` bytes (and
/// [`MOST_PACK_BYTES`]) is refused as it arrives; with `most` 0, a fetch is refused before it
/// starts ([`FetchError::NoRoom`]).
pub async fn branch_tree_unless(
    upstream: &Upstream,
    branch: &str,
    scratch: &Path,
    deployed: Option<&str>,
    most: u64,
) -> Result<Changed, FetchError> {
    // Refused before anything is asked of the upstream.
    branch_ref(branch)?;
    let format = upstream.object_format().await?;
    let tip = branch_tip(upstream, branch).await?;
    if deployed.is_some_and(|deployed| deployed.eq_ignore_ascii_case(&tip.to_string())) {
        return Ok(Changed::No);
    }
    if most == 0 {
        return Err(FetchError::NoRoom);
    }
    let dir = tempfile_dir(scratch)?;
    // Removed however this ends: an error, a panic, the future dropped, the tree let go of.
    let removed = RemoveOnDrop(dir.clone());
    let result = async {
        let git_dir = dir.join("site.git");
        gitcache_mirror::mirror::Mirror::create(&git_dir, format)?;
        let response = dir.join("response");
        let mut file = tokio::fs::File::create(&response).await?;
        // A site's repository gets no more than a site may hold (and its history, shallow).
        let upstream = upstream.clone().with_limits(gitcache_upstream::Limits {
            max_pack_bytes: most.min(MOST_PACK_BYTES),
            transfer_timeout: std::time::Duration::from_secs(300),
            min_rate: Some(MIN_RATE),
            first_window: Some(PACK_STARTS_WITHIN),
            ..gitcache_upstream::Limits::default()
        });
        let fetch = Fetch {
            wants: vec![tip],
            deepen: Some(1),
            done: true,
            ofs_delta: true,
            no_progress: true,
            ..Fetch::default()
        };
        upstream.fetch_into(format, fetch, &mut file).await?;
        drop(file);
        let (git_dir_b, response_b) = (git_dir.clone(), response.clone());
        tokio::task::spawn_blocking(move || -> Result<_, FetchError> {
            let answer = |e: &dyn std::fmt::Display| FetchError::Answer(e.to_string());
            let mut stream =
                PackStream::new(BufReader::new(std::fs::File::open(&response_b)?), format);
            stream.read_sections().map_err(|e| answer(&e))?;
            if !stream.has_pack() {
                return Err(FetchError::Answer("no pack in the answer".into()));
            }
            gitcache_mirror::ingest::ingest_pack(&git_dir_b, format, &mut BufReader::new(stream))
                .map_err(|e| answer(&e))?;
            // Taken in: the repository's pack is all the deployment reads.
            let _ = std::fs::remove_file(&response_b);
            let repo = gitcache_pack::Repository::open(&git_dir_b)?;
            let limits = TreeLimits {
                max_items: MAX_FILES,
                max_path_bytes: 16 << 20,
                max_bytes: MAX_SITE_BYTES,
                max_file_bytes: MAX_FILE_BYTES,
                max_link_bytes: crate::manifest::MAX_PATH as u64,
                max_depth: 64,
            };
            let items = repo.tree_items(&tip, limits)?;
            Ok((repo, items))
        })
        .await
        .map_err(|e| FetchError::Answer(e.to_string()))?
    }
    .await;
    let (repo, items) = result?;
    Ok(Changed::Tree(
        tip.to_string(),
        Box::new(FetchedTree {
            repo,
            items,
            readers: std::sync::Mutex::default(),
            _dir: removed,
        }),
    ))
}

/// The longest branch ref name (`refs/heads/` and the name) a deploy names: more than any
/// forge takes, and well within a pkt-line.
const MAX_BRANCH_REF: usize = 1024;

/// The most bytes of the `ls-refs` answer that names a deploy's branch.
const MAX_BRANCH_LISTING: u64 = 1 << 20;

/// The full ref name of `branch`, if git takes it and it is at most [`MAX_BRANCH_REF`] long.
fn branch_ref(branch: &str) -> Result<String, FetchError> {
    let name = format!("refs/heads/{branch}");
    if name.len() > MAX_BRANCH_REF || gix_validate::reference::name(name.as_str().into()).is_err() {
        // Said back as far as a name may go.
        let mut shown = branch.to_owned();
        shown.truncate(shown.floor_char_boundary(MAX_BRANCH_REF));
        return Err(FetchError::BadBranch(shown));
    }
    Ok(name)
}

/// The commit at the tip of `branch` of `upstream`'s repository (one `ls-refs`).
pub async fn branch_tip(
    upstream: &Upstream,
    branch: &str,
) -> Result<gitcache_protocol::ObjectId, FetchError> {
    let name = branch_ref(branch)?;
    let format = upstream.object_format().await?;
    // One branch is asked for: an upstream listing more is cut off at 1 MiB, not read into
    // memory by the hundred MiB.
    let refs = upstream
        .ls_refs_within(
            format,
            LsRefs {
                ref_prefixes: vec![name.clone().into()],
                ..LsRefs::default()
            },
            MAX_BRANCH_LISTING,
        )
        .await?;
    refs.iter()
        .find(|line| line.name == name.as_str())
        .and_then(|line| line.oid)
        .ok_or_else(|| FetchError::NoBranch(branch.to_owned()))
}

/// Removes its folder when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // A few files (a pack, its index): unlinked where the tree is let go of.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new, empty folder under `scratch`.
fn tempfile_dir(scratch: &Path) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(scratch)?;
    for attempt in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = scratch.join(format!("pages-{}-{nanos}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    Err(std::io::Error::other("no free scratch folder name"))
}
