//! Credentials for gitcache's own requests from a GitHub App: a JWT signed with the App's
//! private key (RS256, as GitHub requires) finds the installation that covers a repository's
//! owner, and mints an installation token for it, kept until shortly before it expires and
//! then minted again. Tokens serve the refreshes gitcache starts itself (warming, scheduled
//! refreshes, push webhooks), never clients.
//!
//! Two endpoints of GitHub's REST API are used, under the API URL (`https://api.github.com`,
//! or a GitHub Enterprise Server's `https://<host>/api/v3`):
//! `GET /repos/{owner}/{repo}/installation` and
//! `POST /app/installations/{id}/access_tokens`.
//!
//! ```no_run
//! use std::time::Duration;
//! use gitcache_upstream::github_app::GitHubApp;
//! # async fn run() -> Result<(), gitcache_upstream::github_app::AppError> {
//! let key = std::fs::read("/etc/gitcache/app.pem").unwrap();
//! let app = GitHubApp::new("123456", &key, "https://api.github.com", Duration::from_secs(30))?;
//! // `Authorization: Basic …` for git over HTTPS, as `x-access-token`.
//! let authorization = app.authorization("rust-lang", "log").await?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt as _;
use hyper::Method;

use crate::{Connections, Upstream};

/// A token is minted again once it has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// How long an owner whose installation could not be found is not asked about again.
const MISSING_FOR: Duration = Duration::from_secs(300);

/// The most bytes of an API answer read.
const MAX_ANSWER: usize = 64 << 10;

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The private key is not an RSA key in PEM.
    #[error("GitHub App key: {0}")]
    Key(String),
    /// Signing the JWT failed.
    #[error("GitHub App JWT: {0}")]
    Jwt(String),
    /// The API could not be asked.
    #[error("GitHub API: {0}")]
    Api(#[from] crate::Error),
    /// The API answered with an error status.
    #[error("GitHub API {what}: status {status}")]
    Status {
        /// What was asked.
        what: &'static str,
        /// The status.
        status: u16,
    },
    /// The API's answer is not what GitHub sends.
    #[error("GitHub API {what}: {reason}")]
    Answer {
        /// What was asked.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Clone)]
struct Token {
    value: String,
    expires: SystemTime,
}

/// A GitHub App's identity, and the installation tokens minted with it, by owner.
pub struct GitHubApp {
    app_id: String,
    key: jsonwebtoken::EncodingKey,
    api: String,
    timeout: Duration,
    connections: Connections,
    /// Installation ids by owner (installations cover whole accounts).
    installations: std::sync::Mutex<HashMap<String, u64>>,
    /// Owners whose installation could not be found, and when: not asked again for a while
    /// (every refresh of an owner the App is not installed on would spend the API's quota).
    missing: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Tokens by installation; one mint at a time per installation.
    tokens: std::sync::Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<Token>>>>>,
}

impl std::fmt::Debug for GitHubApp {
    /// Never shows the key or a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubApp")
            .field("app_id", &self.app_id)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iat: u64,
    exp: u64,
    iss: &'a str,
}

#[derive(serde::Deserialize)]
struct Installation {
    id: u64,
}

#[derive(serde::Deserialize)]
struct AccessToken {
    token: String,
    expires_at: String,
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl GitHubApp {
    /// The App `app_id` with its private key `pem` (PKCS#1 as GitHub hands it out, or
    /// PKCS#8), asking the API at `api_url`; each API request within `timeout`.
    pub fn new(
        app_id: &str,
        pem: &[u8],
        api_url: &str,
        timeout: Duration,
    ) -> Result<Self, AppError> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem)
            .map_err(|e| AppError::Key(e.to_string()))?;
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            return Err(AppError::Api(crate::Error::Url {
                url: api_url.to_owned(),
                reason: "expected http(s)://host[:port][/path]",
            }));
        }
        Ok(GitHubApp {
            app_id: app_id.to_owned(),
            key,
            api: api_url.trim_end_matches('/').to_owned(),
            timeout,
            connections: Connections::new(),
            installations: Default::default(),
            missing: Default::default(),
            tokens: Default::default(),
        })
    }

    /// A JWT for the App: issued a minute ago (clocks drift), valid for nine minutes (GitHub
    /// takes at most ten).
    fn jwt(&self) -> Result<String, AppError> {
        let now = unix(SystemTime::now());
        let claims = Claims {
            iat: now.saturating_sub(60),
            exp: now + 540,
            iss: &self.app_id,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|e| AppError::Jwt(e.to_string()))
    }

    /// Ask the API `method path` as the App; the JSON answer.
    async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
    ) -> Result<T, AppError> {
        let upstream = Upstream::new(
            &format!("{}{path}", self.api),
            Some(format!("Bearer {}", self.jwt()?)),
            self.timeout,
        )?
        .with_connections(self.connections.clone());
        let mut headers = hyper::HeaderMap::new();
        for (name, value) in [
            ("accept", "application/vnd.github+json"),
            ("user-agent", "gitcache"),
            ("x-github-api-version", "2022-11-28"),
        ] {
            headers.insert(name, hyper::header::HeaderValue::from_static(value));
        }
        let response = upstream
            .forward_bytes(method, "", &headers, bytes::Bytes::new())
            .await?;
        let status = response.status();
        let body = tokio::time::timeout(
            self.timeout,
            http_body_util::Limited::new(response.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| AppError::Answer {
            what,
            reason: "no whole answer in time".into(),
        })?
        .map_err(|e| AppError::Answer {
            what,
            reason: e.to_string(),
        })?
        .to_bytes();
        if !status.is_success() {
            return Err(AppError::Status {
                what,
                status: status.as_u16(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| AppError::Answer {
            what,
            reason: e.to_string(),
        })
    }

    /// The installation covering `owner` (found through one of its repositories, `repo`),
    /// asked once and remembered.
    async fn installation(&self, owner: &str, repo: &str) -> Result<u64, AppError> {
        let owner_key = owner.to_ascii_lowercase();
        if let Some(id) = self.lock_installations().get(&owner_key) {
            return Ok(*id);
        }
        let failed_lately = self
            .missing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&owner_key)
            .is_some_and(|at| at.elapsed() < MISSING_FOR);
        if failed_lately {
            return Err(AppError::Answer {
                what: "installation",
                reason: format!("none found for {owner} lately"),
            });
        }
        let asked = self
            .ask(
                "installation",
                Method::GET,
                &format!("/repos/{owner}/{repo}/installation"),
            )
            .await;
        let found: Installation = match asked {
            Ok(found) => found,
            Err(err) => {
                let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
                if missing.len() >= 10_000 {
                    missing.clear();
                }
                missing.insert(owner_key, std::time::Instant::now());
                return Err(err);
            }
        };
        self.lock_installations().insert(owner_key, found.id);
        Ok(found.id)
    }

    fn lock_installations(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.installations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An installation token for `owner/repo`'s installation: the one held while it has more
    /// than [`RENEW_BEFORE`] left, else a new one (one mint at a time per installation).
    pub async fn token(&self, owner: &str, repo: &str) -> Result<String, AppError> {
        let installation = self.installation(owner, repo).await?;
        let slot = Arc::clone(
            self.tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(installation)
                .or_default(),
        );
        let mut held = slot.lock().await;
        if let Some(token) = held.as_ref()
            && token
                .expires
                .duration_since(SystemTime::now())
                .is_ok_and(|left| left > RENEW_BEFORE)
        {
            return Ok(token.value.clone());
        }
        let minted: AccessToken = match self
            .ask(
                "access token",
                Method::POST,
                &format!("/app/installations/{installation}/access_tokens"),
            )
            .await
        {
            Ok(minted) => minted,
            Err(err @ AppError::Status { status: 404, .. }) => {
                // The installation went (the App was removed from the account): found anew
                // next time.
                self.lock_installations()
                    .retain(|_, id| *id != installation);
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        if minted.token.is_empty() || minted.token.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(AppError::Answer {
                what: "access token",
                reason: "not a token".into(),
            });
        }
        let expires = parse_timestamp(&minted.expires_at).ok_or_else(|| AppError::Answer {
            what: "access token",
            reason: format!("expires_at {:?}", minted.expires_at),
        })?;
        tracing::info!(installation, expires_at = %minted.expires_at, "GitHub App installation token minted");
        *held = Some(Token {
            value: minted.token.clone(),
            expires,
        });
        Ok(minted.token)
    }

    /// The `Authorization` header value for git over HTTPS with [`token`](Self::token):
    /// `Basic` with the user `x-access-token`, as GitHub documents.
    pub async fn authorization(&self, owner: &str, repo: &str) -> Result<String, AppError> {
        use base64::Engine as _;
        let token = self.token(owner, repo).await?;
        Ok(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
        ))
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (GitHub's timestamps) as a time.
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() != 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[13] != b':'
        || bytes[16] != b':'
        || bytes[19] != b'Z'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days since the epoch of a civil date (proleptic Gregorian calendar).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(seconds)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_github_writes_them() {
        let at = |t: &str| parse_timestamp(t).map(unix);
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(at("2016-07-11T22:14:10Z"), Some(1_468_275_250));
        assert_eq!(at("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        for bad in [
            "2016-07-11 22:14:10Z",
            "2016-13-11T22:14:10Z",
            "2016-07-11T22:14:10",
            "2016-07-11T22:14:10+01:00",
            "+016-07-11T22:14:10Z",
            "",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_key_that_is_not_rsa_pem_is_refused() {
        let err = GitHubApp::new(
            "1",
            b"not a key",
            "https://api.github.com",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, AppError::Key(_)), "{err}");
    }
}
