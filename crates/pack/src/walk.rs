//! The limited commit walk both selection and `deepen-since`/`deepen-not` use: commits
//! reachable from the interesting tips but not from the uninteresting ones, newest first (by
//! committer time, ties in insertion order), as git's `rev-list` walks them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use gix_hash::ObjectId;

use crate::Error;
use crate::OidSet;
use crate::objects::Objects;

/// Extra commits walked after everything queued is uninteresting, as git's `SLOP`: it
/// tolerates clock skew and marks a few more commits the client has.
const SLOP: usize = 5;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    time: i64,
    seq: Reverse<u64>,
    oid: ObjectId,
}

/// What a walk found.
#[derive(Debug, Default)]
pub(crate) struct Walked {
    /// Every commit taken off the queue, in order.
    pub(crate) order: Vec<ObjectId>,
    /// Commits known to be reachable from an uninteresting tip.
    pub(crate) uninteresting: OidSet,
}

impl Walked {
    /// The interesting commits, in walk order.
    pub(crate) fn interesting(&self) -> impl Iterator<Item = &ObjectId> {
        self.order
            .iter()
            .filter(|c| !self.uninteresting.contains(*c))
    }

    /// The uninteresting commits the walk went through.
    pub(crate) fn boundary(&self) -> impl Iterator<Item = &ObjectId> {
        self.order
            .iter()
            .filter(|c| self.uninteresting.contains(*c))
    }
}

/// Walk from `tips` minus `hidden`. Commits in `grafts` are treated as having no parents;
/// commits older than `max_age` become uninteresting, with everything below them.
pub(crate) fn limited_walk(
    objects: &mut Objects,
    tips: &[ObjectId],
    hidden: &[ObjectId],
    grafts: &OidSet,
    max_age: Option<i64>,
) -> Result<Walked, Error> {
    let mut walk = Walk::default();
    walk.start(objects, hidden, true)?;
    walk.start(objects, tips, false)?;
    let mut slop = SLOP;
    while let Some(Queued { oid, time, .. }) = walk.queue.pop() {
        walk.queued_interesting.remove(&oid);
        if max_age.is_some_and(|age| time < age) {
            walk.out.uninteresting.insert(oid);
        }
        let parents = if grafts.contains(&oid) {
            Vec::new()
        } else {
            objects.commit(&oid)?.parents.clone()
        };
        let hidden = walk.out.uninteresting.contains(&oid);
        if hidden {
            walk.mark_parents(objects, &parents, grafts)?;
        }
        for p in parents {
            if walk.seen.insert(p) {
                if hidden {
                    walk.out.uninteresting.insert(p);
                }
                walk.push(objects, p)?;
            }
        }
        walk.out.order.push(oid);
        if walk.queued_interesting.is_empty() {
            if slop == 0 {
                break;
            }
            slop -= 1;
        }
    }
    Ok(walk.out)
}

/// `rev-list --max-age=<max_age> <tips>` with nothing to leave out, as git walks it then
/// (not limited): newest first; a commit older than `max_age` is not shown and its parents
/// are not followed from it (another path may still reach them, unlike in
/// [`limited_walk`], where everything below it is left out). The commits shown, in order.
pub(crate) fn unlimited_walk(
    objects: &mut Objects,
    tips: &[ObjectId],
    max_age: Option<i64>,
) -> Result<Vec<ObjectId>, Error> {
    let mut walk = Walk::default();
    walk.start(objects, tips, false)?;
    let mut shown = Vec::new();
    while let Some(Queued { oid, time, .. }) = walk.queue.pop() {
        objects.tick()?;
        // Only what is queued is kept there (as the limited walk keeps it).
        walk.queued_interesting.remove(&oid);
        if max_age.is_some_and(|age| time < age) {
            continue;
        }
        shown.push(oid);
        let parents = objects.commit(&oid)?.parents.clone();
        for p in parents {
            if walk.seen.insert(p) {
                walk.push(objects, p)?;
            }
        }
    }
    Ok(shown)
}

#[derive(Default)]
struct Walk {
    queue: BinaryHeap<Queued>,
    seq: u64,
    seen: OidSet,
    /// Queued commits not (yet) known to be uninteresting.
    queued_interesting: OidSet,
    out: Walked,
}

impl Walk {
    /// Queue each of `oids` not seen yet (as uninteresting, when `hidden`).
    fn start(
        &mut self,
        objects: &mut Objects,
        oids: &[ObjectId],
        hidden: bool,
    ) -> Result<(), Error> {
        for oid in oids {
            if self.seen.insert(*oid) {
                if hidden {
                    self.out.uninteresting.insert(*oid);
                }
                self.push(objects, *oid)?;
            }
        }
        Ok(())
    }

    fn push(&mut self, objects: &mut Objects, oid: ObjectId) -> Result<(), Error> {
        let time = objects.commit(&oid)?.time;
        self.seq += 1;
        if !self.out.uninteresting.contains(&oid) {
            self.queued_interesting.insert(oid);
        }
        self.queue.push(Queued {
            time,
            seq: Reverse(self.seq),
            oid,
        });
        Ok(())
    }

    /// Mark `parents`, and everything already seen below them, uninteresting.
    fn mark_parents(
        &mut self,
        objects: &mut Objects,
        parents: &[ObjectId],
        grafts: &OidSet,
    ) -> Result<(), Error> {
        let mut stack: Vec<ObjectId> = parents.to_vec();
        while let Some(c) = stack.pop() {
            if !self.out.uninteresting.insert(c) {
                continue;
            }
            self.queued_interesting.remove(&c);
            if self.seen.contains(&c) && !grafts.contains(&c) {
                stack.extend(objects.commit(&c)?.parents.iter().copied());
            }
        }
        Ok(())
    }
}
