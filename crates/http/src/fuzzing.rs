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
