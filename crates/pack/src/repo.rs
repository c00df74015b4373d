//! A bare repository: its object database, its refs and its object format.

use std::path::{Path, PathBuf};

use bstr::{BStr, BString, ByteSlice};
use gix_hash::{Kind as HashKind, ObjectId};

use crate::Error;
use crate::objects::Objects;
use gitcache_protocol::ls_refs::{RefLine, matches_prefixes};
use gitcache_protocol::request::LsRefs;

/// Memory for decoded delta bases of the listed packs, per object handle (git's
/// `core.deltaBaseCacheLimit` is 96 MiB), and for what the object database reads beside them.
/// Measured on the 22,000-commit bench repository: 8 MiB made depth-1 fetches 4 MiB larger
/// (one handle per compression thread) and no request or bitmap write faster than 1; 512 KiB
/// took a depth-1 answer's peak from 26.1–26.6 MiB to 25.1–25.3 (git's: 25.5–25.8) at the same
/// speed, where 256 KiB made fetches without `thin-pack` (whose deltas are searched again)
/// a tenth slower. An object as large as the cache is not kept in it: a tree of 984 KiB with
/// 150 versions on chains of up to 50 deltas, cloned whole or fetched without `thin-pack`,
/// took the same time with 512 KiB as with 1 MiB.
const DELTA_BASE_CACHE_BYTES: usize = 1 << 19;
/// Bytes of trees a repository handle keeps between its answers (see [`crate::trees`]): the
/// directories of a tip of a 50 MB generated repository weigh 0.6 MB there. One answer keeps
/// at most a quarter of it, [`Repository::keep_head_trees`] half.
const TREE_CACHE_BYTES: usize = 4 << 20;
/// The same for the object database's reads of what the listed packs lack (loose objects, a
/// pack added since they were listed): held only when such objects are read.
const ODB_DELTA_BASE_CACHE_BYTES: usize = 1 << 20;
/// The same for walks over the whole history of a pack too large for its delta tree to be
/// read (whose trees the bitmap writer then reads along their delta chains): on the bench
/// repository, whose trees of thousands of entries are deltas of their newer versions, that
/// took 17 s with 1 MiB, 10 s with 64 MiB.
const LARGE_HISTORY_CACHE_BYTES: usize = 64 << 20;

/// One ref of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    /// Full name, e.g. `refs/heads/main` or `HEAD`.
    pub name: BString,
    /// What it points to after following symbolic refs; `None` if unborn.
    pub oid: Option<ObjectId>,
    /// For a symbolic ref, its direct target.
    pub symref_target: Option<BString>,
    /// What an annotated tag peels to, where the ref store records it (`packed-refs` does):
    /// known without reading the tag.
    pub peeled: Option<ObjectId>,
}

/// A bare repository opened for serving.
///
/// Cheap to share between threads (the object database is reference counted); every request
/// takes a handle of its own.
pub struct Repository {
    git_dir: PathBuf,
    hash: HashKind,
    store: std::sync::Arc<gix_odb::Store>,
    rev: std::sync::Arc<crate::packs::RevCache>,
    bitmaps: std::sync::Arc<crate::bitmap::BitmapCache>,
    indexes: crate::packs::IndexCache,
    /// The packs as last listed and their commit graphs (`None` before the first listing).
    listed: std::sync::Mutex<Option<Listed>>,
    /// Trees kept for its answers (see [`Repository::keep_head_trees`]).
    trees: std::sync::Arc<crate::trees::TreeCache>,
    /// Its objects were not checked (see [`Repository::open_unchecked`]).
    unchecked: bool,
}

/// What a listing of the packs found, kept for the object handles made after it.
#[derive(Clone)]
struct Listed {
    packs: std::sync::Arc<[crate::packs::StoredPack]>,
    graphs: crate::objects::Graphs,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("git_dir", &self.git_dir)
            .field("object_format", &self.hash)
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// Open the bare repository at `git_dir`.
    pub fn open(git_dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let git_dir = git_dir.into();
        let open_err = |message: String| Error::Open {
            path: git_dir.clone(),
            message,
        };
        let objects = git_dir.join("objects");
        if !objects.is_dir() {
            return Err(open_err("no objects directory".into()));
        }
        let config = std::fs::read(git_dir.join("config"))
            .map_err(|e| open_err(format!("reading config: {e}")))?;
        let hash = object_format_from_config(&config).map_err(open_err)?;
        let odb = gix_odb::at(objects, hash)
            .and_then(|h| h.into_arc())
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Repository {
            git_dir,
            hash,
            store: odb.store(),
            rev: Default::default(),
            bitmaps: Default::default(),
            indexes: Default::default(),
            listed: Default::default(),
            trees: std::sync::Arc::new(crate::trees::TreeCache::new(TREE_CACHE_BYTES)),
            unchecked: false,
        })
    }

    /// Open the bare repository at `git_dir`, whose objects were not checked: some may name
    /// objects it lacks (a copy of the objects a pack held as it arrived, its other objects
    /// still to come). An id such an object names is any bytes its writer chose: the sets
    /// and maps of ids this handle makes, and those its answers ([`crate::plan`] and the
    /// writing of a plan) and its walks ([`check_connected`](Self::check_connected),
    /// [`reached_by`](Self::reached_by), [`shares_history`](Self::shares_history),
    /// [`keep_head_trees`](Self::keep_head_trees)) make, hash them under a secret key, where
    /// those of a checked repository hash an id (the hash of an object there is) by its own
    /// first bytes.
    pub fn open_unchecked(git_dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let _keyed = crate::ids::Unchecked::enter();
        let mut repo = Repository::open(git_dir)?;
        repo.unchecked = true;
        Ok(repo)
    }

    /// Whether it was opened with [`open_unchecked`](Self::open_unchecked).
    pub fn is_unchecked(&self) -> bool {
        self.unchecked
    }

    /// A scope in which the sets and maps of ids made on this thread hash ids under a key,
    /// if this repository's objects were not checked.
    pub(crate) fn unchecked_scope(&self) -> Option<crate::ids::Unchecked> {
        self.unchecked.then(crate::ids::Unchecked::enter)
    }

    /// This handle, loading the packs' reverse indexes (`.rev` files) without reading their
    /// positions or checksum, as git does: for a process that answers one request and keeps
    /// nothing. Hashing the file of a pack of 4 million objects (16 MB) was a fifth of such
    /// a process answering a small fetch. A damaged file then makes that answer fail or be
    /// refused by the client; an entry copied as stored is at most its header, twice its
    /// stated content and 64 bytes, or is inflated to find that it ends where it is taken
    /// to. By default each file is read whole and checked when first loaded, once for the
    /// life of a handle and those [reopened](Self::reopen) from it (which trust as it does):
    /// a server keeps answers to send again. Bitmaps and commit graphs are written from
    /// checked files either way.
    pub fn trusting_reverse_indexes(self) -> Self {
        self.rev.trust();
        self
    }

    /// The repository opened again, as [`open`](Self::open) does, keeping what this handle
    /// read and made of the packs that are still there as it read them: their mapped
    /// indexes and files, commit graphs, reverse indexes with their tables and delta
    /// forests, and bitmaps; and the trees it keeps. Only new packs (and files written
    /// beside a pack since, or replaced) are read by the new handle, so its first answers are
    /// not slower than this one's were. For a server that opens a repository again when its
    /// packs change.
    pub fn reopen(&self) -> Result<Self, Error> {
        let mut fresh = match self.unchecked {
            true => Repository::open_unchecked(&self.git_dir)?,
            false => Repository::open(&self.git_dir)?,
        };
        if self.rev.trusting() {
            fresh.rev.trust();
        }
        if fresh.hash == self.hash {
            // A tree's content is its id's: what was read stays true in the new packs.
            fresh.trees = std::sync::Arc::clone(&self.trees);
            let packs = fresh.indexes.adopt(&self.indexes);
            fresh.rev.adopt(&self.rev, &packs);
            fresh
                .bitmaps
                .adopt(&self.bitmaps, &packs, fresh.rev.trusting());
        }
        Ok(fresh)
    }

    /// What this handle has read and made so far beyond what every answer reads, to make on
    /// another handle before answers ask for it ([`warm`](Self::warm)).
    pub fn warmth(&self) -> Warmth {
        Warmth {
            made: self.rev.made_any().unwrap_or_default(),
            names: self.bitmaps.read_any().1,
        }
    }

    /// Read and make now, for every pack, what answers need: its reverse index and bitmaps
    /// (nearly every answer but a whole pack sent as it is reads them), and what `like` names
    /// (the [`warmth`](Self::warmth) of the handle this one replaces: name hashes, tables of
    /// offsets and positions, delta forests, made for answers that make objects again, such
    /// as shallow clones). Packs taken from the handle before (see [`reopen`](Self::reopen))
    /// have most of it already. A server calls it in the background after maintenance
    /// replaced a repository's packs, so that the first answers after it are not the ones
    /// that pay for reading the new packs. Blocking: a delta forest reads every entry's
    /// header.
    pub fn warm(&self, like: Warmth) -> Result<(), Error> {
        for pack in self.stored_packs()? {
            let rev = self.rev.get(&pack, self.hash);
            if let Some(loaded) = self.bitmaps(&pack)
                && like.names
            {
                // A file whose names cannot be read fails the answers that need them, not
                // the warming of the other packs.
                let _ = loaded.bitmaps.names();
            }
            rev.make(&pack, self.hash, like.made);
        }
        Ok(())
    }

    /// What shallow clones (a CI fleet's usual fetch) read and make of this repository beyond
    /// what every answer reads, for [`warm`](Self::warm): the name hashes (4 bytes an
    /// object), and while its packs hold at most [`WARM_FOREST_MOST`] objects in all, their
    /// delta forests and the tables they are made with (20 bytes an object more, held while
    /// the handle is open; making one reads every entry's header). Packs that cannot be
    /// listed give the name hashes alone. Made during the first depth-1 clone instead, they
    /// cost it more than making them apart: on the 50 MB bench repository that answer took
    /// 57–60 ms on a handle that had made none of it, 46–49 ms on one that had (made in 7–8
    /// ms).
    pub fn shallow_clone_warmth(&self) -> Warmth {
        let objects: Option<u64> = self.stored_packs().ok().map(|packs| {
            packs
                .iter()
                .map(|pack| u64::from(pack.index.num_objects()))
                .sum()
        });
        let forest = objects.is_some_and(|objects| objects <= WARM_FOREST_MOST);
        Warmth {
            made: crate::packs::Made {
                positions: forest,
                offsets: forest,
                forest,
            },
            names: true,
        }
    }

    /// Read the directories of the commit `HEAD` names into the trees this handle keeps for
    /// its answers, the root first, then level by level: a shallow clone of it reads every
    /// one of them, and a fetch of it compares those it sends with the client's (reading them
    /// otherwise costs each its whole delta chain). Every tree read looks there first, and
    /// each answer keeps the first it reads otherwise, up to a quarter of the bound (a walk
    /// reads its wants' directories first). The trees are handed on by
    /// [`reopen`](Self::reopen) and let go of by
    /// [`forget_kept_trees`](Self::forget_kept_trees). At most half of the bound is read here. Returns how many trees were read or found kept; none without a `HEAD`
    /// naming a commit. Blocking: a directory deep in a delta chain is read through all of it.
    pub fn keep_head_trees(&self) -> Result<usize, Error> {
        let _keyed = self.unchecked_scope();
        let Some(head) = self.find_ref("HEAD")?.and_then(|r| r.oid) else {
            return Ok(0);
        };
        // Listed, so that the trees are read through the pack's own chain reader.
        self.stored_packs()?;
        let mut objects = self.objects();
        objects.keep_trees(std::sync::Arc::clone(&self.trees), TREE_CACHE_BYTES / 2);
        let (commit, kind) = objects.peel(&head)?;
        if kind != gix_object::Kind::Commit {
            return Ok(0);
        }
        let mut queue = std::collections::VecDeque::from([objects.commit(&commit)?.tree]);
        let mut seen = crate::OidSet::default();
        let (mut read, mut bytes) = (0, 0);
        while let Some(tree) = queue.pop_front() {
            if bytes >= TREE_CACHE_BYTES / 2 {
                break;
            }
            if !seen.insert(tree) {
                continue;
            }
            let named = objects.named_tree(&tree)?;
            read += 1;
            bytes += crate::trees::weight(named.content().len());
            queue.extend(
                (named.entries.iter())
                    .filter(|entry| entry.kind == crate::objects::EntryKind::Tree)
                    .map(|entry| entry.oid),
            );
        }
        Ok(read)
    }

    /// What this handle keeps of the trees its answers read (see
    /// [`keep_head_trees`](Self::keep_head_trees)), and how often reads took them from there.
    pub fn kept_trees(&self) -> crate::KeptTrees {
        self.trees.kept()
    }

    /// Let go of the trees this handle keeps (a server's handle gone idle: they are read
    /// again when next needed).
    pub fn forget_kept_trees(&self) {
        self.trees.clear();
    }

    /// [`warm`](Self::warm) like `before` was.
    pub fn warm_like(&self, before: &Repository) -> Result<(), Error> {
        self.warm(before.warmth())
    }

    /// The repository's folder.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// SHA-1 or SHA-256.
    pub fn object_format(&self) -> HashKind {
        self.hash
    }

    /// The packs of `objects/pack` that have both an index and a data file.
    pub(crate) fn stored_packs(&self) -> Result<Vec<crate::packs::StoredPack>, Error> {
        let packs = crate::packs::list(&self.git_dir, self.hash, &self.indexes)?;
        *self.listed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Listed {
            packs: packs.clone().into(),
            graphs: graphs_of(&packs),
        });
        Ok(packs)
    }

    /// The packs as last listed and their graphs (listed now if never before).
    fn listed(&self) -> Option<Listed> {
        let last = || {
            self.listed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        last().or_else(|| {
            // A listing that fails leaves objects to the object database, commits to be read
            // from the objects.
            let _ = self.stored_packs();
            last()
        })
    }

    /// The commit graphs of the packs as last listed.
    fn graphs(&self) -> crate::objects::Graphs {
        self.listed()
            .map_or_else(|| std::sync::Arc::from([]), |listed| listed.graphs)
    }

    /// The packs as last listed.
    pub(crate) fn listed_packs(&self) -> std::sync::Arc<[crate::packs::StoredPack]> {
        self.listed()
            .map_or_else(|| std::sync::Arc::from([]), |listed| listed.packs)
    }

    pub(crate) fn rev_cache(&self) -> std::sync::Arc<crate::packs::RevCache> {
        std::sync::Arc::clone(&self.rev)
    }

    /// The bitmaps of the repository's packs, each read when first asked for.
    pub(crate) fn bitmap_cache(&self) -> std::sync::Arc<crate::bitmap::BitmapCache> {
        std::sync::Arc::clone(&self.bitmaps)
    }

    /// The bitmaps of `pack`, read once per repository handle.
    pub(crate) fn bitmaps(
        &self,
        pack: &crate::packs::StoredPack,
    ) -> Option<std::sync::Arc<crate::bitmap::Loaded>> {
        self.bitmaps.get(pack, &self.rev, self.hash)
    }

    pub(crate) fn objects(&self) -> Objects {
        let mut objects = new_objects(&self.store, self.hash, self.listed_packs());
        objects.set_graphs(self.graphs());
        objects.keep_trees(std::sync::Arc::clone(&self.trees), TREE_CACHE_BYTES / 4);
        objects
    }

    /// An object handle for a walk of the whole history of a large pack (writing bitmaps
    /// without the pack's delta tree): its delta-base cache holds many recent trees.
    pub(crate) fn objects_for_history(&self) -> Objects {
        let mut objects = objects_caching(
            &self.store,
            self.hash,
            self.listed_packs(),
            LARGE_HISTORY_CACHE_BYTES,
        );
        objects.set_graphs(self.graphs());
        objects
    }

    /// A function that makes object handles reading commits from `graphs` and stopping once
    /// `cancel` says so, for threads of a request.
    pub(crate) fn objects_factory(
        &self,
        graphs: crate::objects::Graphs,
        cancel: crate::Cancel,
    ) -> impl Fn() -> Objects + Send + Sync + 'static {
        let (store, hash, packs) = (
            std::sync::Arc::clone(&self.store),
            self.hash,
            self.listed_packs(),
        );
        move || {
            let mut objects = new_objects(&store, hash, std::sync::Arc::clone(&packs));
            objects.set_graphs(std::sync::Arc::clone(&graphs));
            objects.set_cancel(cancel.clone());
            objects
        }
    }
}

/// The most objects a repository's packs may hold for [`Repository::shallow_clone_warmth`] to
/// name their delta forests: 20 MiB of them and their tables at most per handle.
pub const WARM_FOREST_MOST: u64 = 1 << 20;

/// What a repository handle read and made for its answers beyond what every answer reads
/// (see [`Repository::warmth`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Warmth {
    made: crate::packs::Made,
    names: bool,
}

impl Warmth {
    /// The name hashes of the bitmap files (4 bytes an object), which answers that compress
    /// objects again read to find them bases by path: shallow clones (a CI fleet's usual
    /// fetch) and fetches without `thin-pack`.
    pub fn name_hashes() -> Warmth {
        Warmth {
            made: crate::packs::Made::default(),
            names: true,
        }
    }
}

impl std::ops::BitOr for Warmth {
    type Output = Warmth;
    fn bitor(self, other: Warmth) -> Warmth {
        Warmth {
            made: self.made | other.made,
            names: self.names || other.names,
        }
    }
}

/// The commit graphs of `packs`, in their order.
pub(crate) fn graphs_of(packs: &[crate::packs::StoredPack]) -> crate::objects::Graphs {
    packs.iter().filter_map(|p| p.graph.clone()).collect()
}

/// An object handle that reads every commit from its object, for writing a commit graph.
pub(crate) fn objects_without_graphs(repo: &Repository) -> Objects {
    new_objects(&repo.store, repo.hash, repo.listed_packs())
}

fn new_objects(
    store: &std::sync::Arc<gix_odb::Store>,
    hash: HashKind,
    packs: std::sync::Arc<[crate::packs::StoredPack]>,
) -> Objects {
    objects_caching(store, hash, packs, DELTA_BASE_CACHE_BYTES)
}

/// An object handle reading `packs` first, whose delta-base cache for them holds up to
/// `cache_bytes`.
fn objects_caching(
    store: &std::sync::Arc<gix_odb::Store>,
    hash: HashKind,
    packs: std::sync::Arc<[crate::packs::StoredPack]>,
    cache_bytes: usize,
) -> Objects {
    {
        let mut odb = gix_odb::Cache::from(store.to_handle_arc());
        // For what the listed packs lack (loose objects, a pack added since): delta bases
        // stay decoded for a while there too, in the small cache of an ordinary handle.
        odb.set_pack_cache(move || {
            Box::new(gix_pack::cache::lru::MemoryCappedHashmap::new(
                ODB_DELTA_BASE_CACHE_BYTES,
            ))
        });
        // Pack ids must stay valid between looking an object up and reading its entry.
        odb.prevent_pack_unload();
        Objects::new(odb, hash, packs, cache_bytes)
    }
}

impl Repository {
    /// An object handle on the listed packs whose delta-base cache holds `cache_bytes`.
    #[cfg(test)]
    pub(crate) fn objects_caching(&self, cache_bytes: usize) -> Objects {
        let packs = std::sync::Arc::from(self.stored_packs().expect("packs listed"));
        objects_caching(&self.store, self.object_format(), packs, cache_bytes)
    }

    /// Whether the object database holds `oid`.
    pub fn contains(&self, oid: &ObjectId) -> bool {
        // A plain handle: an existence check needs no delta-base cache.
        gix_pack::Find::contains(&gix_odb::Cache::from(self.store.to_handle_arc()), oid)
    }

    /// The ref store, opened afresh so that every answer reflects the refs as they are now.
    fn ref_store(&self) -> gix_ref::file::Store {
        gix_ref::file::Store::at(self.git_dir.clone(), self.hash)
    }

    /// Every ref: `HEAD` first (if present), then the others sorted by name.
    pub fn refs(&self) -> Result<Vec<Ref>, Error> {
        let store = self.ref_store();
        let mut out = Vec::new();
        if let Some(head) = self.find_in(&store, "HEAD")? {
            out.push(head);
        }
        let platform = store.iter().map_err(Error::odb)?;
        for reference in platform.all().map_err(Error::odb)? {
            let reference = reference.map_err(Error::odb)?;
            let name: BString = reference.name.as_bstr().to_owned();
            let mut resolved = resolve(&store, name, reference.target)?;
            resolved.peeled = reference.peeled.filter(|p| Some(*p) != resolved.oid);
            out.push(resolved);
        }
        Ok(out)
    }

    /// The ref `name` (full name, or `HEAD`), following symbolic refs.
    pub fn find_ref(&self, name: &str) -> Result<Option<Ref>, Error> {
        self.find_in(&self.ref_store(), name)
    }

    /// Each of `names` as [`find_ref`](Self::find_ref) finds it, in order, as the iterator is
    /// taken, all from one ref store (a request may name 200,000 refs: each lookup on its own
    /// opened the store and mapped `packed-refs` again). Names as git's `want-ref` reads them:
    /// `HEAD` or a full name under `refs/`, exactly; any other (short, not UTF-8, or one git
    /// refuses) names no ref.
    pub fn find_refs<'a>(
        &'a self,
        names: &'a [BString],
    ) -> impl Iterator<Item = Result<Option<Ref>, Error>> + 'a {
        let store = self.ref_store();
        names.iter().map(move |name| {
            let Ok(name) = name.to_str() else {
                return Ok(None);
            };
            let full = name == "HEAD"
                || (name.starts_with("refs/") && gix_ref::FullName::try_from(name).is_ok());
            if !full {
                return Ok(None);
            }
            self.find_in(&store, name)
        })
    }

    /// The ref named exactly `name` in `store` (not one a short name would expand to).
    fn find_in(&self, store: &gix_ref::file::Store, name: &str) -> Result<Option<Ref>, Error> {
        let Some(reference) = store.try_find(name).map_err(Error::odb)? else {
            return Ok(None);
        };
        if reference.name.as_bstr() != name {
            return Ok(None);
        }
        let name: BString = reference.name.as_bstr().to_owned();
        resolve(store, name, reference.target).map(Some)
    }

    /// Answer `ls-refs` as git does: `HEAD` first, then every ref in name order, each kept if
    /// it matches a `ref-prefix`; symbolic targets, peeled tags and an unborn `HEAD` as asked.
    pub fn ls_refs(&self, args: &LsRefs) -> Result<Vec<RefLine>, Error> {
        let mut objects = self.objects();
        let mut lines = Vec::new();
        for r in self.refs()? {
            if !matches_prefixes(args, r.name.as_bstr()) {
                continue;
            }
            if r.oid.is_none() && !(args.unborn && r.name == "HEAD") {
                continue;
            }
            let peeled = match (args.peel, r.oid) {
                (true, Some(oid)) => Some(objects.peel(&oid)?.0).filter(|p| *p != oid),
                _ => None,
            };
            lines.push(RefLine {
                oid: r.oid,
                name: r.name,
                symref_target: if args.symrefs { r.symref_target } else { None },
                peeled,
            });
        }
        Ok(lines)
    }

    /// Expand a short ref name as git's `expand_ref` does: the first of `<name>`,
    /// `refs/<name>`, `refs/tags/<name>`, `refs/heads/<name>`, `refs/remotes/<name>`,
    /// `refs/remotes/<name>/HEAD` that exists. Returns every match (git calls more than one
    /// ambiguous). A name git refuses (`a..b`, control characters) expands to none.
    pub fn expand_ref(&self, short: &BStr) -> Result<Vec<(BString, ObjectId)>, Error> {
        self.expand_in(&self.ref_store(), short)
    }

    /// Each of `names` as [`expand_ref`](Self::expand_ref) expands it, in order, as the
    /// iterator is taken, all from one ref store (see [`find_refs`](Self::find_refs)).
    pub fn expand_refs<'a>(
        &'a self,
        names: &'a [BString],
    ) -> impl Iterator<Item = Result<Vec<(BString, ObjectId)>, Error>> + 'a {
        let store = self.ref_store();
        names
            .iter()
            .map(move |name| self.expand_in(&store, name.as_ref()))
    }

    /// [`expand_ref`](Self::expand_ref) in `store`.
    fn expand_in(
        &self,
        store: &gix_ref::file::Store,
        short: &BStr,
    ) -> Result<Vec<(BString, ObjectId)>, Error> {
        let short = short.to_str_lossy();
        let mut found: Vec<(BString, ObjectId)> = Vec::new();
        for pattern in [
            "{}",
            "refs/{}",
            "refs/tags/{}",
            "refs/heads/{}",
            "refs/remotes/{}",
            "refs/remotes/{}/HEAD",
        ] {
            // The name as given only counts where it names a ref or HEAD itself.
            if pattern == "{}" && !(short.starts_with("refs/") || short == "HEAD") {
                continue;
            }
            let full = pattern.replace("{}", &short);
            if full != "HEAD" && gix_ref::FullName::try_from(full.as_str()).is_err() {
                continue;
            }
            if let Some(r) = self.find_in(store, &full)?
                && let Some(oid) = r.oid
                && !found.iter().any(|(n, _)| *n == full)
            {
                found.push((full.into(), oid));
            }
        }
        Ok(found)
    }
}

/// Follow `target` through symbolic refs (a bounded chain) to an object.
fn resolve(
    store: &gix_ref::file::Store,
    name: BString,
    target: gix_ref::Target,
) -> Result<Ref, Error> {
    match target {
        gix_ref::Target::Object(oid) => Ok(Ref {
            name,
            oid: Some(oid),
            symref_target: None,
            peeled: None,
        }),
        gix_ref::Target::Symbolic(direct) => {
            let mut next: BString = direct.as_bstr().to_owned();
            let symref_target = Some(next.clone());
            // Follow a bounded chain of symbolic refs.
            for _ in 0..5 {
                match store.try_find(next.as_bstr()).map_err(Error::odb)? {
                    None => break,
                    Some(r) => match r.target {
                        gix_ref::Target::Object(oid) => {
                            return Ok(Ref {
                                name,
                                oid: Some(oid),
                                symref_target,
                                peeled: None,
                            });
                        }
                        gix_ref::Target::Symbolic(n) => next = n.as_bstr().to_owned(),
                    },
                }
            }
            Ok(Ref {
                name,
                oid: None,
                symref_target,
                peeled: None,
            })
        }
    }
}

/// Read `extensions.objectformat` from a git config file (SHA-1 when absent).
pub(crate) fn object_format_from_config(config: &[u8]) -> Result<HashKind, String> {
    let mut section = String::new();
    for raw in config.lines() {
        let line = raw.trim();
        if line.starts_with(b"[") {
            let end = line.find_byte(b']').unwrap_or(line.len());
            section = line[1..end].to_str_lossy().trim().to_ascii_lowercase();
            continue;
        }
        if section != "extensions" {
            continue;
        }
        let Some(eq) = line.find_byte(b'=') else {
            continue;
        };
        if line[..eq].trim().eq_ignore_ascii_case(b"objectformat") {
            let value = line[eq + 1..].trim().to_str_lossy().to_ascii_lowercase();
            return match value.as_str() {
                "sha1" => Ok(HashKind::Sha1),
                "sha256" => Ok(HashKind::Sha256),
                other => Err(format!("unknown object format '{other}'")),
            };
        }
    }
    Ok(HashKind::Sha1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_is_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Repository>();
        fn assert_send<T: Send>() {}
        assert_send::<crate::Plan>();
    }

    #[test]
    fn object_format_is_read_from_extensions() {
        let sha256 =
            b"[core]\n\trepositoryformatversion = 1\n[extensions]\n\tobjectFormat = sha256\n";
        assert_eq!(object_format_from_config(sha256), Ok(HashKind::Sha256));
        assert_eq!(
            object_format_from_config(b"[core]\n\tbare = true\n"),
            Ok(HashKind::Sha1)
        );
        assert!(object_format_from_config(b"[extensions]\nobjectformat = md5\n").is_err());
    }

    /// Refs looked up together are those looked up one by one, as git's `want-ref` reads
    /// them: a loose ref over its packed value, `HEAD` through its target, exact full names
    /// only (a short name, one git refuses, one not UTF-8, or none there names no ref).
    #[test]
    fn refs_found_together_are_those_found_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.git");
        gitcache_testkit::repo::generate(&path, &gitcache_testkit::repo::RepoSpec::tiny(31))
            .unwrap();
        let git = |args: &[&str]| gitcache_testkit::git::git_stdout(&path, args);
        let packed = git(&["rev-parse", "main"]);
        git(&["pack-refs", "--all"]);
        git(&["update-ref", "refs/heads/main", "main~1"]);
        let loose = git(&["rev-parse", "main"]);
        assert_ne!(packed, loose);
        let repo = Repository::open(&path).unwrap();
        let names: Vec<BString> = [
            &b"HEAD"[..],
            b"refs/heads/main",
            b"main",
            b"heads/main",
            b"refs/heads/none",
            b"refs/heads/a..b",
            b"refs/heads/\xff",
        ]
        .iter()
        .map(|n| BString::from(*n))
        .collect();
        let found: Vec<Option<(Option<ObjectId>, Option<BString>)>> = (repo.find_refs(&names))
            .map(|r| r.unwrap().map(|r| (r.oid, r.symref_target)))
            .collect();
        let main = ObjectId::from_hex(loose.trim().as_bytes()).unwrap();
        assert_eq!(
            found,
            [
                Some((Some(main), Some("refs/heads/main".into()))),
                Some((Some(main), None)),
                None,
                None,
                None,
                None,
                None,
            ]
        );
        // One by one, the same.
        for (name, found) in names.iter().zip(&found) {
            let alone = name
                .to_str()
                .ok()
                .filter(|n| *n == "HEAD" || n.starts_with("refs/heads/m"))
                .and_then(|n| repo.find_ref(n).unwrap());
            assert_eq!(
                alone.map(|r| (r.oid, r.symref_target)).as_ref(),
                found.as_ref(),
                "{name}"
            );
        }
        // Taken one at a time: nothing is looked up past what is taken.
        assert_eq!(repo.find_refs(&names).take(2).count(), 2);
    }
}
