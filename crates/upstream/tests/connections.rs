//! Kept connections: exchanges with one upstream reuse one connection, never across
//! credentials, and a connection the upstream has closed is replaced, not failed on.

use std::time::Duration;

use gitcache_protocol::request::LsRefs;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Fault, Upstream as TestUpstream};
use gitcache_upstream::{Connections, Upstream};

fn client(
    upstream: &TestUpstream,
    token: Option<&str>,
    connections: Option<&Connections>,
) -> Upstream {
    let client = Upstream::new(
        &upstream.repo_url("acme/widgets"),
        token.map(|t| format!("Bearer {t}")),
        Duration::from_secs(30),
    )
    .unwrap();
    match connections {
        Some(c) => client.with_connections(c.clone()),
        None => client,
    }
}

fn upstream_with_repo() -> TestUpstream {
    let upstream = TestUpstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/widgets"), &RepoSpec::small(5)).unwrap();
    upstream
        .adopt_repo("acme/widgets", Access::private(["alice", "bob"]))
        .unwrap();
    upstream
}

/// Advertisement, then `ls-refs` three times: one connection with a shared set, four without.
async fn four_exchanges(client: &Upstream) {
    let format = client.object_format().await.unwrap();
    for _ in 0..3 {
        let refs = client.ls_refs(format, LsRefs::default()).await.unwrap();
        assert!(!refs.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_reuse_a_kept_connection() {
    let upstream = upstream_with_repo();
    four_exchanges(&client(&upstream, Some("alice"), None)).await;
    assert_eq!(upstream.connections(), 4, "no set: a connection each");

    let connections = Connections::new();
    four_exchanges(&client(&upstream, Some("alice"), Some(&connections))).await;
    assert_eq!(
        upstream.connections(),
        5,
        "one connection for four exchanges"
    );
    assert_eq!(connections.kept(), 1);

    // Another Upstream value for the same repository and credential shares it too.
    four_exchanges(&client(&upstream, Some("alice"), Some(&connections))).await;
    assert_eq!(upstream.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_not_shared_across_credentials() {
    let upstream = upstream_with_repo();
    let connections = Connections::new();
    four_exchanges(&client(&upstream, Some("alice"), Some(&connections))).await;
    four_exchanges(&client(&upstream, Some("bob"), Some(&connections))).await;
    assert_eq!(upstream.connections(), 2, "one per credential");
    assert_eq!(connections.kept(), 2);
    for (connection, credentials) in upstream.credentials_by_connection() {
        assert_eq!(
            credentials.len(),
            1,
            "connection {connection}: {credentials:?}"
        );
    }
    // No credential is a credential of its own (refused here, on a connection of its own).
    let anonymous = client(&upstream, None, Some(&connections));
    assert!(
        anonymous
            .object_format()
            .await
            .unwrap_err()
            .is_access_denied()
    );
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closed_is_replaced() {
    let upstream = upstream_with_repo();
    let connections = Connections::new();
    let alice = client(&upstream, Some("alice"), Some(&connections));
    four_exchanges(&alice).await;
    assert_eq!(upstream.connections(), 1);
    upstream.close_connections();
    // The kept connection is closed under it: the next exchange opens a new one and succeeds.
    four_exchanges(&alice).await;
    assert_eq!(upstream.connections(), 2);
}

/// A kept connection that the upstream drops after the request went out (its keep-alive ran
/// out at that instant): the request is sent again on a new connection, and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_on_a_kept_connection_is_sent_again() {
    let upstream = upstream_with_repo();
    let connections = Connections::new();
    let alice = client(&upstream, Some("alice"), Some(&connections));
    let format = alice.object_format().await.unwrap();
    assert_eq!(connections.kept(), 1);
    upstream.inject(Fault::Hangup, 1, None);
    let refs = alice.ls_refs(format, LsRefs::default()).await.unwrap();
    assert!(!refs.is_empty());
    assert_eq!(upstream.connections(), 2, "the kept one, then a new one");
    let requests = upstream.requests();
    assert_eq!(
        requests.len(),
        3,
        "advertisement, ls-refs lost, ls-refs again"
    );
    assert_eq!(requests[1].connection, 1);
    assert_eq!(requests[2].connection, 2);

    // Without a kept connection there is nothing to retry: the hang-up is the answer.
    let fresh = client(&upstream, Some("alice"), None);
    upstream.inject(Fault::Hangup, 1, None);
    assert!(fresh.ls_refs(format, LsRefs::default()).await.is_err());
}
