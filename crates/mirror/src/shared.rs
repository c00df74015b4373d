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
//! mirrors/<host>/<owner>/<repo>.git/packs/pack-<checksum>.bundle
//! ```
//!
//! - [`Shared::publish`] uploads the local copy's new pack files, then commits a manifest of
//!   its refs and packs. Packs the manifest no longer names are listed as *retired* with the
//!   time, and deleted only after a grace period (another instance may still be reading the
//!   manifest that named them); [`Shared::collect`] also deletes files no manifest ever named
//!   (an upload cut short) once they are older than the grace period.
//! - [`Shared::hydrate`] brings the local copy to the manifest: missing pack files are
//!   downloaded (each checked against its pack's checksum; the indexes, by which readers
//!   find packs, placed together once every other file is in), then the refs are replaced at once, then packs the manifest does not name are
//!   removed. A file `gitcache-manifest` in the repository records which version the copy
//!   holds, so that an unchanged manifest costs one small read.
//!
//! - [`Shared::bundle`] (when [bundles are on](Shared::with_bundles)) writes a git bundle of a
//!   consolidated pack beside it (`<stem>.bundle`, which goes with its pack), so that clients
//!   told of it ([`Shared::bundle_url`], git's `bundle-uri`) take the bulk of a clone from
//!   the store. The manifest does not name bundles: instances that keep none read it as
//!   ever, and a bundle exists once it is whole (uploads are atomic).
//!
//! A crash at any point leaves a manifest that names only complete uploads, and a local copy
//! that is either the old state or the new one (with at most some unnamed files, which the
//! next hydration or a crash's leftovers sweep removes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bstr::{BString, ByteSlice};
use gitcache_storage::repo::RepoKey;
use gitcache_storage::store::{AnyStore, ObjectKey, ObjectStore, Replaced, StoreError, Version};
use gix_hash::{Kind as HashKind, ObjectId};

/// The largest manifest read (refs of very large repositories included).
pub use gitcache_storage::store::MAX_MANIFEST;

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

/// The file in a local copy that lists (`<stem>.<ext>` lines) the pack files its manifest
/// names that hydration did without, missing from the store or failing their check: the
/// next commit that has them made again (by maintenance) writes them to the store again.
const UNSHARED: &str = "gitcache-unshared";

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
    /// Taking the store's state of the mirror (this manifest version) failed this long ago,
    /// for a file missing or damaged there: not tried again before the manifest changes or
    /// ten minutes have passed.
    #[error("the store's state of this mirror could not be taken {0:?} ago; not tried again yet")]
    FailedLately(Duration),
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
    /// A tombstone: the mirror was removed (a purge). It names no packs and no refs; copies
    /// taken from an earlier manifest are dropped, and a new mirror replaces it.
    pub removed: bool,
    /// When the mirror was removed (milliseconds since the epoch; 0 when the tombstone does
    /// not say): a copy that took no state from the store (one from before the store was
    /// used, or made alone while it was out of reach) and was created before this is dropped
    /// too, never committed over the tombstone.
    pub removed_at: u64,
    /// How many times the mirror was removed from the store before this state, a tombstone
    /// counting its own removal (a purge, a repository found replaced behind its name). A
    /// copy that took an earlier state with fewer holds what a removal dropped, and goes with
    /// what else its instance kept of it (stored answers), though it never saw the tombstone
    /// (a new state was committed over it first).
    pub removals: u64,
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
    if refs.contains(&b'\r') {
        return Err(invalid("a carriage return in the refs"));
    }
    let body = refs.strip_suffix(b"\n").unwrap_or(refs);
    for line in body.split(|b| *b == b'\n').filter(|_| !refs.is_empty()) {
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
        if self.removals > 0 {
            out.extend_from_slice(format!("removals {}\n", self.removals).as_bytes());
        }
        if self.removed {
            if self.removed_at == 0 {
                out.extend_from_slice(b"removed\n");
            } else {
                out.extend_from_slice(format!("removed {}\n", self.removed_at).as_bytes());
            }
        }
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
            removed: false,
            removed_at: 0,
            removals: 0,
        };
        for line in lines {
            let (word, rest) = line.split_once_str(" ").unwrap_or((line, b""));
            match word {
                b"removals"
                    if manifest.removals == 0
                        && !manifest.removed
                        && manifest.head.is_none()
                        && manifest.packs.is_empty()
                        && manifest.retired.is_empty() =>
                {
                    manifest.removals = rest
                        .to_str()
                        .ok()
                        .filter(|t| !t.starts_with(['0', '+']))
                        .and_then(|t| t.parse::<u64>().ok())
                        .ok_or_else(|| invalid("a count of removals"))?;
                }
                b"removed"
                    if !manifest.removed
                        && manifest.head.is_none()
                        && manifest.packs.is_empty()
                        && manifest.retired.is_empty() =>
                {
                    manifest.removed = true;
                    if !rest.is_empty() {
                        manifest.removed_at = rest
                            .to_str()
                            .ok()
                            .filter(|t| !t.starts_with(['0', '+']))
                            .and_then(|t| t.parse::<u64>().ok())
                            .ok_or_else(|| invalid("a removal's time"))?;
                    }
                }
                b"head" | b"pack" if manifest.removed => {
                    return Err(invalid("a removed mirror names no packs or HEAD"));
                }
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
        if manifest.removed && !manifest.refs.is_empty() {
            return Err(invalid("a removed mirror has no refs"));
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
            removed: false,
            removed_at: 0,
            removals: local_removals(git_dir),
        })
    }

    /// The pack and extension of `file` (`<stem>.<ext>`), if it is one of the pack files
    /// this manifest names.
    fn names(&self, file: &str) -> Option<(&str, &'static str)> {
        self.packs.iter().find_map(|p| {
            let ext = file.strip_prefix(p.stem.as_str())?.strip_prefix('.')?;
            let ext = p.files.iter().find(|e| **e == ext)?;
            Some((p.stem.as_str(), *ext))
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
    /// The store holds no mirror: no manifest (which is never taken for a removal: a bucket
    /// emptied or a prefix changed by mistake must not drop every copy), or a tombstone
    /// newer than anything the local copy took. The local copy is left as it is.
    Absent,
    /// The local copy holds the manifest's state (it did already, or does now).
    Current,
    /// The mirror was removed from the store (a purge, a repository found replaced behind its
    /// name) after the local copy took it, whether or not a new state was committed since:
    /// the copy is stale and should go, with what else was kept of it.
    Removed,
}

/// The object store that mirrors share, and how long retired packs stay.
#[derive(Debug, Clone)]
pub struct Shared {
    store: AnyStore,
    grace: Duration,
    bundles: bool,
    /// Bundle objects asked about: whether each exists, and since when that is known.
    bundles_seen: std::sync::Arc<std::sync::Mutex<HashMap<ObjectKey, (bool, std::time::Instant)>>>,
    /// Mirrors whose state in the store could not be taken (a file missing or damaged
    /// there), the manifest version then, and when.
    failed: std::sync::Arc<std::sync::Mutex<HashMap<RepoKey, (Version, std::time::Instant)>>>,
    /// Tombstones found, by mirror: the version, and whether no copy made before it is left
    /// here (there was none, or the one there was dropped). A copy made here after that is
    /// newer than the removal, whatever the instances' clocks say.
    tombstones: std::sync::Arc<std::sync::Mutex<HashMap<RepoKey, (Version, bool)>>>,
}

/// How long a manifest version whose files could not be had is not tried again.
const FAILED_FOR: Duration = Duration::from_secs(600);
/// Mirrors remembered so, at most.
const FAILED_MOST: usize = 10_000;

/// How long a bundle found in the store is taken to be there without asking again (well
/// within the grace period its pack stays after retirement).
const SEEN_FOR: Duration = Duration::from_secs(300);
/// How long a bundle found missing is taken to be missing (it is written after the
/// consolidation that named its pack).
const MISSING_FOR: Duration = Duration::from_secs(30);
/// The most bundle objects remembered; the memory is cleared when full.
const MAX_SEEN: usize = 10_000;

/// The stem of the pack in `pack_dir` marked with its tips (the consolidated one), if any:
/// one listing of the folder.
fn consolidated_stem(pack_dir: &Path) -> Option<String> {
    let names: Vec<String> = std::fs::read_dir(pack_dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names
        .iter()
        .filter_map(|name| name.strip_suffix(".tips"))
        .find(|stem| stem.starts_with("pack-") && names.contains(&format!("{stem}.idx")))
        .map(str::to_owned)
}

/// The header of a git bundle of a pack that is the closure of the object ids in the file
/// `tips`: the branches and tags of `refs` (`packed-refs` lines) that point at one of them.
/// `None` when none does. Version 2 for SHA-1, version 3 (which names the format) otherwise.
fn bundle_header(
    format: HashKind,
    refs: &[u8],
    tips: &Path,
) -> Result<Option<(Vec<u8>, usize)>, Error> {
    let tips = std::fs::read_to_string(tips)?;
    let tips: std::collections::HashSet<&str> = tips.lines().collect();
    let mut header = match format {
        HashKind::Sha1 => b"# v2 git bundle\n".to_vec(),
        _ => format!("# v3 git bundle\n@object-format={format}\n").into_bytes(),
    };
    let mut listed = 0;
    for line in refs.lines() {
        let Some((oid, name)) = line.split_once_str(" ") else {
            continue;
        };
        let branch_or_tag = name.starts_with(b"refs/heads/") || name.starts_with(b"refs/tags/");
        if branch_or_tag && oid.to_str().is_ok_and(|oid| tips.contains(oid)) {
            header.extend_from_slice(line);
            header.push(b'\n');
            listed += 1;
        }
    }
    header.push(b'\n');
    Ok((listed > 0).then_some((header, listed)))
}

/// Rename the checked file `temp` into its place `path` (removed if that fails).
fn place(temp: &Path, path: &Path) -> Result<(), Error> {
    std::fs::rename(temp, path).map_err(|err| {
        let _ = std::fs::remove_file(temp);
        Error::from(err)
    })
}

/// Remove what a hydration cut short placed: of each pack, the files placed (all of them
/// when the pack was not there before), its index first so that no reader finds a part of
/// a pack.
fn unplace(pack_dir: &Path, placed: &[(&str, Vec<&str>, bool)]) {
    for (stem, exts, had) in placed {
        if exts.is_empty() {
            continue;
        }
        for ext in PACK_FILES.iter().rev() {
            if !had || exts.contains(ext) {
                let _ = std::fs::remove_file(pack_dir.join(format!("{stem}.{ext}")));
            }
        }
    }
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether the copy at `git_dir`, which took no state from the store, was created before
/// `tombstone`'s removal (a copy without a creation stamp, from an older gitcache, counts as
/// created before any removal that says when it was).
fn predates(git_dir: &Path, tombstone: &MirrorManifest) -> bool {
    crate::mirror::created_at(git_dir).unwrap_or(0) < tombstone.removed_at
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The version of the manifest the local copy holds, if it took one.
fn local_version(git_dir: &Path) -> Option<Version> {
    let text = std::fs::read_to_string(git_dir.join(MARKER)).ok()?;
    Some(Version(text.lines().next().unwrap_or_default().to_owned()))
}

/// How many removals the state the local copy holds counts (see
/// [`MirrorManifest::removals`]); 0 for a copy that took none, or one from before the count.
fn local_removals(git_dir: &Path) -> u64 {
    std::fs::read_to_string(git_dir.join(MARKER))
        .ok()
        .and_then(|text| {
            let count = text.lines().nth(1)?.strip_prefix("removals ")?;
            count.parse().ok()
        })
        .unwrap_or(0)
}

/// Note in the local copy that it holds the manifest `version`, which counts `removals`.
fn set_local_version(git_dir: &Path, version: &Version, removals: u64) -> std::io::Result<()> {
    let text = match removals {
        0 => format!("{}\n", version.0),
        n => format!("{}\nremovals {n}\n", version.0),
    };
    gitcache_storage::fs::replace_file(&git_dir.join(MARKER), text.as_bytes())
}

/// How long files done without wait before they are looked for in the store again.
const UNSHARED_RETRY: Duration = Duration::from_secs(600);

/// Whether files done without are listed and were last looked for [`UNSHARED_RETRY`] ago.
fn retry_unshared(git_dir: &Path) -> bool {
    std::fs::metadata(git_dir.join(UNSHARED))
        .and_then(|m| m.modified())
        // A time ahead of the clock (set back since) counts by how far ahead it is.
        .is_ok_and(|at| at.elapsed().unwrap_or_else(|ahead| ahead.duration()) >= UNSHARED_RETRY)
}

/// The files hydration did without (see [`UNSHARED`]).
fn unshared(git_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(git_dir.join(UNSHARED))
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn set_unshared(git_dir: &Path, files: &[String]) -> std::io::Result<()> {
    let path = git_dir.join(UNSHARED);
    if files.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        };
    }
    let text: String = files.iter().map(|f| format!("{f}\n")).collect();
    gitcache_storage::fs::replace_file(&path, text.as_bytes())
}

/// Check a file taken from the store against the pack `stem` that names it, as git's own
/// formats allow: a pack's checksum over its content is its name; an index, reverse index
/// and bitmap carry their own checksum and the pack's; tips are object ids. A file that
/// fails is not the pack's (bit rot, a foreign writer) and is not placed.
fn verify(path: &Path, ext: &str, stem: &str, format: HashKind) -> std::io::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let len = format.len_in_bytes() as u64;
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let pack_id = stem.strip_prefix("pack-").unwrap_or_default();
    if ext == "tips" {
        if size > gitcache_pack::MAX_TIPS_FILE_BYTES {
            return Ok(false);
        }
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() {
            return Ok(false);
        }
        return Ok(text
            .lines()
            .all(|l| l.len() == format.len_in_hex() && ObjectId::from_hex(l.as_bytes()).is_ok()));
    }
    // Where the pack's checksum is: the end of a pack; before the own checksum at the end of
    // an index or reverse index; in a bitmap's header (after magic, version, flags, count).
    let pack_at = match ext {
        "pack" => size.checked_sub(len),
        "idx" | "rev" => size.checked_sub(2 * len),
        "bitmap" => Some(12),
        _ => return Ok(false),
    };
    let Some(pack_at) = pack_at.filter(|at| size >= 12 + len && at + len <= size) else {
        return Ok(false);
    };
    file.seek(SeekFrom::Start(pack_at))?;
    let mut named = vec![0; len as usize];
    file.read_exact(&mut named)?;
    if hex(&named) != pack_id {
        return Ok(false);
    }
    // Every file's last bytes are the checksum of all before them, hashed as ingesting and
    // writing them hash it (a pack taken in here is not refused on hydrating it).
    let digest = crate::ingest::checksum_of_file(&mut file, size - len, format)?;
    let mut trailer = vec![0; len as usize];
    file.read_exact(&mut trailer)?;
    Ok(digest.as_bytes() == trailer.as_slice())
}

/// How far the clocks of instances and the store may disagree: added to the grace period
/// wherever one instance's clock stamped what another's measures (unnamed files, retired
/// packs), and what a purge leaves to it rather than deleting at once.
const CLOCK_MARGIN: Duration = Duration::from_secs(300);

impl Shared {
    /// Mirrors in `store`; retired packs are deleted `grace` after they were dropped (and
    /// five minutes more for the clocks of instances and the store to disagree, unless `grace`
    /// is zero).
    pub fn new(store: AnyStore, grace: Duration) -> Self {
        Shared {
            store,
            grace,
            bundles: false,
            bundles_seen: Default::default(),
            failed: Default::default(),
            tombstones: Default::default(),
        }
    }

    /// Also keep a git bundle of each consolidated pack in the store ([`bundle`]), for
    /// git's `bundle-uri`.
    ///
    /// [`bundle`]: Self::bundle
    pub fn with_bundles(mut self, on: bool) -> Self {
        self.bundles = on;
        self
    }

    /// Whether bundles are kept.
    pub fn bundles(&self) -> bool {
        self.bundles
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

    /// The manifest of `key` as stored, and its version, if there is one (not decoded).
    async fn read_raw(&self, key: &RepoKey) -> Result<Option<(Vec<u8>, Version)>, Error> {
        let manifest_key = Self::manifest_key(key)?;
        Ok(self
            .store
            .read_manifest(&manifest_key)
            .await?
            .map(|read| (read.bytes, read.version)))
    }

    /// The manifest of `key` and its version, if there is one.
    pub async fn read(&self, key: &RepoKey) -> Result<Option<(MirrorManifest, Version)>, Error> {
        match self.read_raw(key).await? {
            Some((bytes, version)) => Ok(Some((MirrorManifest::decode(&bytes)?, version))),
            None => Ok(None),
        }
    }

    /// Bring the local copy at `git_dir` (a mirror, or nothing yet) to `key`'s manifest in the
    /// store. Call with no refresh of the mirror under way (the registry's lock). A copy
    /// that holds the manifest's version already costs one request without a body.
    pub async fn hydrate(&self, key: &RepoKey, git_dir: &Path) -> Result<Hydrated, Error> {
        self.hydrate_noting(key, git_dir, || {}).await
    }

    /// Whether the store's manifest of `key` is a tombstone the copy at `git_dir` has not
    /// taken (a purge on another instance): what [`hydrate`](Self::hydrate) finds as
    /// [`Hydrated::Removed`], with nothing else downloaded.
    pub async fn removed(&self, key: &RepoKey, git_dir: &Path) -> Result<bool, Error> {
        let copy = git_dir.join("HEAD").is_file();
        let held = local_version(git_dir).filter(|_| copy);
        if !copy
            || self
                .store
                .manifest_version(&Self::manifest_key(key)?)
                .await?
                == held
        {
            return Ok(false);
        }
        let Some((manifest, version)) = self.read(key).await? else {
            return Ok(false);
        };
        let stale = match manifest.removed {
            true => held.is_some() || self.older_than_removal(key, git_dir, &manifest, &version),
            false => held.is_some() && local_removals(git_dir) < manifest.removals,
        };
        if manifest.removed {
            self.note_tombstone(key, &version, !stale);
        }
        Ok(stale)
    }

    /// Remember the tombstone `version` of `key`, and whether no copy made before it is left
    /// here (`gone`).
    fn note_tombstone(&self, key: &RepoKey, version: &Version, gone: bool) {
        let mut tombstones = self.tombstones.lock().unwrap_or_else(|p| p.into_inner());
        if tombstones.len() >= FAILED_MOST && !tombstones.contains_key(key) {
            tombstones.clear();
        }
        tombstones.insert(key.clone(), (version.clone(), gone));
    }

    /// The local copy of `key` was dropped for the tombstone found last: a copy made here from
    /// now on is newer than that removal.
    pub fn copy_dropped(&self, key: &RepoKey) {
        if let Some((_, gone)) = self
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(key)
        {
            *gone = true;
        }
    }

    /// Whether the copy of `key` at `git_dir`, which took no state from the store, is older
    /// than the removal `tombstone` (at `version`): created before it by the clocks, unless
    /// it was made here after this instance found that tombstone with no older copy left.
    fn older_than_removal(
        &self,
        key: &RepoKey,
        git_dir: &Path,
        tombstone: &MirrorManifest,
        version: &Version,
    ) -> bool {
        let made_after = self
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|(found, gone)| found == version && *gone);
        !made_after && predates(git_dir, tombstone)
    }

    /// [`hydrate`](Self::hydrate), calling `taking` once the store is found to hold a state
    /// of the mirror the local copy lacks, before that state is taken (downloaded).
    pub async fn hydrate_noting(
        &self,
        key: &RepoKey,
        git_dir: &Path,
        taking: impl FnOnce(),
    ) -> Result<Hydrated, Error> {
        let held = local_version(git_dir).filter(|_| git_dir.join("HEAD").is_file());
        // Files done without are tried again now and then (another instance may have written
        // them since, under the same manifest) though the version is the one held.
        let retry = retry_unshared(git_dir);
        if let Some(held) = &held
            && !retry
            && self
                .store
                .manifest_version(&Self::manifest_key(key)?)
                .await?
                == Some(held.clone())
        {
            return Ok(Hydrated::Current);
        }
        let Some((manifest, version)) = self.read(key).await? else {
            // No manifest is not a removal (that leaves a tombstone): a bucket emptied or
            // a prefix changed by mistake must not make every instance drop its copies.
            return Ok(Hydrated::Absent);
        };
        if held.as_ref() == Some(&version) {
            if retry {
                self.take_done_without(key, git_dir, &manifest).await?;
            }
            return Ok(Hydrated::Current);
        }
        if manifest.removed {
            // A copy taken from an earlier manifest, or one that took none and is older than
            // the removal, goes.
            let copy = git_dir.join("HEAD").is_file();
            let stale = held.is_some()
                || (copy && self.older_than_removal(key, git_dir, &manifest, &version));
            self.note_tombstone(key, &version, !stale);
            return Ok(if stale {
                Hydrated::Removed
            } else {
                Hydrated::Absent
            });
        }
        if held.is_some() && local_removals(git_dir) < manifest.removals {
            // Taken before a removal this state counts, which a new state was committed over
            // before this copy saw it: it goes, as at the tombstone.
            return Ok(Hydrated::Removed);
        }
        if let Some(ago) = self.failed_lately(key, &version) {
            return Err(Error::FailedLately(ago));
        }
        taking();
        let taken = self.take(key, git_dir, &manifest, &version).await;
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match &taken {
            // What the store lacks, or holds damaged, stays so until the manifest changes:
            // not downloaded again and again meanwhile (every file of every pack before it).
            Err(Error::Missing { .. } | Error::Mismatch { .. }) => {
                if failed.len() >= FAILED_MOST {
                    failed.retain(|_, (_, at)| at.elapsed() < FAILED_FOR);
                }
                if failed.len() < FAILED_MOST {
                    failed.insert(key.clone(), (version.clone(), std::time::Instant::now()));
                }
            }
            _ => {
                failed.remove(key);
            }
        }
        taken
    }

    /// How long ago taking `version` of `key`'s state failed, if within [`FAILED_FOR`].
    fn failed_lately(&self, key: &RepoKey, version: &Version) -> Option<Duration> {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let (at_version, at) = failed.get(key)?;
        (at_version == version && at.elapsed() < FAILED_FOR).then(|| at.elapsed())
    }

    /// Take `manifest` (at `version`) into the copy at `git_dir`: the files it lacks, then
    /// the refs, then the packs no longer named go.
    async fn take(
        &self,
        key: &RepoKey,
        git_dir: &Path,
        manifest: &MirrorManifest,
        version: &Version,
    ) -> Result<Hydrated, Error> {
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
        let started = std::time::Instant::now();
        let mut downloaded = 0u64;
        // Files placed by this hydration, by pack, and whether the pack was there before
        // (its index): a pack is closed only together with the others the manifest names,
        // so if one cannot be had, the packs placed go again, and of a pack that was there
        // only the files placed (the copy stays as it was, without packs whose history it
        // may lack).
        let mut placed: Vec<(&str, Vec<&str>, bool)> = Vec::new();
        // Those done without earlier and not written to the store since, if still named.
        let mut done_without: Vec<String> = unshared(git_dir)
            .into_iter()
            .filter(|file| manifest.names(file).is_some())
            .collect();
        // The indexes of new packs, checked, placed together once every file is in: a pack
        // is found by its index, and one found before the others could name history that
        // is not in place yet (a fetch judged a hit, then failing).
        let mut indexes: Vec<(PathBuf, PathBuf)> = Vec::new();
        for pack in &manifest.packs {
            let had = pack_dir.join(format!("{}.idx", pack.stem)).is_file();
            placed.push((&pack.stem, Vec::new(), had));
            for ext in pack.files.iter().copied() {
                let path = pack_dir.join(format!("{}.{ext}", pack.stem));
                if path.is_file() {
                    continue;
                }
                let got = self
                    .download_beside(key, &pack.stem, ext, &path, manifest.format)
                    .await
                    .and_then(|temp| match ext {
                        "idx" => {
                            indexes.push((temp, path.clone()));
                            Ok(())
                        }
                        _ => place(&temp, &path),
                    });
                if let Err(err) = got {
                    // A reverse index only spares readers ordering the pack by offset, and
                    // a pack without its bitmaps or tips is consolidated again by its
                    // maintenance: one the store lacks, or that is not the pack's, is done
                    // without (a store that fails is not: the hydration is tried again).
                    if matches!(ext, "rev" | "bitmap" | "tips")
                        && matches!(err, Error::Missing { .. } | Error::Mismatch { .. })
                    {
                        tracing::warn!(%err, ext, "going on without one of a pack's files");
                        let file = format!("{}.{ext}", pack.stem);
                        if !done_without.contains(&file) {
                            done_without.push(file);
                        }
                        continue;
                    }
                    for (temp, _) in &indexes {
                        let _ = std::fs::remove_file(temp);
                    }
                    unplace(&pack_dir, &placed);
                    return Err(err);
                }
                if let Some((_, exts, _)) = placed.last_mut() {
                    exts.push(ext);
                }
                done_without.retain(|file| *file != format!("{}.{ext}", pack.stem));
                let now = indexes
                    .last()
                    .filter(|(_, to)| *to == path)
                    .map_or(&path, |(t, _)| t);
                downloaded += std::fs::metadata(now).map_or(0, |m| m.len());
            }
        }
        for (at, (temp, path)) in indexes.iter().enumerate() {
            if let Err(err) = std::fs::rename(temp, path) {
                for (temp, _) in &indexes[at..] {
                    let _ = std::fs::remove_file(temp);
                }
                unplace(&pack_dir, &placed);
                return Err(err.into());
            }
        }
        gitcache_storage::fs::sync_dir(&pack_dir)?;
        let mut packed = b"# pack-refs with: peeled fully-peeled sorted \n".to_vec();
        packed.extend_from_slice(&manifest.refs);
        gitcache_storage::fs::replace_file_if_changed(&git_dir.join("packed-refs"), &packed)?;
        if let Some(head) = &manifest.head {
            let mut text = b"ref: ".to_vec();
            text.extend_from_slice(head);
            text.push(b'\n');
            gitcache_storage::fs::replace_file_if_changed(&git_dir.join("HEAD"), &text)?;
        }
        let named: Vec<&str> = manifest.packs.iter().map(|p| p.stem.as_str()).collect();
        for local in MirrorManifest::of_local(git_dir)?.packs {
            if !named.contains(&local.stem.as_str()) {
                crate::mirror::remove_pack(&pack_dir, &local.stem)?;
            }
        }
        set_unshared(git_dir, &done_without)?;
        set_local_version(git_dir, version, manifest.removals)?;
        tracing::info!(
            packs = manifest.packs.len(),
            downloaded,
            ms = started.elapsed().as_millis() as u64,
            "mirror taken from the shared store"
        );
        Ok(Hydrated::Current)
    }

    /// Download the files of the manifest (the one the copy at `git_dir` holds) that its
    /// hydration did without, if the store has them now; those it still lacks stay listed.
    async fn take_done_without(
        &self,
        key: &RepoKey,
        git_dir: &Path,
        manifest: &MirrorManifest,
    ) -> Result<(), Error> {
        let pack_dir = git_dir.join("objects").join("pack");
        let mut still = Vec::new();
        for file in unshared(git_dir) {
            let Some((stem, ext)) = manifest.names(&file) else {
                continue;
            };
            let path = pack_dir.join(&file);
            if path.is_file() {
                // Made again here: the next commit writes it to the store.
                still.push(file);
                continue;
            }
            if !pack_dir.join(format!("{stem}.idx")).is_file() {
                continue;
            }
            let got = self
                .download_beside(key, stem, ext, &path, manifest.format)
                .await;
            match got.and_then(|temp| place(&temp, &path)) {
                Ok(()) => {}
                Err(Error::Io(err)) => return Err(Error::Io(err)),
                Err(err) => {
                    tracing::debug!(%err, ext, "the store still lacks one of a pack's files");
                    still.push(file);
                }
            }
        }
        Ok(set_unshared(git_dir, &still)?)
    }

    /// Write again each of `written` (objects this commit wrote, from the files, at those
    /// wall-clock times) written longer than half the grace period ago: another instance's
    /// collection takes files no manifest names once they are older than the grace period
    /// (by the bucket's clock), and a commit held up that long (a paused or suspended
    /// process, a slow upload) must not name a file collected meanwhile, which no instance
    /// could then take. Written again, a file is new again, whether it was collected or not.
    async fn written_again_if_collected(
        &self,
        written: &[(ObjectKey, PathBuf, SystemTime)],
    ) -> Result<(), Error> {
        if self.grace.is_zero() {
            return Ok(());
        }
        for (object, path, at) in written {
            let age = SystemTime::now().duration_since(*at).unwrap_or_default();
            if age > self.grace / 2 {
                tracing::warn!(%object, "a file written long before its commit; writing it again");
                self.store.put_file(object, path).await?;
            }
        }
        Ok(())
    }

    /// After a commit, write again each of `written` the store no longer has: a commit held
    /// up (a paused process) between [`written_again_if_collected`](Self::written_again_if_collected)
    /// and the manifest's replacement, or a collection that listed a file before it was
    /// written again, may have taken one the manifest now names. The writer still has it;
    /// without this, no instance could take the manifest until its next commit.
    async fn restored_if_collected(
        &self,
        written: &[(ObjectKey, PathBuf, SystemTime)],
    ) -> Result<(), Error> {
        if self.grace.is_zero() {
            return Ok(());
        }
        for (object, path, _) in written {
            if self.store.size(object).await?.is_none() {
                tracing::warn!(%object, "a file the commit names was collected meanwhile; writing it again");
                self.store.put_file(object, path).await?;
            }
        }
        Ok(())
    }

    /// Download one file of a pack beside its place `path` and check it: the checked file,
    /// under a name swept as a leftover (`incoming-…`), for the caller to place ([`place`]).
    async fn download_beside(
        &self,
        key: &RepoKey,
        stem: &str,
        ext: &'static str,
        path: &Path,
        format: HashKind,
    ) -> Result<PathBuf, Error> {
        let object = Self::file_key(key, stem, ext)?;
        let temp = path.with_file_name(format!(
            "incoming-{}-hydrate-{stem}.{ext}",
            std::process::id()
        ));
        // Packs have no bound of their own (the disk budget and free-space floor apply);
        // tips are ids, read whole when checked.
        let limit = if ext == "tips" {
            gitcache_pack::MAX_TIPS_FILE_BYTES
        } else {
            u64::MAX
        };
        let placed = match self.store.get_file(&object, &temp, limit).await {
            Ok(true) => {
                let (checked, stem) = (temp.clone(), stem.to_owned());
                let verified =
                    tokio::task::spawn_blocking(move || verify(&checked, ext, &stem, format))
                        .await
                        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
                match verified {
                    Ok(true) => Ok(temp.clone()),
                    Ok(false) => Err(Error::Mismatch { key: object }),
                    Err(err) => Err(err.into()),
                }
            }
            Ok(false) => Err(Error::Missing { key: object }),
            // Over its bound: not a file gitcache writes for the pack.
            Err(StoreError::TooLarge { .. }) => Err(Error::Mismatch { key: object }),
            Err(err) => Err(err.into()),
        };
        if placed.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        placed
    }

    /// Commit the local copy at `git_dir` as `key`'s manifest: upload the pack files the
    /// current manifest does not name, then replace it if it is still the version the copy
    /// holds. Call with no refresh of the mirror under way, after [`hydrate`](Self::hydrate).
    ///
    /// A tombstone is replaced by a copy made after it (one that holds no earlier version);
    /// a manifest that cannot be read is replaced, with an error logged, so that one bad
    /// write does not cut every instance off for good.
    pub async fn publish(&self, key: &RepoKey, git_dir: &Path) -> Result<Published, Error> {
        let mut local = MirrorManifest::of_local(git_dir)?;
        if local.packs.len() > MAX_PACKS {
            return Err(invalid(format!(
                "{} packs are more than a manifest names; consolidate first",
                local.packs.len()
            )));
        }
        let held = local_version(git_dir);
        // Files named already but not in the store (see [`UNSHARED`]) that the copy has now.
        let unshared = unshared(git_dir);
        let rewritten = |stem: &str, ext: &str| unshared.contains(&format!("{stem}.{ext}"));
        let rewrites = local
            .packs
            .iter()
            .any(|p| p.files.iter().any(|ext| rewritten(&p.stem, ext)));
        // Whether only files made again differ from the manifest (not committed if none of
        // them can be shared).
        let mut unchanged = false;
        let (previous, expected) = match self.read_raw(key).await? {
            None => (None, None),
            Some((bytes, version)) => match MirrorManifest::decode(&bytes) {
                Err(err) => {
                    tracing::error!(%err, "the shared manifest is unreadable; replacing it");
                    (None, Some(version))
                }
                Ok(manifest) if manifest.removed => {
                    let stale = match &held {
                        Some(held) => *held != version,
                        None => self.older_than_removal(key, git_dir, &manifest, &version),
                    };
                    if stale {
                        // Taken before the removal, or made before it: it goes, it is not
                        // committed.
                        return Ok(Published::Conflict);
                    }
                    (Some(manifest), Some(version))
                }
                Ok(manifest) => {
                    if held.as_ref() != Some(&version) {
                        return Ok(Published::Conflict);
                    }
                    if manifest.same_state(&local) {
                        if !rewrites {
                            return Ok(Published::Done);
                        }
                        unchanged = true;
                    }
                    (Some(manifest), Some(version))
                }
            },
        };
        // Removals are counted on through every state after them.
        if let Some(previous) = &previous {
            local.removals = local.removals.max(previous.removals);
        }
        let started = std::time::Instant::now();
        let (mut uploaded, mut shared_again) = (0u64, 0usize);
        // What this commit wrote, and when, to see again before it names them.
        let mut written: Vec<(ObjectKey, PathBuf, SystemTime)> = Vec::new();
        for pack in &local.packs {
            // Files the current manifest names are in the store; every other one is written
            // (again, if a crash left it unnamed: that makes it new, so that collection,
            // which takes unnamed files older than the grace period, leaves it).
            let known = previous
                .as_ref()
                .and_then(|m| m.packs.iter().find(|p| p.stem == pack.stem))
                .map(|p| p.files.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|ext| !rewritten(&pack.stem, ext))
                .collect::<Vec<_>>();
            for ext in pack.files.iter().filter(|ext| !known.contains(ext)) {
                let path = git_dir
                    .join("objects")
                    .join("pack")
                    .join(format!("{}.{ext}", pack.stem));
                // A file made again replaces one every instance reads: checked first, and
                // left out if it fails (the manifest names it already).
                if rewritten(&pack.stem, ext) {
                    let (checked, stem, ext) = (path.clone(), pack.stem.clone(), *ext);
                    let sound = tokio::task::spawn_blocking(move || {
                        verify(&checked, ext, &stem, local.format)
                    })
                    .await
                    .map_err(|e| Error::Io(std::io::Error::other(e)))??;
                    if !sound {
                        // Removed, so that maintenance makes it again.
                        tracing::warn!(file = %path.display(), "a pack file made again fails its check; not shared");
                        std::fs::remove_file(&path)?;
                        continue;
                    }
                    shared_again += 1;
                }
                let object = Self::file_key(key, &pack.stem, ext)?;
                let at = SystemTime::now();
                self.store.put_file(&object, &path).await?;
                uploaded += std::fs::metadata(&path).map_or(0, |m| m.len());
                written.push((object, path, at));
            }
        }
        self.written_again_if_collected(&written).await?;
        if unchanged && shared_again == 0 {
            // Nothing to commit: the files made again failed their check and are gone.
            return Ok(Published::Done);
        }
        // Packs dropped now are retired; those retired longer than the grace period are
        // deleted once this manifest is committed. Their retirement was stamped by another
        // instance's clock: a period at all is kept that much longer, so that clocks that
        // disagree do not shorten it (as the collection of unnamed files does).
        let now = unix_now();
        let grace = if self.grace.is_zero() {
            0
        } else {
            (self.grace + CLOCK_MARGIN).as_secs()
        };
        let mut expired = Vec::new();
        if let Some(previous) = &previous {
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
        }
        cap_retired(&mut local.retired);
        let manifest_key = Self::manifest_key(key)?;
        match self
            .store
            .replace_manifest(&manifest_key, &local.encode(), expected.as_ref())
            .await?
        {
            Replaced::Done(version) => {
                set_local_version(git_dir, &version, local.removals)?;
                self.restored_if_collected(&written).await?;
                // What the copy lacks, the manifest no longer names. Left behind, the list
                // costs a file written again, no more.
                if let Err(err) = set_unshared(git_dir, &[]) {
                    tracing::warn!(%err, "clearing the list of files not in the store");
                }
                tracing::info!(
                    packs = local.packs.len(),
                    uploaded,
                    ms = started.elapsed().as_millis() as u64,
                    "mirror committed to the shared store"
                );
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
        for ext in ["idx", "pack", "rev", "bitmap", "tips", "bundle"] {
            self.store.delete(&Self::file_key(key, stem, ext)?).await?;
        }
        Ok(())
    }

    /// Write a git bundle of the consolidated pack of `key`'s manifest (a pack the local copy
    /// at `git_dir` holds with its tips: the closure of its refs, so a bundle needing nothing
    /// else) into the store beside the pack, unless it is there already: the branches and
    /// tags whose objects the pack holds, then the pack's bytes, uploaded straight from the
    /// pack file. Returns the bundled pack's stem; `None` when there is nothing to bundle.
    /// Safe beside refreshes and hydration: the pack file, once open, is read whole even if
    /// a newer state removes it meanwhile (its bundle then goes with it, as a retired or an
    /// unnamed file).
    pub async fn bundle(&self, key: &RepoKey, git_dir: &Path) -> Result<Option<String>, Error> {
        let Some((manifest, _)) = self.read(key).await? else {
            return Ok(None);
        };
        if manifest.removed {
            return Ok(None);
        }
        let pack_dir = git_dir.join("objects").join("pack");
        let Some(stem) = manifest
            .packs
            .iter()
            .find(|p| {
                p.files.contains(&"tips") && pack_dir.join(format!("{}.tips", p.stem)).is_file()
            })
            .map(|p| p.stem.clone())
        else {
            return Ok(None);
        };
        let object = Self::file_key(key, &stem, "bundle")?;
        if self.store.size(&object).await?.is_some() {
            self.seen(object, true);
            return Ok(Some(stem));
        }
        let (format, refs, tips) = (
            manifest.format,
            manifest.refs,
            pack_dir.join(format!("{stem}.tips")),
        );
        let header = tokio::task::spawn_blocking(move || bundle_header(format, &refs, &tips))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let Some((header, listed)) = header else {
            return Ok(None);
        };
        let pack = pack_dir.join(format!("{stem}.pack"));
        self.store.put_file_after(&object, &header, &pack).await?;
        self.seen(object, true);
        tracing::info!(
            refs = listed,
            "bundle of the mirror written to the shared store"
        );
        Ok(Some(stem))
    }

    /// A URL from which the bundle of the consolidated pack of the local copy at `git_dir`
    /// can be downloaded for `expires_in` (presigned), with the pack's stem; `None` when
    /// there is no such pack or bundle, or the store hands out no URLs (files on disk).
    /// Whether the bundle exists is asked of the store once per pack and remembered (a
    /// bundle exists from its whole upload until its pack is retired).
    pub async fn bundle_url(
        &self,
        key: &RepoKey,
        git_dir: &Path,
        expires_in: Duration,
    ) -> Result<Option<(String, String)>, Error> {
        let pack_dir = git_dir.join("objects").join("pack");
        let stem = tokio::task::spawn_blocking(move || consolidated_stem(&pack_dir))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let Some(stem) = stem else {
            return Ok(None);
        };
        let object = Self::file_key(key, &stem, "bundle")?;
        let known = self
            .bundles_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&object)
            .copied();
        let exists = match known {
            Some((exists, at)) if at.elapsed() < if exists { SEEN_FOR } else { MISSING_FOR } => {
                exists
            }
            _ => match self.store.size(&object).await {
                Ok(size) => {
                    self.seen(object.clone(), size.is_some());
                    size.is_some()
                }
                Err(err) => {
                    // Not asked again for a while: a store that does not answer must not
                    // hold every clone up for its timeout.
                    self.seen(object, false);
                    return Err(err.into());
                }
            },
        };
        if !exists {
            return Ok(None);
        }
        Ok(self
            .store
            .download_url(&object, expires_in)
            .await?
            .map(|url| (stem, url)))
    }

    /// Note whether the bundle `object` exists (it does once written here).
    fn seen(&self, object: ObjectKey, exists: bool) {
        let mut seen = self.bundles_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_SEEN {
            seen.clear();
        }
        seen.insert(object, (exists, std::time::Instant::now()));
    }

    /// Delete files under `key`'s packs that no manifest names (an upload cut short, a
    /// retired pack whose entry was lost) once older than the grace period. Returns how many.
    pub async fn collect(&self, key: &RepoKey) -> Result<usize, Error> {
        let Some((manifest, _)) = self.read(key).await? else {
            return Ok(0);
        };
        let cutoff = SystemTime::now()
            .checked_sub(self.grace + CLOCK_MARGIN)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.delete_unnamed(key, &manifest, cutoff).await
    }

    async fn delete_unnamed(
        &self,
        key: &RepoKey,
        manifest: &MirrorManifest,
        written_before: SystemTime,
    ) -> Result<usize, Error> {
        let listed = self.store.list(&Self::base(key)?.join("packs")?).await?;
        let mut deleted = 0;
        for object in listed {
            let name = object.key.as_str().rsplit('/').next().unwrap_or_default();
            let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
            let named = manifest.packs.iter().any(|p| p.stem == stem)
                || manifest.retired.iter().any(|(s, _)| s == stem);
            if !named && object.modified < written_before {
                self.store.delete(&object.key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Remove `key`'s mirror from the store (a purge): its manifest becomes a tombstone, so
    /// that instances holding a copy of it drop their copies, and a refresh that started
    /// from it cannot commit. Its packs are retired; those written well before now are
    /// deleted at once, the others by the next commit after the grace period.
    pub async fn remove(&self, key: &RepoKey) -> Result<(), Error> {
        self.remove_unless(key, None, false).await.map(drop)
    }

    /// [`remove`](Self::remove) `key`'s mirror if the store holds the state the copy at
    /// `git_dir` took, or none: for a copy found to hold another repository than the one its
    /// name means now. The tombstone's version (a tombstone found counts as written), or
    /// `None` and nothing written when the store holds another state (another instance
    /// committed since, which may be the new repository; or any state, when the copy took
    /// none): the copy is to be dropped and that state taken, and checked.
    pub async fn remove_taken(
        &self,
        key: &RepoKey,
        git_dir: &Path,
    ) -> Result<Option<Version>, Error> {
        let held = local_version(git_dir).filter(|_| git_dir.join("HEAD").is_file());
        self.remove_unless(key, held.as_ref(), true).await
    }

    /// Write `key`'s tombstone and note it (see [`copy_dropped`](Self::copy_dropped)); with
    /// `only_over_held`, only over the version `held` (or none). The tombstone's version,
    /// `None` when nothing was written.
    async fn remove_unless(
        &self,
        key: &RepoKey,
        held: Option<&Version>,
        only_over_held: bool,
    ) -> Result<Option<Version>, Error> {
        let started = SystemTime::now();
        let manifest_key = Self::manifest_key(key)?;
        for _ in 0..4 {
            let current = self.read_raw(key).await?;
            let previous = current
                .as_ref()
                .and_then(|(bytes, _)| MirrorManifest::decode(bytes).ok());
            if let Some((_, version)) = &current
                && previous.as_ref().is_some_and(|m| m.removed)
            {
                self.note_tombstone(key, version, false);
                return Ok(Some(version.clone()));
            }
            if only_over_held
                && let Some((_, version)) = &current
                && held != Some(version)
            {
                return Ok(None);
            }
            let now = unix_now();
            let removals = previous
                .as_ref()
                .map_or(0, |m| m.removals)
                .saturating_add(1);
            let mut retired: Vec<(String, u64)> = previous
                .iter()
                .flat_map(|m| {
                    m.retired
                        .iter()
                        .cloned()
                        .chain(m.packs.iter().map(|p| (p.stem.clone(), now)))
                })
                .collect();
            cap_retired(&mut retired);
            let tombstone = MirrorManifest {
                format: previous.as_ref().map_or(HashKind::Sha1, |m| m.format),
                head: None,
                packs: Vec::new(),
                retired,
                refs: Vec::new(),
                removed: true,
                removed_at: unix_now_ms(),
                removals,
            };
            let expected = current.map(|(_, version)| version);
            match self
                .store
                .replace_manifest(&manifest_key, &tombstone.encode(), expected.as_ref())
                .await?
            {
                Replaced::Done(version) => {
                    self.note_tombstone(key, &version, false);
                    let before = started
                        .checked_sub(CLOCK_MARGIN)
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    let unnamed = MirrorManifest {
                        retired: Vec::new(),
                        ..tombstone
                    };
                    self.delete_unnamed(key, &unnamed, before).await?;
                    return Ok(Some(version));
                }
                Replaced::Conflict => continue,
            }
        }
        Err(invalid("the manifest kept changing during the removal"))
    }
}

/// Keep at most [`MAX_PACKS`] retired packs, the most recent: the others are left to
/// collection (unnamed files older than the grace period).
fn cap_retired(retired: &mut Vec<(String, u64)>) {
    // Each pack once, at its latest retirement (the later deletion is the safe one).
    retired.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
    retired.dedup_by(|a, b| a.0 == b.0);
    retired.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    retired.truncate(MAX_PACKS);
    retired.sort();
}

/// The local copy's marker file name, for a crash's leftovers sweep and tests.
pub fn marker(git_dir: &Path) -> PathBuf {
    git_dir.join(MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitcache_storage::store::FsStore;

    /// A file a commit wrote longer than half the grace period ago (collected meanwhile,
    /// here) is written again before the commit names it; one written a moment ago is not.
    #[tokio::test]
    async fn a_file_collected_before_its_commit_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStore::new(dir.path().join("bucket"));
        let file = dir.path().join("pack-1.pack");
        std::fs::write(&file, b"pack bytes").unwrap();
        let object = ObjectKey::new("mirrors/h/o/r.git/packs/pack-1.pack").unwrap();
        let in_store = fs.path_of(&object);
        for (grace, wait, again) in [
            (Duration::from_millis(20), Duration::from_millis(30), true),
            (Duration::from_secs(3600), Duration::ZERO, false),
        ] {
            let shared = Shared::new(AnyStore::Fs(fs.clone()), grace);
            let at = SystemTime::now();
            shared.store.put_file(&object, &file).await.unwrap();
            // Collected by another instance while this commit was held up.
            std::fs::remove_file(&in_store).unwrap();
            tokio::time::sleep(wait).await;
            let written = [(object.clone(), file.clone(), at)];
            shared.written_again_if_collected(&written).await.unwrap();
            assert_eq!(in_store.is_file(), again, "grace {grace:?}");
        }
    }

    /// After a commit, a file it names that a collection took meanwhile is written again;
    /// one still there is left as it is.
    #[tokio::test]
    async fn a_file_collected_after_it_was_written_again_is_restored_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStore::new(dir.path().join("bucket"));
        let shared = Shared::new(AnyStore::Fs(fs.clone()), Duration::from_secs(3600));
        let (one, two) = (
            dir.path().join("pack-1.pack"),
            dir.path().join("pack-2.pack"),
        );
        std::fs::write(&one, b"pack one").unwrap();
        std::fs::write(&two, b"pack two").unwrap();
        let key = |n| ObjectKey::new(&format!("mirrors/h/o/r.git/packs/pack-{n}.pack")).unwrap();
        for (object, file) in [(key(1), &one), (key(2), &two)] {
            shared.store.put_file(&object, file).await.unwrap();
        }
        let kept = fs.path_of(&key(2));
        let before = std::fs::metadata(&kept).unwrap().modified().unwrap();
        // Collected between its writing again and the commit.
        std::fs::remove_file(fs.path_of(&key(1))).unwrap();
        let now = SystemTime::now();
        let written = [(key(1), one.clone(), now), (key(2), two.clone(), now)];
        shared.restored_if_collected(&written).await.unwrap();
        assert_eq!(std::fs::read(fs.path_of(&key(1))).unwrap(), b"pack one");
        assert_eq!(
            std::fs::metadata(&kept).unwrap().modified().unwrap(),
            before
        );
    }
}
