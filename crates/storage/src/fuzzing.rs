//! The entry point shared by the fuzz target and the test that replays its corpus.

/// Offer `data` as a stored response file (content, checksum, magic trailer) and read it as
/// the proxy does: a file without the trailer is refused and removed; one with it is
/// streamed, and its checksum verifies exactly when it is the content's.
pub fn response_entry(data: &[u8]) {
    use sha2::Digest;
    use std::io::Read;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!(
        "gitcache-fuzz-responses-{}-{n}",
        std::process::id()
    ));
    let repo = std::path::Path::new("h/o/r.git");
    let store = crate::responses::ResponseStore::new(&root);
    let dir = store.repo_dir(repo);
    std::fs::create_dir_all(&dir).expect("temporary folder");
    std::fs::write(dir.join("k.resp"), data).expect("temporary file");
    match store.open(repo, "k") {
        Ok(Some(mut entry)) => {
            let mut content = Vec::new();
            let len = entry.len();
            entry
                .file()
                .take(len)
                .read_to_end(&mut content)
                .expect("the entry reads");
            assert_eq!(content.len() as u64, entry.len());
            assert_eq!(&data[..content.len()], &content[..]);
            let digest = sha2::Sha256::digest(&content);
            let stated = &data[content.len()..content.len() + 32];
            assert_eq!(entry.verify(&digest), &digest[..] == stated);
        }
        Ok(None) => assert!(!dir.join("k.resp").exists(), "a refused entry is removed"),
        Err(err) => panic!("reading a local file failed: {err}"),
    }
    let _ = std::fs::remove_dir_all(&root);
}
