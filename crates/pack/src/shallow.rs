//! Shallow requests: `deepen`, `deepen-relative`, `deepen-since`, `deepen-not`, the client's
//! `shallow` lines, and unshallowing; the `shallow-info` section as git writes it.

use bstr::BString;
use gix_hash::ObjectId;
use gix_object::Kind;

use crate::Error;
use crate::objects::Objects;
use crate::repo::Repository;
use crate::{OidMap, OidSet};

/// git's "infinite" depth, which `--unshallow` sends.
pub(crate) const INFINITE_DEPTH: u32 = 0x7fff_ffff;

/// The outcome of the shallow part of a request.
#[derive(Debug, Default)]
pub(crate) struct ShallowPlan {
    /// Whether a `shallow-info` section is written.
    pub(crate) section: bool,
    /// `shallow` lines, in git's order.
    pub(crate) shallow: Vec<ObjectId>,
    /// `unshallow` lines.
    pub(crate) unshallow: Vec<ObjectId>,
    /// Commits whose parents the selection must not follow: new and remaining client shallows.
    pub(crate) grafts: OidSet,
    /// Parents of unshallowed commits, wanted in addition.
    pub(crate) extra_wants: Vec<ObjectId>,
    /// Unshallowed commits: the client has them.
    pub(crate) extra_haves: Vec<ObjectId>,
}

/// What the request says about shallowness.
#[derive(Debug)]
pub(crate) struct ShallowRequest<'a> {
    pub(crate) shallows: &'a [ObjectId],
    pub(crate) depth: Option<u32>,
    pub(crate) deepen_relative: bool,
    pub(crate) deepen_since: Option<u64>,
    pub(crate) deepen_not: &'a [BString],
}

pub(crate) fn plan(
    repo: &Repository,
    objects: &mut Objects,
    req: &ShallowRequest<'_>,
    wants: &[ObjectId],
) -> Result<ShallowPlan, Error> {
    let rev_list = req.deepen_since.is_some() || !req.deepen_not.is_empty();
    let mut plan = ShallowPlan {
        section: req.depth.is_some() || rev_list || !req.shallows.is_empty(),
        ..ShallowPlan::default()
    };
    // The client's shallow commits that we know; unknown ones are ignored as git does. Each
    // once, in the client's order (a set to tell: a request names up to 100,000), the work
    // given up when the client has gone.
    let mut client_shallow: Vec<ObjectId> = Vec::new();
    let mut client_set = OidSet::default();
    for oid in req.shallows {
        objects.tick()?;
        match objects.header(oid)? {
            None => continue,
            Some((Kind::Commit, _)) => {
                if client_set.insert(*oid) {
                    client_shallow.push(*oid);
                }
            }
            Some(_) => return Err(Error::InvalidShallow { oid: *oid }),
        }
    }
    let mut not_shallow: OidSet = OidSet::default();

    if let Some(depth) = req.depth {
        let result = if depth == INFINITE_DEPTH {
            not_shallow.extend(client_shallow.iter().copied());
            Vec::new()
        } else if req.deepen_relative {
            let reachable = reachable_from_refs(repo, objects, &client_shallow)?;
            shallow_commits(
                objects,
                &reachable,
                depth.saturating_add(1),
                &mut not_shallow,
            )?
        } else {
            shallow_commits(objects, wants, depth, &mut not_shallow)?
        };
        for c in result {
            if !client_set.contains(&c) && !not_shallow.contains(&c) {
                plan.shallow.push(c);
                plan.grafts.insert(c);
            }
        }
    } else if rev_list {
        let exclude = deepen_not_tips(repo, req.deepen_not)?;
        let (border, included) = shallow_by_rev_list(objects, wants, req.deepen_since, &exclude)?;
        for c in &border {
            if !client_set.contains(c) {
                plan.shallow.push(*c);
                plan.grafts.insert(*c);
            }
        }
        // Border commits are shallow, not "not shallow".
        not_shallow = included
            .into_iter()
            .filter(|c| !border.contains(c))
            .collect();
    }
    if req.depth.is_some() || rev_list {
        for c in &client_shallow {
            if not_shallow.contains(c) {
                plan.unshallow.push(*c);
                plan.extra_wants
                    .extend(objects.commit(c)?.parents.iter().copied());
                plan.extra_haves.push(*c);
            }
        }
    }
    // Every client shallow stays a graft for the walk, so it conforms to the client.
    plan.grafts.extend(client_shallow);
    Ok(plan)
}

/// git's `get_shallow_commits`: a depth-first walk from `heads` that remembers the smallest
/// depth each commit was reached at; commits reached at `depth` become shallow. Commits later
/// reached at a smaller depth land in `not_shallow` and are dropped by the caller. The order is
/// git's (last found first).
fn shallow_commits(
    objects: &mut Objects,
    heads: &[ObjectId],
    depth: u32,
    not_shallow: &mut OidSet,
) -> Result<Vec<ObjectId>, Error> {
    let depth = i64::from(depth);
    let mut result = Vec::new();
    let mut depths: OidMap<i64> = OidMap::default();
    let mut stack: Vec<ObjectId> = Vec::new();
    let mut heads = heads.iter();
    let mut current: Option<(ObjectId, i64)> = None;
    loop {
        let (commit, mut cur_depth) = match current.take() {
            Some(c) => c,
            None => {
                if let Some(head) = heads.next() {
                    let Some(commit) = objects.peel_to_commit(head)? else {
                        continue;
                    };
                    depths.insert(commit, 0);
                    (commit, 0)
                } else if let Some(commit) = stack.pop() {
                    (commit, depths[&commit])
                } else {
                    break;
                }
            }
        };
        cur_depth += 1;
        if depth != i64::from(INFINITE_DEPTH) && cur_depth >= depth {
            result.push(commit);
            continue;
        }
        not_shallow.insert(commit);
        let parents = objects.commit(&commit)?.parents.clone();
        let last = parents.len().saturating_sub(1);
        for (i, parent) in parents.into_iter().enumerate() {
            match depths.get(&parent) {
                Some(&d) if cur_depth >= d => continue,
                _ => {
                    depths.insert(parent, cur_depth);
                }
            }
            if i < last {
                stack.push(parent);
            } else {
                current = Some((parent, cur_depth));
            }
        }
    }
    result.reverse();
    Ok(result)
}

/// Client shallow commits reachable from any of our refs (what `deepen-relative` counts from).
fn reachable_from_refs(
    repo: &Repository,
    objects: &mut Objects,
    shallows: &[ObjectId],
) -> Result<Vec<ObjectId>, Error> {
    if shallows.is_empty() {
        return Ok(Vec::new());
    }
    let mut starts = Vec::new();
    for r in repo.refs()? {
        if let Some(oid) = r.oid
            && let Some(c) = objects.peel_to_commit(&oid)?
        {
            starts.push(c);
        }
    }
    let targets: OidSet = shallows.iter().copied().collect();
    let mut found = OidSet::default();
    let mut seen: OidSet = starts.iter().copied().collect();
    while let Some(c) = starts.pop() {
        if targets.contains(&c) {
            found.insert(c);
            if found.len() == targets.len() {
                break;
            }
        }
        for p in objects.commit(&c)?.parents.clone() {
            if seen.insert(p) {
                starts.push(p);
            }
        }
    }
    Ok(shallows
        .iter()
        .copied()
        .filter(|c| found.contains(c))
        .collect())
}

/// Resolve `deepen-not` names to commits, as git's `expand_ref` does (exactly one match).
fn deepen_not_tips(repo: &Repository, names: &[BString]) -> Result<Vec<ObjectId>, Error> {
    let mut tips = Vec::new();
    for (name, found) in names.iter().zip(repo.expand_refs(names)) {
        match found?.as_slice() {
            [(_, oid)] => tips.push(*oid),
            _ => return Err(Error::AmbiguousDeepenNot { name: name.clone() }),
        }
    }
    Ok(tips)
}

/// `rev-list --max-age=<since> --not <exclude> --not <wants>`: the commits it shows, and the
/// border among them (shown commits with a parent not shown), in its order.
fn shallow_by_rev_list(
    objects: &mut Objects,
    wants: &[ObjectId],
    since: Option<u64>,
    exclude: &[ObjectId],
) -> Result<(Vec<ObjectId>, OidSet), Error> {
    let mut tips = Vec::new();
    for want in wants {
        if let Some(c) = objects.peel_to_commit(want)? {
            tips.push(c);
        }
    }
    let mut hidden = Vec::new();
    for tip in exclude {
        if let Some(c) = objects.peel_to_commit(tip)? {
            hidden.push(c);
        }
    }
    let max_age = since.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    // With nothing to leave out (no `deepen-not`) git's walk is not limited: a commit older
    // than the cutoff hides only itself, not what another path reaches below it.
    let shown: Vec<ObjectId> = if hidden.is_empty() {
        crate::walk::unlimited_walk(objects, &tips, max_age)?
    } else {
        let walked =
            crate::walk::limited_walk(objects, &tips, &hidden, &OidSet::default(), max_age)?;
        walked.interesting().copied().collect()
    };
    if shown.is_empty() {
        return Err(Error::NoShallowCommits);
    }
    let included: OidSet = shown.iter().copied().collect();
    let mut border = Vec::new();
    for c in &shown {
        if objects
            .commit(c)?
            .parents
            .iter()
            .any(|p| !included.contains(p))
        {
            border.push(*c);
        }
    }
    Ok((border, included))
}
