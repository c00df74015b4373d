//! The admin API (`/api/cached-repos`, JSON, bearer tokens), its OpenAPI document and the
//! admin page (`/admin`).
//!
//! Off (404) unless the proxy has a catalog and at least one admin token. Tokens are held as
//! hashes and compared in constant time: no token is a 401, a wrong one a 403.

use std::sync::Arc;

use bytes::Bytes;
use gitcache_catalog::{Changes, NewRepo, Record};
use http_body_util::BodyExt;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::{Map, Value, json};

use gitcache_catalog::Catalog;

use crate::body::Body;
use crate::config::ProxyConfig;
use crate::mirrors::Mirrors;
use crate::response_cache::ResponseCache;

/// The OpenAPI document served at `/api/openapi.json`.
pub(crate) const OPENAPI: &str = include_str!("admin/openapi.json");
/// The admin page.
const PAGE: &str = include_str!("admin/page.html");

/// The page's content security policy: its own script and style run, named by their
/// SHA-256, and nothing else inline (an injected `<script>` or `style` attribute does not).
fn page_policy() -> &'static HeaderValue {
    static POLICY: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        use base64::Engine as _;
        let hash = |tag: &str| {
            let inner = PAGE
                .split_once(&format!("<{tag}>"))
                .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
                .map(|(inner, _)| inner)
                .expect("the page has one inline script and one style");
            // Browsers hash the element's text, whose line ends the parser made `\n`.
            let inner = inner.replace("\r\n", "\n").replace('\r', "\n");
            let digest = crate::access::sha256(inner.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest.as_bytes())
            )
        };
        let policy = format!(
            "default-src 'self'; script-src {}; style-src {}; frame-ancestors 'none'; \
             base-uri 'none'; form-action 'none'; object-src 'none'",
            hash("script"),
            hash("style")
        );
        HeaderValue::from_str(&policy).expect("a policy is visible ASCII")
    })
}
/// The largest admin request body read.
const MAX_BODY: usize = 64 << 10;

/// Every API route, as the OpenAPI document names it; the router below answers exactly
/// these (a test holds the two together).
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/cached-repos"),
    ("post", "/api/cached-repos"),
    ("get", "/api/cached-repos/{id}"),
    ("patch", "/api/cached-repos/{id}"),
    ("delete", "/api/cached-repos/{id}"),
    ("post", "/api/cached-repos/{id}/purge"),
    ("get", "/api/openapi.json"),
];

/// The bearer token an `Authorization` header's value carries, if it is one (the scheme's
/// name in any case).
pub(crate) fn bearer(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `path` belongs to the admin side. Only exact shapes, so that no repository path
/// (`/api/<repo>/info/refs`, owner `admin`) is taken.
pub(crate) fn is_admin_path(path: &str) -> bool {
    matches!(
        path,
        "/admin" | "/admin/" | "/api/cached-repos" | "/api/openapi.json"
    ) || path
        .strip_prefix("/api/cached-repos/")
        .map(|rest| rest.strip_suffix("/purge").unwrap_or(rest))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// An admin request that cannot be done, as a JSON answer.
#[derive(Debug)]
pub(crate) struct AdminError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl AdminError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AdminError {
            status,
            message: message.into(),
            field: None,
        }
    }

    fn field(status: StatusCode, field: &str, message: impl Into<String>) -> Self {
        AdminError {
            status,
            message: format!("{field}: {}", message.into()),
            field: Some(field.to_owned()),
        }
    }

    /// The one place admin errors become responses.
    fn into_response(self) -> Response<Body> {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, error = %self.message, "admin request failed");
        }
        let mut response = json_response(
            self.status,
            &json!({ "error": self.message, "field": self.field }),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gitcache admin\""),
            );
        }
        response
    }
}

impl From<gitcache_catalog::Error> for AdminError {
    fn from(err: gitcache_catalog::Error) -> Self {
        use gitcache_catalog::Error as E;
        match err {
            E::Invalid(invalid) => AdminError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                invalid.field,
                invalid.reason,
            ),
            E::Duplicate(_) => AdminError::new(StatusCode::CONFLICT, err.to_string()),
            E::NotFound(_) => AdminError::new(StatusCode::NOT_FOUND, err.to_string()),
            other => {
                tracing::error!(err = %other, "catalog request failed");
                AdminError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string())
            }
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Body::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The admin API and page, over the catalog, with what they show of the mirrors and the
/// response cache.
#[derive(Debug)]
pub(crate) struct Admin {
    config: Arc<ProxyConfig>,
    catalog: Option<Arc<Catalog>>,
    mirrors: Arc<Mirrors>,
    responses: Option<Arc<ResponseCache>>,
    default_host: String,
    host_names: Vec<String>,
    /// This instance's name among those sharing the catalog.
    instance: String,
    /// Purges counted in the catalog, for the instances sharing it.
    purges: Arc<crate::purges::Purges>,
}

/// What other instances did, by repository folder (`host/owner/repo.git`).
type Fleet = std::collections::HashMap<String, gitcache_catalog::Activity>;

impl Admin {
    pub(crate) fn new(
        config: Arc<ProxyConfig>,
        catalog: Option<Arc<Catalog>>,
        mirrors: Arc<Mirrors>,
        responses: Option<Arc<ResponseCache>>,
        default_host: String,
        instance: String,
        purges: Arc<crate::purges::Purges>,
    ) -> Self {
        Admin {
            host_names: config.hosts.keys().cloned().collect(),
            config,
            catalog,
            mirrors,
            responses,
            default_host,
            instance,
            purges,
        }
    }

    /// What the other instances sharing the catalog did (nothing with SQLite); a database
    /// that does not answer leaves this instance's own numbers.
    /// What the other instances did for the repositories `repos` (folders).
    async fn fleet(&self, repos: &[String]) -> Fleet {
        let Some(catalog) = &self.catalog else {
            return Fleet::new();
        };
        if repos.is_empty() {
            return Fleet::new();
        }
        match catalog.fleet_activity(&self.instance, repos).await {
            Ok(fleet) => fleet,
            Err(err) => {
                tracing::warn!(%err, "reading the fleet's activity failed; showing this instance's");
                Fleet::new()
            }
        }
    }

    fn catalog(&self) -> Option<&Arc<Catalog>> {
        self.catalog.as_ref()
    }

    fn config(&self) -> &ProxyConfig {
        &self.config
    }

    fn default_host(&self) -> &str {
        &self.default_host
    }

    fn host_names(&self) -> &[String] {
        &self.host_names
    }

    /// What this instance holds of repositories.
    fn local(&self) -> crate::purges::Local<'_> {
        crate::purges::Local {
            config: &self.config,
            mirrors: &self.mirrors,
            responses: self.responses.as_deref(),
        }
    }

    /// Drop `record`'s mirror and stored responses here, and count the purge in `catalog`
    /// for the instances that share it.
    async fn purge(&self, catalog: &Catalog, record: &Record) -> Result<(), AdminError> {
        self.purges
            .purge(catalog, self.local(), record)
            .await
            .map_err(|err| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, err))
    }

    fn response_limit(&self, record: &Record) -> Option<u64> {
        crate::upkeep::response_limit(&self.config, record)
    }

    /// Answer an admin request (`is_admin_path` said it is one).
    pub(crate) async fn handle<B>(
        &self,
        parts: hyper::http::request::Parts,
        body: B,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(catalog) = self
            .catalog()
            .filter(|_| !self.config().admin_tokens.is_empty())
        else {
            return AdminError::new(StatusCode::NOT_FOUND, "the admin API is off").into_response();
        };
        let path = parts.uri.path();
        if path == "/admin" || path == "/admin/" {
            if parts.method != Method::GET {
                return AdminError::new(StatusCode::METHOD_NOT_ALLOWED, "GET only").into_response();
            }
            let mut response = Response::new(Body::full(PAGE));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
                .headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, page_policy().clone());
            // Not framed by another site (clickjacking), not read as another type.
            response
                .headers_mut()
                .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            response.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response.headers_mut().insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            return response;
        }
        if path == "/api/openapi.json" {
            if parts.method != Method::GET {
                return AdminError::new(StatusCode::METHOD_NOT_ALLOWED, "GET only").into_response();
            }
            let mut response = Response::new(Body::full(OPENAPI));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return response;
        }
        if let Err(err) = self.authorize(&parts.headers) {
            return err.into_response();
        }
        let purge = path.ends_with("/purge");
        let id = path
            .strip_prefix("/api/cached-repos/")
            .map(|rest| rest.strip_suffix("/purge").unwrap_or(rest))
            .map(|id| id.parse::<i64>());
        let result = match (&parts.method, id) {
            (_, Some(Err(_))) if purge => Err(AdminError::new(
                StatusCode::NOT_FOUND,
                "no cached repository with that id",
            )),
            (&Method::POST, Some(Ok(id))) if purge => match catalog.get(id).await {
                Ok(record) => self.purge(catalog, &record).await.map(|()| {
                    tracing::info!(id, repo = %record.full_name(), host = %record.host, "cached repository purged");
                    let mut response = Response::new(Body::empty());
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    response
                }),
                Err(err) => Err(err.into()),
            },
            (_, Some(Ok(_))) if purge => Err(AdminError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed here (POST)", parts.method),
            )),
            (_, Some(Err(_))) => Err(AdminError::new(
                StatusCode::NOT_FOUND,
                "no cached repository with that id",
            )),
            (&Method::GET, None) => self.list(catalog, parts.uri.query()).await,
            (&Method::POST, None) => match read_json(body).await {
                Ok(value) => self.create(catalog, value).await,
                Err(err) => Err(err),
            },
            (&Method::GET, Some(Ok(id))) => match catalog.get(id).await {
                Ok(record) => self
                    .view(record)
                    .await
                    .map(|view| json_response(StatusCode::OK, &view)),
                Err(err) => Err(AdminError::from(err)),
            },
            (&Method::PATCH, Some(Ok(id))) => match read_json(body).await {
                Ok(value) => self.patch(catalog, id, value).await,
                Err(err) => Err(err),
            },
            (&Method::DELETE, Some(Ok(id))) => match catalog.delete(id).await {
                Ok(record) => {
                    tracing::info!(id, repo = %record.full_name(), host = %record.host, "cached repository removed");
                    // Its data goes too, unless the server-wide settings still cache it.
                    if !self.local().still_cached(&record)
                        && let Err(err) = self.local().drop_copy(&record).await
                    {
                        tracing::warn!(error = %err, "removing the repository's data failed");
                        return AdminError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("the record is removed, but not the repository's data: {err}"),
                        )
                        .into_response();
                    }
                    let mut response = Response::new(Body::empty());
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    Ok(response)
                }
                Err(err) => Err(err.into()),
            },
            (_, id) => {
                let pattern = if id.is_some() {
                    "/api/cached-repos/{id}"
                } else {
                    "/api/cached-repos"
                };
                let allowed = ROUTES
                    .iter()
                    .filter(|(_, p)| *p == pattern)
                    .map(|(m, _)| m.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut response = AdminError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{} is not allowed here ({allowed})", parts.method),
                )
                .into_response();
                if let Ok(value) = HeaderValue::from_str(&allowed) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                Ok(response)
            }
        };
        result.unwrap_or_else(AdminError::into_response)
    }

    /// Whether `headers` carry an admin token this proxy accepts.
    pub(crate) fn accepts(&self, headers: &hyper::HeaderMap) -> bool {
        self.authorize(headers).is_ok()
    }

    fn authorize(&self, headers: &hyper::HeaderMap) -> Result<(), AdminError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(AdminError::new(
                StatusCode::UNAUTHORIZED,
                "an admin token is needed (Authorization: Bearer <token>)",
            ));
        };
        let token = bearer(value);
        match token {
            Some(token) if self.config().admin_tokens.accepts(token) => Ok(()),
            Some(_) => Err(AdminError::new(
                StatusCode::FORBIDDEN,
                "this token may not use the admin API",
            )),
            None => Err(AdminError::new(
                StatusCode::UNAUTHORIZED,
                "the Authorization header must be a bearer token",
            )),
        }
    }

    /// A page of the records, by id: `limit` (at most [`MAX_PAGE`], the default) after the
    /// id `after` (0 by default). A full page names the next in a `Link` header.
    async fn list(
        &self,
        catalog: &gitcache_catalog::Catalog,
        query: Option<&str>,
    ) -> Result<Response<Body>, AdminError> {
        let (after, limit) = page_of(query)?;
        let records = catalog.list_page(after, limit).await?;
        let next = (records.len() == limit as usize)
            .then(|| records.last().map(|r| r.id))
            .flatten();
        let views = self.views(records).await?;
        let mut response = json_response(StatusCode::OK, &Value::Array(views));
        if let Some(last) = next
            && let Ok(link) = HeaderValue::from_str(&format!(
                "</api/cached-repos?after={last}&limit={limit}>; rel=\"next\""
            ))
        {
            response.headers_mut().insert(header::LINK, link);
        }
        Ok(response)
    }

    async fn create(
        &self,
        catalog: &gitcache_catalog::Catalog,
        value: Value,
    ) -> Result<Response<Body>, AdminError> {
        let mut fields = object(value)?;
        only_fields(
            &fields,
            &[
                "host",
                "owner",
                "name",
                "enabled",
                "timeout_seconds",
                "max_cache_size_mb",
            ],
        )?;
        let host = match fields.remove("host") {
            None | Some(Value::Null) => self.default_host().to_owned(),
            Some(Value::String(host)) => {
                let known = host.eq_ignore_ascii_case(self.default_host())
                    || self
                        .host_names()
                        .iter()
                        .any(|h| h.eq_ignore_ascii_case(&host));
                if !known {
                    return Err(AdminError::field(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "host",
                        format!(
                            "'{host}' is not an upstream gitcache knows ({})",
                            std::iter::once(self.default_host())
                                .chain(self.host_names().iter().map(String::as_str))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                host
            }
            Some(_) => return Err(wrong_type("host", "a string")),
        };
        let owner = required_string(&mut fields, "owner")?;
        let name = required_string(&mut fields, "name")?;
        // On an upstream that ignores case the record holds the folded names, the ones
        // requests are looked up by; elsewhere `Widgets` and `widgets` are two repositories.
        // Names that are no repository's are refused by the catalog, field by field.
        let (owner, name) = match self.config.key(&host, owner.trim(), name.trim()) {
            Ok(key) => (key.owner().to_owned(), key.repo().to_owned()),
            Err(_) => (owner, name),
        };
        let mut new = NewRepo::new(&host, &owner, &name);
        if let Some(enabled) = optional_bool(&mut fields, "enabled")? {
            new.enabled = enabled;
        }
        if let Some(timeout) = optional_u32(&mut fields, "timeout_seconds")? {
            new.timeout_seconds = timeout;
        }
        new.max_cache_size_mb = optional_size(&mut fields, "max_cache_size_mb")?;
        let record = catalog.create(&new).await?;
        tracing::info!(id = record.id, repo = %record.full_name(), host = %record.host, "cached repository added");
        let id = record.id;
        let mut response = json_response(StatusCode::CREATED, &self.view(record).await?);
        if let Ok(location) = HeaderValue::from_str(&format!("/api/cached-repos/{id}")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Ok(response)
    }

    async fn patch(
        &self,
        catalog: &gitcache_catalog::Catalog,
        id: i64,
        value: Value,
    ) -> Result<Response<Body>, AdminError> {
        let mut fields = object(value)?;
        for fixed in ["host", "owner", "name", "id", "created_at", "updated_at"] {
            if fields.contains_key(fixed) {
                return Err(AdminError::field(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    fixed,
                    "cannot be changed (remove the repository and add it again)",
                ));
            }
        }
        only_fields(
            &fields,
            &["enabled", "timeout_seconds", "max_cache_size_mb"],
        )?;
        let changes = Changes {
            enabled: optional_bool(&mut fields, "enabled")?,
            timeout_seconds: optional_u32(&mut fields, "timeout_seconds")?,
            // `0` and `null` both clear the limit.
            max_cache_size_mb: match fields.get("max_cache_size_mb") {
                None => None,
                Some(Value::Null) => Some(0),
                Some(_) => optional_size(&mut fields, "max_cache_size_mb")?.or(Some(0)),
            },
        };
        let record = catalog.update(id, &changes).await?;
        tracing::info!(id, repo = %record.full_name(), enabled = record.enabled, timeout_seconds = record.timeout_seconds, max_cache_size_mb = ?record.max_cache_size_mb, "cached repository changed");
        Ok(json_response(StatusCode::OK, &self.view(record).await?))
    }

    /// One record as the API shows it (see [`Admin::views`]).
    async fn view(&self, record: Record) -> Result<Value, AdminError> {
        let mut views = self.views(vec![record]).await?;
        Ok(views.pop().unwrap_or_default())
    }

    /// Records as the API shows them: their fields and what the fleet knows of each (this
    /// instance's activity, live, with what the others last wrote to the catalog). What
    /// their mirrors and stored responses take is read from the disk off the async workers.
    async fn views(&self, records: Vec<Record>) -> Result<Vec<Value>, AdminError> {
        let repos: Vec<String> = (records.iter())
            .filter_map(|r| self.config().key(&r.host, &r.owner, &r.name).ok())
            .map(|key| crate::shared_responses::repo_text(&key.relative_path()))
            .collect();
        let fleet = self.fleet(&repos).await;
        let places: Vec<_> = records
            .iter()
            .map(|record| {
                let key = self
                    .config()
                    .key(&record.host, &record.owner, &record.name)
                    .ok();
                let mirror = key
                    .as_ref()
                    .and_then(|k| self.mirrors.registry().existing(k))
                    .map(|m| m.git_dir().to_owned());
                (key.map(|k| k.relative_path()), mirror)
            })
            .collect();
        let responses = self.responses.clone();
        let sizes = tokio::task::spawn_blocking(move || {
            places
                .into_iter()
                .map(|(relative, mirror)| {
                    let mirror_bytes =
                        mirror.and_then(|dir| gitcache_storage::fs::tree_size(&dir).ok());
                    let cache_bytes = match (&relative, &responses) {
                        (Some(rel), Some(cache)) => Some(cache.repo_size(rel)),
                        _ => None,
                    };
                    (mirror_bytes, cache_bytes)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|err| {
            AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading sizes failed: {err}"),
            )
        })?;
        Ok(records
            .iter()
            .zip(sizes)
            .map(|(record, sizes)| self.view_with(record, &fleet, sizes))
            .collect())
    }

    fn view_with(
        &self,
        record: &Record,
        fleet: &Fleet,
        (mirror_bytes, cache_bytes): (Option<u64>, Option<u64>),
    ) -> Value {
        let mut value = serde_json::to_value(record).unwrap_or_default();
        let key = self
            .config()
            .key(&record.host, &record.owner, &record.name)
            .ok();
        let mut stats = key
            .as_ref()
            .map(|k| self.mirrors.stats(k))
            .unwrap_or_default();
        if let Some(others) = key
            .as_ref()
            .and_then(|k| fleet.get(&crate::shared_responses::repo_text(&k.relative_path())))
        {
            stats.add(others);
        }
        let cache_limit = match (&key, &self.responses) {
            (Some(_), Some(_)) => self.response_limit(record),
            _ => None,
        };
        let fetches = stats.hits + stats.misses;
        let when = |t: i64| gitcache_catalog::record::rfc3339(t);
        value["status"] = json!({
            "mirror_bytes": mirror_bytes,
            "response_cache_bytes": cache_bytes,
            "response_cache_limit_bytes": cache_limit,
            "hits": stats.hits,
            "misses": stats.misses,
            "hit_rate": (fetches > 0).then(|| stats.hits as f64 / fetches as f64),
            "last_refresh": stats.last_refresh.map(|(t, _)| when(t)),
            "last_refresh_ok": stats.last_refresh.map(|(_, ok)| ok),
            "last_error": stats.last_error.as_ref().map(|(_, e)| e.clone()),
            "last_error_at": stats.last_error.as_ref().map(|(t, _)| when(*t)),
        });
        value
    }
}

/// The most records one answer of the list holds, and how many when not asked: each is
/// shown with the size of its mirror, read from the disk.
pub(crate) const MAX_PAGE: u32 = 1_000;

/// `after` and `limit` of a list's query (see [`Admin::list`]); anything else is refused.
fn page_of(query: Option<&str>) -> Result<(i64, u32), AdminError> {
    let (mut after, mut limit) = (0i64, MAX_PAGE);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| AdminError::field(StatusCode::BAD_REQUEST, name, what.to_owned());
        match name {
            "after" => {
                after = value
                    .parse()
                    .ok()
                    .filter(|id: &i64| *id >= 0)
                    .ok_or_else(|| bad("must be a record id (0 or more)"))?;
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| bad(&format!("must be from 1 to {MAX_PAGE}")))?;
            }
            _ => {
                return Err(AdminError::new(
                    StatusCode::BAD_REQUEST,
                    "the list takes only `after` and `limit`",
                ));
            }
        }
    }
    Ok((after, limit))
}

async fn read_json<B>(body: B) -> Result<Value, AdminError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|err| {
            AdminError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {err}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|err| {
        AdminError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {err}"),
        )
    })
}

fn object(value: Value) -> Result<Map<String, Value>, AdminError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(AdminError::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        )),
    }
}

fn only_fields(fields: &Map<String, Value>, allowed: &[&str]) -> Result<(), AdminError> {
    match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(AdminError::field(
            StatusCode::BAD_REQUEST,
            unknown,
            format!("unknown field (known: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn wrong_type(field: &str, expected: &str) -> AdminError {
    AdminError::field(
        StatusCode::BAD_REQUEST,
        field,
        format!("must be {expected}"),
    )
}

fn required_string(fields: &mut Map<String, Value>, field: &str) -> Result<String, AdminError> {
    match fields.remove(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(AdminError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
            "is required",
        )),
        Some(_) => Err(wrong_type(field, "a string")),
    }
}

fn optional_bool(fields: &mut Map<String, Value>, field: &str) -> Result<Option<bool>, AdminError> {
    match fields.remove(field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(wrong_type(field, "true or false")),
    }
}

fn optional_u32(fields: &mut Map<String, Value>, field: &str) -> Result<Option<u32>, AdminError> {
    match fields.remove(field) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            // Out-of-range values go on to the catalog's own range check.
            Some(v) => Ok(Some(
                u32::try_from(v.clamp(0, i64::from(u32::MAX))).unwrap_or(0),
            )),
            None => Err(wrong_type(field, "a whole number")),
        },
        Some(_) => Err(wrong_type(field, "a whole number")),
    }
}

/// A size in MiB: a whole number, 0 or more, or `null` (no limit).
fn optional_size(fields: &mut Map<String, Value>, field: &str) -> Result<Option<u64>, AdminError> {
    match fields.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(_)) => Err(AdminError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                field,
                "must be 0 (no limit) or more",
            )),
            _ => Err(wrong_type(field, "a whole number of MiB")),
        },
        Some(_) => Err(wrong_type(field, "a whole number of MiB")),
    }
}

#[cfg(test)]
mod tests {
    /// A bearer token is read whatever the case of the scheme's name, trimmed; any other
    /// scheme, or none, is no token.
    #[test]
    fn bearer_tokens_are_read_with_the_scheme_in_any_case() {
        let token = |value: &'static str| {
            super::bearer(&hyper::header::HeaderValue::from_static(value)).map(str::to_owned)
        };
        for value in ["Bearer abc", "bearer abc", "BEARER  abc "] {
            assert_eq!(token(value).as_deref(), Some("abc"), "{value}");
        }
        for value in ["Basic abc", "Bearerabc", "abc", ""] {
            assert_eq!(token(value), None, "{value}");
        }
    }

    #[test]
    fn the_page_policy_names_its_script_and_style_and_allows_nothing_else_inline() {
        let policy = super::page_policy().to_str().unwrap();
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    }

    use super::*;

    #[test]
    fn a_page_of_the_list_is_asked_for_by_after_and_limit_only() {
        assert_eq!(page_of(None).unwrap(), (0, MAX_PAGE));
        assert_eq!(page_of(Some("")).unwrap(), (0, MAX_PAGE));
        assert_eq!(page_of(Some("after=41&limit=2")).unwrap(), (41, 2));
        assert_eq!(page_of(Some("limit=1000")).unwrap(), (0, 1000));
        for (query, field) in [
            ("limit=0", Some("limit")),
            ("limit=1001", Some("limit")),
            ("limit=x", Some("limit")),
            ("after=-1", Some("after")),
            ("after=", Some("after")),
            ("offset=3", None),
            ("after", Some("after")),
        ] {
            let err = page_of(Some(query)).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(err.field.as_deref(), field, "{query}");
        }
    }

    #[test]
    fn admin_paths_never_take_repository_paths() {
        for path in [
            "/admin",
            "/admin/",
            "/api/cached-repos",
            "/api/cached-repos/12",
            "/api/openapi.json",
        ] {
            assert!(is_admin_path(path), "{path}");
        }
        for path in [
            "/api/cached-repos/info/refs",
            "/api/cached-repos.git/info/refs",
            "/api/cached-repos/git-upload-pack",
            "/admin/widgets/info/refs",
            "/api/cached-repos/",
            "/api/cached-repos/1x",
        ] {
            assert!(!is_admin_path(path), "{path}");
        }
    }

    /// The OpenAPI document names exactly the routes the router answers, and its record
    /// schema exactly the fields a record is shown with.
    #[test]
    fn openapi_matches_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                    documented.push((method.clone(), path.clone()));
                }
            }
        }
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
        for (_, path) in &routes {
            let concrete = path.replace("{id}", "7");
            assert!(is_admin_path(&concrete), "{concrete} is not routed");
        }

        let record = Record {
            id: 1,
            host: "h".into(),
            owner: "o".into(),
            name: "n".into(),
            enabled: true,
            timeout_seconds: 30,
            max_cache_size_mb: None,
            created_at: 0,
            updated_at: 0,
            purges: 0,
        };
        let mut shown: Vec<String> = serde_json::to_value(&record)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        shown.push("status".into());
        shown.sort();
        let schema = &doc["components"]["schemas"]["CachedRepo"]["properties"];
        let mut documented: Vec<String> = schema.as_object().unwrap().keys().cloned().collect();
        documented.sort();
        assert_eq!(shown, documented);
    }
}
