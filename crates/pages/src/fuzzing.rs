//! The entry points shared by the fuzz targets and the tests that replay their corpora:
//! arbitrary bytes offered as a site manifest (and every path asked of what reads), and as a
//! DNS server's answer.

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

/// Read `data` as the answer to a TXT query: records or an error, never a panic, and never
/// more than the answer's bytes can hold.
pub fn dns_answer(data: &[u8]) {
    let id = data.first().map_or(0, |b| {
        u16::from(*b) << 8 | u16::from(*data.get(1).unwrap_or(&0))
    });
    if let Ok(records) = crate::dns::txt_records(id, "_git-pages-challenge.site.example", data) {
        let total: usize = records.iter().map(String::len).sum();
        assert!(
            total <= data.len() * 3,
            "records made of the answer's bytes"
        );
    }
}
