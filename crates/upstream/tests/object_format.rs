//! The upstream's object format is asked for once per `Upstream`, or not at all when the
//! caller already knows it; a failed ask is not remembered.

use std::time::Duration;

use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream as TestUpstream};
use gitcache_upstream::Upstream;
use gix_hash::Kind as HashKind;

fn client(upstream: &TestUpstream, name: &str, token: &str) -> Upstream {
    Upstream::new(
        &upstream.repo_url(name),
        Some(format!("Bearer {token}")),
        Duration::from_secs(30),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_format_is_asked_for_once_and_a_refusal_is_not_remembered() {
    let upstream = TestUpstream::start().unwrap();
    repo::generate(
        &upstream.repo_path("acme/modern"),
        &RepoSpec::tiny(7).sha256(),
    )
    .unwrap();
    upstream
        .adopt_repo("acme/modern", Access::private(["alice"]))
        .unwrap();

    let alice = client(&upstream, "acme/modern", "alice");
    assert_eq!(alice.object_format().await.unwrap(), HashKind::Sha256);
    assert_eq!(alice.object_format().await.unwrap(), HashKind::Sha256);
    assert_eq!(upstream.counts().info_refs, 1, "asked once");

    // Told by the caller: not asked at all, and what it was told stands.
    upstream.reset_counts();
    let told = client(&upstream, "acme/modern", "alice").with_object_format(HashKind::Sha256);
    assert_eq!(told.object_format().await.unwrap(), HashKind::Sha256);
    assert_eq!(upstream.counts().info_refs, 0);

    // Refused: an error each time, asked each time.
    let mallory = client(&upstream, "acme/modern", "mallory");
    assert!(mallory.object_format().await.is_err());
    upstream.allow_token("acme/modern", "mallory");
    assert_eq!(mallory.object_format().await.unwrap(), HashKind::Sha256);
    assert_eq!(upstream.counts().info_refs, 2);
}
