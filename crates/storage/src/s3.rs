//! The S3-compatible backend of [`ObjectStore`], through the `object_store` crate.
//!
//! - Objects named by their content are written plainly, over any copy there (the same
//!   bytes; writing one again makes its write time now, which the collection of unnamed
//!   files counts from); files over [`MULTIPART_FROM`] go up in parts of [`PART`] bytes, so
//!   memory stays bounded whatever their size.
//! - A manifest's version is its ETag; a replacement is a `PUT` with `If-Match` on it (or
//!   `If-None-Match: *` to create one), which the bucket applies atomically: of writers racing
//!   from one version, one wins and the others get 412 ([`Replaced::Conflict`]).
//! - Keys live under an optional prefix, so that several deployments can share a bucket.
//!
//! Credentials are given explicitly ([`S3Config`]); reading them from the environment is the
//! binary's business. Signing and TLS use ring, as the rest of gitcache does.

use std::path::Path;
use std::sync::Arc;

use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore as _, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, UpdateVersion,
};
use tokio::io::AsyncWriteExt as _;

use crate::store::{
    Listed, MAX_MANIFEST, Manifest, ObjectKey, ObjectStore, Replaced, StoreError, Version,
};

/// Files larger than this are uploaded in parts.
pub const MULTIPART_FROM: u64 = 32 << 20;
/// The size of one uploaded part (S3 wants at least 5 MiB for all parts but the last).
pub const PART: usize = 16 << 20;
/// Objects are downloaded in ranges of this many bytes…
pub const DOWNLOAD_RANGE: u64 = 16 << 20;
/// …of which this many are read at once.
pub const RANGES_AT_ONCE: usize = 4;

/// Where the bucket is and how to sign for it.
#[derive(Clone, Default)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The endpoint, for S3-compatible servers (`http://127.0.0.1:9000`); `None`: AWS.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` when not given).
    pub region: Option<String>,
    /// Keys are stored under `<prefix>/` when given.
    pub prefix: Option<String>,
    /// Access key id; with no keys, the instance's own credentials (metadata service) are used.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
    /// Further settings by the `object_store` client's names (`aws_web_identity_token_file`,
    /// `aws_role_arn`, `aws_container_credentials_relative_uri`, …), applied before the
    /// fields above; names it does not know are ignored.
    pub options: Vec<(String, String)>,
}

impl std::fmt::Debug for S3Config {
    /// Never shows the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field(
                "options",
                &self
                    .options
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// An S3-compatible bucket as an [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct S3Store {
    inner: Arc<AmazonS3>,
    prefix: Option<ObjectPath>,
    /// How long a small request (see [`S3Store::with_small_requests_within`]), its retries
    /// included, may take in all.
    small_within: std::time::Duration,
}

/// How long a small request may take in all by default (see
/// [`S3Store::with_small_requests_within`]): the client's retries end within 20 s, but an
/// attempt under way then could go on for its read timeout (60 s).
pub const SMALL_REQUESTS_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// reqwest with gitcache's own TLS settings (ring, the system's roots).
#[derive(Debug)]
struct Connector {
    tls: rustls::ClientConfig,
}

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(client))
    }
}

fn tls() -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Write the bytes of `stream`, the range `range` of the object `key`, into the file `temp` at
/// their place; a range that comes back longer or shorter is an error.
async fn write_range(
    key: &ObjectKey,
    temp: &Path,
    range: std::ops::Range<u64>,
    mut stream: futures_util::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
) -> Result<(), StoreError> {
    let mut file = tokio::fs::OpenOptions::new().write(true).open(temp).await?;
    tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(range.start)).await?;
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(backend)?;
        written += chunk.len() as u64;
        if written > range.end - range.start {
            break;
        }
        file.write_all(&chunk).await?;
    }
    if written != range.end - range.start {
        return Err(StoreError::Backend(format!(
            "object {key}: {written} bytes for the range {range:?}"
        )));
    }
    file.flush().await?;
    Ok(())
}

fn backend(err: object_store::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

fn no_answer(key: &ObjectKey, within: std::time::Duration) -> StoreError {
    StoreError::Backend(format!(
        "object {key}: no answer within {} s",
        within.as_secs_f64()
    ))
}

/// The time a body of `bytes` is given beyond a small request's bound: four seconds per MiB
/// (256 KiB/s).
fn per_mib(bytes: u64) -> std::time::Duration {
    std::time::Duration::from_secs(4 * (bytes >> 20))
}

impl S3Store {
    /// The bucket `config` names. Nothing is asked of it yet.
    pub fn new(config: &S3Config) -> Result<Self, StoreError> {
        let mut builder = AmazonS3Builder::new();
        for (key, value) in &config.options {
            if let Ok(key) = key.parse::<object_store::aws::AmazonS3ConfigKey>() {
                builder = builder.with_config(key, value);
            }
        }
        let mut builder = builder
            .with_bucket_name(&config.bucket)
            .with_region(config.region.as_deref().unwrap_or("us-east-1"))
            .with_http_connector(Connector { tls: tls()? })
            // A store out of reach is reported within seconds, not minutes: callers go on
            // without it (a mirror refreshes its local copy alone) and try again later.
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: std::time::Duration::from_millis(100),
                    max_backoff: std::time::Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(20),
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = &config.session_token {
                builder = builder.with_token(token);
            }
        }
        let prefix = match config.prefix.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => None,
            Some(prefix) => Some(
                ObjectPath::parse(ObjectKey::new(prefix)?.as_str())
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
            ),
        };
        Ok(S3Store {
            inner: Arc::new(builder.build().map_err(backend)?),
            prefix,
            small_within: SMALL_REQUESTS_WITHIN,
        })
    }

    /// Give up a small request (a `HEAD`, a `DELETE`, a manifest's `PUT`, a page of a
    /// listing, the answer to a whole read) after `within` in all, retries included: an
    /// error then, the request dropped. A manifest's `PUT`, and the body of a whole read
    /// ([`ObjectStore::get_bytes`], [`ObjectStore::read_manifest`]), get four seconds more
    /// for each MiB, so that a manifest listing a million refs may go at 256 KiB/s. Callers
    /// that reason about when a request can still take effect (pages' sweeps) rest on this,
    /// and none is held by a bucket that stops answering. Downloads to a file and ranges
    /// read as streams have their read timeout (60 s between reads) and their callers'
    /// bounds.
    pub fn with_small_requests_within(mut self, within: std::time::Duration) -> Self {
        self.small_within = within;
        self
    }

    /// `request` (about `key`), given up after the bound for small requests and `more`.
    async fn bounded<T>(
        &self,
        key: &ObjectKey,
        more: std::time::Duration,
        request: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let within = self.small_within + more;
        tokio::time::timeout(within, request)
            .await
            .unwrap_or_else(|_| Err(no_answer(key, within)))
    }

    /// The object `key` whole (`None`: not there), refused above `limit` bytes: given up
    /// after the bound for small requests, and four seconds per MiB of its body, from the
    /// start. A bucket that stalls mid-answer fails the read in time instead of holding its
    /// caller for a read timeout at each chunk.
    async fn get_whole(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(object_store::ObjectMeta, bytes::Bytes)>, StoreError> {
        let path = self.path(key)?;
        let start = tokio::time::Instant::now();
        let got = self
            .bounded(key, std::time::Duration::ZERO, async {
                match self.inner.get_opts(&path, GetOptions::default()).await {
                    Ok(got) => Ok(Some(got)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(err) => Err(backend(err)),
                }
            })
            .await?;
        let Some(got) = got else {
            return Ok(None);
        };
        if got.meta.size > limit {
            return Err(StoreError::TooLarge {
                key: key.clone(),
                limit,
            });
        }
        let meta = got.meta.clone();
        let within = self.small_within + per_mib(meta.size);
        let bytes = tokio::time::timeout_at(start + within, got.bytes())
            .await
            .map_err(|_| no_answer(key, within))?
            .map_err(backend)?;
        Ok(Some((meta, bytes)))
    }

    /// A presigned URL from which anyone may `GET` the object `key` for `expires_in` (at
    /// most seven days, S3's bound).
    pub async fn signed_get_url(
        &self,
        key: &ObjectKey,
        expires_in: std::time::Duration,
    ) -> Result<String, StoreError> {
        let url = object_store::signer::Signer::signed_url(
            self.inner.as_ref(),
            object_store::signer::Method::GET,
            &self.path(key)?,
            expires_in,
        )
        .await
        .map_err(backend)?;
        Ok(url.to_string())
    }

    fn path(&self, key: &ObjectKey) -> Result<ObjectPath, StoreError> {
        let full = match &self.prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.as_str().to_owned(),
        };
        ObjectPath::parse(&full).map_err(|_| StoreError::InvalidKey {
            key: full.clone(),
            reason: "not an object path in a bucket",
        })
    }

    /// The key of a listed object, without the store's prefix; `None` for a name no key has
    /// (written by something else), which listing leaves out.
    fn key_of(&self, path: &ObjectPath) -> Option<ObjectKey> {
        let full = path.as_ref();
        let key = match &self.prefix {
            Some(prefix) => full
                .strip_prefix(prefix.as_ref())
                .and_then(|rest| rest.strip_prefix('/'))?,
            None => full,
        };
        ObjectKey::new(key).ok()
    }
}

impl ObjectStore for S3Store {
    async fn put_file_after(
        &self,
        key: &ObjectKey,
        head: &[u8],
        from: &Path,
    ) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let size = head.len() as u64 + tokio::fs::metadata(from).await?.len();
        if size <= MULTIPART_FROM {
            let mut bytes = head.to_vec();
            bytes.extend_from_slice(&tokio::fs::read(from).await?);
            return self
                .inner
                .put_opts(&path, PutPayload::from(bytes), PutOptions::default())
                .await
                .map(drop)
                .map_err(backend);
        }
        let mut upload = self
            .inner
            .put_multipart_opts(&path, PutMultipartOptions::default())
            .await
            .map_err(backend)?;
        let sent: Result<(), StoreError> = async {
            let mut file = tokio::io::AsyncReadExt::chain(head, tokio::fs::File::open(from).await?);
            loop {
                let mut part = Vec::with_capacity(PART);
                let read = tokio::io::AsyncReadExt::read_buf(
                    &mut tokio::io::AsyncReadExt::take(&mut file, PART as u64),
                    &mut part,
                )
                .await?;
                if read == 0 {
                    break;
                }
                // Fill the part up: a short read is not the end of the file.
                while part.len() < PART {
                    let more = tokio::io::AsyncReadExt::read_buf(
                        &mut tokio::io::AsyncReadExt::take(&mut file, (PART - part.len()) as u64),
                        &mut part,
                    )
                    .await?;
                    if more == 0 {
                        break;
                    }
                }
                upload
                    .put_part(PutPayload::from(part))
                    .await
                    .map_err(backend)?;
            }
            upload.complete().await.map_err(backend)?;
            Ok(())
        }
        .await;
        if sent.is_err() {
            let _ = upload.abort().await;
        }
        sent
    }

    async fn get_file_admitted(
        &self,
        key: &ObjectKey,
        to: &Path,
        limit: u64,
        admit: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        // The first range answers for the object's size and ETag; a small object is whole in
        // it, a large one comes in further ranges read at once, each pinned to that ETag.
        let first = GetOptions {
            range: Some(GetRange::Bounded(0..DOWNLOAD_RANGE)),
            ..GetOptions::default()
        };
        let got = match self.inner.get_opts(&path, first).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            // An empty object has no first range (S3 answers 416): asked for whole. Any
            // other failure is the answer.
            Err(err) => match self.size(key).await? {
                None => return Ok(false),
                Some(0) => self
                    .inner
                    .get_opts(&path, GetOptions::default())
                    .await
                    .map_err(backend)?,
                Some(_) => return Err(backend(err)),
            },
        };
        if got.meta.size > limit {
            return Err(StoreError::TooLarge {
                key: key.clone(),
                limit,
            });
        }
        if !admit(got.meta.size) {
            return Err(StoreError::NotAdmitted {
                key: key.clone(),
                size: got.meta.size,
            });
        }
        if let Some(dir) = to.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        // Removed if the download fails, or is dropped midway.
        let temporary = crate::fs::Temporary::beside(to)?;
        let temp = temporary.path().to_owned();
        let written: Result<(), StoreError> = async {
            let size = got.meta.size;
            let e_tag = got.meta.e_tag.clone();
            let file = tokio::fs::File::create_new(&temp).await?;
            file.set_len(size).await?;
            write_range(key, &temp, 0..size.min(DOWNLOAD_RANGE), got.into_stream()).await?;
            if size > DOWNLOAD_RANGE {
                let Some(e_tag) = e_tag else {
                    return Err(StoreError::Backend(format!("no ETag for object {key}")));
                };
                let ranges = (1..size.div_ceil(DOWNLOAD_RANGE)).map(|i| {
                    let start = i * DOWNLOAD_RANGE;
                    start..size.min(start + DOWNLOAD_RANGE)
                });
                futures_util::stream::iter(ranges)
                    .map(|range| {
                        let (path, temp, e_tag) = (&path, &temp, e_tag.clone());
                        async move {
                            let options = GetOptions {
                                range: Some(GetRange::Bounded(range.clone())),
                                if_match: Some(e_tag),
                                ..GetOptions::default()
                            };
                            let got = self.inner.get_opts(path, options).await.map_err(backend)?;
                            write_range(key, temp, range, got.into_stream()).await
                        }
                    })
                    .buffer_unordered(RANGES_AT_ONCE)
                    .try_collect::<()>()
                    .await?;
            }
            file.sync_all().await?;
            tokio::fs::rename(&temp, to).await?;
            Ok(())
        }
        .await;
        written?;
        temporary.keep();
        let to = to.to_owned();
        tokio::task::spawn_blocking(move || crate::fs::sync_parent(&to))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(true)
    }

    async fn size(&self, key: &ObjectKey) -> Result<Option<u64>, StoreError> {
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let path = self.path(key)?;
        self.bounded(key, std::time::Duration::ZERO, async {
            match self.inner.get_opts(&path, head).await {
                Ok(got) => Ok(Some(got.meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(backend(err)),
            }
        })
        .await
    }

    async fn get_bytes(&self, key: &ObjectKey, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get_whole(key, limit)
            .await?
            .map(|(_, bytes)| bytes.to_vec()))
    }

    async fn read_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> Result<Option<crate::store::ByteStream>, StoreError> {
        use futures_util::TryStreamExt as _;
        if range.is_empty() {
            // A bucket refuses an empty range: whether the object is there is all there is.
            return Ok(self
                .size(key)
                .await?
                .map(|_| Box::pin(futures_util::stream::empty()) as crate::store::ByteStream));
        }
        let path = self.path(key)?;
        let options = GetOptions {
            range: Some(object_store::GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        match self.inner.get_opts(&path, options).await {
            Ok(got) => Ok(Some(Box::pin(got.into_stream().map_err(backend)))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(backend(err)),
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let path = self.path(key)?;
        self.bounded(key, std::time::Duration::ZERO, async {
            let mut deleted = self
                .inner
                .delete_stream(futures_util::stream::iter([Ok(path)]).boxed());
            while let Some(result) = deleted.next().await {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(err) => return Err(backend(err)),
                }
            }
            Ok(())
        })
        .await
    }

    async fn list(&self, prefix: &ObjectKey) -> Result<Vec<Listed>, StoreError> {
        let path = self.path(prefix)?;
        // Each page of the listing within the bound for small requests (a page of a
        // thousand keys is some hundreds of KiB): a bucket that stalls fails the listing in
        // time, however long it is.
        let mut pages = self.inner.list(Some(&path));
        let mut metas: Vec<object_store::ObjectMeta> = Vec::new();
        loop {
            match tokio::time::timeout(self.small_within, pages.next()).await {
                Ok(Some(meta)) => metas.push(meta.map_err(backend)?),
                Ok(None) => break,
                Err(_) => return Err(no_answer(prefix, self.small_within)),
            }
        }
        let mut found: Vec<Listed> = metas
            .iter()
            .filter_map(|meta| {
                Some(Listed {
                    key: self.key_of(&meta.location)?,
                    size: meta.size,
                    modified: meta.last_modified.into(),
                })
            })
            .collect();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn read_manifest(&self, key: &ObjectKey) -> Result<Option<Manifest>, StoreError> {
        let Some((meta, bytes)) = self.get_whole(key, MAX_MANIFEST).await? else {
            return Ok(None);
        };
        let Some(e_tag) = meta.e_tag else {
            return Err(StoreError::Backend(format!("no ETag for manifest {key}")));
        };
        Ok(Some(Manifest {
            bytes: bytes.to_vec(),
            version: Version(e_tag),
        }))
    }

    async fn manifest_version(&self, key: &ObjectKey) -> Result<Option<Version>, StoreError> {
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let path = self.path(key)?;
        self.bounded(key, std::time::Duration::ZERO, async {
            match self.inner.get_opts(&path, head).await {
                Ok(got) => match got.meta.e_tag {
                    Some(e_tag) => Ok(Some(Version(e_tag))),
                    None => Err(StoreError::Backend(format!("no ETag for manifest {key}"))),
                },
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(backend(err)),
            }
        })
        .await
    }

    async fn replace_manifest(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        expected: Option<&Version>,
    ) -> Result<Replaced, StoreError> {
        let path = self.path(key)?;
        let mode = match expected {
            None => PutMode::Create,
            Some(version) => PutMode::Update(UpdateVersion {
                e_tag: Some(version.0.clone()),
                version: None,
            }),
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let more = per_mib(bytes.len() as u64);
        let payload = PutPayload::from(bytes.to_vec());
        self.bounded(key, more, async {
            match self.inner.put_opts(&path, payload, options).await {
                Ok(put) => match put.e_tag {
                    Some(e_tag) => Ok(Replaced::Done(Version(e_tag))),
                    None => Err(StoreError::Backend(format!("no ETag for manifest {key}"))),
                },
                // Created, replaced or removed meanwhile (object_store reports a 404 on
                // `If-Match` as a failed precondition; a 404 otherwise is a missing bucket,
                // an error).
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Ok(Replaced::Conflict),
                Err(err) => Err(backend(err)),
            }
        })
        .await
    }
}
