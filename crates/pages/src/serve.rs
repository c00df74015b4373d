//! What a `GET` or `HEAD` of a path answers on a deployed site, decided from the manifest
//! alone (an `ETag` comparison needs no blob).
//!
//! - The request path is percent-decoded, then refused if any segment is `.` or `..` or holds
//!   a `\` or a control character (encoded or not): nothing reaches outside the tree.
//! - A directory is answered by its `index.html`; one asked without its trailing slash is
//!   redirected to it.
//! - A symlink is followed inside the tree only (relative to its directory, at most
//!   [`MAX_HOPS`] links); one that leaves the tree or goes nowhere is not found.
//! - What is not found is answered by the site's own `404.html` when it has one.
//! - The site's `_redirects` and `_headers` files are not sent.

use crate::manifest::{Content, Entry, SiteManifest};
use crate::rules::{HEADERS_FILE, REDIRECTS_FILE};
use crate::site::Site;

/// The most symlinks followed for one path.
pub const MAX_HOPS: usize = 8;

/// A file to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File<'a> {
    /// Its path in the tree (after directories and symlinks).
    pub path: String,
    /// Its content, inline or a blob.
    pub content: &'a Content,
    /// Its `ETag` (quoted): the content's SHA-256.
    pub etag: String,
    /// Its `Content-Type`, by extension.
    pub content_type: &'static str,
}

/// The answer to a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'a> {
    /// Send this file (`200`, or `304` when the client's `If-None-Match` holds its `ETag`).
    Found(File<'a>),
    /// Redirect (`301`) to this path: a directory asked without its slash.
    Redirect(String),
    /// Not found (`404`), with the site's `404.html` if it has one.
    NotFound(Option<File<'a>>),
    /// A path that would leave the tree, or cannot be decoded (`400`).
    BadPath,
}

/// The project a request path names, by exclusion: its first segment when `deployed` says a
/// project of that name is deployed, with the rest of the path (from its slash; empty for
/// `/<project>` alone, which the server redirects to `/<project>/`); else the domain's root
/// tree (`.index`) with the whole path.
pub fn route(path: &str, deployed: impl Fn(&str) -> bool) -> (String, &str) {
    let trimmed = path.trim_start_matches('/');
    let raw = trimmed.split('/').next().unwrap_or_default();
    // Decoded, as the files' paths are: `/%62log/` is project `blog`'s.
    if let Some(first) = first_segment(path)
        && deployed(&first)
    {
        return (first, &trimmed[raw.len()..]);
    }
    (".index".to_owned(), path)
}

/// The first segment of `path`, percent-decoded, when it could name a project: not empty,
/// not `.index`, decoding to no `/`.
pub fn first_segment(path: &str) -> Option<String> {
    let raw = path.trim_start_matches('/').split('/').next()?;
    let first = decode(raw)?;
    (!first.is_empty() && first != ".index" && !first.contains('/')).then_some(first)
}

/// `segments` joined by `/`, each byte outside unreserved characters and a few harmless ones
/// percent-encoded.
fn encode(segments: &[String]) -> String {
    let mut out = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&percent_encode(segment, b"-._~!$&'()*+,;=:@"));
    }
    out
}

/// `text` with each byte that is neither alphanumeric nor in `keep` percent-encoded.
pub(crate) fn percent_encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `path` percent-decoded, or `None` when it does not decode to UTF-8.
pub fn decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `Content-Type` for a file name, by its extension.
pub fn content_type(path: &str) -> &'static str {
    let extension = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

fn etag(content: &Content) -> String {
    use sha2::Digest as _;
    let hash: [u8; 32] = match content {
        Content::Blob { hash, .. } => *hash,
        Content::Inline(bytes) => sha2::Sha256::digest(bytes).into(),
    };
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The entry at `path` (segments), following symlinks inside the tree: the final path and
/// entry, or `None` when a link leaves the tree, goes nowhere or loops.
fn resolve<'m>(manifest: &'m SiteManifest, path: &[String]) -> Option<(String, &'m Entry)> {
    let mut segments: Vec<String> = path.to_vec();
    let mut hops = 0;
    'walk: loop {
        // Resolve each prefix in turn: a link may be a directory on the way.
        for end in 1..=segments.len() {
            let prefix = segments[..end].join("/");
            match manifest.entries.get(&prefix)? {
                Entry::Symlink(target) => {
                    hops += 1;
                    if hops > MAX_HOPS || target.starts_with('/') {
                        return None;
                    }
                    let mut joined: Vec<String> = segments[..end - 1].to_vec();
                    for part in target.split('/') {
                        match part {
                            "" | "." => {}
                            ".." => {
                                joined.pop()?;
                            }
                            other => joined.push(other.to_owned()),
                        }
                    }
                    joined.extend(segments[end..].iter().cloned());
                    segments = joined;
                    continue 'walk;
                }
                entry if end == segments.len() => return Some((prefix, entry)),
                Entry::Dir => {}
                Entry::File(_) => return None,
            }
        }
        // The root itself.
        return None;
    }
}

fn found<'m>(path: String, entry: &'m Entry) -> Option<File<'m>> {
    match entry {
        // The site's rules are read by the server, not sent.
        Entry::File(_) if path == REDIRECTS_FILE || path == HEADERS_FILE => None,
        Entry::File(content) => Some(File {
            content_type: content_type(&path),
            etag: etag(content),
            content,
            path,
        }),
        _ => None,
    }
}

/// What `request_path` (the URL path within the site, percent-encoded) answers on `site`.
pub fn answer<'m>(site: &'m Site, request_path: &str) -> Answer<'m> {
    let manifest = &site.manifest;
    let Some(decoded) = decode(request_path) else {
        return Answer::BadPath;
    };
    let directory = decoded.ends_with('/') || decoded.is_empty();
    let mut segments: Vec<String> = Vec::new();
    for segment in decoded.split('/') {
        if segment == "." || segment == ".." || segment.chars().any(|c| c.is_control() || c == '\\')
        {
            return Answer::BadPath;
        }
        if !segment.is_empty() {
            segments.push(segment.to_owned());
        }
    }
    let not_found = || {
        Answer::NotFound(resolve(manifest, &["404.html".to_owned()]).and_then(|(p, e)| found(p, e)))
    };
    let index = |dir: &[String]| {
        let mut path = dir.to_vec();
        path.push("index.html".to_owned());
        resolve(manifest, &path).and_then(|(p, e)| found(p, e))
    };
    if segments.is_empty() {
        return index(&[]).map_or_else(not_found, Answer::Found);
    }
    match resolve(manifest, &segments) {
        Some((path, Entry::Dir)) => {
            if !directory {
                // Built from the checked segments, one leading slash: never another host.
                return Answer::Redirect(format!("/{}/", encode(&segments)));
            }
            let dir: Vec<String> = path.split('/').map(str::to_owned).collect();
            index(&dir).map_or_else(not_found, Answer::Found)
        }
        Some((path, entry)) => found(path, entry).map_or_else(not_found, Answer::Found),
        None => not_found(),
    }
}
