//! Commit graphs: each commit's tree, parents and committer time from a table, without
//! inflating the commit.
//!
//! The file is git's `commit-graph` (version 1: the chunks `OIDF`, `OIDL`, `CDAT` and, for
//! octopus merges, `EDGE`; generation numbers are topological levels), one per pack:
//! `pack-<checksum>.graph` holds the commits of that pack and is written with its bitmaps.
//! Copied to `objects/info/commit-graph`, git reads it and `git commit-graph verify`
//! checks it against the objects. A commit's entry depends only on the commit, which its id
//! names, so an entry stays true whatever else the repository holds. A load checks the
//! file's structure (chunk sizes, ids sorted and in their fanout buckets), reading a commit
//! checks its parents' positions and levels: a damaged or forged file is an error, never a
//! panic or a walk without end. Its checksum is checked by maintenance, not by loads (as
//! for bitmaps): a flipped bit that keeps the structure sound can give a wrong tree, time or
//! parent until the mirror is next opened and the file written again.

use std::path::Path;

use gix_hash::{Kind as HashKind, ObjectId};

use crate::Error;
use crate::objects::Commit;

const SIGNATURE: &[u8; 4] = b"CGPH";
const HEADER: usize = 8;
const CHUNK_ROW: usize = 12;
const FANOUT: [u8; 4] = *b"OIDF";
const OIDS: [u8; 4] = *b"OIDL";
const DATA: [u8; 4] = *b"CDAT";
const EDGES: [u8; 4] = *b"EDGE";
/// A parent field naming no parent.
const NO_PARENT: u32 = 0x7000_0000;
/// In the second parent field: the rest indexes the extra edges (an octopus merge); in an
/// extra edge: the last parent of its commit.
const HIGH_BIT: u32 = 0x8000_0000;
/// The largest topological level the 30 bits hold.
const MAX_LEVEL: u32 = 0x3FFF_FFFF;
/// Committer times are kept in 34 bits.
const TIME_LIMIT: i64 = 1 << 34;

/// A commit graph read in place.
pub(crate) struct Graph {
    bytes: Box<dyn std::ops::Deref<Target = [u8]> + Send + Sync>,
    hash: HashKind,
    len: u32,
    fanout: usize,
    oids: usize,
    data: usize,
    /// The extra edges: where, and how many.
    edges: (usize, usize),
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("commits", &self.len)
            .finish_non_exhaustive()
    }
}

fn hash_version(hash: HashKind) -> u8 {
    match hash {
        HashKind::Sha1 => 1,
        _ => 2,
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

impl Graph {
    /// Map and check the file at `path`, its checksum included (maintenance: the file read
    /// whole).
    pub(crate) fn open(path: &Path, hash: HashKind) -> Result<Graph, String> {
        let mapped = crate::mapped::Mapped::open(path).map_err(|e| e.to_string())?;
        Graph::parse(Box::new(mapped), hash)
    }

    /// Map the file at `path` for fetches: its structure checked, not its checksum (as for
    /// bitmaps and in git: hashing the file took a process answering one incremental fetch
    /// a third of its time at 500,000 commits). Maintenance checks the checksum when a
    /// mirror is opened and writes a damaged file again.
    pub(crate) fn load(path: &Path, hash: HashKind) -> Result<Graph, String> {
        let mapped = crate::mapped::Mapped::open(path).map_err(|e| e.to_string())?;
        let graph = Graph::parse_checked(Box::new(mapped.clone()), hash, false)?;
        // Checking the ids' order read all of them (10 MB at 500,000 commits): answers then
        // read only the pages they need.
        let _ = mapped.release();
        Ok(graph)
    }

    /// Check `bytes` as a commit graph of `hash` ids: its checksum, header, chunk table,
    /// that its chunks have the sizes its commit count gives them, and that its ids are
    /// sorted. Parents and levels are checked as each commit is read.
    pub(crate) fn parse(
        bytes: Box<dyn std::ops::Deref<Target = [u8]> + Send + Sync>,
        hash: HashKind,
    ) -> Result<Graph, String> {
        Graph::parse_checked(bytes, hash, true)
    }

    fn parse_checked(
        bytes: Box<dyn std::ops::Deref<Target = [u8]> + Send + Sync>,
        hash: HashKind,
        checksum: bool,
    ) -> Result<Graph, String> {
        let h = hash.len_in_bytes();
        let all: &[u8] = &bytes;
        if all.len() < HEADER + CHUNK_ROW + h {
            return Err("too short".into());
        }
        let (body, trailer) = all.split_at(all.len() - h);
        if checksum {
            // The file is gitcache's own: its checksum needs no collision detection.
            let mut hasher = crate::write::Checksum::new(hash);
            hasher.update(body);
            let sum = hasher.finish().map_err(|e| e.to_string())?;
            if sum.as_bytes() != trailer {
                return Err("checksum mismatch".into());
            }
        }
        if &body[..4] != SIGNATURE || body[4] != 1 {
            return Err("not a commit graph of version 1".into());
        }
        if body[5] != hash_version(hash) {
            return Err("another object format".into());
        }
        if body[7] != 0 {
            return Err("a graph split over several files".into());
        }
        let chunks = usize::from(body[6]);
        let table_end = HEADER + (chunks + 1) * CHUNK_ROW;
        if table_end > body.len() {
            return Err("chunk table past the end".into());
        }
        let row = |i: usize| {
            let at = HEADER + i * CHUNK_ROW;
            let id: [u8; 4] = body[at..at + 4].try_into().expect("four bytes");
            let offset = u64::from_be_bytes(body[at + 4..at + 12].try_into().expect("eight"));
            (id, offset)
        };
        let mut found = std::collections::HashMap::new();
        for i in 0..chunks {
            let ((id, start), (_, end)) = (row(i), row(i + 1));
            if start < table_end as u64 || start > end || end > body.len() as u64 {
                return Err("chunk out of place".into());
            }
            if found
                .insert(id, (start as usize, (end - start) as usize))
                .is_some()
            {
                return Err("a chunk twice".into());
            }
        }
        if row(chunks).0 != [0; 4] {
            return Err("chunk table not closed".into());
        }
        let chunk = |id: [u8; 4]| found.get(&id).copied();
        let (fanout, fanout_len) = chunk(FANOUT).ok_or("no fanout")?;
        if fanout_len != 256 * 4 {
            return Err("fanout of another size".into());
        }
        let mut last = 0;
        for i in 0..256 {
            let count = be32(body, fanout + 4 * i);
            if count < last {
                return Err("fanout decreases".into());
            }
            last = count;
        }
        let len = last;
        if len >= NO_PARENT {
            return Err("too many commits".into());
        }
        let n = len as usize;
        let (oids, oids_len) = chunk(OIDS).ok_or("no ids")?;
        let (data, data_len) = chunk(DATA).ok_or("no commit data")?;
        let sized = |size: usize, each: usize| n.checked_mul(each) == Some(size);
        if !sized(oids_len, h) || !sized(data_len, h + 16) {
            return Err("chunks of other sizes than the commit count".into());
        }
        let edges = match chunk(EDGES) {
            Some((at, size)) if size % 4 == 0 => (at, size / 4),
            Some(_) => return Err("extra edges of a partial size".into()),
            None => (0, 0),
        };
        let graph = Graph {
            bytes,
            hash,
            len,
            fanout,
            oids,
            data,
            edges,
        };
        // Sorted, each once, and in the fanout's bucket of its first byte: a lookup by id
        // finds every entry, and the one a parent position names (so a walk that enters the
        // graph's entries stays in them, its levels falling).
        // Compared by their first eight bytes, then whole where those are equal: 500,000 ids
        // compared whole were an eighth of a process answering an incremental fetch.
        let ids = &graph.bytes[graph.oids..graph.oids + n * h];
        let first_eight = |id: &[u8]| u64::from_be_bytes(id[..8].try_into().expect("eight bytes"));
        let pairs = ids.chunks_exact(h).zip(ids.chunks_exact(h).skip(1));
        for (position, (before, id)) in (1..).zip(pairs) {
            let (a, b) = (first_eight(before), first_eight(id));
            if a > b || (a == b && before >= id) {
                return Err(format!("ids out of order at {position}"));
            }
        }
        let mut start = 0;
        for byte in 0..256usize {
            let end = be32(&graph.bytes, graph.fanout + 4 * byte);
            for position in [start, end.wrapping_sub(1)] {
                if start < end && usize::from(graph.oid_bytes(position)[0]) != byte {
                    return Err(format!("id {position} outside its fanout bucket"));
                }
            }
            start = end;
        }
        Ok(graph)
    }

    /// Where the data of the commit at `position` starts: its tree id, then the two parent
    /// fields, then level and time.
    fn entry(&self, position: u32) -> usize {
        self.data + position as usize * (self.hash.len_in_bytes() + 16)
    }

    /// The topological level stored for the commit at `position`.
    fn level(&self, position: u32) -> u32 {
        be32(
            &self.bytes,
            self.entry(position) + self.hash.len_in_bytes() + 8,
        ) >> 2
    }

    /// Call `each` with the position of every parent of the commit at `position`, in order,
    /// each checked to be in the graph.
    fn parent_positions(
        &self,
        position: u32,
        mut each: impl FnMut(u32) -> Result<(), String>,
    ) -> Result<(), String> {
        let at = self.entry(position) + self.hash.len_in_bytes();
        let (first, second) = (be32(&self.bytes, at), be32(&self.bytes, at + 4));
        let mut push = |p: u32| {
            if p >= self.len {
                return Err(format!("parent position {p} past the graph"));
            }
            each(p)
        };
        if first != NO_PARENT {
            push(first)?;
        }
        if second == NO_PARENT {
            return Ok(());
        }
        if first == NO_PARENT {
            return Err("a second parent without a first".into());
        }
        if second & HIGH_BIT == 0 {
            return push(second);
        }
        let (edges, count) = self.edges;
        let mut i = (second & !HIGH_BIT) as usize;
        loop {
            if i >= count {
                return Err("extra edges past their chunk".into());
            }
            let edge = be32(&self.bytes, edges + 4 * i);
            push(edge & !HIGH_BIT)?;
            if edge & HIGH_BIT != 0 {
                return Ok(());
            }
            i += 1;
        }
    }

    /// Commits in the graph.
    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    fn oid_bytes(&self, position: u32) -> &[u8] {
        let h = self.hash.len_in_bytes();
        let at = self.oids + position as usize * h;
        &self.bytes[at..at + h]
    }

    /// The id at `position` (below [`len`](Self::len)).
    pub(crate) fn oid(&self, position: u32) -> ObjectId {
        ObjectId::from_bytes_or_panic(self.oid_bytes(position))
    }

    /// Where `oid` is in the graph, if it is.
    pub(crate) fn position(&self, oid: &ObjectId) -> Option<u32> {
        let first = usize::from(*oid.as_bytes().first()?);
        let end = be32(&self.bytes, self.fanout + 4 * first);
        let start = match first {
            0 => 0,
            _ => be32(&self.bytes, self.fanout + 4 * (first - 1)),
        };
        let (mut lo, mut hi) = (start, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.oid_bytes(mid).cmp(oid.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The commit at `position` (below [`len`](Self::len)): its tree, parents and time.
    pub(crate) fn commit(&self, position: u32) -> Result<Commit, String> {
        let h = self.hash.len_in_bytes();
        let at = self.entry(position);
        let entry = &self.bytes[at..at + h + 16];
        let tree = ObjectId::from_bytes_or_panic(&entry[..h]);
        let time = (i64::from(be32(entry, h + 8) & 3) << 32) | i64::from(be32(entry, h + 12));
        // Every parent below its child (git's invariant, checked as each commit is read, not
        // over the whole file at load): no walk of a forged file goes round in a circle.
        let level = self.level(position);
        if level == 0 || level >= MAX_LEVEL {
            return Err(format!("level {level}"));
        }
        let mut parents = Vec::new();
        self.parent_positions(position, |parent| {
            if self.level(parent) >= level {
                return Err(format!("a parent ({parent}) not below its child"));
            }
            parents.push(self.oid(parent));
            Ok(())
        })?;
        Ok(Commit {
            tree,
            parents,
            time,
        })
    }
}

/// Write the commit graph of `commits` to `path` (beside a pack, atomically). Returns
/// `false`, writing nothing, when git's format (as this module reads it) cannot hold them: a
/// parent that is not among them, a committer time outside 34 bits, a cycle, more commits
/// than positions or a history a billion commits deep.
pub(crate) fn write(
    path: &Path,
    hash: HashKind,
    mut commits: Vec<(ObjectId, Commit)>,
) -> Result<bool, Error> {
    commits.sort_unstable_by_key(|c| c.0);
    commits.dedup_by(|a, b| a.0 == b.0);
    let n = commits.len();
    if n as u64 >= u64::from(NO_PARENT)
        || commits
            .iter()
            .any(|(_, c)| !(0..TIME_LIMIT).contains(&c.time))
    {
        return Ok(false);
    }
    let find = |oid: &ObjectId| {
        commits
            .binary_search_by(|(o, _)| o.cmp(oid))
            .ok()
            .map(|p| p as u32)
    };
    // Parents by position, each commit's in order.
    let mut parents: Vec<Vec<u32>> = Vec::with_capacity(n);
    for (_, commit) in &commits {
        let Some(found) = commit
            .parents
            .iter()
            .map(find)
            .collect::<Option<Vec<u32>>>()
        else {
            return Ok(false);
        };
        parents.push(found);
    }
    let Some(levels) = levels(&parents).filter(|l| l.iter().all(|&l| l < MAX_LEVEL)) else {
        return Ok(false);
    };

    let h = hash.len_in_bytes();
    let mut edges: Vec<u32> = Vec::new();
    let mut data = Vec::with_capacity(n * (h + 16));
    for (i, (_, commit)) in commits.iter().enumerate() {
        data.extend_from_slice(commit.tree.as_bytes());
        let p = &parents[i];
        let first = p.first().copied().unwrap_or(NO_PARENT);
        let second = match p.len() {
            0 | 1 => NO_PARENT,
            2 => p[1],
            _ => {
                let at = edges.len() as u32 | HIGH_BIT;
                edges.extend_from_slice(&p[1..]);
                *edges.last_mut().expect("two or more") |= HIGH_BIT;
                at
            }
        };
        data.extend_from_slice(&first.to_be_bytes());
        data.extend_from_slice(&second.to_be_bytes());
        let time = commit.time as u64;
        data.extend_from_slice(&((levels[i] << 2) | (time >> 32) as u32).to_be_bytes());
        data.extend_from_slice(&(time as u32).to_be_bytes());
    }
    let mut fanout = [0u32; 256];
    for (oid, _) in &commits {
        fanout[usize::from(oid.as_bytes()[0])] += 1;
    }
    let mut total = 0;
    for count in &mut fanout {
        total += *count;
        *count = total;
    }

    let mut chunks: Vec<([u8; 4], Vec<u8>)> = vec![
        (
            FANOUT,
            fanout.iter().flat_map(|c| c.to_be_bytes()).collect(),
        ),
        (
            OIDS,
            commits
                .iter()
                .flat_map(|(o, _)| o.as_bytes().to_vec())
                .collect(),
        ),
        (DATA, data),
    ];
    if !edges.is_empty() {
        chunks.push((EDGES, edges.iter().flat_map(|e| e.to_be_bytes()).collect()));
    }
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.1.len()).sum::<usize>() + 4096);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&[1, hash_version(hash), chunks.len() as u8, 0]);
    let mut offset = (HEADER + (chunks.len() + 1) * CHUNK_ROW) as u64;
    for (id, bytes) in &chunks {
        out.extend_from_slice(id);
        out.extend_from_slice(&offset.to_be_bytes());
        offset += bytes.len() as u64;
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_be_bytes());
    for (_, bytes) in chunks {
        out.extend_from_slice(&bytes);
    }
    let mut hasher = crate::write::Checksum::new(hash);
    hasher.update(&out);
    out.extend_from_slice(hasher.finish()?.as_bytes());
    crate::packs::write_beside_pack(path, &out)?;
    Ok(true)
}

/// Each commit's topological level (1 for a root, one more than its highest parent's
/// otherwise; capped as git caps it), by a walk without recursion; `None` if parents make a
/// cycle.
fn levels(parents: &[Vec<u32>]) -> Option<Vec<u32>> {
    /// On the walk's current path.
    const VISITING: u32 = u32::MAX;
    let mut levels = vec![0u32; parents.len()];
    // Each commit on the path, and how many of its parents were looked at.
    let mut path: Vec<(u32, usize)> = Vec::new();
    for start in 0..parents.len() as u32 {
        if levels[start as usize] != 0 {
            continue;
        }
        levels[start as usize] = VISITING;
        path.push((start, 0));
        while let Some((top, next)) = path.last_mut() {
            let own = &parents[*top as usize];
            if let Some(&p) = own.get(*next) {
                *next += 1;
                match levels[p as usize] {
                    0 => {
                        levels[p as usize] = VISITING;
                        path.push((p, 0));
                    }
                    VISITING => return None,
                    _ => {}
                }
                continue;
            }
            let highest = own.iter().map(|&p| levels[p as usize]).max().unwrap_or(0);
            levels[*top as usize] = (highest + 1).min(MAX_LEVEL);
            path.pop();
        }
    }
    Some(levels)
}

#[cfg(test)]
mod tests {
    use super::{Graph, levels, write};
    use crate::Repository;
    use crate::objects::{Commit, parse_commit};
    use gitcache_testkit::git::git_stdout as git;
    use gix_hash::{Kind as HashKind, ObjectId};

    /// The bytes of chunk `id` of the commit graph `file`.
    fn chunk(file: &[u8], id: &[u8; 4]) -> Option<Vec<u8>> {
        let row = (0..usize::from(file[6])).find(|&i| &file[8 + 12 * i..12 + 12 * i] == id)?;
        let offset = |i: usize| get_u64(file, 8 + 12 * i + 4);
        Some(file[offset(row)..offset(row + 1)].to_vec())
    }

    fn get_u64(bytes: &[u8], at: usize) -> usize {
        u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()) as usize
    }

    /// A small generated repository with an octopus merge of three branches, in one pack;
    /// returns it and its pack file.
    fn repository(
        spec: gitcache_testkit::repo::RepoSpec,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.git");
        gitcache_testkit::repo::generate(&path, &spec).unwrap();
        let tree = git(&path, &["rev-parse", "main^{tree}"]);
        let octopus = git(
            &path,
            &[
                "commit-tree",
                tree.trim(),
                "-p",
                "main",
                "-p",
                "feature/1",
                "-p",
                "feature/2",
                "-p",
                "feature/3",
                "-m",
                "octopus",
            ],
        );
        git(&path, &["update-ref", "refs/heads/octopus", octopus.trim()]);
        git(&path, &["repack", "-adq"]);
        (dir, path)
    }

    fn pack_of(repo: &Repository) -> std::path::PathBuf {
        repo.stored_packs().unwrap()[0].pack.clone()
    }

    /// The file gitcache writes has git's ids, commit data and extra edges byte for byte,
    /// and `git commit-graph verify` accepts it in git's place; read back, every commit is
    /// what its object says.
    #[test]
    fn a_written_graph_is_gits_and_reads_as_the_objects() {
        use gitcache_testkit::repo::RepoSpec;
        for spec in [RepoSpec::small(41), RepoSpec::small(42).sha256()] {
            let hash = if spec.object_format == "sha1" {
                HashKind::Sha1
            } else {
                HashKind::Sha256
            };
            let (_dir, path) = repository(spec);
            git(
                &path,
                &["commit-graph", "write", "--reachable", "--no-progress"],
            );
            let theirs = std::fs::read(path.join("objects/info/commit-graph")).unwrap();
            let repo = Repository::open(&path).unwrap();
            let pack = pack_of(&repo);
            let written = repo.write_commit_graph(&pack).unwrap().expect("a graph");
            assert_eq!(written, pack.with_extension("graph"));
            let ours = std::fs::read(&written).unwrap();
            for id in [b"OIDF", b"OIDL", b"CDAT", b"EDGE"] {
                let (a, b) = (chunk(&ours, id), chunk(&theirs, id));
                assert!(a.is_some(), "{}", String::from_utf8_lossy(id));
                assert!(
                    a == b,
                    "chunk {} differs from git's",
                    String::from_utf8_lossy(id)
                );
            }
            std::fs::copy(&written, path.join("objects/info/commit-graph")).unwrap();
            git(&path, &["commit-graph", "verify", "--no-progress"]);

            let graph = Graph::open(&written, hash).unwrap();
            let listed = git(&path, &["rev-list", "--all"]);
            assert_eq!(graph.len() as usize, listed.lines().count());
            let mut objects = crate::repo::objects_without_graphs(&repo);
            let mut octopus = 0;
            for line in listed.lines() {
                let oid = ObjectId::from_hex(line.as_bytes()).unwrap();
                let position = graph.position(&oid).expect("every commit");
                assert_eq!(graph.oid(position), oid);
                let (_, data) = objects.read(&oid).unwrap();
                let object = parse_commit(data, hash).unwrap();
                octopus += usize::from(object.parents.len() > 2);
                assert_eq!(graph.commit(position).unwrap(), object);
            }
            assert_eq!(octopus, 1);
            // Ids it lacks: a tree, and every id with a changed last byte.
            let tree = git(&path, &["rev-parse", "main^{tree}"]);
            assert_eq!(
                graph.position(&ObjectId::from_hex(tree.trim().as_bytes()).unwrap()),
                None
            );
            for line in listed.lines() {
                let mut oid = ObjectId::from_hex(line.as_bytes()).unwrap();
                let bytes = oid.as_mut_slice();
                bytes[bytes.len() - 1] ^= 0x33;
                if !listed.contains(&oid.to_string()) {
                    assert_eq!(graph.position(&oid), None);
                }
            }
        }
    }

    /// git's own file (with chunks gitcache does not write) reads the same.
    #[test]
    fn a_graph_git_wrote_reads_as_the_objects() {
        let (_dir, path) = repository(gitcache_testkit::repo::RepoSpec::small(43));
        git(
            &path,
            &[
                "commit-graph",
                "write",
                "--reachable",
                "--changed-paths",
                "--no-progress",
            ],
        );
        let graph = Graph::open(&path.join("objects/info/commit-graph"), HashKind::Sha1).unwrap();
        let repo = Repository::open(&path).unwrap();
        let mut objects = crate::repo::objects_without_graphs(&repo);
        for position in 0..graph.len() {
            let oid = graph.oid(position);
            let (_, data) = objects.read(&oid).unwrap();
            assert_eq!(
                graph.commit(position).unwrap(),
                parse_commit(data, HashKind::Sha1).unwrap()
            );
        }
    }

    /// `bytes` with its trailing checksum made to match.
    fn sealed(mut bytes: Vec<u8>) -> Vec<u8> {
        let body = bytes.len() - 20;
        let mut hasher = gix_hash::hasher(HashKind::Sha1);
        hasher.update(&bytes[..body]);
        bytes[body..].copy_from_slice(hasher.try_finalize().unwrap().as_bytes());
        bytes
    }

    /// Where chunk `id` of the file `bytes` starts.
    fn chunk_at(bytes: &[u8], id: &[u8; 4]) -> usize {
        (0..usize::from(bytes[6]))
            .map(|i| 8 + 12 * i)
            .find(|&at| &bytes[at..at + 4] == id)
            .map(|at| get_u64(bytes, at + 4))
            .unwrap()
    }

    /// Where field `offset` (0: first parent, 4: second, 8: level and time) of commit
    /// `position`'s data is in the SHA-1 file `bytes`.
    fn field_at(bytes: &[u8], position: u32, offset: usize) -> usize {
        chunk_at(bytes, b"CDAT") + position as usize * 36 + 20 + offset
    }

    fn set(bytes: &mut [u8], at: usize, value: u32) {
        bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    fn get(bytes: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    /// A damaged file is refused: any byte changed (the checksum), and, its checksum sealed
    /// again, an id twice, one outside its fanout bucket or a decreasing fanout when loaded;
    /// a parent past the graph, a
    /// loop, a level not above a parent's, level 0 or extra edges past their chunk when the
    /// commit is read.
    #[test]
    fn a_damaged_graph_is_refused() {
        let (_dir, path) = repository(gitcache_testkit::repo::RepoSpec::small(44));
        let repo = Repository::open(&path).unwrap();
        let written = repo.write_commit_graph(&pack_of(&repo)).unwrap().unwrap();
        let good = std::fs::read(&written).unwrap();
        let parse = |bytes: Vec<u8>| Graph::parse(Box::new(bytes), HashKind::Sha1);
        for at in [0, 5, 7, 20, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            assert!(parse(bad).is_err(), "byte {at}");
        }
        assert!(parse(good[..good.len() - 1].to_vec()).is_err());
        assert!(Graph::parse(Box::new(good.clone()), HashKind::Sha256).is_err());
        let graph = parse(good.clone()).unwrap();
        let parents = |p: u32| graph.commit(p).unwrap().parents.len();
        let child = (0..graph.len()).find(|&p| parents(p) == 1).unwrap();
        let octopus = (0..graph.len()).find(|&p| parents(p) > 2).unwrap();
        let parent = graph
            .position(&graph.commit(child).unwrap().parents[0])
            .unwrap();
        let field = |position: u32, offset: usize| field_at(&good, position, offset);
        let level = get(&good, field(child, 8));
        let changed = |at: usize, value: u32| {
            let mut bad = good.clone();
            set(&mut bad, at, value);
            sealed(bad)
        };
        let second = get(&good, field(octopus, 4));
        // Refused when loaded, or, for what concerns one commit, when that commit is read (a
        // load does not read every commit); the other commits read as before.
        for (what, bad, at) in [
            (
                "a parent past the graph",
                changed(field(child, 0), graph.len()),
                Some(child),
            ),
            (
                "its own parent",
                changed(field(child, 0), child),
                Some(child),
            ),
            (
                "a parent as high",
                changed(field(parent, 8), level),
                Some(child),
            ),
            ("level 0", changed(field(child, 8), level & 3), Some(child)),
            (
                "edges past their chunk",
                changed(field(octopus, 4), second + 1000),
                Some(octopus),
            ),
            (
                "an id twice",
                {
                    let ids = chunk_at(&good, b"OIDL");
                    let mut bad = good.clone();
                    bad.copy_within(ids..ids + 20, ids + 20);
                    sealed(bad)
                },
                None,
            ),
            (
                "an id outside its fanout bucket",
                {
                    let fanout = chunk_at(&good, b"OIDF");
                    let first = (0..256).find(|&b| get(&good, fanout + 4 * b) > 0).unwrap();
                    let at = fanout + 4 * first;
                    changed(at, get(&good, at) - 1)
                },
                None,
            ),
            (
                "a decreasing fanout",
                changed(chunk_at(&good, b"OIDF") + 400, graph.len() + 1),
                None,
            ),
        ] {
            match (parse(bad), at) {
                (Err(_), _) => {}
                (Ok(bad), Some(at)) => {
                    assert!(bad.commit(at).is_err(), "{what}");
                    let other = (0..graph.len())
                        .find(|&p| p != at && p != parent && p != child)
                        .unwrap();
                    assert_eq!(bad.commit(other).unwrap(), graph.commit(other).unwrap());
                }
                (Ok(_), None) => panic!("{what}: loaded"),
            }
        }
        assert!(parse(sealed(good)).is_ok());
    }

    /// Fetches read commits from the graph: a graph that says `main` has no parent makes a
    /// depth-2 fetch of it need no shallow boundary (the object says otherwise, and without
    /// the graph, or with a true one, there is one).
    #[test]
    fn plans_read_commits_from_the_graph() {
        let (_dir, path) = repository(gitcache_testkit::repo::RepoSpec::small(45));
        let main = git(&path, &["rev-parse", "main"]);
        let main = ObjectId::from_hex(main.trim().as_bytes()).unwrap();
        let fetch = gitcache_protocol::request::Fetch {
            wants: vec![main],
            deepen: Some(2),
            done: true,
            ofs_delta: true,
            no_progress: true,
            ..Default::default()
        };
        let shallow = |repo: &Repository| {
            let crate::Plan::Pack(plan) =
                crate::plan(repo, &fetch, HashKind::Sha1, &Default::default()).unwrap()
            else {
                panic!("a pack");
            };
            plan.shallow_info()
                .map(|(s, _)| s.to_vec())
                .unwrap_or_default()
        };
        let repo = Repository::open(&path).unwrap();
        assert_eq!(shallow(&repo).len(), 1);
        let written = repo.write_commit_graph(&pack_of(&repo)).unwrap().unwrap();
        assert_eq!(shallow(&Repository::open(&path).unwrap()).len(), 1);
        let mut forged = std::fs::read(&written).unwrap();
        let graph = Graph::parse(Box::new(forged.clone()), HashKind::Sha1).unwrap();
        let position = graph.position(&main).unwrap();
        assert_eq!(graph.commit(position).unwrap().parents.len(), 1);
        let at = field_at(&forged, position, 0);
        set(&mut forged, at, super::NO_PARENT);
        std::fs::remove_file(&written).unwrap();
        std::fs::write(&written, sealed(forged)).unwrap();
        assert!(shallow(&Repository::open(&path).unwrap()).is_empty());
    }

    /// A pack whose commits the format cannot hold gets an empty file, which is neither read
    /// nor tried again; a damaged file is written again.
    #[test]
    fn an_empty_file_marks_a_pack_without_a_graph_and_a_damaged_one_is_written_again() {
        let (_dir, path) = repository(gitcache_testkit::repo::RepoSpec::small(46));
        let repo = Repository::open(&path).unwrap();
        let pack = pack_of(&repo);
        let graph = repo.write_commit_graph(&pack).unwrap().unwrap();
        let good = std::fs::read(&graph).unwrap();
        let mut bad = good.clone();
        bad[100] ^= 1;
        std::fs::remove_file(&graph).unwrap();
        std::fs::write(&graph, &bad).unwrap();
        assert_eq!(
            Repository::open(&path)
                .unwrap()
                .commits_in_graphs()
                .unwrap(),
            0
        );
        assert_eq!(repo.write_commit_graph(&pack).unwrap(), Some(graph.clone()));
        assert_eq!(std::fs::read(&graph).unwrap(), good);

        // A commit dated past 34 bits of seconds, on a branch of its own.
        let tree = git(&path, &["rev-parse", "main^{tree}"]);
        let far = std::process::Command::new("git")
            .arg("-C")
            .arg(&path)
            .args(["-c", "user.name=a", "-c", "user.email=a@b", "commit-tree"])
            .args([tree.trim(), "-p", "main", "-m", "far"])
            .env("GIT_COMMITTER_DATE", "@17179869184 +0000")
            .output()
            .unwrap();
        assert!(far.status.success());
        let far = String::from_utf8(far.stdout).unwrap();
        git(&path, &["update-ref", "refs/heads/far", far.trim()]);
        git(&path, &["repack", "-adq"]);
        let repo = Repository::open(&path).unwrap();
        let pack = pack_of(&repo);
        assert_eq!(repo.write_commit_graph(&pack).unwrap(), None);
        let marker = pack.with_extension("graph");
        assert_eq!(std::fs::metadata(&marker).unwrap().len(), 0);
        assert_eq!(repo.write_commit_graph(&pack).unwrap(), None);
        assert_eq!(
            Repository::open(&path)
                .unwrap()
                .commits_in_graphs()
                .unwrap(),
            0
        );
    }

    fn commit(parents: &[ObjectId], time: i64) -> Commit {
        Commit {
            tree: ObjectId::null(HashKind::Sha1),
            parents: parents.to_vec(),
            time,
        }
    }

    /// What git's format cannot hold is not written: a parent outside the commits given, a
    /// time past 34 bits or before 1970, a cycle.
    #[test]
    fn what_the_format_cannot_hold_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack-x.graph");
        let id = |b: u8| ObjectId::from_bytes_or_panic(&[b; 20]);
        for commits in [
            vec![(id(1), commit(&[id(2)], 0))],
            vec![(id(1), commit(&[], 1 << 34))],
            vec![(id(1), commit(&[], -1))],
            vec![(id(1), commit(&[id(2)], 5)), (id(2), commit(&[id(1)], 5))],
            vec![(id(1), commit(&[id(1)], 5))],
        ] {
            assert!(!write(&path, HashKind::Sha1, commits).unwrap());
            assert!(!path.exists());
        }
        let fine = vec![(id(1), commit(&[], (1 << 34) - 1))];
        assert!(write(&path, HashKind::Sha1, fine).unwrap());
        let graph = Graph::open(&path, HashKind::Sha1).unwrap();
        assert_eq!(graph.commit(0).unwrap().time, (1 << 34) - 1);
    }

    /// Levels: one more than the highest parent's, roots 1, a repeated parent once.
    #[test]
    fn topological_levels() {
        // 0 <- 1 <- 2, 0 <- 3, and 4 merging 2 and 3 (3 twice).
        let parents = vec![vec![], vec![0], vec![1], vec![0], vec![3, 2, 3]];
        assert_eq!(levels(&parents), Some(vec![1, 2, 3, 2, 4]));
        assert_eq!(levels(&[vec![1], vec![0]]), None);
        // A long chain walks without recursion.
        let chain: Vec<Vec<u32>> = (0..200_000u32)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .rev()
            .map(|mut p| {
                p.iter_mut().for_each(|x| *x = 199_999 - *x);
                p
            })
            .collect();
        let found = levels(&chain).unwrap();
        assert_eq!(found[0], 200_000);
    }
}
