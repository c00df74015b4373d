//! HTTP services of gitcache: what `git` and operators reach.
//!
//! - [`route`] tells which repository and git service a request is for (the default upstream
//!   or an allowed host in the path) and refuses bad names before anything touches the disk;
//! - [`Proxy`] answers git's requests: protocol v2 fetches of cached repositories from
//!   mirrors, behind the access gate ([`access`]), everything else passed through to the
//!   upstream;
//! - [`serve`] runs it on a listener with connection limits, timeouts and a graceful stop.
//!
//! # Example
//!
//! ```no_run
//! use gitcache_http::{Proxy, ProxyConfig, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ProxyConfig::new("./gitcache-data", "https://github.com");
//! let proxy = Proxy::new(config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // `git clone http://127.0.0.1:8080/rust-lang/log.git` now goes through the cache.
//! serve(listener, proxy, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod access;
pub mod access_log;
mod admin;
pub mod body;
mod bounded;
pub mod config;
mod error;
mod fetch;
#[doc(hidden)]
pub mod fuzzing;
mod gate;
pub mod metrics;
mod mirrors;
mod passthrough;
mod per_client;
mod proxy;
mod purges;
mod responder;
pub mod response_cache;
pub mod route;
mod serve;
mod shared_responses;
mod target;
pub mod tls;
mod upkeep;
mod warming;
pub mod webhook;

pub use body::Body;
pub use config::{AdminTokens, CachePolicy, CredentialMode, Limits, ProxyConfig, Secret};
pub use error::Error;
pub use gitcache_catalog as catalog;
pub use gitcache_upstream::github_app;
pub use proxy::{ConfigError, Proxy, Services};
pub use response_cache::{ResponseCacheConfig, ResponseCacheStats};
pub use serve::{Face, ServeOptions, serve, serve_with};
