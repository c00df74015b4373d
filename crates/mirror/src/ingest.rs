//! Taking a pack received from upstream into a mirror: index and verify it, then move it into
//! place so that readers only ever see complete packs.
//!
//! The pack is written and indexed in a staging folder inside `objects/pack` (same file system,
//! so the final moves are renames). The data file is moved first and the index last: git and
//! gitoxide find packs through their index, so a pack is visible only once both are in place.
//! Any failure — a truncated, corrupt or hostile pack, a full disk — removes the staging
//! folder and leaves the mirror exactly as it was.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix_hash::{Kind as HashKind, ObjectId};

/// The largest single allocation a received pack may cause. A pack header can claim any
/// object count, and indexing sizes its tables by it: a hostile upstream could otherwise make
/// us allocate tens of gigabytes. 2 GiB admits about 26 million objects.
pub const MAX_ALLOCATION: usize = 2 << 30;

/// A pack now part of the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The pack's checksum, which names its files.
    pub checksum: ObjectId,
    /// `objects/pack/pack-<checksum>.pack`.
    pub pack: PathBuf,
    /// `objects/pack/pack-<checksum>.idx`.
    pub index: PathBuf,
    /// Objects in the pack, bases added to complete a thin pack included.
    pub objects: u32,
    /// Whether this call moved the pack into place (`false`: the repository had the very
    /// same pack already, which must then not be removed on its account).
    pub fresh: bool,
}

/// Why a received pack was not taken in.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a valid pack (truncated, corrupt, wrong checksum, unresolvable delta).
    #[error("invalid pack from upstream: {message}")]
    InvalidPack {
        /// What gitoxide found wrong.
        message: String,
    },
    /// The mirror's folders could not be written.
    #[error("cannot store the pack: {0}")]
    Io(#[from] std::io::Error),
    /// The check run on the indexed pack refused it (its history is not whole).
    #[error("the pack was refused: {0}")]
    Refused(gitcache_pack::Error),
}

impl Error {
    /// Whether the upstream sent something unusable (rather than a local failure).
    pub fn is_upstream_fault(&self) -> bool {
        matches!(self, Error::InvalidPack { .. } | Error::Refused(_))
    }
}

/// Removes the staging folder unless disarmed.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Index, verify and move into place the pack read from `pack`, into the bare repository at
/// `git_dir` whose objects are `hash`. Thin packs are completed with bases from the repository.
///
/// Ask upstream for `ofs-delta`: a ref-delta whose base the repository already has is
/// completed with a copy of that base even when the base is also in the pack.
pub fn ingest_pack(
    git_dir: &Path,
    hash: HashKind,
    pack: &mut dyn BufRead,
) -> Result<Ingested, Error> {
    ingest_pack_checked(git_dir, hash, pack, &|_, _| Ok(()))
}

/// [`ingest_pack`], with `check` run on the indexed pack (its data and index files) while
/// it is still in the staging folder: a pack it refuses never becomes part of the mirror,
/// whatever happens after (a crash during the check leaves only a staging folder, which is
/// a crash's leftover).
pub fn ingest_pack_checked(
    git_dir: &Path,
    hash: HashKind,
    pack: &mut dyn BufRead,
    check: &dyn Fn(&Path, &Path) -> Result<(), gitcache_pack::Error>,
) -> Result<Ingested, Error> {
    let pack_dir = git_dir.join("objects").join("pack");
    std::fs::create_dir_all(&pack_dir)?;
    let staging_dir = pack_dir.join(format!("incoming-{}-{}", std::process::id(), unique()));
    std::fs::create_dir(&staging_dir)?;
    let mut staging = Staging(Some(staging_dir.clone()));

    let bases = gix_odb::at(git_dir.join("objects"), hash)?;
    let interrupt = AtomicBool::new(false);
    let outcome = gix_pack::Bundle::write_to_directory(
        pack,
        Some(&staging_dir),
        &mut gix_utils::progress::Discard,
        &interrupt,
        Some(bases),
        hash,
        gix_pack::bundle::write::Options {
            thread_limit: Some(2),
            iteration_mode: gix_pack::data::input::Mode::Verify,
            alloc_limit_bytes: Some(MAX_ALLOCATION),
            ..Default::default()
        },
    )
    .map_err(|err| Error::InvalidPack {
        message: err.to_string(),
    })?;
    let (Some(data), Some(index)) = (outcome.data_path, outcome.index_path) else {
        return Err(Error::InvalidPack {
            message: "no pack was written".into(),
        });
    };
    check(&data, &index).map_err(Error::Refused)?;
    let checksum = outcome.index.data_hash;
    let final_pack = pack_dir.join(format!("pack-{checksum}.pack"));
    let final_index = pack_dir.join(format!("pack-{checksum}.idx"));
    let fresh = !final_index.exists();
    if fresh {
        for file in [&data, &index] {
            std::fs::File::open(file)?.sync_all()?;
            let mut perms = std::fs::metadata(file)?.permissions();
            perms.set_readonly(true);
            std::fs::set_permissions(file, perms)?;
        }
        std::fs::rename(&data, &final_pack)?;
        std::fs::rename(&index, &final_index)?;
        gitcache_storage::fs::sync_dir(&pack_dir)?;
    }
    drop(staging.0.take().map(std::fs::remove_dir_all));
    Ok(Ingested {
        checksum,
        pack: final_pack,
        index: final_index,
        objects: outcome.index.num_objects,
        fresh,
    })
}

/// Remove what a crash left behind: staging folders, responses and temporaries in
/// `objects/pack` (unless `temporaries` is false: a writer of this process may be using one),
/// the files of a pack whose index is gone (a crash between moving a pack's data and its
/// index into place, or while a pack was removed), half-written temporaries of
/// `packed-refs` or `HEAD`, and what consolidation kept aside of the pack it replaced
/// (`objects/pack/replaced/`) once the consolidated pack has its bitmaps (with
/// `temporaries` only: no bitmap writer is reading it). Call with no ingestion of the
/// mirror under way (the registry holds its refresh lock). Files that vanish meanwhile are
/// no error.
pub fn remove_leftovers(git_dir: &Path, temporaries: bool) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut remove = |path: &Path, dir: bool| -> std::io::Result<()> {
        let result = if dir {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        Ok(())
    };
    let pack_dir = git_dir.join("objects").join("pack");
    let names: Vec<(String, bool)> = match std::fs::read_dir(&pack_dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| {
                let dir = e.file_type().is_ok_and(|t| t.is_dir());
                (e.file_name().to_string_lossy().into_owned(), dir)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let indexed: std::collections::HashSet<&str> = names
        .iter()
        .filter_map(|(n, _)| n.strip_suffix(".idx"))
        .collect();
    for (name, dir) in &names {
        let orphan = name.starts_with("pack-")
            && !name.ends_with(".idx")
            && name
                .rsplit_once('.')
                .is_some_and(|(stem, _)| !indexed.contains(stem));
        if orphan || (temporaries && name.starts_with("incoming-")) {
            remove(&pack_dir.join(name), *dir)?;
        }
    }
    // What consolidation kept aside of the pack it replaced, once the consolidated pack
    // (marked with its tips) has the bitmaps it was kept for.
    let has = |name: String| names.iter().any(|(n, _)| *n == name);
    if temporaries
        && has("replaced".to_owned())
        && indexed
            .iter()
            .any(|stem| has(format!("{stem}.tips")) && has(format!("{stem}.bitmap")))
    {
        remove(&pack_dir.join("replaced"), true)?;
    }
    if let Ok(entries) = std::fs::read_dir(git_dir) {
        for entry in entries {
            let entry = entry?;
            if gitcache_storage::fs::is_leftover_temp(&entry.file_name().to_string_lossy())
                && entry.file_type()?.is_file()
            {
                remove(&entry.path(), false)?;
            }
        }
    }
    Ok(removed)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(nanos) << 16) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}
