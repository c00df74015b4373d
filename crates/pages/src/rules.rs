//! A site's own `_redirects` and `_headers` files, in the Netlify format, read from the root of
//! its tree.
//!
//! `_redirects`: one rule per line, `FROM TO [STATUS][!]`, `#` comments:
//!
//! ```text
//! /old            /new              301
//! /blog/:year/*   /archive/:year/:splat
//! /app/*          /app/index.html   200
//! /docs/*         https://docs.example/:splat 302
//! /gone           /410.html         404
//! /moved          /elsewhere        302!
//! ```
//!
//! - `FROM` is a path of the site: literal segments, `:name` placeholders (one segment each)
//!   and a final `*` (the rest, as `:splat`). A trailing slash is ignored on both sides.
//! - `STATUS` is 301 (the default), 302, 303, 307 or 308 (a redirect, to a path of the site or
//!   an `http(s)://` URL), 200 (the site's file at `TO` is sent instead: a rewrite) or 404 (the
//!   file at `TO` is sent as not found).
//! - Rules are tried in order; the first that matches applies. A rule applies only where no
//!   file answers the path, unless its status ends with `!` (forced).
//!
//! `_headers`: a path pattern on a line of its own, then the headers for it, indented:
//!
//! ```text
//! /*
//!   X-Frame-Options: DENY
//! /assets/*
//!   Cache-Control: public, max-age=31536000, immutable
//! ```
//!
//! Every block whose pattern matches adds its headers. Headers that frame the answer
//! (`Content-Length`, `Content-Encoding`, `ETag`, hop-by-hop headers, …) cannot be set.
//!
//! For a project (`/<project>/`), paths in both files are the project's own: `/old` is
//! `/<project>/old`.
//!
//! Both files are read strictly (a fuzz target, `pages_rules`, runs the parser): a deployment
//! whose rules do not parse is refused, naming the line.

/// The most rules in each file.
pub const MAX_RULES: usize = 1000;
/// The largest `_redirects` or `_headers` file read.
pub const MAX_RULES_BYTES: u64 = 256 << 10;
/// The longest line of either file.
const MAX_LINE: usize = 4096;
/// The most segments of a path pattern; longer request paths match no rule, except through
/// a splat.
const MAX_SEGMENTS: usize = 32;
/// The most headers one `_headers` block sets.
const MAX_HEADERS_PER_RULE: usize = 64;
/// The most header lines of a `_headers` file in all: every block may match one path, and an
/// answer holds a bounded number of headers.
pub const MAX_HEADER_LINES: usize = 1024;

/// The redirects file at the root of a site's tree.
pub const REDIRECTS_FILE: &str = "_redirects";
/// The headers file at the root of a site's tree.
pub const HEADERS_FILE: &str = "_headers";

/// A rules file that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} line {line}: {reason}")]
pub struct RuleError {
    /// Which file.
    pub file: &'static str,
    /// The line (from 1).
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Placeholder(String),
    /// The rest of the path (last only).
    Splat,
}

/// A path pattern: segments, the last perhaps a splat.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(Vec<Segment>);

/// What a match captured: placeholders by name, and the splat.
type Captures<'a> = Vec<(&'a str, String)>;

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("a path must start with '/': {text:?}"));
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() > MAX_SEGMENTS {
            return Err(format!("more than {MAX_SEGMENTS} segments: {text:?}"));
        }
        for (i, part) in parts.iter().enumerate() {
            if *part == "." || *part == ".." {
                return Err(format!("no '.' or '..' segments: {text:?}"));
            }
            if *part == "*" {
                if i + 1 != parts.len() {
                    return Err(format!("'*' must be the last segment: {text:?}"));
                }
                segments.push(Segment::Splat);
            } else if let Some(name) = part.strip_prefix(':') {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("not a placeholder name: {part:?}"));
                }
                segments.push(Segment::Placeholder(name.to_owned()));
            } else if part.contains('*') {
                return Err(format!("'*' must be a whole segment: {text:?}"));
            } else {
                segments.push(Segment::Literal((*part).to_owned()));
            }
        }
        Ok(Pattern(segments))
    }

    /// What a path split into `parts` (decoded segments) captures, if it matches.
    fn captures(&self, parts: &[&str]) -> Option<Captures<'_>> {
        if parts.len() < self.0.len().saturating_sub(1) {
            return None;
        }
        let mut captured = Vec::new();
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Splat => {
                    captured.push(("splat", parts.get(i..).unwrap_or_default().join("/")));
                    return Some(captured);
                }
                Segment::Literal(literal) => {
                    if parts.get(i) != Some(&literal.as_str()) {
                        return None;
                    }
                }
                Segment::Placeholder(name) => {
                    captured.push((name.as_str(), (*parts.get(i)?).to_owned()));
                }
            }
        }
        (parts.len() == self.0.len()).then_some(captured)
    }
}

/// The segments of a decoded request path, or `None` when it has more than
/// [`MAX_SEGMENTS`] (no rule can match it: each pattern has fewer).
fn segments(path: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .take(MAX_SEGMENTS + 1)
        .collect();
    (parts.len() <= MAX_SEGMENTS).then_some(parts)
}

/// `value` (decoded) percent-encoded for a URL path: `/` and unreserved characters kept.
fn encode(value: &str) -> String {
    crate::serve::percent_encode(value, b"-._~/")
}

/// What a redirect rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Redirect with this status (301, 302, 303, 307 or 308).
    Redirect(u16),
    /// Send the site's file at the target instead (`200`).
    Rewrite,
    /// Send the site's file at the target as not found (`404`).
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Redirect {
    from: Pattern,
    to: String,
    kind: RuleKind,
    force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HeaderRule {
    pattern: Pattern,
    headers: Vec<(String, String)>,
}

/// A site's rules, from its `_redirects` and `_headers` files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    redirects: Vec<Redirect>,
    headers: Vec<HeaderRule>,
}

/// A redirect rule that applies to a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What to do.
    pub kind: RuleKind,
    /// Where: a path of the site (starting with `/`) or, for a redirect only, a URL.
    pub to: String,
}

/// Headers the site may not set: they frame the answer, belong to the connection, are the
/// server's to say (`Location`), reach past the site (`Set-Cookie` and `Clear-Site-Data`:
/// sites of one wildcard domain share a parent domain; `Service-Worker-Allowed`: a project
/// shares its host with the others under it), or tell a proxy in front what to serve
/// instead (nginx's `X-Accel-*`, `X-Sendfile` and its kind).
const RESERVED_HEADERS: &[&str] = &[
    "accept-ranges",
    "clear-site-data",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "date",
    "etag",
    "keep-alive",
    "location",
    "proxy-authenticate",
    "proxy-connection",
    "service-worker-allowed",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "vary",
    "x-lighttpd-send-file",
    "x-litespeed-location",
    "x-sendfile",
    "x-sendfile2",
];

/// Whether a site may not set the header `lower` (its name in lower case).
fn reserved(lower: &str) -> bool {
    RESERVED_HEADERS.contains(&lower) || lower.starts_with("x-accel-")
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The lines of `text` that say something, numbered from 1, without their comments.
fn lines(file: &'static str, text: &str) -> Result<Vec<(usize, String)>, RuleError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.len() > MAX_LINE {
            return Err(RuleError {
                file,
                line: i + 1,
                reason: format!("longer than {MAX_LINE} bytes"),
            });
        }
        // A comment starts a line or follows a space (`#` in a URL fragment stays).
        let line = match line
            .match_indices('#')
            .find(|(at, _)| *at == 0 || line[..*at].ends_with([' ', '\t']))
        {
            Some((at, _)) => &line[..at],
            None => line,
        };
        if !line.trim().is_empty() {
            out.push((i + 1, line.trim_end().to_owned()));
        }
    }
    Ok(out)
}

impl Rules {
    /// Read a site's rules from the contents of its `_redirects` and `_headers` files.
    pub fn parse(redirects: Option<&str>, headers: Option<&str>) -> Result<Self, RuleError> {
        Self::parse_as(redirects, headers, false)
    }

    /// [`Rules::parse`] of rules a deployment took before (an older release checked them
    /// less): a header line it would now refuse as one a site may not set, or past the
    /// most header lines, is left out rather than the whole file.
    pub fn parse_deployed(
        redirects: Option<&str>,
        headers: Option<&str>,
    ) -> Result<Self, RuleError> {
        Self::parse_as(redirects, headers, true)
    }

    fn parse_as(
        redirects: Option<&str>,
        headers: Option<&str>,
        lenient: bool,
    ) -> Result<Self, RuleError> {
        Ok(Rules {
            redirects: redirects
                .map(parse_redirects)
                .transpose()?
                .unwrap_or_default(),
            headers: headers
                .map(|text| parse_headers(text, lenient))
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// About the memory the rules take, in bytes.
    pub fn cost(&self) -> usize {
        let pattern = |p: &Pattern| {
            p.0.iter()
                .map(|s| match s {
                    Segment::Literal(t) | Segment::Placeholder(t) => t.len() + 32,
                    Segment::Splat => 32,
                })
                .sum::<usize>()
        };
        let redirects: usize = self
            .redirects
            .iter()
            .map(|r| pattern(&r.from) + r.to.len() + 64)
            .sum();
        let headers: usize = self
            .headers
            .iter()
            .map(|h| {
                pattern(&h.pattern)
                    + h.headers
                        .iter()
                        .map(|(n, v)| n.len() + v.len() + 48)
                        .sum::<usize>()
                    + 64
            })
            .sum();
        redirects + headers
    }

    /// Whether the site has no rules.
    pub fn is_empty(&self) -> bool {
        self.redirects.is_empty() && self.headers.is_empty()
    }

    /// The redirect rule that applies to `path` (decoded, from the site's root), when a file
    /// answers it (`exists`) or not. What it captured is percent-encoded again in the
    /// target.
    /// A path with control characters matches nothing (what it captures would be sent).
    pub fn redirect(&self, path: &str, exists: bool) -> Option<Applied> {
        if path.chars().any(char::is_control) {
            return None;
        }
        let parts = segments(path);
        self.redirects
            .iter()
            .filter(|rule| rule.force || !exists)
            .find_map(|rule| {
                // A path too long for any pattern still meets a splat at its start.
                let captured = match &parts {
                    Some(parts) => rule.from.captures(parts)?,
                    None if rule.from.0 == [Segment::Splat] => {
                        vec![("splat", path.trim_matches('/').to_owned())]
                    }
                    None => return None,
                };
                Some(Applied {
                    kind: rule.kind,
                    to: substitute(&rule.to, &captured),
                })
            })
    }

    /// The headers the site sets for `path` (decoded, from the site's root), in file order.
    pub fn headers(&self, path: &str) -> Vec<(&str, &str)> {
        let parts = segments(path);
        self.headers
            .iter()
            .filter(|rule| match &parts {
                Some(parts) => rule.pattern.captures(parts).is_some(),
                // Longer than any pattern: only those that are a splat from the root.
                None => rule.pattern.0 == [Segment::Splat],
            })
            .flat_map(|rule| {
                rule.headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str()))
            })
            .collect()
    }
}

/// `to` with `:name` and `:splat` replaced by what was captured.
fn substitute(to: &str, captured: &Captures<'_>) -> String {
    let mut out = String::with_capacity(to.len());
    let mut rest = to;
    while let Some(at) = rest.find(':') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name = &after[..name_len];
        match captured.iter().find(|(n, _)| *n == name) {
            Some((_, value)) if name_len > 0 => out.push_str(&encode(value)),
            _ => {
                out.push(':');
                out.push_str(name);
            }
        }
        rest = &after[name_len..];
    }
    out.push_str(rest);
    out
}

fn parse_redirects(text: &str) -> Result<Vec<Redirect>, RuleError> {
    let mut rules = Vec::new();
    for (line, content) in lines(REDIRECTS_FILE, text)? {
        let error = |reason: String| RuleError {
            file: REDIRECTS_FILE,
            line,
            reason,
        };
        if rules.len() == MAX_RULES {
            return Err(error(format!("more than {MAX_RULES} rules")));
        }
        let fields: Vec<&str> = content.split_whitespace().collect();
        let (from, to, status) = match fields.as_slice() {
            [from, to] => (*from, *to, "301"),
            [from, to, status] => (*from, *to, *status),
            _ => return Err(error("expected FROM TO [STATUS]".to_owned())),
        };
        let from = Pattern::parse(from).map_err(error)?;
        let (status, force) = match status.strip_suffix('!') {
            Some(status) => (status, true),
            None => (status, false),
        };
        let kind = match status {
            "301" | "302" | "303" | "307" | "308" => {
                RuleKind::Redirect(status.parse().unwrap_or(301))
            }
            "200" => RuleKind::Rewrite,
            "404" => RuleKind::NotFound,
            other => return Err(error(format!("not a status rules may use: {other:?}"))),
        };
        let external = to.starts_with("https://") || to.starts_with("http://");
        if external {
            if !matches!(kind, RuleKind::Redirect(_)) {
                return Err(error(
                    "only a redirect (3xx) may lead to another site".to_owned(),
                ));
            }
        } else if !to.starts_with('/') || to.starts_with("//") {
            return Err(error(format!(
                "a target is a path of the site or an http(s) URL: {to:?}"
            )));
        } else if to.split(['/', '?', '#']).any(|s| s == "." || s == "..") {
            return Err(error(format!("no '.' or '..' segments: {to:?}")));
        }
        if !is_header_value(to) {
            return Err(error(format!("not a valid target: {to:?}")));
        }
        rules.push(Redirect {
            from,
            to: to.to_owned(),
            kind,
            force,
        });
    }
    Ok(rules)
}

fn parse_headers(text: &str, lenient: bool) -> Result<Vec<HeaderRule>, RuleError> {
    let mut rules: Vec<HeaderRule> = Vec::new();
    let mut header_lines = 0;
    for (line, content) in lines(HEADERS_FILE, text)? {
        let error = |reason: String| RuleError {
            file: HEADERS_FILE,
            line,
            reason,
        };
        if !content.starts_with([' ', '\t']) {
            if rules.len() == MAX_RULES {
                return Err(error(format!("more than {MAX_RULES} rules")));
            }
            let pattern = Pattern::parse(content.trim()).map_err(error)?;
            rules.push(HeaderRule {
                pattern,
                headers: Vec::new(),
            });
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            return Err(error("a header before any path".to_owned()));
        };
        let Some((name, value)) = content.trim().split_once(':') else {
            return Err(error("expected Name: value".to_owned()));
        };
        let (name, value) = (name.trim(), value.trim());
        if !is_token(name) || !is_header_value(value) {
            return Err(error(format!("not a valid header: {name:?}")));
        }
        let lower = name.to_ascii_lowercase();
        if reserved(&lower) {
            if lenient {
                continue;
            }
            return Err(error(format!("{name} cannot be set by a site")));
        }
        if rule.headers.len() == MAX_HEADERS_PER_RULE {
            return Err(error(format!(
                "more than {MAX_HEADERS_PER_RULE} headers for one path"
            )));
        }
        header_lines += 1;
        if header_lines > MAX_HEADER_LINES {
            if lenient {
                continue;
            }
            return Err(error(format!(
                "more than {MAX_HEADER_LINES} header lines in all"
            )));
        }
        rule.headers.push((lower, value.to_owned()));
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(kind: RuleKind, to: &str) -> Option<Applied> {
        Some(Applied {
            kind,
            to: to.to_owned(),
        })
    }

    #[test]
    fn redirects_match_in_order_with_placeholders_and_splats() {
        let rules = Rules::parse(
            Some(
                "# moved pages\n\
                 /old /new\n\
                 /blog/:year/* /archive/:year/:splat 302\n\
                 /app/* /app/index.html 200\n\
                 /docs/* https://docs.example/:splat#top 308 # kept\n\
                 /gone /410.html 404\n\
                 /forced/ /elsewhere 307!\n",
            ),
            None,
        )
        .unwrap();
        assert_eq!(
            rules.redirect("/old", false),
            applied(RuleKind::Redirect(301), "/new")
        );
        assert_eq!(
            rules.redirect("/old/", false),
            applied(RuleKind::Redirect(301), "/new")
        );
        assert_eq!(
            rules.redirect("/old", true),
            None,
            "a file shadows an unforced rule"
        );
        assert_eq!(
            rules.redirect("/blog/2024/05/post.html", false),
            applied(RuleKind::Redirect(302), "/archive/2024/05/post.html")
        );
        assert_eq!(
            rules.redirect("/blog/2024", false),
            applied(RuleKind::Redirect(302), "/archive/2024/"),
            "a splat may be empty"
        );
        assert_eq!(
            rules.redirect("/blog", false),
            None,
            "the placeholder needs a segment"
        );
        assert_eq!(
            rules.redirect("/blog/2024/a b/ü?", false),
            applied(RuleKind::Redirect(302), "/archive/2024/a%20b/%C3%BC%3F"),
            "captures are encoded again"
        );
        let deep = format!("/old{}", "/x".repeat(100));
        assert_eq!(
            rules.redirect(&deep, false),
            None,
            "longer than any pattern"
        );
        assert_eq!(
            rules.redirect("/app/settings/users", false),
            applied(RuleKind::Rewrite, "/app/index.html")
        );
        assert_eq!(
            rules.redirect("/docs/a/b", false),
            applied(RuleKind::Redirect(308), "https://docs.example/a/b#top")
        );
        assert_eq!(
            rules.redirect("/gone", false),
            applied(RuleKind::NotFound, "/410.html")
        );
        assert_eq!(
            rules.redirect("/forced", true),
            applied(RuleKind::Redirect(307), "/elsewhere")
        );
        assert_eq!(rules.redirect("/other", false), None);
        assert_eq!(rules.redirect("/blog/1/\r\nSet-Cookie: x", false), None);
    }

    #[test]
    fn headers_add_up_over_every_matching_block() {
        let rules = Rules::parse(
            None,
            Some(
                "/*\n  X-Frame-Options: DENY\n\n/assets/*\n\tCache-Control: max-age=60\n  X-Note: a: b\n",
            ),
        )
        .unwrap();
        assert_eq!(
            rules.headers("/assets/app.css"),
            vec![
                ("x-frame-options", "DENY"),
                ("cache-control", "max-age=60"),
                ("x-note", "a: b")
            ]
        );
        assert_eq!(
            rules.headers("/index.html"),
            vec![("x-frame-options", "DENY")]
        );
    }

    #[test]
    fn bad_rules_name_their_line() {
        for (redirects, line, needle) in [
            ("/a", 1, "FROM TO"),
            ("\n/a /b 418", 2, "status"),
            ("/a //evil.example 301", 1, "target"),
            ("/a javascript:alert(1) 302", 1, "target"),
            ("/a https://x.example 200", 1, "another site"),
            ("/a/*/b /c", 1, "last"),
            ("/a/../b /c", 1, "'..'"),
            ("/a /b/../c 200", 1, "'..'"),
            ("a /b", 1, "start with"),
        ] {
            let err = Rules::parse(Some(redirects), None).unwrap_err();
            assert_eq!(err.line, line, "{redirects}");
            assert!(err.reason.contains(needle), "{redirects}: {err}");
        }
        for (headers, needle) in [
            ("  X-A: b", "before any path"),
            ("/*\n  Content-Length: 5", "cannot be set"),
            (
                "/*\n  Location: https://elsewhere.example/",
                "cannot be set",
            ),
            (
                "/*\n  Set-Cookie: a=b; Domain=example.page",
                "cannot be set",
            ),
            ("/*\n  Proxy-Authenticate: Basic", "cannot be set"),
            ("/*\n  Clear-Site-Data: \"cookies\"", "cannot be set"),
            ("/*\n  Service-Worker-Allowed: /", "cannot be set"),
            ("/*\n  X-Accel-Redirect: /internal/", "cannot be set"),
            ("/*\n  X-Sendfile: /etc/passwd", "cannot be set"),
            ("/*\n  Bad Name: 5", "not a valid header"),
            ("/*\n  X-A", "Name: value"),
            ("/*\n  X-A: \u{1}", "not a valid header"),
        ] {
            let err = Rules::parse(None, Some(headers)).unwrap_err();
            assert!(err.reason.contains(needle), "{headers}: {err}");
        }
        let many: String = (0..=MAX_RULES).map(|i| format!("/a{i} /b\n")).collect();
        assert!(Rules::parse(Some(&many), None).is_err());
        // Header lines are bounded in all, not only per block: every block may match.
        let lines = |n: usize| -> String {
            (0..n)
                .map(|i| match i % 64 {
                    0 => format!("/*\n\tx-{i}:\n"),
                    _ => format!("\tx-{i}:\n"),
                })
                .collect()
        };
        assert!(Rules::parse(None, Some(&lines(MAX_HEADER_LINES))).is_ok());
        let err = Rules::parse(None, Some(&lines(MAX_HEADER_LINES + 1))).unwrap_err();
        assert!(err.reason.contains("in all"), "{err}");
    }

    /// Rules a deployment took before these checks (an older release's) keep what they may
    /// still set: the lines now refused are left out, not the whole file with its security
    /// headers.
    #[test]
    fn rules_deployed_before_keep_what_may_still_be_set() {
        let text = "/*\n  X-Frame-Options: DENY\n  Set-Cookie: a=b; Domain=example.page\n";
        assert!(Rules::parse(None, Some(text)).is_err());
        let rules = Rules::parse_deployed(None, Some(text)).unwrap();
        assert_eq!(rules.headers("/x"), vec![("x-frame-options", "DENY")]);
        // Past the most header lines in all: the first that many kept.
        let many: String = (0..MAX_HEADER_LINES + 64)
            .map(|i| match i % 64 {
                0 => format!("/*\n\tx-{i}: v\n"),
                _ => format!("\tx-{i}: v\n"),
            })
            .collect();
        assert!(Rules::parse(None, Some(&many)).is_err());
        let rules = Rules::parse_deployed(None, Some(&many)).unwrap();
        assert_eq!(rules.headers("/x").len(), MAX_HEADER_LINES);
    }
}
