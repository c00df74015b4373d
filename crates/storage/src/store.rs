//! The seam between gitcache and where its durable data lives: a flat space of objects named
//! by [`ObjectKey`]s, of two kinds.
//!
//! - **Immutable objects** (packs, indexes, bitmaps, stored responses) are named by their
//!   content: written once ([`ObjectStore::put_file`]), read whole or into a local file,
//!   listed by prefix, and deleted only when nothing names them any more.
//! - **Manifests** (a repository's refs and list of packs) are small documents replaced
//!   atomically and conditionally: [`ObjectStore::replace_manifest`] succeeds only if the
//!   manifest is still the version the writer read, so that of two writers racing from one
//!   version exactly one commits (in a bucket, an `If-Match` on the ETag; on disk, a compare
//!   under a lock and an atomic rename).
//!
//! What callers must know:
//! - After [`Replaced::Conflict`] or an error, the write may still have happened (a bucket
//!   that committed it and then failed to answer, a retry that then found its own write):
//!   read the manifest again and compare its bytes before deciding the write was lost, and
//!   never delete what it names on the strength of a conflict alone.
//! - A version is derived from the content (a digest on disk, the ETag in a bucket): a
//!   manifest that goes from A to B and back to A is at version A again. A writer that needs
//!   generations keeps a counter inside the manifest.
//! - Objects are named by their content, so writing a key twice writes the same bytes (and
//!   makes its write time now); a caller must not change a file while it is being stored. Large uploads go in parts; an
//!   upload cut short leaves parts that a bucket lifecycle rule for incomplete multipart
//!   uploads removes.
//!
//! [`FsStore`] is the filesystem backend; an object store shared by several instances is the
//! other. Every backend passes one test suite (`tests/store.rs`).
//!
//! # Example
//!
//! ```
//! use gitcache_storage::store::{FsStore, ObjectKey, ObjectStore, Replaced};
//!
//! # tokio_test_block(async {
//! let dir = tempfile::tempdir()?;
//! let store = FsStore::new(dir.path());
//! let manifest = ObjectKey::new("mirrors/github.com/acme/widgets/manifest")?;
//! // Created where there was none…
//! let Replaced::Done(v1) = store.replace_manifest(&manifest, b"refs 1", None).await? else {
//!     panic!("created");
//! };
//! // …replaced from the version read…
//! assert!(matches!(store.replace_manifest(&manifest, b"refs 2", Some(&v1)).await?, Replaced::Done(_)));
//! // …and a writer still holding the old version loses.
//! assert_eq!(store.replace_manifest(&manifest, b"refs 3", Some(&v1)).await?, Replaced::Conflict);
//! assert_eq!(store.read_manifest(&manifest).await?.unwrap().bytes, b"refs 2");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # });
//! # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest as _;

use crate::fs::{is_leftover_temp, replace_file, replace_file_with, sync_parent};

/// The name of an object: `/`-separated segments, each a non-empty name without control
/// characters, `\`, or the segments `.` and `..`, so that no key reaches outside its store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

/// The longest key accepted (S3's own limit is 1,024 bytes).
const MAX_KEY: usize = 1024;

impl ObjectKey {
    /// `key`, checked.
    pub fn new(key: &str) -> Result<Self, StoreError> {
        let bad = |reason| StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        };
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(bad("empty, or longer than 1,024 bytes"));
        }
        for segment in key.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(bad("an empty, '.' or '..' segment"));
            }
            if segment.chars().any(|c| c.is_control() || c == '\\') {
                return Err(bad("a control character or '\\'"));
            }
        }
        Ok(ObjectKey(key.to_owned()))
    }

    /// This key with `segment` (itself checked) appended.
    pub fn join(&self, segment: &str) -> Result<Self, StoreError> {
        ObjectKey::new(&format!("{}/{segment}", self.0))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The largest manifest read.
pub const MAX_MANIFEST: u64 = 64 << 20;

/// Which version of a manifest was read: an ETag in a bucket, a digest of the content on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(pub String);

/// A manifest as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Its content.
    pub bytes: Vec<u8>,
    /// Its version, to replace it conditionally.
    pub version: Version,
}

/// How a conditional replacement ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// Written; the manifest's new version.
    Done(Version),
    /// Someone else wrote first (or it was created, or removed, meanwhile): read it again.
    Conflict,
}

/// An object found by [`ObjectStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: ObjectKey,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, as the backend reports it.
    pub modified: std::time::SystemTime,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A key that could reach outside the store, or is too long.
    #[error("invalid object key '{key}': {reason}")]
    InvalidKey {
        /// The key given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An object larger than the caller reads.
    #[error("object '{key}' exceeds {limit} bytes")]
    TooLarge {
        /// The object.
        key: ObjectKey,
        /// The bound.
        limit: u64,
    },
    /// An object the caller's check refused by its size (see
    /// [`ObjectStore::get_file_admitted`]).
    #[error("object '{key}' of {size} bytes not admitted")]
    NotAdmitted {
        /// The object.
        key: ObjectKey,
        /// Its size.
        size: u64,
    },
    /// Reading or writing local files failed.
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The backend failed (an object store's error, a task that did not finish).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The store does not honour conditional writes (see [`check_conditional_writes`]).
    #[error(
        "the store does not honour conditional writes: {0} (instances sharing it would overwrite each other's commits)"
    )]
    NotConditional(&'static str),
}

/// Check that `store` honours conditional writes, on the manifest `key` (a new key of the
/// caller's own, so that instances starting together do not meet; created, then deleted):
/// a second create-only write must conflict, and a replacement from a version replaced
/// since must conflict. Some S3-compatible servers ignore `If-None-Match` or `If-Match`;
/// instances sharing such a bucket would overwrite each other's commits without a word, so a
/// server checks this before it uses one ([`StoreError::NotConditional`]). A write that
/// conflicts where it should not (a retried request whose first try went through) is read
/// back: what it wrote being there, it went through; anything else is a
/// [`StoreError::Backend`] error, not a finding. Probe objects under `key`'s folder named
/// like it and older than an hour (left by a check cut short) are deleted first.
pub async fn check_conditional_writes<S: ObjectStore>(
    store: &S,
    key: &ObjectKey,
) -> Result<(), StoreError> {
    sweep_old_probes(store, key).await?;
    // What `bytes`, written over `expected`, left: its version when it is there.
    let written = async |bytes: &[u8], expected: Option<&Version>| match store
        .replace_manifest(key, bytes, expected)
        .await?
    {
        Replaced::Done(version) => Ok(version),
        Replaced::Conflict => match store.read_manifest(key).await? {
            Some(read) if read.bytes == bytes => Ok(read.version),
            _ => Err(StoreError::Backend(
                "a conditional write that should have gone through conflicted".into(),
            )),
        },
    };
    let first = written(b"first\n", None).await?;
    let checked = async {
        if store.replace_manifest(key, b"again\n", None).await? != Replaced::Conflict {
            return Err(StoreError::NotConditional(
                "a create-only write replaced an object (If-None-Match)",
            ));
        }
        let second = written(b"second\n", Some(&first)).await?;
        if store
            .replace_manifest(key, b"stale\n", Some(&first))
            .await?
            != Replaced::Conflict
        {
            return Err(StoreError::NotConditional(
                "a write from a version replaced since went through (If-Match)",
            ));
        }
        let held = store.read_manifest(key).await?;
        if held.as_ref().map(|m| (&m.bytes[..], &m.version)) != Some((&b"second\n"[..], &second)) {
            return Err(StoreError::Backend(
                "what was read back is not what was written".into(),
            ));
        }
        Ok(())
    }
    .await;
    let deleted = store.delete(key).await;
    checked.and(deleted)
}

/// Delete probes of [`check_conditional_writes`] beside `key` (named like it up to its last
/// `-`) written more than an hour ago.
async fn sweep_old_probes<S: ObjectStore>(store: &S, key: &ObjectKey) -> Result<(), StoreError> {
    let (Some((folder, name)), Some(hour_ago)) = (
        key.as_str().rsplit_once('/'),
        std::time::SystemTime::now().checked_sub(std::time::Duration::from_secs(3600)),
    ) else {
        return Ok(());
    };
    let Some((stem, _)) = name.rsplit_once('-') else {
        return Ok(());
    };
    for old in store.list(&ObjectKey::new(folder)?).await? {
        let probe = old
            .key
            .as_str()
            .rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with(&format!("{stem}-")));
        if probe && old.modified < hour_ago {
            store.delete(&old.key).await?;
        }
    }
    Ok(())
}

/// Part of an object, in pieces: what [`ObjectStore::read_range`] gives.
pub type ByteStream = futures_util::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>;

/// The most bytes a piece of a [`ByteStream`] read from a file holds.
const READ_PIECE: u64 = 256 << 10;

/// Where objects and manifests live. Methods are `async`: a backend may be remote.
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Store the local file `from` as the object `key`, whole (readers see the old object or
    /// the new one). Objects are named by their content, so writing one again writes the same
    /// bytes; it also makes its write time now, which is what keeps an object that was
    /// unnamed for a while (and so due for collection) from being collected as it is named
    /// again.
    fn put_file(
        &self,
        key: &ObjectKey,
        from: &Path,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.put_file_after(key, &[], from)
    }

    /// Store `head` followed by the content of the local file `from` as the object `key`,
    /// whole, as [`put_file`](Self::put_file) does (a file in a new envelope, such as a pack
    /// as a bundle, without a local copy of both).
    fn put_file_after(
        &self,
        key: &ObjectKey,
        head: &[u8],
        from: &Path,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Copy the object `key` into the local file `to` (written beside it, then renamed into
    /// place, so `to` is never seen half-written). `false`: there is no such object. One
    /// larger than `limit` bytes is refused ([`StoreError::TooLarge`]) before it is copied.
    fn get_file(
        &self,
        key: &ObjectKey,
        to: &Path,
        limit: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async move { self.get_file_admitted(key, to, limit, &|_| true).await }
    }

    /// [`get_file`](Self::get_file), asking `admit` with the object's size (as the copy
    /// learns it) before anything is written: `false` refuses it
    /// ([`StoreError::NotAdmitted`]). The caller can so hold room for exactly what is copied
    /// (downloads at once, each fitting alone, need not fit together).
    fn get_file_admitted(
        &self,
        key: &ObjectKey,
        to: &Path,
        limit: u64,
        admit: &(dyn Fn(u64) -> bool + Sync),
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The object `key` whole, if it exists and has at most `limit` bytes.
    fn get_bytes(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// The bytes `range` of the object `key`, if it exists, as a stream of pieces read as
    /// they are taken (one request to a bucket; an open file on disk, which a removal while
    /// it is read does not cut short). Fewer bytes when the object ends first: the caller
    /// counts them. A range starting past the end is an error or no bytes, by backend.
    fn read_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> impl Future<Output = Result<Option<ByteStream>, StoreError>> + Send;

    /// The size of the object `key` in bytes, if it exists (a `HEAD` in a bucket).
    fn size(&self, key: &ObjectKey)
    -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Remove the object (or manifest) `key`; one that does not exist is no error.
    fn delete(&self, key: &ObjectKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every object whose key is `prefix` followed by more segments, in key order.
    fn list(
        &self,
        prefix: &ObjectKey,
    ) -> impl Future<Output = Result<Vec<Listed>, StoreError>> + Send;

    /// Remove what writes under `prefix` cut short left behind (a crash, a kill) and last
    /// changed longer than `older_than` ago; how many. Nothing for a store whose writes leave
    /// nothing behind (a bucket's), the default.
    fn remove_stale_writes(
        &self,
        prefix: &ObjectKey,
        older_than: std::time::Duration,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let _ = (prefix, older_than);
        async { Ok(0) }
    }

    /// The bytes free on the local disk its writes take, for a store on one (the
    /// filesystem's); `None` for one whose writes take no local disk (a bucket's), the
    /// default, or when the disk cannot be asked.
    fn free_bytes(&self) -> Option<u64> {
        None
    }

    /// The manifest `key`, if there is one. One larger than [`MAX_MANIFEST`] is refused
    /// before it is read.
    fn read_manifest(
        &self,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<Option<Manifest>, StoreError>> + Send;

    /// The version of the manifest `key`, if there is one, without its content (a `HEAD` in a
    /// bucket): whether a copy taken earlier is still current costs no transfer.
    fn manifest_version(
        &self,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<Option<Version>, StoreError>> + Send;

    /// Replace the manifest `key` with `bytes` if its version is still `expected` (`None`:
    /// only if there is none yet). The write is atomic: readers see the old manifest or the
    /// new one.
    fn replace_manifest(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        expected: Option<&Version>,
    ) -> impl Future<Output = Result<Replaced, StoreError>> + Send;
}

/// The filesystem backend: each key a file under one folder. Objects are written beside their
/// place and renamed into it, durably; manifests are compared and replaced under a lock,
/// which is enough because one process owns a data directory (see [`crate::fs::DataDir`])
/// and holds one `FsStore` per folder (clones share the lock; two `FsStore::new` on one
/// folder would not).
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    /// Held while a manifest is compared and replaced.
    manifests: Arc<std::sync::Mutex<()>>,
}

impl FsStore {
    /// A store of the files under `root` (created as needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsStore {
            root: root.into(),
            manifests: Arc::new(std::sync::Mutex::new(())),
        }
    }

    /// Where `key` lives on disk.
    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        key.as_str()
            .split('/')
            .fold(self.root.clone(), |path, segment| path.join(segment))
    }

    /// Run blocking file work off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(FsStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(store))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

/// Copy the open file `source`, of at most `most` bytes, to `to` through a file beside
/// `to`, synced and renamed into place: one that has grown past them since it was measured
/// is an error, and nothing is placed.
fn copy_into_place_within(source: std::fs::File, to: &Path, most: u64) -> std::io::Result<()> {
    if let Some(dir) = to.parent() {
        create_dirs(dir)?;
    }
    replace_file_with(to, |file| {
        let copied = std::io::copy(
            &mut std::io::Read::take(source, most.saturating_add(1)),
            file,
        )?;
        if copied > most {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the object grew past {most} bytes as it was copied"),
            ));
        }
        Ok(())
    })
}

/// `path` opened for reading without waiting (a FIFO put in the store's place does not
/// hold the thread) and without following a symbolic link there, with what it is: sized
/// and read from this one handle, whatever replaces the path meanwhile. `None` if there is
/// nothing there.
fn open_measured(path: &Path) -> std::io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // A symbolic link at the object's place is none of the store's; a loop of links
        // above it is an error.
        Err(err) if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => {
            drop(err);
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    if meta.is_file() {
        // Reads wait as usual from here (a file system that passes the flag on could
        // otherwise answer "try again").
        rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())?;
    }
    Ok(Some((file, meta)))
}

/// The regular file at `path` whole, if one is there (nothing else is read: see
/// [`open_measured`]); more than `most` bytes is [`std::io::ErrorKind::FileTooLarge`].
fn read_regular(path: &Path, most: u64) -> std::io::Result<Option<Vec<u8>>> {
    let Some((file, meta)) = open_measured(path)? else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > most {
        return Err(std::io::ErrorKind::FileTooLarge.into());
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, most.saturating_add(1)),
        &mut bytes,
    )?;
    if bytes.len() as u64 > most {
        return Err(std::io::ErrorKind::FileTooLarge.into());
    }
    Ok(Some(bytes))
}

fn copy_after_into_place(head: &[u8], from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(dir) = to.parent() {
        create_dirs(dir)?;
    }
    let mut source = std::fs::File::open(from)?;
    replace_file_with(to, |file| {
        std::io::Write::write_all(file, head)?;
        std::io::copy(&mut source, file).map(drop)
    })
}

/// `create_dir_all`, durably: each folder made is synced into its parent, so that a file
/// synced inside it cannot lose its way after a power cut.
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_parent(dir),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

fn digest(bytes: &[u8]) -> Version {
    let hash = sha2::Sha256::digest(bytes);
    Version(hash.iter().map(|b| format!("{b:02x}")).collect())
}

fn not_found_is_none<T>(result: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

impl ObjectStore for FsStore {
    async fn put_file_after(
        &self,
        key: &ObjectKey,
        head: &[u8],
        from: &Path,
    ) -> Result<(), StoreError> {
        let (key, head, from) = (key.clone(), head.to_vec(), from.to_owned());
        self.blocking(move |store| Ok(copy_after_into_place(&head, &from, &store.path_of(&key))?))
            .await
    }

    async fn get_file_admitted(
        &self,
        key: &ObjectKey,
        to: &Path,
        limit: u64,
        admit: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<bool, StoreError> {
        let from = self.path_of(key);
        let Some((source, meta)) = self.blocking(move |_| Ok(open_measured(&from)?)).await? else {
            return Ok(false);
        };
        if !meta.is_file() {
            return Ok(false);
        }
        let size = meta.len();
        if size > limit {
            return Err(StoreError::TooLarge {
                key: key.clone(),
                limit,
            });
        }
        if !admit(size) {
            return Err(StoreError::NotAdmitted {
                key: key.clone(),
                size,
            });
        }
        // Copied from the handle measured: at most what was admitted.
        let to = to.to_owned();
        self.blocking(move |_| {
            copy_into_place_within(source, &to, size)?;
            Ok(true)
        })
        .await
    }

    async fn size(&self, key: &ObjectKey) -> Result<Option<u64>, StoreError> {
        let key = key.clone();
        self.blocking(move |store| {
            Ok(open_measured(&store.path_of(&key))?
                .filter(|(_, meta)| meta.is_file())
                .map(|(_, meta)| meta.len()))
        })
        .await
    }

    async fn get_bytes(&self, key: &ObjectKey, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.clone();
        self.blocking(move |store| {
            let path = store.path_of(&key);
            let Some((file, meta)) = open_measured(&path)? else {
                return Ok(None);
            };
            if !meta.is_file() {
                return Ok(None);
            }
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(file, limit.saturating_add(1)),
                &mut bytes,
            )?;
            if bytes.len() as u64 > limit {
                return Err(StoreError::TooLarge { key, limit });
            }
            Ok(Some(bytes))
        })
        .await
    }

    async fn read_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> Result<Option<ByteStream>, StoreError> {
        use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
        let path = self.path_of(key);
        let Some((file, meta)) = self.blocking(move |_| Ok(open_measured(&path)?)).await? else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Ok(None);
        }
        let mut file = tokio::fs::File::from_std(file);
        file.seek(std::io::SeekFrom::Start(range.start)).await?;
        let left = range.end.saturating_sub(range.start);
        let pieces =
            futures_util::stream::try_unfold((file, left), |(mut file, left)| async move {
                if left == 0 {
                    return Ok(None);
                }
                let mut piece = vec![0; left.min(READ_PIECE) as usize];
                let read = file.read(&mut piece).await?;
                if read == 0 {
                    return Ok(None);
                }
                piece.truncate(read);
                Ok(Some((
                    bytes::Bytes::from(piece),
                    (file, left - read as u64),
                )))
            });
        Ok(Some(Box::pin(pieces)))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.blocking(move |store| {
            let path = store.path_of(&key);
            // Under the manifests' lock: a conditional replacement that compared its version
            // before this delete cannot put the manifest back after it (a bucket's
            // conditional write on an object deleted meanwhile fails too).
            let removed = {
                let _held = store.manifests.lock().unwrap_or_else(|p| p.into_inner());
                not_found_is_none(std::fs::remove_file(&path))?
            };
            if removed.is_some() {
                sync_parent(&path)?;
            }
            Ok(())
        })
        .await
    }

    async fn remove_stale_writes(
        &self,
        prefix: &ObjectKey,
        older_than: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let prefix = prefix.clone();
        self.blocking(move |store| {
            let cutoff = std::time::SystemTime::now()
                .checked_sub(older_than)
                .unwrap_or(std::time::UNIX_EPOCH);
            let mut removed = 0;
            let mut pending = vec![store.path_of(&prefix)];
            while let Some(dir) = pending.pop() {
                let Some(entries) = not_found_is_none(std::fs::read_dir(&dir))? else {
                    continue;
                };
                for entry in entries {
                    let entry = entry?;
                    // Not followed: a link is not the store's to walk or remove.
                    let kind = entry.file_type()?;
                    if kind.is_dir() {
                        pending.push(entry.path());
                        continue;
                    }
                    if !kind.is_file() || !entry.file_name().to_str().is_some_and(is_leftover_temp)
                    {
                        continue;
                    }
                    // Renamed into its place meanwhile (a write that finished): nothing left.
                    let Some(meta) = not_found_is_none(entry.metadata())? else {
                        continue;
                    };
                    let stale = meta.modified()? < cutoff;
                    if stale && not_found_is_none(std::fs::remove_file(entry.path()))?.is_some() {
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn list(&self, prefix: &ObjectKey) -> Result<Vec<Listed>, StoreError> {
        let prefix = prefix.clone();
        self.blocking(move |store| {
            let mut found = Vec::new();
            let mut pending = vec![(store.path_of(&prefix), prefix.as_str().to_owned())];
            while let Some((path, key)) = pending.pop() {
                let Some(meta) = not_found_is_none(std::fs::symlink_metadata(&path))? else {
                    continue;
                };
                if meta.is_file() && key != prefix.as_str() {
                    found.push(Listed {
                        key: ObjectKey::new(&key)?,
                        size: meta.len(),
                        modified: meta.modified()?,
                    });
                } else if meta.is_dir() {
                    for entry in std::fs::read_dir(&path)? {
                        let entry = entry?;
                        let name = entry.file_name();
                        // Names no key can have (and writes in progress) are not objects.
                        let Some(name) = name.to_str() else {
                            continue;
                        };
                        if is_leftover_temp(name) || ObjectKey::new(name).is_err() {
                            continue;
                        }
                        pending.push((entry.path(), format!("{key}/{name}")));
                    }
                }
            }
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        })
        .await
    }

    fn free_bytes(&self) -> Option<u64> {
        crate::fs::free_bytes_near(&self.root)
    }

    async fn read_manifest(&self, key: &ObjectKey) -> Result<Option<Manifest>, StoreError> {
        let key = key.clone();
        self.blocking(move |store| {
            let bytes = match read_regular(&store.path_of(&key), MAX_MANIFEST) {
                Err(err) if err.kind() == std::io::ErrorKind::FileTooLarge => {
                    return Err(StoreError::TooLarge {
                        key,
                        limit: MAX_MANIFEST,
                    });
                }
                read => read?,
            };
            Ok(bytes.map(|bytes| Manifest {
                version: digest(&bytes),
                bytes,
            }))
        })
        .await
    }

    async fn manifest_version(&self, key: &ObjectKey) -> Result<Option<Version>, StoreError> {
        Ok(self.read_manifest(key).await?.map(|m| m.version))
    }

    async fn replace_manifest(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        expected: Option<&Version>,
    ) -> Result<Replaced, StoreError> {
        let (key, bytes, expected) = (key.clone(), bytes.to_vec(), expected.cloned());
        self.blocking(move |store| {
            let path = store.path_of(&key);
            let _held = store.manifests.lock().unwrap_or_else(|p| p.into_inner());
            let present = open_measured(&path)?.filter(|(_, meta)| meta.is_file());
            // Read (and hashed) only to compare with a version expected: a create-only write
            // over one there conflicts without reading it.
            let current = match (&expected, present) {
                (_, None) => None,
                (None, Some(_)) => return Ok(Replaced::Conflict),
                (Some(_), Some((file, _))) => {
                    let mut read = Vec::new();
                    std::io::Read::read_to_end(&mut &file, &mut read)?;
                    Some(digest(&read))
                }
            };
            if current != expected {
                return Ok(Replaced::Conflict);
            }
            if let Some(dir) = path.parent() {
                create_dirs(dir)?;
            }
            replace_file(&path, &bytes)?;
            Ok(Replaced::Done(digest(&bytes)))
        })
        .await
    }
}

/// One of the backends, chosen at run time (the server's configuration decides).
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// Files under a folder.
    Fs(FsStore),
    /// An S3-compatible bucket.
    S3(crate::s3::S3Store),
}

impl AnyStore {
    /// A URL from which anyone may `GET` the object `key` for `expires_in`, when the backend
    /// has such (a presigned URL in a bucket); `None` for files on disk.
    pub async fn download_url(
        &self,
        key: &ObjectKey,
        expires_in: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        match self {
            AnyStore::Fs(_) => Ok(None),
            AnyStore::S3(store) => store.signed_get_url(key, expires_in).await.map(Some),
        }
    }
}

impl ObjectStore for AnyStore {
    async fn put_file_after(
        &self,
        key: &ObjectKey,
        head: &[u8],
        from: &Path,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Fs(store) => store.put_file_after(key, head, from).await,
            AnyStore::S3(store) => store.put_file_after(key, head, from).await,
        }
    }

    async fn get_file_admitted(
        &self,
        key: &ObjectKey,
        to: &Path,
        limit: u64,
        admit: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<bool, StoreError> {
        match self {
            AnyStore::Fs(store) => store.get_file_admitted(key, to, limit, admit).await,
            AnyStore::S3(store) => store.get_file_admitted(key, to, limit, admit).await,
        }
    }

    async fn size(&self, key: &ObjectKey) -> Result<Option<u64>, StoreError> {
        match self {
            AnyStore::Fs(store) => store.size(key).await,
            AnyStore::S3(store) => store.size(key).await,
        }
    }

    async fn get_bytes(&self, key: &ObjectKey, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            AnyStore::Fs(store) => store.get_bytes(key, limit).await,
            AnyStore::S3(store) => store.get_bytes(key, limit).await,
        }
    }

    async fn read_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> Result<Option<ByteStream>, StoreError> {
        match self {
            AnyStore::Fs(store) => store.read_range(key, range).await,
            AnyStore::S3(store) => store.read_range(key, range).await,
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        match self {
            AnyStore::Fs(store) => store.delete(key).await,
            AnyStore::S3(store) => store.delete(key).await,
        }
    }

    async fn list(&self, prefix: &ObjectKey) -> Result<Vec<Listed>, StoreError> {
        match self {
            AnyStore::Fs(store) => store.list(prefix).await,
            AnyStore::S3(store) => store.list(prefix).await,
        }
    }

    async fn remove_stale_writes(
        &self,
        prefix: &ObjectKey,
        older_than: std::time::Duration,
    ) -> Result<usize, StoreError> {
        match self {
            AnyStore::Fs(store) => store.remove_stale_writes(prefix, older_than).await,
            AnyStore::S3(store) => store.remove_stale_writes(prefix, older_than).await,
        }
    }

    fn free_bytes(&self) -> Option<u64> {
        match self {
            AnyStore::Fs(store) => store.free_bytes(),
            AnyStore::S3(store) => store.free_bytes(),
        }
    }

    async fn read_manifest(&self, key: &ObjectKey) -> Result<Option<Manifest>, StoreError> {
        match self {
            AnyStore::Fs(store) => store.read_manifest(key).await,
            AnyStore::S3(store) => store.read_manifest(key).await,
        }
    }

    async fn manifest_version(&self, key: &ObjectKey) -> Result<Option<Version>, StoreError> {
        match self {
            AnyStore::Fs(store) => store.manifest_version(key).await,
            AnyStore::S3(store) => store.manifest_version(key).await,
        }
    }

    async fn replace_manifest(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        expected: Option<&Version>,
    ) -> Result<Replaced, StoreError> {
        match self {
            AnyStore::Fs(store) => store.replace_manifest(key, bytes, expected).await,
            AnyStore::S3(store) => store.replace_manifest(key, bytes, expected).await,
        }
    }
}
