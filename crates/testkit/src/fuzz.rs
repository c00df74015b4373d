//! Replaying fuzz corpora in ordinary tests.

use std::path::{Path, PathBuf};

/// The workspace's `fuzz/` folder.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Run `run` on every file of `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` (saved
/// crashes), each caught so that the failing file is named; returns how many were replayed.
pub fn replay(target: &str, run: impl Fn(&[u8])) -> usize {
    let mut replayed = 0;
    for folder in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(folder).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable corpus folder").path();
            if path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep") {
                let data = std::fs::read(&path).expect("a readable corpus file");
                // A panic fails the test either way; catching it only names the file.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
                assert!(outcome.is_ok(), "{} panics", path.display());
                replayed += 1;
            }
        }
    }
    replayed
}
