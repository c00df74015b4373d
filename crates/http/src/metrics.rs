//! The metrics gitcache-http keeps, through the `metrics` facade: the server installs a
//! Prometheus recorder and hands its handle to the proxy, which serves `/metrics`. Without a
//! recorder every update is a no-op.
//!
//! Labels that come from request paths (`owner`, `repo`) are bounded: the first
//! [`MAX_REPO_LABELS`] repositories seen get their own series, later ones share
//! `owner="_other", repo="_other"`, so hostile paths cannot grow the series without end.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Repositories with series of their own.
pub const MAX_REPO_LABELS: usize = 2000;

pub(crate) const FETCH: &str = "gitcache_cache_fetch_total";
pub(crate) const LS_REFS: &str = "gitcache_cache_lsrefs_total";
pub(crate) const WARM: &str = "gitcache_cache_warm_total";
pub(crate) const REPOS_ACTIVE: &str = "gitcache_cache_repos_active";
pub(crate) const MIRROR_SIZE: &str = "gitcache_mirror_bytes";
pub(crate) const MIRRORS: &str = "gitcache_mirrors";
pub(crate) const MIRRORS_EVICTED: &str = "gitcache_mirrors_evicted_total";
pub(crate) const MIRRORS_REPLACED: &str = "gitcache_mirrors_replaced_total";
pub(crate) const DEPENDENCY_UP: &str = "gitcache_dependency_up";
pub(crate) const REQUESTS: &str = "gitcache_cache_request_total";
pub(crate) const EVICTIONS: &str = "gitcache_cache_eviction_total";
pub(crate) const EVICTIONS_BY_LIMIT: &str = "gitcache_cache_eviction_by_limit_total";
pub(crate) const RESPONSE_SIZE: &str = "gitcache_cache_response_size_bytes";
pub(crate) const DECISION: &str = "gitcache_proxy_decision_duration_seconds";
pub(crate) const UPSTREAM: &str = "gitcache_upstream_request_duration_seconds";
pub(crate) const PACK_BYTES: &str = "gitcache_pack_sent_bytes_total";
pub(crate) const PACK_SECONDS: &str = "gitcache_pack_generation_duration_seconds";
pub(crate) const IN_FLIGHT: &str = "gitcache_http_requests_in_flight";
pub(crate) const PACK_SLOTS: &str = "gitcache_pack_slots";
pub(crate) const SPILLED: &str = "gitcache_response_spilled_bytes";
pub(crate) const CUT_OFF: &str = "gitcache_clients_cut_off_total";
pub(crate) const CONNECTIONS_REFUSED: &str = "gitcache_connections_refused_total";
pub(crate) const REFRESH: &str = "gitcache_mirror_refresh_duration_seconds";
pub(crate) const MAINTENANCE_RUNNING: &str = "gitcache_mirror_maintenance_running";
pub(crate) const MAINTENANCE: &str = "gitcache_mirror_maintenance_total";
pub(crate) const REMADE: &str = "gitcache_pack_remade_lookups_total";
pub(crate) const REMADE_BYTES: &str = "gitcache_pack_remade_bytes";
pub(crate) const KEPT_TREE_BYTES: &str = "gitcache_pack_kept_tree_bytes";
pub(crate) const BUILD_INFO: &str = "gitcache_build_info";

/// Histogram buckets suited to these metrics (sub-millisecond decisions to minutes-long
/// refreshes), for the recorder the server installs.
pub const BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0,
];

/// Describe every metric (help text) and set the build information; once per process.
pub(crate) fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        describe_counter!(
            FETCH,
            "Protocol v2 fetch commands for cached repositories, by result (hit, miss, rejected, error)."
        );
        describe_counter!(
            LS_REFS,
            "ls-refs commands for cached repositories (always forwarded upstream)."
        );
        describe_counter!(
            WARM,
            "Background mirror refreshes started because upstream refs moved, by result."
        );
        describe_gauge!(
            REPOS_ACTIVE,
            "Repositories with caching enabled: mirrored here or enabled in the catalog, less those the catalog disables."
        );
        describe_gauge!(MIRRORS, "Mirrors in this instance's data directory.");
        describe_gauge!(MIRROR_SIZE, "Bytes a mirror takes on this instance's disk.");
        describe_counter!(
            MIRRORS_EVICTED,
            "Mirrors removed from this instance's disk to keep within its budget."
        );
        describe_counter!(
            MIRRORS_REPLACED,
            "Mirrors dropped with their stored responses and fetched again from nothing because the upstream's refs shared no history with them (the repository behind the name replaced, or its history rewritten whole)."
        );
        describe_gauge!(
            DEPENDENCY_UP,
            "Whether a shared dependency (object store, database) answered the last readiness check (1) or not (0)."
        );
        describe_counter!(
            REQUESTS,
            "Git requests by repository and result (hit, miss, nocache, bypass, error, rejected, passthrough)."
        );
        describe_counter!(
            EVICTIONS,
            "Stored responses evicted to keep a repository or the cache under its limit."
        );
        describe_counter!(
            EVICTIONS_BY_LIMIT,
            "Stored responses evicted, by the store (local, shared) and the limit they were over (repository: its bytes; bytes: all stored; entries: their number)."
        );
        describe_gauge!(
            RESPONSE_SIZE,
            metrics::Unit::Bytes,
            "Bytes of stored responses per repository, as of the last cleanup."
        );
        describe_histogram!(
            DECISION,
            metrics::Unit::Seconds,
            "Time the proxy spends deciding how to answer, by stage (cache_lookup, access, mirror_lookup)."
        );
        describe_histogram!(
            UPSTREAM,
            metrics::Unit::Seconds,
            "Upstream requests until their response headers, by kind (verify, ls_refs, forward) and status."
        );
        describe_counter!(
            PACK_BYTES,
            metrics::Unit::Bytes,
            "Bytes of fetch responses sent to clients from mirrors and stored responses."
        );
        describe_histogram!(
            PACK_SECONDS,
            metrics::Unit::Seconds,
            "Time to plan and write one fetch response from a mirror."
        );
        describe_gauge!(IN_FLIGHT, "HTTP requests being answered.");
        describe_gauge!(
            SPILLED,
            "Bytes of generated responses waiting in spill files for clients that read slower than they are written."
        );
        describe_counter!(
            CUT_OFF,
            "Connections closed because their client stopped reading (reason=stalled) or read slower than min_read_rate (reason=slow)."
        );
        describe_counter!(
            CONNECTIONS_REFUSED,
            "Connections over max_connections_per_client, answered 429 (reason=per_client) or closed unanswered while many such answers were under way (reason=per_client_unanswered)."
        );
        describe_gauge!(
            PACK_SLOTS,
            "Fetch responses being generated (state=busy, at most max_concurrent_packs) and waiting for a slot (state=waiting)."
        );
        describe_histogram!(
            REFRESH,
            metrics::Unit::Seconds,
            "Mirror refreshes from upstream (fetch and, when due, consolidation), by result."
        );
        describe_gauge!(
            MAINTENANCE_RUNNING,
            "Background mirror maintenance under way (waiting for answers to be sent, consolidating packs, writing bitmaps)."
        );
        describe_counter!(
            MAINTENANCE,
            "Background mirror maintenance ended, by result (consolidated, skipped, failed)."
        );
        describe_counter!(
            REMADE,
            "Objects an answer compressed again (their stored delta base not sent) looked for among those kept from earlier answers, by result (hit, miss)."
        );
        describe_gauge!(
            REMADE_BYTES,
            "Bytes held by the store of objects compressed again."
        );
        describe_gauge!(
            KEPT_TREE_BYTES,
            "Bytes of trees the open mirrors keep for their answers."
        );
        describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    });
}

/// The `owner`/`repo` label values for a repository, bounded in number.
#[derive(Debug, Default)]
pub(crate) struct RepoLabels {
    seen: Mutex<HashSet<(String, String)>>,
}

impl RepoLabels {
    /// The labels of a request that was not served for a cached repository past the access
    /// gate: no name is shown for it, nor does it use up a slot.
    pub(crate) fn other() -> (String, String) {
        ("_other".to_owned(), "_other".to_owned())
    }

    pub(crate) fn get(&self, owner: &str, repo: &str) -> (String, String) {
        let key = (owner.to_ascii_lowercase(), repo.to_ascii_lowercase());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&key) {
            return key;
        }
        if seen.len() < MAX_REPO_LABELS {
            seen.insert(key.clone());
            return key;
        }
        Self::other()
    }
}

pub(crate) fn request(labels: (String, String), result: &'static str) {
    counter!(REQUESTS, "owner" => labels.0, "repo" => labels.1, "result" => result).increment(1);
}

pub(crate) fn fetch(result: &'static str) {
    counter!(FETCH, "result" => result).increment(1);
}

pub(crate) fn ls_refs() {
    counter!(LS_REFS).increment(1);
}

pub(crate) fn warm(result: &'static str) {
    counter!(WARM, "result" => result).increment(1);
}

pub(crate) fn decision(stage: &'static str, took: Duration) {
    histogram!(DECISION, "stage" => stage).record(took.as_secs_f64());
}

pub(crate) fn upstream(kind: &'static str, status: u16, took: Duration) {
    histogram!(UPSTREAM, "kind" => kind, "status" => status.to_string()).record(took.as_secs_f64());
}

pub(crate) fn pack_sent(bytes: u64) {
    counter!(PACK_BYTES).increment(bytes);
}

pub(crate) fn spilled(delta: f64) {
    gauge!(SPILLED).increment(delta);
}

/// Background maintenance as the registry counts it (read when the metrics are rendered).
pub(crate) fn maintenance(maintenance: gitcache_mirror::registry::Maintenance) {
    gauge!(MAINTENANCE_RUNNING).set(maintenance.running as f64);
    counter!(MAINTENANCE, "result" => "consolidated").absolute(maintenance.consolidated);
    counter!(MAINTENANCE, "result" => "skipped").absolute(maintenance.skipped);
    counter!(MAINTENANCE, "result" => "failed").absolute(maintenance.failed);
}

/// Bring the store of objects compressed again's series up to date (when scraped).
pub(crate) fn remade(remade: &gitcache_pack::Remade) {
    counter!(REMADE, "result" => "hit").absolute(remade.hits());
    counter!(REMADE, "result" => "miss").absolute(remade.misses());
    gauge!(REMADE_BYTES).set(remade.held_bytes() as f64);
}

/// The trees the open mirrors keep (when scraped).
pub(crate) fn kept_trees(bytes: usize) {
    gauge!(KEPT_TREE_BYTES).set(bytes as f64);
}

pub(crate) fn cut_off(reason: &'static str) {
    counter!(CUT_OFF, "reason" => reason).increment(1);
}

pub(crate) fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

pub(crate) fn pack_generated(took: Duration) {
    histogram!(PACK_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn refresh(result: &'static str, took: Duration) {
    histogram!(REFRESH, "result" => result).record(took.as_secs_f64());
}

pub(crate) fn mirror_size(labels: (String, String), bytes: u64) {
    gauge!(MIRROR_SIZE, "owner" => labels.0, "repo" => labels.1).set(bytes as f64);
}

pub(crate) fn mirror_evicted(labels: (String, String)) {
    counter!(MIRRORS_EVICTED, "owner" => labels.0, "repo" => labels.1).increment(1);
}

pub(crate) fn mirror_replaced() {
    counter!(MIRRORS_REPLACED).increment(1);
}

pub(crate) fn dependency(name: &'static str, up: bool) {
    gauge!(DEPENDENCY_UP, "dependency" => name).set(if up { 1.0 } else { 0.0 });
}

pub(crate) fn mirrors(count: usize) {
    gauge!(MIRRORS).set(count as f64);
}

pub(crate) fn repos_active(count: usize) {
    gauge!(REPOS_ACTIVE).set(count as f64);
}

pub(crate) fn evicted(labels: (String, String), entries: usize) {
    counter!(EVICTIONS, "owner" => labels.0, "repo" => labels.1).increment(entries as u64);
}

/// Stored responses evicted from `store` (`local`, `shared`), by the limit they were over.
pub(crate) fn evicted_by_limit(store: &'static str, by: gitcache_storage::responses::ByLimit) {
    for (limit, entries) in [
        ("repository", by.repository),
        ("bytes", by.bytes),
        ("entries", by.entries),
    ] {
        if entries > 0 {
            counter!(EVICTIONS_BY_LIMIT, "store" => store, "limit" => limit)
                .increment(entries as u64);
        }
    }
}

pub(crate) fn response_size(labels: (String, String), bytes: u64) {
    gauge!(RESPONSE_SIZE, "owner" => labels.0, "repo" => labels.1).set(bytes as f64);
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn start() -> Self {
        gauge!(IN_FLIGHT).increment(1.0);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(IN_FLIGHT).decrement(1.0);
    }
}

/// Counts a pack generation in `state` (`busy` or `waiting`) until dropped.
#[derive(Debug)]
pub(crate) struct PackSlot(&'static str);

impl PackSlot {
    pub(crate) fn enter(state: &'static str) -> Self {
        gauge!(PACK_SLOTS, "state" => state).increment(1.0);
        PackSlot(state)
    }
}

impl Drop for PackSlot {
    fn drop(&mut self) {
        gauge!(PACK_SLOTS, "state" => self.0).decrement(1.0);
    }
}

/// `text`, in Prometheus' text format as the recorder renders it, with every `owner` and
/// `repo` label set to `_other` and the samples that then name the same series summed: what
/// `/metrics` shows a reader who may not see which repositories are cached (on the git
/// listener without an admin token). A line it cannot read is kept as it is, unless it may
/// name a repository: then it is left out.
pub(crate) fn without_repositories(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // The samples since the last comment line, by series in the order first seen.
    let mut samples: Vec<(String, f64)> = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let flush = |out: &mut String,
                 samples: &mut Vec<(String, f64)>,
                 seen: &mut std::collections::HashMap<String, usize>| {
        for (series, value) in samples.drain(..) {
            out.push_str(&series);
            out.push(' ');
            out.push_str(&value.to_string());
            out.push('\n');
        }
        seen.clear();
    };
    for line in text.lines() {
        match (!line.starts_with('#'))
            .then(|| folded_sample(line))
            .flatten()
        {
            Some((series, value)) => match seen.get(&series) {
                Some(&at) => samples[at].1 += value,
                None => {
                    seen.insert(series.clone(), samples.len());
                    samples.push((series, value));
                }
            },
            None if !line.starts_with('#')
                && (line.contains("owner=") || line.contains("repo=")) => {}
            None => {
                flush(&mut out, &mut samples, &mut seen);
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    flush(&mut out, &mut samples, &mut seen);
    out
}

/// A sample line's series, its `owner` and `repo` labels set to `_other`, and its value; `None`
/// for a line that is no sample line as the recorder writes them (`name{labels} value`).
fn folded_sample(line: &str) -> Option<(String, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, labels)) = series.split_once('{') else {
        return Some((series.to_owned(), value));
    };
    let labels = labels.strip_suffix('}')?;
    let mut folded = format!("{name}{{");
    let mut rest = labels;
    let mut first = true;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        // The value runs to the first quote not escaped by a backslash.
        let mut end = None;
        let mut escaped = false;
        for (at, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(at);
                    break;
                }
                _ => {}
            }
        }
        let end = end?;
        let value = match key {
            "owner" | "repo" => "_other",
            _ => &after[..end],
        };
        if !first {
            folded.push(',');
        }
        first = false;
        folded.push_str(key);
        folded.push_str("=\"");
        folded.push_str(value);
        folded.push('"');
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(more) => more,
            None if rest.is_empty() => rest,
            None => return None,
        };
    }
    folded.push('}');
    Some((folded, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repository labels are folded into `_other` and their samples summed, bucket by
    /// bucket; other labels and lines are kept; label values may hold quotes and commas.
    #[test]
    fn repositories_are_folded_out_of_a_rendering() {
        let text = r#"# HELP gitcache_cache_request_total Requests.
# TYPE gitcache_cache_request_total counter
gitcache_cache_request_total{owner="acme",repo="widgets",result="hit"} 3
gitcache_cache_request_total{owner="acme",repo="hidden-plans",result="hit"} 4
gitcache_cache_request_total{owner="_other",repo="_other",result="miss"} 1
gitcache_cache_request_total{owner="acme",repo="hidden-plans",result="miss"} 2

# TYPE gitcache_mirror_bytes gauge
gitcache_mirror_bytes{owner="a\"b,c",repo="x\\"} 10.5
gitcache_mirror_bytes{owner="d",repo="e"} 1
# TYPE gitcache_pack_slots gauge
gitcache_pack_slots{state="busy"} 2
# TYPE h histogram
h_bucket{owner="a",repo="b",le="0.5"} 1
h_bucket{owner="a",repo="b",le="+Inf"} 2
h_sum{owner="a",repo="b"} 0.75
h_count{owner="a",repo="b"} 2
h_bucket{owner="c",repo="d",le="0.5"} 0
h_bucket{owner="c",repo="d",le="+Inf"} 1
h_sum{owner="c",repo="d"} 2
h_count{owner="c",repo="d"} 1
gitcache_build_info 1
"#;
        let folded = without_repositories(text);
        assert_eq!(
            folded,
            r#"# HELP gitcache_cache_request_total Requests.
# TYPE gitcache_cache_request_total counter
gitcache_cache_request_total{owner="_other",repo="_other",result="hit"} 7
gitcache_cache_request_total{owner="_other",repo="_other",result="miss"} 3

# TYPE gitcache_mirror_bytes gauge
gitcache_mirror_bytes{owner="_other",repo="_other"} 11.5
# TYPE gitcache_pack_slots gauge
gitcache_pack_slots{state="busy"} 2
# TYPE h histogram
h_bucket{owner="_other",repo="_other",le="0.5"} 1
h_bucket{owner="_other",repo="_other",le="+Inf"} 3
h_sum{owner="_other",repo="_other"} 2.75
h_count{owner="_other",repo="_other"} 3
gitcache_build_info 1
"#
        );
        // A line it cannot read stays as it is, unless it may name a repository.
        assert_eq!(without_repositories("odd{x=1} 2\n"), "odd{x=1} 2\n");
        assert_eq!(without_repositories("odd{repo=x} 2\nodd 1\n"), "odd 1\n");
    }

    #[test]
    fn repository_labels_are_bounded() {
        let labels = RepoLabels::default();
        assert_eq!(
            labels.get("Acme", "Widgets"),
            ("acme".to_owned(), "widgets".to_owned())
        );
        for i in 1..MAX_REPO_LABELS {
            labels.get("o", &format!("r{i}"));
        }
        assert_eq!(
            labels.get("late", "comer"),
            ("_other".to_owned(), "_other".to_owned())
        );
        // Those seen before the bound keep their own series.
        assert_eq!(labels.get("acme", "widgets").1, "widgets");
    }
}
