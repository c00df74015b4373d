//! Deploying a tree as a site, and reading sites back.
//!
//! ```text
//! pages/blob/<sha256 hex>            file contents, shared by every site
//! pages/site/<host>/<project>        the deployed manifest (`.index`: the domain's root tree)
//! pages/staged/<sha256 of manifest>  manifests of deployments under way
//! ```
//!
//! A deployment writes its staged manifest first (so that a garbage sweep sees its blobs as
//! named), then the blobs the store lacks, then replaces the site's manifest with one
//! conditional write, then drops the staged one. A crash leaves the old site whole, perhaps
//! with blobs and a staged manifest no site names yet.

use std::collections::BTreeMap;

use gitcache_storage::store::{ObjectKey, ObjectStore, Replaced, StoreError};
use sha2::Digest as _;

use crate::manifest::{Content, Entry, INLINE_MAX, Invalid, SiteManifest, valid_path};

/// The most files a site may hold.
pub const MAX_FILES: usize = 100_000;
/// The largest file.
pub const MAX_FILE_BYTES: u64 = 100 << 20;
/// The most bytes a site's files may take together.
pub const MAX_SITE_BYTES: u64 = 1 << 30;

/// One path of a tree to deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Its path in the tree (`/`-separated, relative).
    pub path: String,
    /// A file's content, or a symlink's target.
    pub kind: TreeKind,
}

/// What a [`TreeFile`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeKind {
    /// A file and its content.
    File(Vec<u8>),
    /// A symbolic link and its target.
    Symlink(String),
}

impl TreeFile {
    /// A file at `path` holding `content`.
    pub fn file(path: impl Into<String>, content: Vec<u8>) -> Self {
        TreeFile {
            path: path.into(),
            kind: TreeKind::File(content),
        }
    }

    /// A symlink at `path` pointing at `target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        TreeFile {
            path: path.into(),
            kind: TreeKind::Symlink(target.into()),
        }
    }
}

/// Why a deployment or a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error("pages storage: {0}")]
    Store(#[from] StoreError),
    /// A stored manifest is not one gitcache wrote.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A host or project name that cannot name a site.
    #[error("not a site name: {0:?}")]
    Name(String),
    /// A path of the tree that cannot be served (`..`, empty segments, control characters),
    /// or given twice.
    #[error("not a tree path: {0:?}")]
    Path(String),
    /// Over a limit (the client's `413`).
    #[error("{what}: {got} is more than the {limit} allowed")]
    TooLarge {
        /// Which limit.
        what: &'static str,
        /// How much there was.
        got: u64,
        /// The limit.
        limit: u64,
    },
    /// The site's manifest kept changing under this deployment.
    #[error("the site kept changing during the deployment")]
    Contended,
}

/// A deployed site as read.
#[derive(Debug, Clone)]
pub struct Site {
    /// The manifest.
    pub manifest: SiteManifest,
}

/// How a deployment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The commit now deployed.
    pub commit: String,
    /// The same commit from the same source was deployed already: nothing was written.
    pub unchanged: bool,
    /// Files in the site.
    pub files: usize,
    /// Bytes of its files.
    pub bytes: u64,
    /// Blobs uploaded (those the store lacked).
    pub uploaded: usize,
}

/// Sites in an object store.
#[derive(Debug, Clone)]
pub struct Pages<S> {
    store: S,
    /// Blobs a sweep found unnamed, and when first: deleted only once still unnamed a grace
    /// period later (see [`Pages::collect`]).
    unnamed:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<ObjectKey, std::time::Instant>>>,
}

/// What a garbage sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs deleted.
    pub blobs: usize,
    /// Staged manifests of deployments that never finished, deleted.
    pub staged: usize,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `host` can name a site: a DNS name of letters, digits, `-` and `.`, lower case.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Whether `project` can name a site under a host: `.index`, or one path segment.
fn valid_project(project: &str) -> bool {
    project == ".index" || (valid_path(project) && !project.contains('/') && project.len() <= 255)
}

impl<S: ObjectStore> Pages<S> {
    /// Sites in `store`.
    pub fn new(store: S) -> Self {
        Pages {
            store,
            unnamed: Default::default(),
        }
    }

    /// Sweep the store: delete the blobs no site and no staged deployment names, once they
    /// have been found unnamed by sweeps at least `grace` apart, and the staged manifests
    /// older than `grace` (deployments that never finished). Blobs a deployment relies on are
    /// named by its staged manifest before it looks for them, and by its site afterwards:
    /// deployments shorter than `grace` lose nothing to a sweep, however they interleave.
    pub async fn collect(&self, grace: std::time::Duration) -> Result<Collected, Error> {
        let mut done = Collected::default();
        let mut named: std::collections::HashSet<[u8; 32]> = std::collections::HashSet::new();
        let mut name_all = |manifest: &SiteManifest| {
            for entry in manifest.entries.values() {
                if let Entry::File(Content::Blob { hash, .. }) = entry {
                    named.insert(*hash);
                }
            }
        };
        let cutoff = std::time::SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(std::time::UNIX_EPOCH);
        for staged in self.store.list(&ObjectKey::new("pages/staged")?).await? {
            if staged.modified < cutoff {
                self.store.delete(&staged.key).await?;
                done.staged += 1;
            } else if let Some(read) = self.store.read_manifest(&staged.key).await?
                && let Ok(manifest) = SiteManifest::decode(&read.bytes)
            {
                name_all(&manifest);
            }
        }
        for site in self.store.list(&ObjectKey::new("pages/site")?).await? {
            if let Some(read) = self.store.read_manifest(&site.key).await? {
                name_all(&SiteManifest::decode(&read.bytes)?);
            }
        }
        let now = std::time::Instant::now();
        let blobs = self.store.list(&ObjectKey::new("pages/blob")?).await?;
        let mut doomed = Vec::new();
        {
            let mut unnamed = self.unnamed.lock().unwrap_or_else(|p| p.into_inner());
            let listed: std::collections::HashSet<&ObjectKey> =
                blobs.iter().map(|b| &b.key).collect();
            unnamed.retain(|key, _| listed.contains(key));
            for blob in &blobs {
                let hash = blob.key.as_str().rsplit('/').next().and_then(parse_hex);
                if hash.is_some_and(|h| named.contains(&h)) {
                    unnamed.remove(&blob.key);
                    continue;
                }
                let since = *unnamed.entry(blob.key.clone()).or_insert(now);
                if now.duration_since(since) >= grace && blob.modified < cutoff {
                    doomed.push(blob.key.clone());
                }
            }
        }
        for key in doomed {
            self.store.delete(&key).await?;
            self.unnamed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            done.blobs += 1;
        }
        Ok(done)
    }

    fn site_key(host: &str, project: &str) -> Result<ObjectKey, Error> {
        if !valid_host(host) {
            return Err(Error::Name(host.to_owned()));
        }
        if !valid_project(project) {
            return Err(Error::Name(project.to_owned()));
        }
        Ok(ObjectKey::new(&format!("pages/site/{host}/{project}"))?)
    }

    fn blob_key(hash: &[u8; 32]) -> Result<ObjectKey, Error> {
        Ok(ObjectKey::new(&format!("pages/blob/{}", hex(hash)))?)
    }

    /// Deploy `tree` (from `commit` of `source`) as the site `project` of `host`: checked
    /// against the limits, staged, its blobs uploaded, then made the site at once. The same
    /// commit from the same source deployed again is a no-op.
    pub async fn deploy(
        &self,
        host: &str,
        project: &str,
        commit: &str,
        source: &str,
        tree: Vec<TreeFile>,
    ) -> Result<Deployed, Error> {
        let site_key = Self::site_key(host, project)?;
        let (manifest, blobs) = build(commit, source, tree)?;
        let current = self.store.read_manifest(&site_key).await?;
        if let Some(current) = &current
            && let Ok(deployed) = SiteManifest::decode(&current.bytes)
            && deployed.commit == manifest.commit
            && deployed.source == manifest.source
        {
            return Ok(Deployed {
                files: deployed.files(),
                bytes: deployed.size(),
                commit: deployed.commit,
                unchanged: true,
                uploaded: 0,
            });
        }
        let encoded = manifest.encode();
        // What is committed must read back: never a site that answers nothing.
        if encoded.len() as u64 > gitcache_storage::store::MAX_MANIFEST
            || manifest.entries.len() > crate::manifest::MAX_ENTRIES
        {
            return Err(Error::TooLarge {
                what: "the site's manifest",
                got: encoded.len() as u64,
                limit: gitcache_storage::store::MAX_MANIFEST,
            });
        }
        SiteManifest::decode(&encoded)?;
        let staged = ObjectKey::new(&format!(
            "pages/staged/{}",
            hex(&sha2::Sha256::digest(&encoded))
        ))?;
        // Created, or there already (the same deployment under way): either way staged.
        self.store.replace_manifest(&staged, &encoded, None).await?;
        let mut uploaded = 0;
        for (hash, content) in &blobs {
            let key = Self::blob_key(hash)?;
            if self.store.size(&key).await?.is_some() {
                continue;
            }
            // Create-only: a blob is its content, so one written meanwhile is this one.
            self.store.replace_manifest(&key, content, None).await?;
            uploaded += 1;
        }
        let mut expected = current.map(|c| c.version);
        let mut committed = false;
        for _ in 0..4 {
            match self
                .store
                .replace_manifest(&site_key, &encoded, expected.as_ref())
                .await?
            {
                Replaced::Done(_) => {
                    committed = true;
                    break;
                }
                // Another deployment committed meanwhile: the later one wins.
                Replaced::Conflict => {
                    expected = self.store.manifest_version(&site_key).await?;
                }
            }
        }
        if !committed {
            let _ = self.store.delete(&staged).await;
            return Err(Error::Contended);
        }
        // A blob found in the store before the commit may have been swept meanwhile (it was
        // unnamed then): each is there now, or written again, while the staged manifest still
        // names it.
        for (hash, content) in &blobs {
            let key = Self::blob_key(hash)?;
            if self.store.size(&key).await?.is_none() {
                self.store.replace_manifest(&key, content, None).await?;
            }
        }
        if let Err(err) = self.store.delete(&staged).await {
            // The site is live; the staged manifest goes with the next sweep.
            tracing::warn!(%err, "a staged manifest could not be deleted");
        }
        Ok(Deployed {
            commit: manifest.commit.clone(),
            unchanged: false,
            files: manifest.files(),
            bytes: manifest.size(),
            uploaded,
        })
    }

    /// The site `project` of `host`, if one is deployed.
    pub async fn site(&self, host: &str, project: &str) -> Result<Option<Site>, Error> {
        let key = Self::site_key(host, project)?;
        match self.store.read_manifest(&key).await? {
            Some(read) => Ok(Some(Site {
                manifest: SiteManifest::decode(&read.bytes)?,
            })),
            None => Ok(None),
        }
    }

    /// The content of the blob `hash`, if the store has it (at most [`MAX_FILE_BYTES`]).
    pub async fn blob(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, Error> {
        let key = Self::blob_key(hash)?;
        Ok(self.store.get_bytes(&key, MAX_FILE_BYTES).await?)
    }
}

/// The 32 bytes of a 64-character hex name.
fn parse_hex(name: &str) -> Option<[u8; 32]> {
    if name.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Blob contents by their SHA-256.
type Blobs = BTreeMap<[u8; 32], Vec<u8>>;

/// The manifest of `tree`, and the blobs it names with their contents.
fn build(commit: &str, source: &str, tree: Vec<TreeFile>) -> Result<(SiteManifest, Blobs), Error> {
    if commit.is_empty() || commit.len() > 64 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Name(commit.to_owned()));
    }
    if source.len() > crate::manifest::MAX_PATH || source.chars().any(char::is_control) {
        return Err(Error::Name(source.to_owned()));
    }
    let files = tree
        .iter()
        .filter(|f| matches!(f.kind, TreeKind::File(_)))
        .count();
    if files > MAX_FILES {
        return Err(Error::TooLarge {
            what: "files in the site",
            got: files as u64,
            limit: MAX_FILES as u64,
        });
    }
    let mut entries = BTreeMap::new();
    let mut blobs = BTreeMap::new();
    let mut total = 0u64;
    for file in tree {
        if !valid_path(&file.path) || entries.contains_key(&file.path) {
            return Err(Error::Path(file.path));
        }
        // Every directory on the way is an entry.
        let mut at = 0;
        while let Some(slash) = file.path[at..].find('/') {
            let dir = &file.path[..at + slash];
            match entries.get(dir) {
                None => {
                    entries.insert(dir.to_owned(), Entry::Dir);
                }
                Some(Entry::Dir) => {}
                Some(_) => return Err(Error::Path(file.path)),
            }
            at += slash + 1;
        }
        let entry = match file.kind {
            TreeKind::Symlink(target) => {
                if target.is_empty()
                    || target.len() > crate::manifest::MAX_PATH
                    || target.chars().any(char::is_control)
                {
                    return Err(Error::Path(file.path));
                }
                Entry::Symlink(target)
            }
            TreeKind::File(content) => {
                let size = content.len() as u64;
                if size > MAX_FILE_BYTES {
                    return Err(Error::TooLarge {
                        what: "a file's bytes",
                        got: size,
                        limit: MAX_FILE_BYTES,
                    });
                }
                total += size;
                if total > MAX_SITE_BYTES {
                    return Err(Error::TooLarge {
                        what: "the site's bytes",
                        got: total,
                        limit: MAX_SITE_BYTES,
                    });
                }
                if content.len() <= INLINE_MAX {
                    Entry::File(Content::Inline(content))
                } else {
                    let hash: [u8; 32] = sha2::Sha256::digest(&content).into();
                    blobs.insert(hash, content);
                    Entry::File(Content::Blob { hash, size })
                }
            }
        };
        if entries.get(&file.path) == Some(&Entry::Dir) {
            return Err(Error::Path(file.path));
        }
        entries.insert(file.path, entry);
    }
    Ok((
        SiteManifest {
            commit: commit.to_owned(),
            source: source.to_owned(),
            entries,
        },
        blobs,
    ))
}
