//! Access grants: which credential the upstream accepted for which repository, and when.
//!
//! A grant is recorded whenever the upstream accepts a client's credential for a repository
//! (its `info/refs` or `ls-refs` answered with success). A `fetch` is served from a mirror
//! only with a grant younger than the TTL; otherwise the upstream is asked first. Credentials
//! are kept only as their SHA-256 fingerprint.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use gitcache_storage::repo::RepoKey;
use gix_hash::Kind as HashKind;

use crate::bounded::Bounded;

/// The SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> gix_hash::ObjectId {
    let mut hasher = gix_hash::hasher(gix_hash::Kind::Sha256);
    hasher.update(data);
    hasher
        .try_finalize()
        .expect("SHA-256 has no collision detection to fail")
}

/// The SHA-256 of an `Authorization` header value, or the absence of one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(Option<[u8; 32]>);

impl Fingerprint {
    /// The fingerprint of `authorization` (`None`: an anonymous client).
    pub fn of(authorization: Option<&[u8]>) -> Self {
        Fingerprint(authorization.map(|value| {
            let mut out = [0u8; 32];
            out.copy_from_slice(sha256(value).as_bytes());
            out
        }))
    }

    /// Whether no credential was given.
    pub fn is_anonymous(&self) -> bool {
        self.0.is_none()
    }
}

impl std::fmt::Debug for Fingerprint {
    /// A short prefix, enough to tell credentials apart in logs, useless to an attacker.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("anonymous"),
            Some(d) => write!(f, "{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3]),
        }
    }
}

/// Expired grants are dropped first when the table holds this many, then each time it
/// doubles.
const PRUNE_AT: usize = 100_000;
/// The most grants held: past half of it in live grants, all are forgotten (each client is
/// then checked upstream again).
const MOST_GRANTS: usize = 1 << 18;

/// The grants of all clients, in memory.
#[derive(Debug)]
pub struct AccessGrants {
    ttl: Duration,
    grants: Mutex<Bounded<(RepoKey, Fingerprint), Grant>>,
    /// Refusals of credentials that held no grant then, and when: an acceptance asked for
    /// before one grants nothing. Kept apart (and smaller), so that refused credentials,
    /// which anyone can make up, never crowd the grants out.
    refusals: Mutex<Bounded<(RepoKey, Fingerprint), Instant>>,
}

/// Refusals without a grant are dropped first when their table holds this many.
const PRUNE_REFUSALS_AT: usize = 1024;
/// The most refusals without a grant held (all forgotten past half of it in live ones).
const MOST_REFUSALS: usize = 1 << 13;

/// When the upstream last accepted a credential for a repository, and the object format it
/// last advertised the repository in to that credential, and when.
#[derive(Debug, Clone, Copy)]
struct Grant {
    at: Instant,
    format: Option<(HashKind, Instant)>,
    /// When the upstream last refused the credential: acceptances from before it grant
    /// nothing (an answer read after the refusal, but sent before it, among them).
    refused: Option<Instant>,
}

impl Grant {
    fn stands(&self) -> bool {
        self.refused.is_none_or(|refused| self.at > refused)
    }
}

impl AccessGrants {
    /// Grants that last `ttl` (zero: none lasts, every fetch is verified).
    pub fn new(ttl: Duration) -> Self {
        AccessGrants {
            ttl,
            grants: Mutex::new(Bounded::new(PRUNE_AT, MOST_GRANTS)),
            refusals: Mutex::new(Bounded::new(PRUNE_REFUSALS_AT, MOST_REFUSALS)),
        }
    }

    /// Record that the upstream accepted `who` for `key` just now, advertising the
    /// repository in `format` if the acceptance was its `info/refs`.
    pub fn grant(&self, key: &RepoKey, who: Fingerprint, format: Option<HashKind>) {
        self.grant_at(key, who, Instant::now(), format);
    }

    /// Record that the upstream accepted `who` for `key` at `at` (when the request it
    /// answered was sent: a grant renewed after a long answer was read counts from before
    /// it, and one asked for before a refusal grants nothing). Without a `format`, the one
    /// recorded before is kept.
    pub fn grant_at(&self, key: &RepoKey, who: Fingerprint, at: Instant, format: Option<HashKind>) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let ttl = self.ttl;
        let id = (key.clone(), who);
        if !grants.contains_key(&id) {
            // A refusal without a grant, newer than what this acceptance was asked for,
            // stands; an older one becomes the new grant's.
            let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            let refused = refusals.get(&id).copied();
            if refused.is_some_and(|refused| at <= refused) {
                return;
            }
            refusals.remove(&id);
            grants.make_room(|_, grant| {
                now.duration_since(grant.at) < ttl
                    || grant.refused.is_some_and(|at| now.duration_since(at) < ttl)
            });
            grants.insert(
                id.clone(),
                Grant {
                    at,
                    format: None,
                    refused,
                },
            );
        }
        let Some(entry) = grants.get_mut(&id) else {
            return;
        };
        if entry.refused.is_some_and(|refused| at <= refused) {
            return;
        }
        entry.at = entry.at.max(at);
        if let Some(format) = format {
            entry.format = Some((format, at));
        }
    }

    /// The upstream answered `who`'s request for `key` with `status`: a refusal (401, 404;
    /// 403 but for anonymous clients) ends the grant here, before its TTL, and acceptances
    /// asked for before now grant nothing. A 403 is also how some forges answer a rate limit
    /// or a firewall rule: for one credential that costs only its own next check, but all
    /// anonymous clients share one grant, which no one of them may end for all.
    pub fn refused(&self, key: &RepoKey, who: Fingerprint, status: u16) {
        let ends = match status {
            401 | 404 => true,
            403 => !who.is_anonymous(),
            _ => false,
        };
        if !ends || self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let id = (key.clone(), who);
        if let Some(grant) = grants.get_mut(&id) {
            grant.refused = Some(now);
            return;
        }
        // Kept as a refusal even without a grant: an acceptance on its way (asked for before
        // now) is refused its grant when it arrives.
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let ttl = self.ttl;
        refusals.make_room(|_, at| now.duration_since(*at) < ttl);
        refusals.insert(id, now);
    }

    /// Whether the upstream refused `who` for `key` at `since` or after, and has not accepted
    /// it again since (a grant that let a request in may have ended while it waited).
    pub fn refused_since(&self, key: &RepoKey, who: Fingerprint, since: Instant) -> bool {
        let id = (key.clone(), who);
        let granted = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(grant) = granted.get(&id) {
            return grant.refused.is_some_and(|at| at >= since) && !grant.stands();
        }
        drop(granted);
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|at| *at >= since)
    }

    /// The grant of `who` for `key`, if it is younger than the TTL.
    fn fresh(&self, key: &RepoKey, who: Fingerprint) -> Option<Grant> {
        if self.ttl.is_zero() {
            return None;
        }
        let grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        grants
            .get(&(key.clone(), who))
            .filter(|grant| grant.stands() && grant.at.elapsed() < self.ttl)
            .copied()
    }

    /// How long a grant lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether `who` was accepted for `key` within the TTL.
    pub fn is_fresh(&self, key: &RepoKey, who: Fingerprint) -> bool {
        self.fresh(key, who).is_some()
    }

    /// The object format the upstream advertised `key` in to `who`, if it did within the
    /// TTL (a grant renewed since by other answers does not make an old advertisement new):
    /// a refresh on `who`'s behalf need not ask for it again.
    pub fn format(&self, key: &RepoKey, who: Fingerprint) -> Option<HashKind> {
        let (format, at) = self.fresh(key, who)?.format?;
        (at.elapsed() < self.ttl).then_some(format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(repo: &str) -> RepoKey {
        RepoKey::new("example.com", "acme", repo).unwrap()
    }

    #[test]
    fn a_grant_is_per_repository_and_credential() {
        let grants = AccessGrants::new(Duration::from_secs(60));
        let alice = Fingerprint::of(Some(b"Basic YWxpY2U6cHc="));
        let bob = Fingerprint::of(Some(b"Basic Ym9iOnB3"));
        grants.grant(&key("widgets"), alice, None);
        assert!(grants.is_fresh(&key("widgets"), alice));
        assert!(!grants.is_fresh(&key("widgets"), bob));
        assert!(!grants.is_fresh(&key("gadgets"), alice));
        assert!(!grants.is_fresh(&key("widgets"), Fingerprint::of(None)));
        assert!(Fingerprint::of(None).is_anonymous());
        assert_ne!(alice, bob);
    }

    /// A request let in by a grant learns whether the upstream refused its credential while
    /// it waited: a refusal at or after its check counts, one before does not, and so does a
    /// refusal kept without a grant.
    #[test]
    fn a_refusal_after_a_request_was_let_in_is_seen() {
        let grants = AccessGrants::new(Duration::from_secs(60));
        let (alice, bob) = (
            Fingerprint::of(Some(b"Bearer a")),
            Fingerprint::of(Some(b"Bearer b")),
        );
        grants.grant(&key("w"), alice, None);
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        let checked = Instant::now();
        assert!(!grants.refused_since(&key("w"), alice, checked));
        grants.refused(&key("w"), alice, 401);
        grants.refused(&key("w"), bob, 404);
        let after = Instant::now() + Duration::from_millis(5);
        for who in [alice, bob] {
            assert!(grants.refused_since(&key("w"), who, checked));
            assert!(grants.refused_since(&key("w"), who, before));
            assert!(!grants.refused_since(&key("w"), who, after));
            assert!(!grants.refused_since(&key("other"), who, before));
        }
        // Accepted again since: no longer refused.
        std::thread::sleep(Duration::from_millis(5));
        grants.grant(&key("w"), alice, None);
        assert!(!grants.refused_since(&key("w"), alice, checked));
    }

    #[test]
    fn a_refusal_ends_a_grant_and_what_was_accepted_before_it() {
        let grants = AccessGrants::new(Duration::from_secs(60));
        let (alice, bob) = (
            Fingerprint::of(Some(b"Bearer a")),
            Fingerprint::of(Some(b"Bearer b")),
        );
        let anonymous = Fingerprint::of(None);
        let before = Instant::now();
        for who in [alice, bob, anonymous] {
            grants.grant(&key("widgets"), who, None);
        }
        grants.refused(&key("widgets"), alice, 500);
        assert!(
            grants.is_fresh(&key("widgets"), alice),
            "a failure is no refusal"
        );
        grants.refused(&key("widgets"), alice, 403);
        assert!(!grants.is_fresh(&key("widgets"), alice));
        assert!(
            grants.is_fresh(&key("widgets"), bob),
            "another credential's stands"
        );
        // An answer asked for before the refusal and read after it grants nothing.
        grants.grant_at(&key("widgets"), alice, before, None);
        assert!(!grants.is_fresh(&key("widgets"), alice));
        // The upstream accepts the credential again: granted again.
        std::thread::sleep(Duration::from_millis(2));
        grants.grant(&key("widgets"), alice, None);
        assert!(grants.is_fresh(&key("widgets"), alice));
        // Anonymous clients share one grant: a 403 (a rate limit, a firewall rule) to one of
        // them ends it for none; a 401 or 404 (the repository made private) does.
        grants.refused(&key("widgets"), anonymous, 403);
        assert!(grants.is_fresh(&key("widgets"), anonymous));
        grants.refused(&key("widgets"), anonymous, 404);
        assert!(!grants.is_fresh(&key("widgets"), anonymous));
        // A refusal with no grant to end still refuses an acceptance asked for before it.
        grants.refused(&key("gadgets"), bob, 401);
        grants.grant_at(&key("gadgets"), bob, before, None);
        assert!(!grants.is_fresh(&key("gadgets"), bob));
    }

    #[test]
    fn refused_credentials_never_crowd_the_grants_out() {
        let grants = AccessGrants::new(Duration::from_secs(60));
        let alice = Fingerprint::of(Some(b"Bearer a"));
        grants.grant(&key("widgets"), alice, None);
        for i in 0..(3 * MOST_REFUSALS) {
            let made_up = format!("Bearer made-up-{i}");
            grants.refused(
                &key("widgets"),
                Fingerprint::of(Some(made_up.as_bytes())),
                401,
            );
        }
        assert!(grants.is_fresh(&key("widgets"), alice));
        assert!(grants.refusals.lock().unwrap().len() < MOST_REFUSALS);
        assert_eq!(grants.grants.lock().unwrap().len(), 1);
    }

    #[test]
    fn grants_expire() {
        let grants = AccessGrants::new(Duration::from_millis(30));
        let who = Fingerprint::of(Some(b"Bearer t"));
        grants.grant(&key("widgets"), who, Some(HashKind::Sha1));
        assert!(grants.is_fresh(&key("widgets"), who));
        assert_eq!(grants.format(&key("widgets"), who), Some(HashKind::Sha1));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!grants.is_fresh(&key("widgets"), who));
        assert_eq!(grants.format(&key("widgets"), who), None);
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let grants = AccessGrants::new(Duration::ZERO);
        let who = Fingerprint::of(None);
        grants.grant(&key("widgets"), who, Some(HashKind::Sha1));
        assert!(!grants.is_fresh(&key("widgets"), who));
        assert_eq!(grants.format(&key("widgets"), who), None);
    }

    #[test]
    fn a_renewal_without_a_format_keeps_the_advertised_one() {
        let grants = AccessGrants::new(Duration::from_secs(60));
        let who = Fingerprint::of(Some(b"Bearer t"));
        let other = Fingerprint::of(Some(b"Bearer u"));
        // An ls-refs answer proves access but names no format of its own.
        grants.grant(&key("widgets"), who, None);
        assert_eq!(grants.format(&key("widgets"), who), None);
        grants.grant(&key("widgets"), who, Some(HashKind::Sha256));
        grants.grant_at(&key("widgets"), who, Instant::now(), None);
        assert_eq!(grants.format(&key("widgets"), who), Some(HashKind::Sha256));
        // Renewals do not keep an advertisement older than the TTL.
        let old = Instant::now().checked_sub(Duration::from_secs(61));
        if let Some(old) = old {
            let grants = AccessGrants::new(Duration::from_secs(60));
            grants.grant_at(&key("widgets"), who, old, Some(HashKind::Sha256));
            grants.grant_at(&key("widgets"), who, Instant::now(), None);
            assert!(grants.is_fresh(&key("widgets"), who));
            assert_eq!(grants.format(&key("widgets"), who), None);
        }
        // Per credential, as the grant itself.
        assert_eq!(grants.format(&key("widgets"), other), None);
        assert_eq!(grants.format(&key("gadgets"), who), None);
    }

    #[test]
    fn fingerprints_do_not_show_the_credential() {
        let shown = format!("{:?}", Fingerprint::of(Some(b"Bearer secret-token")));
        assert_eq!(shown.len(), 8);
        assert!(!shown.contains("secret"));
    }
}
