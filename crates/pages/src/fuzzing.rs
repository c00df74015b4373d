//! The entry points shared by the fuzz targets and the tests that replay their corpora:
//! arbitrary bytes offered as a site manifest (and every path asked of what reads), and as a
//! DNS server's answer, and as a site's rules.

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
    let site = Site {
        manifest,
        ..Site::default()
    };
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

/// Read `data` as a site's rules: its `_redirects`, `_headers`, a request path and an
/// `Accept-Encoding` value, separated by NUL bytes. Rules parse or are refused with a line
/// number within the file; what a parsed rule leads to is a path of the site or an `http(s)`
/// URL, never a scheme-relative one; and the headers it sets are never reserved ones.
pub fn rules(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let (redirects, headers) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = parts.next().unwrap_or("/");
    let _ = crate::encoding::negotiate(parts.next().unwrap_or(""));
    let rules = match crate::rules::Rules::parse(Some(redirects), Some(headers)) {
        Ok(rules) => rules,
        Err(err) => {
            let lines = if err.file == crate::rules::REDIRECTS_FILE {
                redirects.lines().count()
            } else {
                headers.lines().count()
            };
            assert!(err.line >= 1 && err.line <= lines.max(1), "{err}");
            return;
        }
    };
    for exists in [false, true] {
        if let Some(applied) = rules.redirect(path, exists) {
            assert!(
                (applied.to.starts_with('/') && !applied.to.starts_with("//"))
                    || applied.to.starts_with("http://")
                    || applied.to.starts_with("https://"),
                "{applied:?}"
            );
            assert!(!applied.to.contains(['\r', '\n']), "{applied:?}");
        }
    }
    for (name, value) in rules.headers(path) {
        assert!(hyper::header::HeaderName::from_bytes(name.as_bytes()).is_ok());
        assert!(hyper::header::HeaderValue::from_str(value).is_ok());
        assert!(!["content-length", "transfer-encoding", "etag"].contains(&name));
    }
}
