//! Partial-clone filters, applied as git applies them while it lists objects.
//!
//! Git asks a filter about each commit reached by walking history, each tree (when it starts
//! and when it ends) and each blob reached by walking trees; the filter answers whether to show the object, whether to mark it seen (so it
//! is not asked about again), and whether to skip a tree's contents. Objects the client named
//! (and tags) are shown without asking. Filters keep state: `tree:<n>`
//! tracks the current depth and the smallest depth each tree was met at; inside `combine:`
//! every sub-filter keeps its own seen set. Matching that state machine is what makes our
//! packs leave out exactly what git leaves out, quirks included.
//!
//! Unlike git, the seen sets of a `combine:` are one map from object to a bit per sub-filter
//! (so memory does not grow with the number of sub-filters), and identical sub-filters are
//! kept once: they would answer alike at every step. A `tree:<n>` sub-filter still keeps
//! git's map of the depth it met each tree at (two of them answer differently once one
//! skips a subtree the other walks), so the protocol crate bounds those apart
//! ([`MAX_TREE_FILTERS`](gitcache_protocol::filter::MAX_TREE_FILTERS)), besides sub-filters
//! in all and nesting ([`MAX_SUB_FILTERS`](gitcache_protocol::filter::MAX_SUB_FILTERS)).

use gitcache_protocol::filter::{Filter, ObjectType};
use gix_hash::ObjectId;
use gix_object::Kind;

use crate::Error;
use crate::OidMap;
use crate::objects::Objects;

/// Where in the walk the filter is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Situation {
    /// A commit reached by walking history (not one the client named).
    Commit,
    BeginTree,
    EndTree,
    Blob,
}

/// A filter's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) show: bool,
    pub(crate) mark_seen: bool,
    pub(crate) skip_tree: bool,
}

const ZERO: Answer = Answer {
    show: false,
    mark_seen: false,
    skip_tree: false,
};
const SHOW: Answer = Answer {
    show: true,
    mark_seen: true,
    skip_tree: false,
};
const SEEN_ONLY: Answer = Answer {
    show: false,
    mark_seen: true,
    skip_tree: false,
};
const SKIP: Answer = Answer {
    show: false,
    mark_seen: false,
    skip_tree: true,
};

/// One filter with its state.
#[derive(Debug)]
pub(crate) enum FilterState {
    BlobNone,
    BlobLimit(u64),
    TreeDepth {
        max: u64,
        current: u64,
        seen_at_depth: OidMap<u64>,
    },
    ObjectType(Kind),
    Combine {
        subs: Vec<Sub>,
        /// The sub-filters that marked each object seen, bit `i` for `subs[i]`.
        seen: OidMap<u64>,
    },
}

/// A sub-filter of `combine:` with the state git keeps for it (its seen set is a bit in
/// the combination's map).
#[derive(Debug)]
pub(crate) struct Sub {
    filter: FilterState,
    skipping: Option<ObjectId>,
}

impl FilterState {
    /// The state for `filter`; `sparse:oid` is refused.
    pub(crate) fn new(filter: &Filter) -> Result<Self, Error> {
        Ok(match filter {
            Filter::BlobNone => FilterState::BlobNone,
            Filter::BlobLimit(n) => FilterState::BlobLimit(*n),
            Filter::Tree(max) => FilterState::TreeDepth {
                max: *max,
                current: 0,
                seen_at_depth: OidMap::default(),
            },
            Filter::ObjectType(t) => FilterState::ObjectType(match t {
                ObjectType::Blob => Kind::Blob,
                ObjectType::Tree => Kind::Tree,
                ObjectType::Commit => Kind::Commit,
                ObjectType::Tag => Kind::Tag,
            }),
            Filter::SparseOid(_) => return Err(Error::UnsupportedFilter { name: "sparse:oid" }),
            Filter::Combine(filters) => {
                let mut distinct: Vec<&Filter> = Vec::new();
                for filter in filters {
                    if !distinct.contains(&filter) {
                        distinct.push(filter);
                    }
                }
                if distinct.len() > u64::BITS as usize {
                    return Err(Error::FilterTooComplex);
                }
                FilterState::Combine {
                    subs: distinct
                        .into_iter()
                        .map(|f| {
                            Ok(Sub {
                                filter: FilterState::new(f)?,
                                skipping: None,
                            })
                        })
                        .collect::<Result<_, Error>>()?,
                    seen: OidMap::default(),
                }
            }
        })
    }

    /// Ask the filter about a tree or blob reached by walking trees.
    pub(crate) fn ask(
        &mut self,
        objects: &Objects,
        situation: Situation,
        oid: &ObjectId,
    ) -> Result<Answer, Error> {
        Ok(match self {
            FilterState::BlobNone => match situation {
                Situation::Commit | Situation::BeginTree => SHOW,
                Situation::EndTree => ZERO,
                Situation::Blob => SEEN_ONLY,
            },
            FilterState::BlobLimit(limit) => match situation {
                Situation::Commit | Situation::BeginTree => SHOW,
                Situation::EndTree => ZERO,
                Situation::Blob => match objects.header(oid)? {
                    Some((Kind::Blob, size)) if size >= *limit => SEEN_ONLY,
                    // Smaller, or unknown here: git shows it.
                    _ => SHOW,
                },
            },
            FilterState::TreeDepth {
                max,
                current,
                seen_at_depth,
            } => {
                let include = *current < *max;
                match situation {
                    Situation::Commit => SHOW,
                    Situation::EndTree => {
                        *current = current.saturating_sub(1);
                        ZERO
                    }
                    Situation::Blob => {
                        if include {
                            SHOW
                        } else {
                            ZERO
                        }
                    }
                    Situation::BeginTree => {
                        let answer = match seen_at_depth.get(oid) {
                            Some(&depth) if *current >= depth => SKIP,
                            _ => {
                                seen_at_depth.insert(*oid, *current);
                                if include {
                                    Answer {
                                        show: true,
                                        mark_seen: false,
                                        skip_tree: false,
                                    }
                                } else {
                                    SKIP
                                }
                            }
                        };
                        *current += 1;
                        answer
                    }
                }
            }
            FilterState::ObjectType(kind) => match situation {
                Situation::EndTree => ZERO,
                Situation::Commit => {
                    if *kind == Kind::Commit {
                        SHOW
                    } else {
                        SEEN_ONLY
                    }
                }
                Situation::BeginTree => match kind {
                    Kind::Commit | Kind::Tag => SKIP,
                    Kind::Tree => SHOW,
                    Kind::Blob => SEEN_ONLY,
                },
                Situation::Blob => {
                    if *kind == Kind::Blob {
                        SHOW
                    } else {
                        SEEN_ONLY
                    }
                }
            },
            FilterState::Combine { subs, seen } => {
                let mut all = Answer {
                    show: true,
                    mark_seen: true,
                    skip_tree: true,
                };
                let before = seen.get(oid).copied().unwrap_or(0);
                let mut after = before;
                for (i, sub) in subs.iter_mut().enumerate() {
                    let bit = 1u64 << i;
                    let answer = sub.ask(objects, situation, oid, before & bit != 0)?;
                    if answer.mark_seen {
                        after |= bit;
                    }
                    all.show &= answer.show;
                    all.mark_seen &= answer.mark_seen;
                    all.skip_tree &= answer.skip_tree;
                }
                if after != before {
                    seen.insert(*oid, after);
                }
                all
            }
        })
    }
}

impl Sub {
    /// Ask this sub-filter, which has seen `oid` already if `seen`; a `mark_seen` answer is
    /// for the caller to record.
    fn ask(
        &mut self,
        objects: &Objects,
        situation: Situation,
        oid: &ObjectId,
        seen: bool,
    ) -> Result<Answer, Error> {
        if let Some(skipped) = self.skipping {
            if situation == Situation::EndTree && skipped == *oid {
                self.skipping = None;
            } else {
                return Ok(ZERO);
            }
        }
        if seen {
            return Ok(ZERO);
        }
        let answer = self.filter.ask(objects, situation, oid)?;
        if answer.skip_tree {
            self.skipping = Some(*oid);
        }
        Ok(answer)
    }
}
