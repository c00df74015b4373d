//! Entry points shared by the fuzz targets and by the test that replays their corpora.
//!
//! Each takes arbitrary bytes, must never panic, and checks what must hold for any input.

/// Route a request line's target: the bytes up to the first `?` as the path, the rest as the
/// query. A path that routes names a checked repository and no segment an upstream could
/// resolve elsewhere.
pub fn route(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let hosts = ["gitlab.example".to_owned(), "127.0.0.1:9000".to_owned()];
    let Ok(route) = crate::route::route(path, query, &hosts) else {
        return;
    };
    for segment in path.split('/').skip(1) {
        assert!(!matches!(segment, "" | "." | ".."), "{path}");
    }
    assert!(!path.contains(['%', '\\', ';']), "{path}");
    let host = route.host.as_deref().unwrap_or("default");
    assert!(gitcache_storage::repo::RepoKey::new(host, &route.owner, &route.repo).is_ok());
    if let crate::route::Service::InfoRefs(Some(service)) = &route.service {
        assert!(service == "git-upload-pack" || service == "git-receive-pack");
    }
}

/// Decode a gzip request body within a 64 KiB limit: a bomb or a broken stream is an error,
/// never more than the limit in memory.
pub fn gunzip(data: &[u8]) {
    const LIMIT: usize = 64 << 10;
    if let Ok(body) = crate::body::gunzip(data, LIMIT) {
        assert!(body.len() <= LIMIT);
    }
}

/// A push webhook: the first byte picks the signature header (GitHub's, Gitea's, none) and
/// whether the signature is right; the rest is the body. Only a right signature verifies, and
/// a repository read from the body has a host and a one-segment owner and name.
pub fn webhook(data: &[u8]) {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let secret = b"fuzz";
    let right = crate::webhook::sign(secret, body);
    let signature = if choice & 1 == 0 {
        right
    } else {
        crate::webhook::sign(b"other", body)
    };
    let mut headers = hyper::HeaderMap::new();
    match choice % 6 / 2 {
        0 => {
            let value = format!("sha256={signature}");
            headers.insert("x-hub-signature-256", value.parse().expect("hex"));
        }
        1 => {
            headers.insert("x-gitea-signature", signature.parse().expect("hex"));
        }
        _ => {}
    }
    let verified = gitcache_upstream::signature::verify(secret, &headers, body).is_ok();
    assert_eq!(verified, choice & 1 == 0 && choice % 6 / 2 < 2);
    if let Some(pushed) = crate::webhook::pushed(body) {
        assert!(!pushed.host.is_empty() && !pushed.owner.is_empty() && !pushed.repo.is_empty());
        assert!(!pushed.repo.contains('/'));
    }
}
