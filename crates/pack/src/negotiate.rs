//! Negotiation: which `have`s are common, and whether the server is ready to send a pack.
//!
//! As `git upload-pack` (protocol v2) decides it: every `have` the repository holds is
//! acknowledged; a common commit and its parents count as "the client has it"; the server is
//! ready when every wanted commit reaches such a commit through commits no older than the
//! oldest common commit (git's `ok_to_give_up`).

use gix_hash::ObjectId;
use gix_object::Kind;

use crate::Error;
use crate::OidSet;
use crate::objects::Objects;

/// What the `have` lines told us.
#[derive(Debug, Default)]
pub(crate) struct Negotiation {
    /// git's `have_obj`: the haves we hold, in request order, for `ACK` lines. A commit
    /// already known to be had (a repeat, or a parent of an earlier have) is not listed again;
    /// other objects are listed every time.
    pub(crate) common: Vec<ObjectId>,
    /// Distinct common objects.
    pub(crate) have_objects: Vec<ObjectId>,
    /// Common commits and their parents (git's THEY_HAVE).
    pub(crate) they_have: OidSet,
    /// The oldest committer time among common commits (0: none).
    pub(crate) oldest_have: i64,
}

/// Look up every `have`.
pub(crate) fn process_haves(
    objects: &mut Objects,
    haves: &[ObjectId],
) -> Result<Negotiation, Error> {
    let mut n = Negotiation::default();
    let mut seen = OidSet::default();
    for have in haves {
        let Some((kind, _)) = objects.header(have)? else {
            continue;
        };
        let mut known = false;
        if kind == Kind::Commit {
            let commit = objects.commit(have)?;
            let (time, parents) = (commit.time, commit.parents.clone());
            known = !n.they_have.insert(*have);
            if n.oldest_have == 0 || time < n.oldest_have {
                n.oldest_have = time;
            }
            n.they_have.extend(parents);
        }
        if !known {
            n.common.push(*have);
        }
        if seen.insert(*have) {
            n.have_objects.push(*have);
        }
    }
    Ok(n)
}

/// Whether every want reaches a commit the client has (git's `ok_to_give_up`).
///
/// Linear in the history however many wants there are: a commit found to reach what the
/// client has is remembered with every commit on the path to it, and one explored in full
/// without success is never explored again (as git marks commits while it walks).
pub(crate) fn ok_to_give_up(
    objects: &mut Objects,
    wants: &[ObjectId],
    n: &Negotiation,
) -> Result<bool, Error> {
    if n.common.is_empty() {
        return Ok(false);
    }
    // Commits whose whole walk (above the cutoff) was explored without success.
    let mut dead: OidSet = OidSet::default();
    let mut reaching: OidSet = OidSet::default();
    // Oldest first by date, as git sorts them without a commit graph it reads (with one, by
    // generation first; a mirror's graphs are gitcache's own, so git on the mirror sorts
    // by date too): a want that only reaches the client's commits through another want,
    // older than the cutoff, finds that one already known to reach them.
    let mut starts = Vec::with_capacity(wants.len());
    for want in wants {
        // Non-commits cannot be judged by ancestry; git does not wait for them.
        let Some(start) = objects.peel_to_commit(want)? else {
            continue;
        };
        starts.push((objects.commit(&start)?.time, start));
    }
    starts.sort_by_key(|&(time, _)| time);
    for (_, start) in starts {
        if !reaches(objects, start, n, &mut dead, &mut reaching)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Depth-first from `start` through commits no older than the oldest common one, until a
/// commit the client has: on success every commit on the current path joins `reaching`; a
/// commit whose parents are all explored without success joins `dead`.
fn reaches(
    objects: &mut Objects,
    start: ObjectId,
    n: &Negotiation,
    dead: &mut OidSet,
    reaching: &mut OidSet,
) -> Result<bool, Error> {
    let known =
        |oid: &ObjectId, reaching: &OidSet| n.they_have.contains(oid) || reaching.contains(oid);
    if known(&start, reaching) {
        return Ok(true);
    }
    if dead.contains(&start) {
        return Ok(false);
    }
    // The current path: each commit with the index of the next parent to look at.
    let mut path: Vec<(ObjectId, usize)> = vec![(start, 0)];
    while let Some(&mut (id, ref mut next)) = path.last_mut() {
        let parents = &objects.commit(&id)?.parents;
        let Some(&parent) = parents.get(*next) else {
            // Every parent explored: nothing the client has lies below.
            dead.insert(id);
            path.pop();
            continue;
        };
        *next += 1;
        // A parent the client has counts even when it is older than the cutoff.
        if known(&parent, reaching) {
            reaching.extend(path.iter().map(|(c, _)| *c));
            return Ok(true);
        }
        if dead.contains(&parent) || objects.commit(&parent)?.time < n.oldest_have {
            continue;
        }
        path.push((parent, 0));
    }
    Ok(false)
}
