//! Push webhooks: a forge says a repository moved, and its mirror is refreshed before the next
//! clone asks (so that clone is a hit on the new commit).
//!
//! `POST /api/hooks/push` takes GitHub's `push` event (signed in `X-Hub-Signature-256:
//! sha256=<hex>`) and Gitea's or Forgejo's (`X-Gitea-Signature` / `X-Forgejo-Signature:
//! <hex>`): an HMAC-SHA256 of the body with the shared secret, checked in constant time
//! before anything in the body is looked at. A repository gitcache does not mirror is left
//! alone; nothing is ever created from a webhook.

/// The largest event body read before its signature is checked (push events are a few KiB;
/// anyone can send one, so little is held for them).
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;
/// What all events being read may hold before their checks, shared by what their buffers
/// take as they grow (64 KiB at least each, from their headers on, see
/// [`crate::body::BodyBudget`]); past it an event gets 503. By bytes, not by events: a sender
/// trickling a few bytes holds one share of 1,024, as many as the default connection limit
/// of a listener, not one of a few slots.
pub(crate) const EVENT_BYTES_HELD: u64 = 64 << 20;
/// The longest an event's body may take to arrive (a forge sends a few KiB at once).
pub(crate) const EVENT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The repository a push event names, and what it says was pushed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Pushed {
    /// The host of its clone URL (with a port when it has one).
    pub(crate) host: String,
    pub(crate) owner: String,
    pub(crate) repo: String,
    /// The ref pushed (`ref`) and where it is now (`after`; all zeros for a deletion), when
    /// the event says both.
    pub(crate) moved: Option<(String, gix_hash::ObjectId)>,
}

/// The longest ref name an event's push is read for.
const MAX_REF_NAME: usize = 1024;
/// The longest host, owner or repository name an event is read for.
const MAX_NAME: usize = 255;

/// The most recent pushes remembered per mirror (see [`Seen`]).
const SEEN_PER_MIRROR: usize = 16;
/// How long a push is remembered.
const SEEN_FOR: std::time::Duration = std::time::Duration::from_secs(600);
/// The most mirrors whose pushes are remembered; the memory is cleared when full.
const SEEN_MIRRORS: usize = 10_000;

/// Pushes that refreshed a mirror lately, by mirror: the same push again (a replayed or
/// redelivered event) refreshes nothing for [`SEEN_FOR`]. An event is signed with one secret
/// for every repository, and the signature covers its body only, so anyone holding one
/// signed event can send it again and again.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pushes: std::sync::Mutex<std::collections::HashMap<gitcache_storage::repo::RepoKey, Pushes>>,
}

/// A mirror's pushes seen lately: the ref, where it went, until when it counts, and the
/// token of the refresh that noted it.
type Pushes = std::collections::VecDeque<(String, gix_hash::ObjectId, std::time::Instant, u64)>;

/// How soon a push whose refresh failed (or did not bring it) refreshes again: a forge's
/// redelivery gets through, a replay of the event does not refresh the mirror back to back.
pub(crate) const RETRY_FAILED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl Seen {
    /// Whether `ref` moving to `after` in `key` refreshed the mirror lately.
    pub(crate) fn again(
        &self,
        key: &gitcache_storage::repo::RepoKey,
        name: &str,
        after: gix_hash::ObjectId,
    ) -> bool {
        let pushes = self.pushes.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        pushes.get(key).is_some_and(|seen| {
            seen.iter()
                .any(|(n, a, until, _)| n == name && *a == after && *until > now)
        })
    }

    /// Note that `ref` moving to `after` in `key` starts a refresh of the mirror, unless it
    /// was noted lately (then `None`: checked and noted at once, so that two deliveries of
    /// one push at the same time refresh once). The token names this note.
    pub(crate) fn refreshed(
        &self,
        key: &gitcache_storage::repo::RepoKey,
        name: &str,
        after: gix_hash::ObjectId,
    ) -> Option<u64> {
        static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut pushes = self.pushes.lock().unwrap_or_else(|p| p.into_inner());
        if pushes.len() >= SEEN_MIRRORS && !pushes.contains_key(key) {
            pushes.clear();
        }
        let now = std::time::Instant::now();
        let seen = pushes.entry(key.clone()).or_default();
        seen.retain(|(_, _, until, _)| *until > now);
        if seen.iter().any(|(n, a, _, _)| n == name && *a == after) {
            return None;
        }
        if seen.len() >= SEEN_PER_MIRROR {
            seen.pop_front();
        }
        let token = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        seen.push_back((name.to_owned(), after, now + SEEN_FOR, token));
        Some(token)
    }

    /// The refresh noted as `token` failed, or did not bring its push: the push counts as
    /// seen for [`RETRY_FAILED_AFTER`] only (`retry_after`, in tests), not [`SEEN_FOR`].
    pub(crate) fn failed(
        &self,
        key: &gitcache_storage::repo::RepoKey,
        token: u64,
        retry_after: std::time::Duration,
    ) {
        let mut pushes = self.pushes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seen) = pushes.get_mut(key)
            && let Some(entry) = seen.iter_mut().find(|(_, _, _, t)| *t == token)
        {
            entry.2 = entry.2.min(std::time::Instant::now() + retry_after);
        }
    }
}

/// Signed events let in within any `TURN_HELD`: one past them gets `503`, a failed
/// delivery (GitHub does not send it again by itself).
pub const EVENTS_AT_ONCE: usize = 64;

/// Push events taken in the background at once, each until what it leads to has ended
/// (reading the mirror's ref, then its refresh and the credential that waits for): as many
/// as webhooks' refreshes may run, so that none is dropped for want of one. One past them
/// waits its turn (see [`EVENTS_WAITING`]).
pub const EVENTS_TAKEN_AT_ONCE: usize = 16;

/// Pushes accepted while [`EVENTS_TAKEN_AT_ONCE`] are being taken wait, taken in order as
/// places free; one that is waiting already (the same ref moved to the same commit: a
/// redelivery, a replay) is not put in line again. Each older push still waiting is taken
/// too, so none can stand in for a newer one. Past this many, one is left out, told in the
/// log only: its mirror is refreshed by the next fetch that wants what it lacks, or the next
/// scheduled refresh.
pub const EVENTS_WAITING: usize = 1024;

/// Pushes in line, each with the span of the request that brought it, and the set of them.
type Line = (
    std::collections::VecDeque<(Pushed, tracing::Span)>,
    std::collections::HashSet<Pushed>,
);

/// The pushes waiting for a place (see [`EVENTS_WAITING`]).
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    queue: std::sync::Mutex<Line>,
    /// Told when one is put in line.
    arrived: tokio::sync::Notify,
    /// Whether a task takes them.
    taken: std::sync::atomic::AtomicBool,
}

impl Waiting {
    /// Put `pushed` in line, unless it waits already: `false` when the line is full.
    pub(crate) fn push(&self, pushed: Pushed, span: tracing::Span) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let (line, waiting) = &mut *queue;
        if waiting.contains(&pushed) {
            return true;
        }
        if line.len() >= EVENTS_WAITING {
            return false;
        }
        waiting.insert(pushed.clone());
        line.push_back((pushed, span));
        drop(queue);
        self.arrived.notify_one();
        true
    }

    /// The first push in line, if any.
    pub(crate) fn next(&self) -> Option<(Pushed, tracing::Span)> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let (line, waiting) = &mut *queue;
        let next = line.pop_front()?;
        waiting.remove(&next.0);
        Some(next)
    }

    /// Whether none waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .is_empty()
    }

    /// Until one is put in line (at once if one was since the last call).
    pub(crate) async fn arrival(&self) {
        self.arrived.notified().await;
    }

    /// Whether the caller is the first to ask: it starts the task that takes them (and
    /// calls [`Waiting::taker_gone`] should that task end).
    pub(crate) fn first_taker(&self) -> bool {
        !self.taken.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// The task that took them ended: the next push starts another.
    pub(crate) fn taker_gone(&self) {
        self.taken.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How long an event holds its turn (see [`EVENTS_AT_ONCE`]), whatever it leads to: turns
/// come back at the same pace whether or not the repository is mirrored. 640 events a
/// second at most: a holder of the secret sending more keeps the forge's own events out.
pub(crate) const TURN_HELD: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether the headers say this is a push event (GitHub, Gitea or Forgejo).
pub(crate) fn is_push(headers: &hyper::HeaderMap) -> bool {
    ["x-github-event", "x-gitea-event", "x-forgejo-event"]
        .iter()
        .any(|name| headers.get(*name).is_some_and(|v| v == "push"))
}

/// The repository a push event's JSON names, from its clone URL (`repository.clone_url`)
/// and `repository.full_name`; `None` when the body says no such thing.
pub(crate) fn pushed(body: &[u8]) -> Option<Pushed> {
    let event: serde_json::Value = serde_json::from_slice(body).ok()?;
    let repository = event.get("repository")?;
    let clone_url = repository.get("clone_url")?.as_str()?;
    let full_name = repository.get("full_name")?.as_str()?;
    let (_, rest) = clone_url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit('@').next()?.to_ascii_lowercase();
    let (owner, repo) = full_name.split_once('/')?;
    let repo = repo.strip_suffix(".git").unwrap_or(repo);
    // Names no forge gives (a host name is 253 bytes at most, a GitHub owner 39 and a
    // repository 100) are no repository gitcache mirrors: not kept while the event waits.
    let bounded = |name: &str| !name.is_empty() && name.len() <= MAX_NAME;
    if !bounded(&host) || !bounded(owner) || !bounded(repo) || repo.contains('/') {
        return None;
    }
    // A ref name longer than git's refs ever are names nothing a mirror keeps (and is not
    // remembered, see `Seen`).
    let name = event
        .get("ref")
        .and_then(|r| r.as_str())
        .filter(|name| name.len() <= MAX_REF_NAME);
    let after = event
        .get("after")
        .and_then(|a| a.as_str())
        .and_then(|a| gix_hash::ObjectId::from_hex(a.as_bytes()).ok());
    Some(Pushed {
        host,
        owner: owner.to_owned(),
        repo: repo.to_owned(),
        moved: name
            .zip(after)
            .map(|(name, after)| (name.to_owned(), after)),
    })
}

pub use gitcache_upstream::signature::sign;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pushed_repository() {
        let body = br#"{"ref":"refs/heads/main","repository":{"full_name":"Acme/Widgets",
            "clone_url":"https://bot@GitHub.com/Acme/Widgets.git"}}"#;
        assert_eq!(
            pushed(body),
            Some(Pushed {
                host: "github.com".into(),
                owner: "Acme".into(),
                repo: "Widgets".into(),
                moved: None,
            })
        );
        let tip = "1".repeat(40);
        let body = format!(
            r#"{{"ref":"refs/heads/main","after":"{tip}","repository":{{"full_name":"a/b","clone_url":"https://h/a/b.git"}}}}"#
        );
        assert_eq!(
            pushed(body.as_bytes()).unwrap().moved,
            Some((
                "refs/heads/main".to_owned(),
                gix_hash::ObjectId::from_hex(tip.as_bytes()).unwrap()
            ))
        );
        let long = format!("refs/heads/{}", "x".repeat(MAX_REF_NAME));
        let body = body.replace("refs/heads/main", &long);
        assert_eq!(
            pushed(body.as_bytes()).unwrap().moved,
            None,
            "a ref name too long"
        );
        for bad in [
            &br#"{"repository":{"full_name":"acme/widgets"}}"#[..],
            br#"{"repository":{"full_name":"acme","clone_url":"https://h/acme.git"}}"#,
            br#"{"repository":{"full_name":"a/b/c","clone_url":"https://h/a/b/c.git"}}"#,
            br#"{"zen":"ping"}"#,
            format!(
                r#"{{"repository":{{"full_name":"{}/r","clone_url":"https://h/o/r.git"}}}}"#,
                "o".repeat(MAX_NAME + 1)
            )
            .as_bytes(),
            b"not json",
        ] {
            assert_eq!(pushed(bad), None);
        }
    }

    #[test]
    fn a_push_seen_lately_is_seen_again() {
        let seen = Seen::default();
        let key = gitcache_storage::repo::RepoKey::new("h", "a", "b").unwrap();
        let other = gitcache_storage::repo::RepoKey::new("h", "a", "c").unwrap();
        let at = |n: u8| gix_hash::ObjectId::from_bytes_or_panic(&[n; 20]);
        assert!(!seen.again(&key, "refs/heads/main", at(1)));
        assert!(
            !seen.again(&key, "refs/heads/main", at(1)),
            "not refreshed yet"
        );
        let token = seen.refreshed(&key, "refs/heads/main", at(1)).unwrap();
        assert!(seen.again(&key, "refs/heads/main", at(1)), "the same push");
        assert_eq!(
            seen.refreshed(&key, "refs/heads/main", at(1)),
            None,
            "noted once"
        );
        // A push whose refresh failed counts for a short while only; another note's token
        // changes nothing.
        seen.failed(&key, token + 1000, std::time::Duration::ZERO);
        assert!(seen.again(&key, "refs/heads/main", at(1)));
        seen.failed(&key, token, std::time::Duration::from_millis(30));
        assert!(seen.again(&key, "refs/heads/main", at(1)), "not at once");
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert!(!seen.again(&key, "refs/heads/main", at(1)), "then again");
        seen.refreshed(&key, "refs/heads/main", at(1)).unwrap();
        assert!(!seen.again(&key, "refs/heads/dev", at(1)), "another ref");
        assert!(
            !seen.again(&other, "refs/heads/main", at(1)),
            "another mirror"
        );
        for n in 2..2 + SEEN_PER_MIRROR as u8 {
            assert!(!seen.again(&key, "refs/heads/main", at(n)));
            seen.refreshed(&key, "refs/heads/main", at(n)).unwrap();
        }
        assert!(
            !seen.again(&key, "refs/heads/main", at(1)),
            "pushed out by as many others"
        );
    }

    /// Pushes wait in order, each once (an older push of a ref stays beside a newer one);
    /// past the bound, none is taken in, unless it waits already.
    #[test]
    fn pushes_wait_in_order_each_once() {
        let push = |repo: &str, branch: &str, at: u8| Pushed {
            host: "h".into(),
            owner: "o".into(),
            repo: repo.into(),
            moved: Some((
                format!("refs/heads/{branch}"),
                gix_hash::ObjectId::from_bytes_or_panic(&[at; 20]),
            )),
        };
        let waiting = Waiting::default();
        for (repo, branch, at) in [
            ("a", "main", 1),
            ("b", "main", 2),
            ("a", "main", 1),
            ("a", "main", 3),
        ] {
            assert!(waiting.push(push(repo, branch, at), tracing::Span::none()));
        }
        let order: Vec<Pushed> = std::iter::from_fn(|| waiting.next().map(|(p, _)| p)).collect();
        assert_eq!(
            order,
            [
                push("a", "main", 1),
                push("b", "main", 2),
                push("a", "main", 3)
            ]
        );
        assert!(waiting.is_empty());
        for n in 0..EVENTS_WAITING {
            assert!(waiting.push(push("a", &format!("b{n}"), 1), tracing::Span::none()));
        }
        assert!(!waiting.push(push("a", "one-more", 1), tracing::Span::none()));
        assert!(
            waiting.push(push("a", "b7", 1), tracing::Span::none()),
            "one waiting already takes no more room"
        );
        assert!(waiting.next().is_some());
        assert!(
            waiting.push(push("a", "b0", 1), tracing::Span::none()),
            "taken, it may wait again"
        );
    }
}
