//! Stored fetch responses: one file per response, under a folder per repository.
//!
//! An entry is written to a temporary file beside its final name, then closed with a trailer
//! (the SHA-256 of the content and a magic string), synced and renamed into place: a partial
//! entry never has the final name. Readers check the trailer's presence before they start and
//! the checksum as they stream ([`Entry::verify`]), so a corrupt entry is refused and removed.
//! Hits touch the file's modification time, which eviction uses as the last access.
//!
//! ```text
//! <root>/<repo>/<key>.resp      content, then 32 bytes of SHA-256, then b"GCRESP01"
//! <root>/<repo>/<key>.resp.tmp-<pid>-<n>   being written
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::Digest;

const MAGIC: &[u8; 8] = b"GCRESP01";
const TRAILER: u64 = 32 + MAGIC.len() as u64;
const SUFFIX: &str = ".resp";

/// A file in the store: its path, size and last use.
type StoredFile = (PathBuf, u64, SystemTime);

/// Responses under one folder.
#[derive(Debug, Clone)]
pub struct ResponseStore {
    root: PathBuf,
}

/// A complete stored response, open for reading from its start.
#[derive(Debug)]
pub struct Entry {
    file: File,
    len: u64,
    checksum: [u8; 32],
}

impl Entry {
    /// The content's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file, positioned at the content's start; read [`len`](Self::len) bytes.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Whether `digest` (of the content read) is what was stored.
    pub fn verify(&self, digest: &[u8]) -> bool {
        digest == self.checksum
    }
}

/// An entry being written; removed unless [`commit`](Self::commit)ted.
#[derive(Debug)]
pub struct PendingEntry {
    file: Option<File>,
    temp: PathBuf,
    path: PathBuf,
    hasher: sha2::Sha256,
    len: u64,
}

impl PendingEntry {
    /// Where the content is being written (readers may follow it as it grows).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Content bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append trailer, sync, and publish under the final name. On failure the file being
    /// written goes (as when dropped), whatever step failed.
    pub fn commit(mut self) -> std::io::Result<PathBuf> {
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("committed once"));
        };
        let digest = std::mem::take(&mut self.hasher).finalize();
        file.write_all(&digest)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        std::fs::rename(&self.temp, &self.path)?;
        // Published: nothing left to remove when dropped.
        self.file = None;
        crate::fs::sync_parent(&self.path)?;
        Ok(self.path.clone())
    }
}

impl Write for PendingEntry {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let file = self.file.as_mut().expect("not committed");
        let n = file.write(data)?;
        self.hasher.update(&data[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// What a cleanup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Eviction {
    /// What it removed, by repository folder (only those it removed from).
    pub evicted: Vec<Evicted>,
    /// Bytes every repository folder holds afterwards (entries only).
    pub sizes: Vec<(PathBuf, u64)>,
    /// Entries removed, by the limit they were over.
    pub by_limit: ByLimit,
}

/// Entries an eviction removed, by the limit they were over (one over its repository's and
/// the store's counts as its repository's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByLimit {
    /// Over their repository's bytes.
    pub repository: usize,
    /// Over the store's bytes in all.
    pub bytes: usize,
    /// Over the store's number of entries (and not its bytes).
    pub entries: usize,
}

/// What a cleanup removed from one repository's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// The repository folder, relative to the store's root.
    pub repo: PathBuf,
    /// Entries removed.
    pub entries: usize,
    /// Bytes freed.
    pub bytes: u64,
}

impl ResponseStore {
    /// Responses under `root` (created as needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ResponseStore { root: root.into() }
    }

    /// The folder every repository's entries are under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of `repo` (a relative path such as `host/owner/repo`).
    pub fn repo_dir(&self, repo: &Path) -> PathBuf {
        self.root.join(repo)
    }

    /// Where the entry `key` of `repo` lives once complete (to place a copy of one stored
    /// elsewhere: written beside it and renamed into place).
    pub fn entry_path(&self, repo: &Path, key: &str) -> PathBuf {
        self.repo_dir(repo).join(format!("{key}{SUFFIX}"))
    }

    /// The complete entry `key` of `repo`, if there is one; marks it as used. An entry
    /// without its trailer (which no commit produces) is removed and reported absent.
    pub fn open(&self, repo: &Path, key: &str) -> std::io::Result<Option<Entry>> {
        let path = self.repo_dir(repo).join(format!("{key}{SUFFIX}"));
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let size = file.metadata()?.len();
        let mut trailer = [0u8; TRAILER as usize];
        let valid = size >= TRAILER
            && file.seek(SeekFrom::Start(size - TRAILER)).is_ok()
            && file.read_exact(&mut trailer).is_ok()
            && &trailer[32..] == MAGIC;
        if !valid {
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        file.seek(SeekFrom::Start(0))?;
        let _ = file.set_modified(SystemTime::now());
        let mut checksum = [0u8; 32];
        checksum.copy_from_slice(&trailer[..32]);
        Ok(Some(Entry {
            file,
            len: size - TRAILER,
            checksum,
        }))
    }

    /// Remove the entry `key` of `repo` (found corrupt).
    pub fn remove(&self, repo: &Path, key: &str) {
        let _ = std::fs::remove_file(self.repo_dir(repo).join(format!("{key}{SUFFIX}")));
    }

    /// Remove every stored response of `repo` (its folder renamed away first, so that no
    /// lookup finds a part of them); readers with an entry open keep reading it.
    pub fn remove_repo(&self, repo: &Path) -> std::io::Result<()> {
        match self.take_away(repo)? {
            Some(gone) => std::fs::remove_dir_all(&gone),
            None => Ok(()),
        }
    }

    /// The first half of [`remove_repo`](Self::remove_repo): `repo`'s folder renamed away at
    /// once (no lookup finds its entries from here on), where it is to be removed (`None`
    /// when there was none). A folder left there by a crash goes with the leftovers.
    pub fn take_away(&self, repo: &Path) -> std::io::Result<Option<PathBuf>> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = self.repo_dir(repo);
        let gone = self.root.join(format!(
            ".removed-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::rename(&dir, &gone) {
            Ok(()) => Ok(Some(gone)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Start writing the entry `key` of `repo`.
    pub fn begin(&self, repo: &Path, key: &str) -> std::io::Result<PendingEntry> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = self.repo_dir(repo);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{key}{SUFFIX}"));
        let temp = dir.join(format!(
            "{key}{SUFFIX}.tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        Ok(PendingEntry {
            file: Some(file),
            temp,
            path,
            hasher: sha2::Sha256::new(),
            len: 0,
        })
    }

    /// Remove temporaries a crash left behind (none can be in progress: call at start).
    pub fn remove_leftovers(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        // A repository's folder renamed away by a removal a crash cut short.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".removed-")
                    && std::fs::remove_dir_all(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        for (_, files) in self.repos()? {
            for (path, _, _) in files {
                if crate::fs::is_leftover_temp(&path.to_string_lossy()) && remove_entry(&path)? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Bytes held by `repo`'s entries, each counted as [`disk_bytes`] of it (what eviction
    /// counts: entries only, not one being written).
    pub fn repo_size(&self, repo: &Path) -> u64 {
        (self.listed(self.repo_dir(repo)).unwrap_or_default().iter())
            .flat_map(|(_, files)| files)
            .filter(|(path, _, _)| path.to_string_lossy().ends_with(SUFFIX))
            .fold(0u64, |total, (_, bytes, _)| total.saturating_add(*bytes))
    }

    /// Every repository folder with its files (path, size, last use).
    fn repos(&self) -> std::io::Result<Vec<(PathBuf, Vec<StoredFile>)>> {
        self.listed(self.root.clone())
    }

    /// The folders under `start` (itself included) with their files (path, size as
    /// [`disk_bytes`], last use), each folder named relative to the store's root.
    fn listed(&self, start: PathBuf) -> std::io::Result<Vec<(PathBuf, Vec<StoredFile>)>> {
        let mut out = Vec::new();
        let mut pending = vec![start];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files = Vec::new();
            for entry in entries {
                let entry = entry?;
                // A file removed meanwhile (a reader found it corrupt) is simply not listed.
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(err),
                };
                if meta.is_dir() {
                    pending.push(entry.path());
                } else {
                    let Ok(modified) = meta.modified() else {
                        continue;
                    };
                    files.push((entry.path(), disk_bytes(&meta), modified));
                }
            }
            if !files.is_empty() {
                let rel = dir.strip_prefix(&self.root).unwrap_or(&dir).to_owned();
                out.push((rel, files));
            }
        }
        Ok(out)
    }

    /// Evict least recently used entries until each repository holds at most
    /// `per_repo(repo folder)` bytes and the store at most `total` bytes. Entries being
    /// written are left alone.
    pub fn evict(
        &self,
        per_repo: impl Fn(&Path) -> Option<u64>,
        total: Option<u64>,
    ) -> std::io::Result<Eviction> {
        self.evict_within(per_repo, total, None)
    }

    /// [`evict`](Self::evict), and also until the store holds at most `most_entries`
    /// entries, least recently used first: an eviction lists every entry in memory, and
    /// tiny answers pass a bound of bytes by the million.
    pub fn evict_within(
        &self,
        per_repo: impl Fn(&Path) -> Option<u64>,
        total: Option<u64>,
        most_entries: Option<usize>,
    ) -> std::io::Result<Eviction> {
        evict_listed(self.repos()?, per_repo, total, most_entries)
    }
}

/// The disk a stored file takes, as its size counts against the limits: at least its length
/// rounded up to a block of 4 KiB, more where the file system says it holds more. Counted by
/// their length, many tiny answers (an empty pack is some 100 bytes) passed for a fraction
/// of the disk and the inodes they took, and were never evicted.
pub fn disk_bytes(meta: &std::fs::Metadata) -> u64 {
    let rounded = block_bytes(meta.len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        rounded.max(meta.blocks().saturating_mul(512))
    }
    #[cfg(not(unix))]
    rounded
}

/// `len` bytes counted as the blocks of 4 KiB they take, one at least: how an answer counts
/// where its disk cannot be asked (an object in a bucket, an answer about to be written).
pub fn block_bytes(len: u64) -> u64 {
    len.div_ceil(BLOCK_BYTES)
        .saturating_mul(BLOCK_BYTES)
        .max(BLOCK_BYTES)
}

/// The block a stored answer counts at least (see [`block_bytes`]).
pub const BLOCK_BYTES: u64 = 4096;

/// [`ResponseStore::evict`] over `listing`, which files may have left since it was taken.
fn evict_listed(
    listing: Vec<(PathBuf, Vec<StoredFile>)>,
    per_repo: impl Fn(&Path) -> Option<u64>,
    total: Option<u64>,
    most_entries: Option<usize>,
) -> std::io::Result<Eviction> {
    let mut all: Vec<(PathBuf, PathBuf, u64, SystemTime)> = Vec::new();
    // Looked up by repository: a listing may hold millions of entries of thousands.
    let mut evicted: Vec<Evicted> = Vec::new();
    let mut by_limit = ByLimit::default();
    let mut evicted_at: std::collections::HashMap<PathBuf, usize> = Default::default();
    let mut note = |repo: &Path, bytes: u64| match evicted_at.get(repo) {
        Some(&at) => {
            evicted[at].entries += 1;
            evicted[at].bytes += bytes;
        }
        None => {
            evicted_at.insert(repo.to_owned(), evicted.len());
            evicted.push(Evicted {
                repo: repo.to_owned(),
                entries: 1,
                bytes,
            });
        }
    };
    for (repo, mut files) in listing {
        files.retain(|(path, _, _)| path.to_string_lossy().ends_with(SUFFIX));
        // Oldest first, but one larger than the limit by itself before any: evicting the
        // others first would empty the cache for nothing.
        let limit = per_repo(&repo);
        files.sort_by_key(|f| (limit.is_none_or(|limit| f.1 <= limit), f.2));
        let mut size: u64 = files.iter().map(|f| f.1).sum();
        let mut kept = Vec::new();
        for (path, len, used) in files {
            if limit.is_some_and(|limit| size > limit) {
                match evict_entry(&path) {
                    Some(removed) => {
                        if removed {
                            note(&repo, len);
                            by_limit.repository += 1;
                        }
                        size -= len;
                    }
                    None => kept.push((repo.clone(), path, len, used)),
                }
            } else {
                kept.push((repo.clone(), path, len, used));
            }
        }
        all.extend(kept);
    }
    if total.is_some() || most_entries.is_some() {
        // Oldest first, one larger than the total by itself before any (as above).
        all.sort_by_key(|f| (total.is_none_or(|total| f.2 <= total), f.3));
        let mut size: u64 = all.iter().map(|f| f.2).sum();
        let mut entries = all.len();
        let over = |size: u64, entries: usize| {
            total.is_some_and(|limit| size > limit)
                || most_entries.is_some_and(|most| entries > most)
        };
        let mut gone = vec![false; all.len()];
        for (at, (repo, path, len, _)) in all.iter().enumerate() {
            if !over(size, entries) {
                break;
            }
            // One that cannot be removed is still held: counted, and kept in the sizes.
            if let Some(removed) = evict_entry(path) {
                if removed {
                    note(repo, *len);
                    if total.is_some_and(|limit| size > limit) {
                        by_limit.bytes += 1;
                    } else {
                        by_limit.entries += 1;
                    }
                }
                size -= len;
                entries -= 1;
                gone[at] = true;
            }
        }
        let mut gone = gone.into_iter();
        all.retain(|_| !gone.next().unwrap_or(false));
    }
    let mut sizes: Vec<(PathBuf, u64)> = Vec::new();
    let mut sized_at: std::collections::HashMap<&Path, usize> = Default::default();
    for (repo, _, len, _) in &all {
        match sized_at.get(repo.as_path()) {
            Some(&at) => sizes[at].1 += len,
            None => {
                sized_at.insert(repo, sizes.len());
                sizes.push((repo.clone(), *len));
            }
        }
    }
    for e in &evicted {
        if !sized_at.contains_key(e.repo.as_path()) {
            sizes.push((e.repo.clone(), 0));
        }
    }
    Ok(Eviction {
        evicted,
        sizes,
        by_limit,
    })
}

/// Remove a stored entry; `false` if it was gone already (removed meanwhile by a reader
/// that found it corrupt): one vanished file does not end an eviction pass.
fn remove_entry(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// [`remove_entry`] during an eviction: whether the file is gone (`Some(true)` when this
/// removed it). One that cannot be removed is logged and passed over (`None`: still held),
/// so that one file does not stop every eviction after it.
fn evict_entry(path: &Path) -> Option<bool> {
    match remove_entry(path) {
        Ok(removed) => Some(removed),
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "a stored answer could not be evicted");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn put(store: &ResponseStore, repo: &str, key: &str, content: &[u8]) -> PathBuf {
        let mut entry = store.begin(Path::new(repo), key).unwrap();
        entry.write_all(content).unwrap();
        entry.commit().unwrap()
    }

    /// Entries of 100 bytes under `keys` in repository "one", last used an hour ago, a minute
    /// apart, oldest first.
    fn put_aged(store: &ResponseStore, keys: &[&str]) -> Vec<PathBuf> {
        let base = SystemTime::now() - Duration::from_secs(3600);
        keys.iter()
            .enumerate()
            .map(|(i, key)| {
                let path = put(store, "one", key, &[0u8; 100]);
                File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(base + Duration::from_secs(i as u64 * 60))
                    .unwrap();
                path
            })
            .collect()
    }

    fn read(store: &ResponseStore, repo: &str, key: &str) -> Option<Vec<u8>> {
        let mut entry = store.open(Path::new(repo), key).unwrap()?;
        let mut content = vec![0; entry.len() as usize];
        entry.file().read_exact(&mut content).unwrap();
        assert!(entry.verify(&sha2::Sha256::digest(&content)));
        Some(content)
    }

    #[test]
    fn entries_appear_only_when_committed() {
        let root = tempfile::tempdir().unwrap();
        let store = ResponseStore::new(root.path());
        let mut pending = store.begin(Path::new("h/o/r"), "k1").unwrap();
        pending.write_all(b"half a resp").unwrap();
        assert!(pending.temp_path().exists());
        assert!(read(&store, "h/o/r", "k1").is_none());
        drop(pending);
        assert!(read(&store, "h/o/r", "k1").is_none());
        assert_eq!(
            std::fs::read_dir(root.path().join("h/o/r"))
                .unwrap()
                .count(),
            0
        );

        put(&store, "h/o/r", "k1", b"the whole response");
        assert_eq!(read(&store, "h/o/r", "k1").unwrap(), b"the whole response");
    }

    #[test]
    fn damaged_entries_are_not_served() {
        let root = tempfile::tempdir().unwrap();
        let store = ResponseStore::new(root.path());
        // Cut short: its trailer is gone, so it is refused before a byte is read.
        let path = put(&store, "r", "cut", b"0123456789abcdef");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        assert!(store.open(Path::new("r"), "cut").unwrap().is_none());
        assert!(!path.exists());
        // A flipped content byte: the checksum tells.
        let path = put(&store, "r", "flip", b"0123456789abcdef");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let mut entry = store.open(Path::new("r"), "flip").unwrap().unwrap();
        let mut content = Vec::new();
        let len = entry.len();
        entry.file().take(len).read_to_end(&mut content).unwrap();
        assert!(!entry.verify(&sha2::Sha256::digest(&content)));
    }

    #[test]
    fn leftovers_of_a_crash_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let store = ResponseStore::new(root.path());
        put(&store, "r", "kept", b"x");
        std::fs::write(root.path().join("r/gone.resp.tmp-1-2"), b"half").unwrap();
        // A repository's folder renamed away by a removal the crash cut short.
        std::fs::create_dir_all(root.path().join(".removed-1-3/a")).unwrap();
        std::fs::write(root.path().join(".removed-1-3/a/x.resp"), b"old").unwrap();
        assert_eq!(store.remove_leftovers().unwrap(), 2);
        assert!(read(&store, "r", "kept").is_some());
        assert!(!root.path().join(".removed-1-3").exists());
    }

    #[test]
    fn a_commit_that_fails_leaves_nothing_written() {
        let root = tempfile::tempdir().unwrap();
        let store = ResponseStore::new(root.path());
        let mut entry = store.begin(Path::new("r"), "k").unwrap();
        entry.write_all(b"content").unwrap();
        let temp = entry.temp_path().to_owned();
        // Its final name taken by a folder that is not empty: the rename fails.
        std::fs::create_dir_all(store.entry_path(Path::new("r"), "k").join("x")).unwrap();
        assert!(entry.commit().is_err());
        assert!(
            !temp.exists(),
            "the file being written went with the failure"
        );
    }

    #[test]
    fn eviction_keeps_the_most_recently_used_under_each_limit() {
        let root = tempfile::tempdir().unwrap();
        let store = ResponseStore::new(root.path());
        put_aged(&store, &["a", "b", "c", "d"]);
        // "a" is the oldest, but a hit makes it the most recent.
        assert!(read(&store, "one", "a").is_some());
        // Each counted as the block it takes.
        let entry = 4096;
        assert!(100 + TRAILER < entry);
        let eviction = store.evict(|_| Some(2 * entry), None).unwrap();
        assert_eq!(eviction.evicted[0].entries, 2);
        assert_eq!(eviction.sizes, vec![(PathBuf::from("one"), 2 * entry)]);
        assert!(read(&store, "one", "a").is_some());
        assert!(read(&store, "one", "d").is_some());
        assert!(read(&store, "one", "b").is_none() && read(&store, "one", "c").is_none());
        assert_eq!(store.repo_size(Path::new("one")), 2 * entry);

        // The total cap across repositories, oldest first.
        std::thread::sleep(Duration::from_millis(20));
        put(&store, "two", "e", &[0u8; 100]);
        let eviction = store.evict(|_| None, Some(2 * entry)).unwrap();
        assert_eq!(eviction.evicted.iter().map(|e| e.entries).sum::<usize>(), 1);
        assert!(read(&store, "two", "e").is_some());

        // Limits per repository: "two" may hold nothing, "one" is left as it is.
        let eviction = store
            .evict(|repo| (repo == Path::new("two")).then_some(0), None)
            .unwrap();
        assert_eq!(eviction.evicted.len(), 1);
        assert_eq!(eviction.evicted[0].repo, PathBuf::from("two"));
        assert!(read(&store, "two", "e").is_none());
        assert!(eviction.sizes.contains(&(PathBuf::from("two"), 0)));
        assert!(read(&store, "one", "d").is_some());
    }

    /// An entry larger than a limit by itself goes first, however recently used: evicting
    /// the others first would empty the cache (or the repository's share) and still not
    /// bring it under.
    #[test]
    fn an_entry_over_a_limit_by_itself_goes_first() {
        let root = tempfile::tempdir().unwrap();
        let store = ResponseStore::new(root.path());
        let paths = put_aged(&store, &["a", "b", "c"]);
        let one = disk_bytes(&std::fs::metadata(&paths[0]).unwrap());
        for (limit_repo, limit_total) in [(Some(4 * one), None), (None, Some(4 * one))] {
            std::thread::sleep(Duration::from_millis(20));
            put(&store, "one", "big", &vec![7u8; 5 * one as usize]);
            let eviction = store.evict(|_| limit_repo, limit_total).unwrap();
            assert_eq!(
                eviction.evicted[0].entries, 1,
                "{limit_repo:?} {limit_total:?}"
            );
            assert!(read(&store, "one", "big").is_none());
            for key in ["a", "b", "c"] {
                assert!(read(&store, "one", key).is_some(), "{key}");
            }
        }
    }

    /// Tiny answers count as the disk they take, not their length: 64 answers of 100 bytes
    /// under a limit of four blocks keep four, the most recent.
    #[test]
    fn tiny_entries_count_as_the_blocks_they_take() {
        let root = tempfile::tempdir().unwrap();
        let store = ResponseStore::new(root.path());
        let keys: Vec<String> = (0..64).map(|i| format!("k{i:02}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let paths = put_aged(&store, &keys);
        // A block at least, whatever the file system (4 KiB here, more with larger pages).
        let one = disk_bytes(&std::fs::metadata(&paths[0]).unwrap());
        assert!(one >= 4096, "{one}");
        let eviction = store.evict(|_| None, Some(4 * one)).unwrap();
        assert_eq!(eviction.evicted[0].entries, 60);
        assert_eq!(eviction.sizes, vec![(PathBuf::from("one"), 4 * one)]);
        assert_eq!(store.repo_size(Path::new("one")), 4 * one);
        for key in &keys[60..] {
            assert!(read(&store, "one", key).is_some(), "{key}");
        }
        assert!(read(&store, "one", "k59").is_none());
    }

    /// A bound on entries holds with no bound on bytes, and beside one: the least recently
    /// used go, across repositories.
    #[test]
    fn eviction_keeps_at_most_the_entries_bound() {
        let root = tempfile::tempdir().unwrap();
        let store = ResponseStore::new(root.path());
        let paths = put_aged(&store, &["a", "b", "c", "d", "e"]);
        std::thread::sleep(Duration::from_millis(20));
        put(&store, "two", "f", &[0u8; 100]);
        let eviction = store.evict_within(|_| None, None, Some(3)).unwrap();
        assert_eq!(eviction.evicted[0].entries, 3);
        assert_eq!(
            eviction.by_limit,
            ByLimit {
                entries: 3,
                ..ByLimit::default()
            }
        );
        for key in ["a", "b", "c"] {
            assert!(read(&store, "one", key).is_none(), "{key}");
        }
        assert!(read(&store, "one", "d").is_some() && read(&store, "one", "e").is_some());
        assert!(read(&store, "two", "f").is_some());
        // Whichever bound is passed first: here the bytes.
        let one = disk_bytes(&std::fs::metadata(&paths[4]).unwrap());
        let eviction = store.evict_within(|_| None, Some(one), Some(2)).unwrap();
        assert_eq!(eviction.evicted.iter().map(|e| e.entries).sum::<usize>(), 2);
        assert_eq!(
            eviction.by_limit,
            ByLimit {
                bytes: 2,
                ..ByLimit::default()
            },
            "over both bounds, counted as over the bytes"
        );
        let held: u64 = eviction.sizes.iter().map(|(_, bytes)| bytes).sum();
        assert_eq!(held, one);
        assert_eq!(
            store.evict_within(|_| None, None, Some(1)).unwrap().evicted,
            vec![]
        );
    }

    #[test]
    fn an_eviction_pass_goes_on_past_a_file_that_vanished() {
        let root = tempfile::tempdir().unwrap();
        let store = ResponseStore::new(root.path());
        let paths = put_aged(&store, &["a", "b", "c"]);
        // The oldest entry goes (a reader found it corrupt) after the pass listed it.
        let listing = store.repos().unwrap();
        std::fs::remove_file(&paths[0]).unwrap();
        let eviction = evict_listed(listing, |_| Some(0), None, None).unwrap();
        assert_eq!(eviction.evicted[0].entries, 2, "the two still there went");
        assert_eq!(
            eviction.by_limit.repository, 2,
            "over their repository's bytes"
        );
        assert!(read(&store, "one", "b").is_none() && read(&store, "one", "c").is_none());
    }
}

/// A stored response in a store shared by instances, as an index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// The repository's folder (`host/owner/repo.git`, `/`-separated).
    pub repo: String,
    /// The response's key.
    pub key: String,
    /// Its size in the store.
    pub bytes: u64,
    /// When an instance last stored or took it.
    pub last_used: SystemTime,
}

/// What instances sharing stored responses know of them, for eviction by last use across the
/// fleet (the catalog's PostgreSQL keeps one).
pub trait ResponseIndex: Send + Sync + std::fmt::Debug {
    /// `repo`'s response `key` (of `bytes`) was stored or taken now.
    fn touch<'a>(&'a self, repo: &'a str, key: &'a str, bytes: u64) -> crate::BoxFuture<'a, ()>;

    /// Every indexed response, most recently used first.
    fn all(&self) -> crate::BoxFuture<'_, Vec<Indexed>>;

    /// `repo`'s response `key` was deleted from the store (`None`: all of `repo`'s).
    fn forget<'a>(&'a self, repo: &'a str, key: Option<&'a str>) -> crate::BoxFuture<'a, ()>;
}
