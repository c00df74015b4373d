//! The entry point shared by the fuzz target and the test that replays its corpus: arbitrary
//! bytes offered as a site manifest, and every path asked of what reads.

use crate::manifest::SiteManifest;
use crate::serve::{Answer, answer};
use crate::site::Site;

/// Decode `data` as a manifest: refused, or read back as itself, and then every path of it
/// (and a few that try to leave it) answered without a panic, never outside the tree.
pub fn manifest(data: &[u8]) {
    let Ok(manifest) = SiteManifest::decode(data) else {
        return;
    };
    assert_eq!(
        manifest.encode(),
        data,
        "a manifest that reads writes back the same"
    );
    let paths: Vec<String> = manifest.entries.keys().cloned().collect();
    let site = Site { manifest };
    for path in paths
        .iter()
        .map(|p| format!("/{p}"))
        .chain(["/", "/../x", "/%2e%2e/x"].map(str::to_owned))
    {
        if let Answer::Found(file) | Answer::NotFound(Some(file)) = answer(&site, &path) {
            assert!(
                site.manifest.entries.contains_key(&file.path),
                "{}",
                file.path
            );
        }
    }
}
