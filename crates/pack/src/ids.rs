//! Sets and maps of object ids, and how they hash them.
//!
//! An id of an object a repository holds is the hash of that object: hashing it by its own
//! first 8 bytes (as git does) spreads such ids as well as any hash would, at no cost, and
//! making many objects whose ids fall together takes a hash computation per try. The walks
//! put millions of ids through these sets; keying them cost a quarter of a walked answer's
//! time (see `benches/README.md`).
//!
//! An id that an object *names* (a commit's parent, a tree's entry) is any bytes its writer
//! chose until the repository's objects are checked (every named object found): a commit may
//! name 170,000 parents alike in their first 8 bytes, which would all fall into one bucket,
//! each insert comparing with all those before. A repository whose objects were not checked
//! (a copy of what a pack held as it arrived) is therefore answered inside an [`Unchecked`]
//! scope: the sets and maps of ids made on that thread meanwhile hash them under a secret
//! key.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use gix_hash::ObjectId;

/// A set of object ids (see the [module](self) for how they are hashed).
pub(crate) type OidSet = gix_hashtable::hash_set::HashSet<ObjectId, IdHashing>;
/// A map keyed by object ids (see the [module](self) for how they are hashed).
pub(crate) type OidMap<V> = gix_hashtable::hash_map::HashMap<ObjectId, V, IdHashing>;

thread_local! {
    /// How many [`Unchecked`] scopes this thread is in.
    static UNCHECKED: Cell<usize> = const { Cell::new(0) };
}

/// While it is held, the sets and maps of ids made on this thread hash their ids under a
/// secret key: for answers from a repository whose objects were not checked. Not `Send`:
/// a thread started meanwhile enters a scope of its own ([`Unchecked::here`]).
#[derive(Debug)]
pub(crate) struct Unchecked {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Unchecked {
    /// Enter the scope (scopes nest).
    pub(crate) fn enter() -> Self {
        UNCHECKED.with(|depth| depth.set(depth.get() + 1));
        Unchecked {
            _not_send: std::marker::PhantomData,
        }
    }

    /// Whether this thread is in a scope: what a thread it starts is to enter.
    pub(crate) fn here() -> bool {
        UNCHECKED.with(Cell::get) > 0
    }
}

impl Drop for Unchecked {
    fn drop(&mut self) {
        UNCHECKED.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// How a set or map hashes ids: by their own first bytes, or (made in an [`Unchecked`]
/// scope) with `foldhash` under a key of its own.
#[derive(Clone)]
pub(crate) struct IdHashing(Option<foldhash::fast::SeedableRandomState>);

#[cfg(test)]
thread_local! {
    /// How many keyed sets and maps this thread made.
    static KEYED_MADE: Cell<usize> = const { Cell::new(0) };
}

impl IdHashing {
    /// Hashing under a secret key, wherever it is made.
    pub(crate) fn keyed() -> Self {
        #[cfg(test)]
        KEYED_MADE.with(|made| made.set(made.get() + 1));
        IdHashing(Some(keyed_state()))
    }

    /// Whether ids are hashed under a key.
    #[cfg(test)]
    pub(crate) fn is_keyed(&self) -> bool {
        self.0.is_some()
    }
}

impl Default for IdHashing {
    fn default() -> Self {
        if Unchecked::here() {
            IdHashing::keyed()
        } else {
            IdHashing(None)
        }
    }
}

impl std::fmt::Debug for IdHashing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "keyed" } else { "own" })
    }
}

impl BuildHasher for IdHashing {
    type Hasher = IdHasher;

    #[inline]
    fn build_hasher(&self) -> IdHasher {
        match &self.0 {
            None => IdHasher::Own(0),
            Some(state) => IdHasher::Keyed(state.build_hasher()),
        }
    }
}

/// The hasher of [`IdHashing`]: for ids, which hash themselves with one `write` of their
/// bytes (a key hashing itself with several writes would be hashed, by its bytes, by its last
/// alone).
pub(crate) enum IdHasher {
    /// The first 8 bytes written (fewer, padded with zeros).
    Own(u64),
    Keyed(foldhash::fast::FoldHasher<'static>),
}

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        match self {
            IdHasher::Own(hash) => {
                *hash = match bytes.first_chunk::<8>() {
                    Some(first) => u64::from_ne_bytes(*first),
                    None => {
                        let mut word = [0u8; 8];
                        word[..bytes.len()].copy_from_slice(bytes);
                        u64::from_ne_bytes(word)
                    }
                }
            }
            IdHasher::Keyed(keyed) => keyed.write(bytes),
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        match self {
            IdHasher::Own(hash) => *hash,
            IdHasher::Keyed(keyed) => keyed.finish(),
        }
    }
}

/// `foldhash` keyed from the operating system's randomness, as std's SipHash is: once per
/// process, and per set or map. (foldhash's own random state seeds itself from addresses
/// and the time.) foldhash does not claim to resist an attacker who measures how long many
/// chosen inputs take under the same key; one who writes a pack has one try at the sets
/// its answers make, each under a key of its own, and sees only how long the answer took.
/// std's SipHash, which claims that, made the reading of a first pack some 4% slower
/// (`benches/README.md`).
pub(crate) fn keyed_state() -> foldhash::fast::SeedableRandomState {
    static SHARED: std::sync::OnceLock<foldhash::SharedSeed> = std::sync::OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        foldhash::SharedSeed::from_u64(std::hash::RandomState::new().hash_one(0u64))
    });
    let own = std::hash::RandomState::new().hash_one(1u64);
    foldhash::fast::SeedableRandomState::with_seed(own, shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets made outside a scope hash an id by its first bytes; made inside one (nested, on
    /// this thread only), under a key that differs from set to set.
    #[test]
    fn sets_made_in_an_unchecked_scope_are_keyed() {
        let id = ObjectId::from_hex(b"ce013625030ba8dba906f756967f9e9ca394464a").unwrap();
        let own = OidSet::default();
        assert!(!own.hasher().is_keyed());
        assert_eq!(
            own.hasher().hash_one(id),
            u64::from_ne_bytes(id.as_bytes()[..8].try_into().unwrap())
        );
        {
            let _outer = Unchecked::enter();
            {
                let _inner = Unchecked::enter();
            }
            let (a, b) = (OidSet::default(), OidMap::<u8>::default());
            assert!(a.hasher().is_keyed() && b.hasher().is_keyed());
            let other: OidSet = std::thread::spawn(OidSet::default).join().unwrap();
            assert!(
                !other.hasher().is_keyed(),
                "another thread is not in the scope"
            );
            // Two keys alike would hash alike: 64 ids tell them apart.
            let ids = (0u8..64).map(|n| ObjectId::from_bytes_or_panic(&[n; 20]));
            assert!(
                ids.into_iter()
                    .any(|id| a.hasher().hash_one(id) != b.hasher().hash_one(id))
            );
        }
        assert!(!OidSet::default().hasher().is_keyed(), "the scope ended");
    }

    /// A plan on a repository opened unchecked, and the writing of its answer, make their
    /// sets keyed; on the same repository opened as checked, none; the answers are the same.
    /// The repository's tip has for parent a commit naming 2,000 parents it lacks, alike in
    /// their first 8 bytes: a fetch that has that commit, and a depth-1 clone of the tip.
    #[test]
    fn answers_from_an_unchecked_repository_key_their_sets() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("r.git");
        let git = |args: &[&str], input: &[u8]| {
            let mut child = std::process::Command::new("git")
                .args(args)
                .current_dir(&git_dir)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "git {args:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        std::fs::create_dir(&git_dir).unwrap();
        git(&["init", "-q", "--bare"], b"");
        let write = |kind: &str, content: &[u8]| {
            git(
                &["hash-object", "-w", "--literally", "-t", kind, "--stdin"],
                content,
            )
        };
        let who = "author A <a@example.com> 1700000000 +0000\ncommitter A <a@example.com> 1700000000 +0000\n";
        let blob = write("blob", b"content\n");
        let tree = {
            let mut t = b"100644 file\0".to_vec();
            t.extend_from_slice(ObjectId::from_hex(blob.as_bytes()).unwrap().as_bytes());
            write("tree", &t)
        };
        let mut crafted = format!("tree {tree}\n");
        for n in 0u32..2000 {
            crafted.push_str(&format!("parent 0707070707070707{:024x}\n", n));
        }
        crafted.push_str(who);
        crafted.push_str("\nmany parents\n");
        let crafted = write("commit", crafted.as_bytes());
        let tip = write(
            "commit",
            format!("tree {tree}\nparent {crafted}\n{who}\ntip\n").as_bytes(),
        );
        // Packed as listed, without a walk (which would stop at the parents it lacks).
        let listed = format!("{blob}\n{tree}\n{crafted}\n{tip}\n");
        git(
            &["pack-objects", "-q", "objects/pack/pack"],
            listed.as_bytes(),
        );
        git(&["update-ref", "refs/heads/main", &tip], b"");
        let id = |hex: &str| ObjectId::from_hex(hex.as_bytes()).unwrap();
        let fetch = |have: Option<&str>| gitcache_protocol::request::Fetch {
            wants: vec![id(&tip)],
            haves: have.into_iter().map(id).collect(),
            // Without the have, the tip alone: an answer that is written.
            deepen: have.is_none().then_some(1),
            done: true,
            ofs_delta: true,
            no_progress: true,
            ..Default::default()
        };
        let answer = |repo: &crate::Repository, fetch| {
            let before = KEYED_MADE.with(Cell::get);
            let planned = crate::plan(repo, &fetch, repo.object_format(), &Default::default());
            let planning = KEYED_MADE.with(Cell::get) - before;
            let mut out = Vec::new();
            let written = planned.map(|plan| plan.write_to(&mut out).map(|_| out));
            let writing = KEYED_MADE.with(Cell::get) - before - planning;
            (format!("{written:?}"), planning, writing)
        };
        let checked = crate::Repository::open(&git_dir).unwrap();
        let unchecked = crate::Repository::open_unchecked(&git_dir).unwrap();
        assert!(!checked.is_unchecked());
        assert!(unchecked.is_unchecked() && unchecked.reopen().unwrap().is_unchecked());
        // The have's parents are walked into, and found missing, either way.
        let (refused, planning, _) = answer(&checked, fetch(Some(&crafted)));
        assert_eq!(planning, 0);
        assert!(refused.contains("MissingObject"), "{refused}");
        let (same, planning, _) = answer(&unchecked, fetch(Some(&crafted)));
        assert!(planning > 0);
        assert_eq!(same, refused);
        // An answer planned and written.
        let (sent, planning, writing) = answer(&checked, fetch(None));
        assert_eq!((planning, writing), (0, 0));
        assert!(sent.starts_with("Ok(Ok("), "{sent}");
        let (same, planning, writing) = answer(&unchecked, fetch(None));
        assert!(planning > 0 && writing > 0, "{planning} {writing}");
        assert_eq!(same, sent);
    }

    /// Ids alike in their first bytes, named by an unchecked object, are spread by keyed
    /// sets: they do not all fall into one bucket.
    #[test]
    fn keyed_sets_spread_ids_alike_in_their_first_bytes() {
        let alike = |n: u32| {
            let mut bytes = [7u8; 20];
            bytes[16..].copy_from_slice(&n.to_be_bytes());
            ObjectId::from_bytes_or_panic(&bytes)
        };
        let own = OidSet::default();
        let _scope = Unchecked::enter();
        let keyed = OidSet::default();
        let hashes = |set: &OidSet| {
            (0..1000)
                .map(|n| set.hasher().hash_one(alike(n)))
                .collect::<std::collections::HashSet<u64>>()
                .len()
        };
        assert_eq!(hashes(&own), 1);
        assert_eq!(hashes(&keyed), 1000);
    }
}
