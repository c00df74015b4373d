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
    for want in wants {
        // Non-commits cannot be judged by ancestry; git does not wait for them.
        let Some(start) = objects.peel_to_commit(want)? else {
            continue;
        };
        if !reaches(objects, start, n, &mut dead, &mut reaching)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn reaches(
    objects: &mut Objects,
    start: ObjectId,
    n: &Negotiation,
    dead: &mut OidSet,
    reaching: &mut OidSet,
) -> Result<bool, Error> {
    if n.they_have.contains(&start) || reaching.contains(&start) {
        return Ok(true);
    }
    let mut visited = vec![start];
    let mut seen: OidSet = OidSet::from_iter([start]);
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        let parents = objects.commit(&id)?.parents.clone();
        for parent in parents {
            // A parent the client has counts even when it is older than the cutoff.
            if n.they_have.contains(&parent) || reaching.contains(&parent) {
                reaching.insert(start);
                return Ok(true);
            }
            if dead.contains(&parent) || !seen.insert(parent) {
                continue;
            }
            if objects.commit(&parent)?.time < n.oldest_have {
                continue;
            }
            visited.push(parent);
            stack.push(parent);
        }
    }
    dead.extend(visited);
    Ok(false)
}
