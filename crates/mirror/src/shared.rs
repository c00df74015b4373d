//! Mirrors kept in an object store shared by several instances, each instance's folder a
//! working copy of it.
//!
//! In the store, a mirror is a set of immutable pack files (`.pack`, `.idx` and what lies
//! beside them: reverse index, reachability bitmaps, tips), named by the pack's checksum,
//! and one small manifest that names them and holds the refs. Replacing the manifest
//! conditionally ([`ObjectStore::replace_manifest`]) is the commit of a refresh or a
//! consolidation: of two instances that race from one version, one wins and the other
//! [hydrates](Shared::hydrate) the winner's state and tries again.
//!
//! ```text
//! mirrors/<host>/<owner>/<repo>.git/manifest
//! mirrors/<host>/<owner>/<repo>.git/packs/pack-<checksum>.{pack,idx,rev,bitmap,tips}
//! ```
//!
//! - [`Shared::publish`] uploads the local copy's new pack files, then commits a manifest of
//!   its refs and packs. Packs the manifest no longer names are listed as *retired* with the
//!   time, and deleted only after a grace period (another instance may still be reading the
//!   manifest that named them); [`Shared::collect`] also deletes files no manifest ever named
//!   (an upload cut short) once they are older than the grace period.
//! - [`Shared::hydrate`] brings the local copy to the manifest: missing pack files are
//!   downloaded (each checked against its pack's checksum, the index last, as ingestion
//!   does), then the refs are replaced at once, then packs the manifest does not name are
//!   removed. A file `gitcache-manifest` in the repository records which version the copy
//!   holds, so that an unchanged manifest costs one small read.
//!
//! A crash at any point leaves a manifest that names only complete uploads, and a local copy
//! that is either the old state or the new one (with at most some unnamed files, which the
//! next hydration or a crash's leftovers sweep removes).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bstr::{BString, ByteSlice};
use gitcache_storage::repo::RepoKey;
use gitcache_storage::store::{AnyStore, ObjectKey, ObjectStore, Replaced, StoreError, Version};
use gix_hash::{Kind as HashKind, ObjectId};

/// The largest manifest read (refs of very large repositories included).
pub const MAX_MANIFEST: u64 = 64 << 20;

/// The most packs a manifest may name.
const MAX_PACKS: usize = 4096;

/// The files of a pack the store holds, in the order they are placed locally: the index last,
/// so that a reader finds a pack only once it is whole.
pub const PACK_FILES: [&str; 5] = ["pack", "rev", "bitmap", "tips", "idx"];

/// Packs a manifest no longer names stay in the store this long by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// The first line of every manifest.
const MAGIC: &str = "gitcache-mirror 1";

/// The file in a local copy that names the manifest version it holds.
const MARKER: &str = "gitcache-manifest";

/// Why the store could not be used, or what it holds is not a valid mirror.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    /// Local files could not be read or written.
    #[error("mirror I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The manifest is not one gitcache wrote.
    #[error("invalid mirror manifest: {0}")]
    Invalid(String),
    /// A file in the store does not belong to the pack that names it.
    #[error("{key} does not belong to its pack")]
    Mismatch {
        /// The object.
        key: ObjectKey,
    },
    /// The manifest names a file the store does not have.
    #[error("{key} is named by the manifest but missing from the store")]
    Missing {
        /// The object.
        key: ObjectKey,
    },
    /// The store's mirror has another object format than the local copy.
    #[error("the store's mirror uses {store}, the local copy {local}")]
    ObjectFormat {
        /// The manifest's.
        store: HashKind,
        /// The local copy's.
        local: HashKind,
    },
}

/// One pack and which of its files exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackFiles {
    /// `pack-<checksum>`.
    pub stem: String,
    /// Which of [`PACK_FILES`] exist (always `pack` and `idx`), in that order.
    pub files: Vec<&'static str>,
}

/// A mirror's manifest: its object format, `HEAD`, refs and packs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorManifest {
    /// The object format.
    pub format: HashKind,
    /// What `HEAD` points at.
    pub head: Option<BString>,
    /// The packs, by stem.
    pub packs: Vec<PackFiles>,
    /// Packs no longer named, with when they were dropped (seconds since the epoch).
    pub retired: Vec<(String, u64)>,
    /// The refs as `packed-refs` lines (`<oid> <name>`, each perhaps followed by
    /// `^<peeled>`), sorted by name, without the header line.
    pub refs: Vec<u8>,
}

fn invalid(what: impl Into<String>) -> Error {
    Error::Invalid(what.into())
}

fn check_stem(stem: &str, format: HashKind) -> Result<(), Error> {
    let hex = stem
        .strip_prefix("pack-")
        .ok_or_else(|| invalid(format!("pack name {stem:?}")))?;
    if hex.len() != format.len_in_hex()
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid(format!("pack name {stem:?}")));
    }
    Ok(())
}

fn parse_oid(hex: &[u8], format: HashKind) -> Result<ObjectId, Error> {
    if hex.len() != format.len_in_hex() {
        return Err(invalid("object id of the wrong length"));
    }
    ObjectId::from_hex(hex).map_err(|_| invalid("object id not in hex"))
}

fn check_ref_name(name: &[u8]) -> Result<(), Error> {
    if !name.starts_with(b"refs/") {
        return Err(invalid(format!(
            "ref {:?} is not under refs/",
            name.as_bstr()
        )));
    }
    gix_validate::reference::name(name.as_bstr())
        .map(drop)
        .map_err(|e| invalid(format!("ref {:?}: {e}", name.as_bstr())))
}

/// Check `packed-refs` lines as a reader would take them: each ref valid, names strictly
/// ascending, a peeled value only right after a ref.
fn check_refs(refs: &[u8], format: HashKind) -> Result<(), Error> {
    let mut last: Option<&[u8]> = None;
    let mut may_peel = false;
    for line in refs.lines() {
        if let Some(peeled) = line.strip_prefix(b"^") {
            if !may_peel {
                return Err(invalid("a peeled value without its ref"));
            }
            parse_oid(peeled, format)?;
            may_peel = false;
            continue;
        }
        let (oid, name) = line
            .split_once_str(" ")
            .ok_or_else(|| invalid("a ref line without a name"))?;
        parse_oid(oid, format)?;
        check_ref_name(name)?;
        if last.is_some_and(|l| l >= name) {
            return Err(invalid("refs not sorted, or listed twice"));
        }
        last = Some(name);
        may_peel = true;
    }
    if !refs.is_empty() && !refs.ends_with(b"\n") {
        return Err(invalid("refs do not end with a newline"));
    }
    Ok(())
}

impl MirrorManifest {
    /// The manifest as stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{MAGIC}\nformat {}\n", self.format).into_bytes();
        if let Some(head) = &self.head {
            out.extend_from_slice(b"head ");
            out.extend_from_slice(head);
            out.push(b'\n');
        }
        for pack in &self.packs {
            out.extend_from_slice(
                format!("pack {} {}\n", pack.stem, pack.files.join(" ")).as_bytes(),
            );
        }
        for (stem, at) in &self.retired {
            out.extend_from_slice(format!("retired {stem} {at}\n").as_bytes());
        }
        out.extend_from_slice(b"refs\n");
        out.extend_from_slice(&self.refs);
        out
    }

    /// Parse and check a stored manifest: everything in it must be what [`encode`] writes
    /// and what a repository may hold (pack names, ref names, object ids).
    ///
    /// [`encode`]: Self::encode
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let (head_part, refs) = match bytes.find(b"\nrefs\n") {
            Some(at) => (&bytes[..at + 1], &bytes[at + 6..]),
            None => return Err(invalid("no refs section")),
        };
        let mut lines = head_part.lines();
        if lines.next() != Some(MAGIC.as_bytes()) {
            return Err(invalid("not a gitcache mirror manifest"));
        }
        let format = match lines.next() {
            Some(b"format sha1") => HashKind::Sha1,
            Some(b"format sha256") => HashKind::Sha256,
            _ => return Err(invalid("unknown object format")),
        };
        let mut manifest = MirrorManifest {
            format,
            head: None,
            packs: Vec::new(),
            retired: Vec::new(),
            refs: refs.to_vec(),
        };
        for line in lines {
            let (word, rest) = line.split_once_str(" ").unwrap_or((line, b""));
            match word {
                b"head" if manifest.head.is_none() && manifest.packs.is_empty() => {
                    check_ref_name(rest)?;
                    manifest.head = Some(rest.into());
                }
                b"pack" if manifest.retired.is_empty() => {
                    let mut words = rest.split_str(" ");
                    let stem = words.next().unwrap_or_default().to_str_lossy().into_owned();
                    check_stem(&stem, format)?;
                    if manifest.packs.last().is_some_and(|p| p.stem >= stem) {
                        return Err(invalid("packs not sorted, or listed twice"));
                    }
                    let mut files = Vec::new();
                    let mut next = 0;
                    for word in words {
                        let Some(at) = PACK_FILES[next..].iter().position(|f| f.as_bytes() == word)
                        else {
                            return Err(invalid(format!("pack file {:?}", word.as_bstr())));
                        };
                        files.push(PACK_FILES[next + at]);
                        next += at + 1;
                    }
                    if !(files.contains(&"pack") && files.contains(&"idx")) {
                        return Err(invalid(format!("{stem} without its data or index")));
                    }
                    manifest.packs.push(PackFiles { stem, files });
                    if manifest.packs.len() > MAX_PACKS {
                        return Err(invalid("too many packs"));
                    }
                }
                b"retired" => {
                    let (stem, at) = rest
                        .split_once_str(" ")
                        .ok_or_else(|| invalid("a retired pack without its time"))?;
                    let stem = stem.to_str_lossy().into_owned();
                    check_stem(&stem, format)?;
                    let at = at
                        .to_str()
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                        .ok_or_else(|| invalid("a retired pack's time"))?;
                    manifest.retired.push((stem, at));
                    if manifest.retired.len() > MAX_PACKS {
                        return Err(invalid("too many retired packs"));
                    }
                }
                _ => return Err(invalid(format!("line {:?}", line.as_bstr()))),
            }
        }
        check_refs(&manifest.refs, format)?;
        Ok(manifest)
    }

    /// The manifest of the local copy at `git_dir` (no retired packs).
    pub fn of_local(git_dir: &Path) -> Result<Self, Error> {
        let repo = gitcache_pack::Repository::open(git_dir)
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let format = repo.object_format();
        let head = std::fs::read(git_dir.join("HEAD"))?;
        let head = head
            .strip_prefix(b"ref: ")
            .map(|t| BString::from(t.trim_end()));
        let refs = match std::fs::read(git_dir.join("packed-refs")) {
            Ok(text) => match text.find_byte(b'\n') {
                Some(end) if text.starts_with(b"#") => text[end + 1..].to_vec(),
                _ => text,
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err.into()),
        };
        let pack_dir = git_dir.join("objects").join("pack");
        let mut names: Vec<String> = std::fs::read_dir(&pack_dir)?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut packs = Vec::new();
        for name in &names {
            let Some(stem) = name.strip_suffix(".idx") else {
                continue;
            };
            if check_stem(stem, format).is_err() {
                continue;
            }
            let files: Vec<&'static str> = PACK_FILES
                .into_iter()
                .filter(|ext| names.contains(&format!("{stem}.{ext}")))
                .collect();
            if files.contains(&"pack") {
                packs.push(PackFiles {
                    stem: stem.to_owned(),
                    files,
                });
            }
        }
        Ok(MirrorManifest {
            format,
            head,
            packs,
            retired: Vec::new(),
            refs,
        })
    }

    /// Whether `other` holds the same refs and packs (retired packs aside).
    fn same_state(&self, other: &MirrorManifest) -> bool {
        self.format == other.format
            && self.head == other.head
            && self.packs == other.packs
            && self.refs == other.refs
    }
}

/// How [`Shared::publish`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The manifest now holds the local copy's state (committed now, or already).
    Done,
    /// Another instance committed first: hydrate its state, then try again.
    Conflict,
}

/// How [`Shared::hydrate`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hydrated {
    /// The store has no manifest for the mirror, and the local copy holds none of one.
    Absent,
    /// The local copy holds the manifest's state (it did already, or does now).
    Current,
    /// The store's manifest was removed (a purge) since the local copy took it: the local
    /// copy is stale and should go.
    Removed,
}

/// The object store that mirrors share, and how long retired packs stay.
#[derive(Debug, Clone)]
pub struct Shared {
    store: AnyStore,
    grace: Duration,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The version of the manifest the local copy holds, if it took one.
fn local_version(git_dir: &Path) -> Option<Version> {
    std::fs::read_to_string(git_dir.join(MARKER))
        .ok()
        .map(|v| Version(v.trim_end().to_owned()))
}

fn set_local_version(git_dir: &Path, version: &Version) -> std::io::Result<()> {
    gitcache_storage::fs::replace_file(&git_dir.join(MARKER), format!("{}\n", version.0).as_bytes())
}

/// The checksum `.pack` and `.idx` files of `stem` must carry, and where.
fn belongs(path: &Path, ext: &str, stem: &str, format: HashKind) -> std::io::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let len = format.len_in_bytes() as u64;
    // A pack ends with its checksum; an index ends with the pack's checksum, then its own.
    let from_end = match ext {
        "pack" => len,
        "idx" => 2 * len,
        _ => return Ok(true),
    };
    let mut file = std::fs::File::open(path)?;
    if file.metadata()?.len() < from_end + 12 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-(from_end as i64)))?;
    let mut checksum = vec![0; len as usize];
    file.read_exact(&mut checksum)?;
    let hex: String = checksum.iter().map(|b| format!("{b:02x}")).collect();
    Ok(stem.strip_prefix("pack-") == Some(hex.as_str()))
}

impl Shared {
    /// Mirrors in `store`; retired packs are deleted `grace` after they were dropped.
    pub fn new(store: AnyStore, grace: Duration) -> Self {
        Shared { store, grace }
    }

    /// The store.
    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    fn base(key: &RepoKey) -> Result<ObjectKey, Error> {
        let relative = key.relative_path();
        let relative: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Ok(ObjectKey::new(&format!("mirrors/{}", relative.join("/")))?)
    }

    /// Where `key`'s manifest lives.
    pub fn manifest_key(key: &RepoKey) -> Result<ObjectKey, Error> {
        Ok(Self::base(key)?.join("manifest")?)
    }

    fn file_key(key: &RepoKey, stem: &str, ext: &str) -> Result<ObjectKey, Error> {
        Ok(Self::base(key)?
            .join("packs")?
            .join(&format!("{stem}.{ext}"))?)
    }

    /// The manifest of `key` and its version, if there is one.
    pub async fn read(&self, key: &RepoKey) -> Result<Option<(MirrorManifest, Version)>, Error> {
        let manifest_key = Self::manifest_key(key)?;
        let Some(read) = self.store.read_manifest(&manifest_key).await? else {
            return Ok(None);
        };
        if read.bytes.len() as u64 > MAX_MANIFEST {
            return Err(StoreError::TooLarge {
                key: manifest_key,
                limit: MAX_MANIFEST,
            }
            .into());
        }
        Ok(Some((MirrorManifest::decode(&read.bytes)?, read.version)))
    }

    /// Bring the local copy at `git_dir` (a mirror, or nothing yet) to `key`'s manifest in the
    /// store. Call with no refresh of the mirror under way (the registry's lock).
    pub async fn hydrate(&self, key: &RepoKey, git_dir: &Path) -> Result<Hydrated, Error> {
        let held = local_version(git_dir).filter(|_| git_dir.join("HEAD").is_file());
        let Some((manifest, version)) = self.read(key).await? else {
            return Ok(if held.is_some() {
                Hydrated::Removed
            } else {
                Hydrated::Absent
            });
        };
        if held.as_ref() == Some(&version) {
            return Ok(Hydrated::Current);
        }
        if git_dir.join("HEAD").is_file() {
            let local = gitcache_pack::Repository::open(git_dir)
                .map_err(|e| Error::Io(std::io::Error::other(e)))?
                .object_format();
            if local != manifest.format {
                return Err(Error::ObjectFormat {
                    store: manifest.format,
                    local,
                });
            }
        } else {
            // A folder without HEAD is unfinished: made anew.
            if git_dir.exists() {
                std::fs::remove_dir_all(git_dir)?;
            }
            if let Some(parent) = git_dir.parent() {
                std::fs::create_dir_all(parent)?;
            }
            crate::mirror::Mirror::create(git_dir, manifest.format)?;
        }
        let pack_dir = git_dir.join("objects").join("pack");
        for pack in &manifest.packs {
            for ext in pack.files.iter().copied() {
                let path = pack_dir.join(format!("{}.{ext}", pack.stem));
                if path.is_file() {
                    continue;
                }
                let object = Self::file_key(key, &pack.stem, ext)?;
                let temp = pack_dir.join(format!(
                    "incoming-{}-hydrate-{}.{ext}",
                    std::process::id(),
                    pack.stem
                ));
                let fetched = self.store.get_file(&object, &temp).await;
                let placed = match fetched {
                    Ok(true) => match belongs(&temp, ext, &pack.stem, manifest.format) {
                        Ok(true) => std::fs::rename(&temp, &path).map_err(Error::from),
                        Ok(false) => Err(Error::Mismatch { key: object }),
                        Err(err) => Err(err.into()),
                    },
                    Ok(false) => Err(Error::Missing { key: object }),
                    Err(err) => Err(err.into()),
                };
                if let Err(err) = placed {
                    let _ = std::fs::remove_file(&temp);
                    return Err(err);
                }
            }
        }
        gitcache_storage::fs::sync_dir(&pack_dir)?;
        let mut packed = b"# pack-refs with: peeled fully-peeled sorted \n".to_vec();
        packed.extend_from_slice(&manifest.refs);
        gitcache_storage::fs::replace_file(&git_dir.join("packed-refs"), &packed)?;
        if let Some(head) = &manifest.head {
            let mut text = b"ref: ".to_vec();
            text.extend_from_slice(head);
            text.push(b'\n');
            gitcache_storage::fs::replace_file(&git_dir.join("HEAD"), &text)?;
        }
        let named: Vec<&str> = manifest.packs.iter().map(|p| p.stem.as_str()).collect();
        for local in MirrorManifest::of_local(git_dir)?.packs {
            if !named.contains(&local.stem.as_str()) {
                crate::mirror::remove_pack(&pack_dir, &local.stem)?;
            }
        }
        set_local_version(git_dir, &version)?;
        Ok(Hydrated::Current)
    }

    /// Commit the local copy at `git_dir` as `key`'s manifest: upload the pack files the
    /// current manifest does not name, then replace it if it is still the version the copy
    /// holds. Call with no refresh of the mirror under way, after [`hydrate`](Self::hydrate).
    pub async fn publish(&self, key: &RepoKey, git_dir: &Path) -> Result<Published, Error> {
        let mut local = MirrorManifest::of_local(git_dir)?;
        let current = self.read(key).await?;
        let held = local_version(git_dir);
        let expected = match &current {
            Some((_, version)) if held.as_ref() != Some(version) => {
                return Ok(Published::Conflict);
            }
            Some((manifest, version)) => {
                if manifest.same_state(&local) {
                    return Ok(Published::Done);
                }
                Some(version.clone())
            }
            None => None,
        };
        let previous = current.as_ref().map(|(m, _)| m);
        for pack in &local.packs {
            let known = previous
                .and_then(|m| m.packs.iter().find(|p| p.stem == pack.stem))
                .map(|p| p.files.clone())
                .unwrap_or_default();
            for ext in pack.files.iter().filter(|ext| !known.contains(ext)) {
                let path = git_dir
                    .join("objects")
                    .join("pack")
                    .join(format!("{}.{ext}", pack.stem));
                self.store
                    .put_file(&Self::file_key(key, &pack.stem, ext)?, &path)
                    .await?;
            }
        }
        // Packs dropped now are retired; those retired longer than the grace period are
        // deleted once this manifest is committed.
        let now = unix_now();
        let grace = self.grace.as_secs();
        let mut expired = Vec::new();
        if let Some(previous) = previous {
            let live = |stem: &str| local.packs.iter().any(|p| p.stem == stem);
            for (stem, at) in &previous.retired {
                if live(stem) {
                    continue;
                }
                if now.saturating_sub(*at) >= grace {
                    expired.push(stem.clone());
                } else {
                    local.retired.push((stem.clone(), *at));
                }
            }
            for pack in &previous.packs {
                if !live(&pack.stem) {
                    local.retired.push((pack.stem.clone(), now));
                }
            }
            local.retired.sort();
            local.retired.dedup_by(|a, b| a.0 == b.0);
        }
        let manifest_key = Self::manifest_key(key)?;
        match self
            .store
            .replace_manifest(&manifest_key, &local.encode(), expected.as_ref())
            .await?
        {
            Replaced::Done(version) => {
                set_local_version(git_dir, &version)?;
                for stem in expired {
                    self.delete_pack(key, &stem).await?;
                }
                Ok(Published::Done)
            }
            Replaced::Conflict => Ok(Published::Conflict),
        }
    }

    async fn delete_pack(&self, key: &RepoKey, stem: &str) -> Result<(), Error> {
        // The index first: a pack without it is incomplete to every reader.
        for ext in ["idx", "pack", "rev", "bitmap", "tips"] {
            self.store.delete(&Self::file_key(key, stem, ext)?).await?;
        }
        Ok(())
    }

    /// Delete files under `key`'s packs that no manifest names (an upload cut short, a
    /// retired pack whose entry was lost) once older than the grace period. Returns how many.
    pub async fn collect(&self, key: &RepoKey) -> Result<usize, Error> {
        let Some((manifest, _)) = self.read(key).await? else {
            return Ok(0);
        };
        let listed = self.store.list(&Self::base(key)?.join("packs")?).await?;
        let cutoff = SystemTime::now()
            .checked_sub(self.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut deleted = 0;
        for object in listed {
            let name = object.key.as_str().rsplit('/').next().unwrap_or_default();
            let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
            let named = manifest.packs.iter().any(|p| p.stem == stem)
                || manifest.retired.iter().any(|(s, _)| s == stem);
            if !named && object.modified < cutoff {
                self.store.delete(&object.key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Remove `key`'s manifest and every file of its packs from the store (a purge): other
    /// instances find it gone and drop their copies.
    pub async fn remove(&self, key: &RepoKey) -> Result<(), Error> {
        self.store.delete(&Self::manifest_key(key)?).await?;
        for object in self.store.list(&Self::base(key)?.join("packs")?).await? {
            self.store.delete(&object.key).await?;
        }
        Ok(())
    }
}

/// The local copy's marker file name, for a crash's leftovers sweep and tests.
pub fn marker(git_dir: &Path) -> PathBuf {
    git_dir.join(MARKER)
}
