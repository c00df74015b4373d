//! TLS for gitcache's listeners: a certificate chain and its key, read from PEM files and read
//! again on demand (the server does on SIGHUP), so that a renewed certificate is served
//! without a restart. Connections already open keep the certificate they started with; a
//! reload that fails (a file half-written by a renewal, a key that does not match) keeps
//! the certificate in use and says why.
//!
//! ```no_run
//! # fn main() -> Result<(), gitcache_http::tls::TlsError> {
//! use gitcache_http::tls::TlsFiles;
//! let tls = TlsFiles::load("/etc/gitcache/cert.pem", "/etc/gitcache/key.pem")?;
//! // Give it to `ServeOptions { tls: Some(tls.clone()), .. }`; later, after a renewal:
//! tls.reload()?;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS {what} {path}: {message}")]
pub struct TlsError {
    what: &'static str,
    path: PathBuf,
    message: String,
}

/// A certificate chain and key from two PEM files, served to every TLS connection from the
/// last successful (re)load.
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// Read the chain at `cert` (leaf first) and the private key at `key` (PKCS#8, PKCS#1 or
    /// SEC1), and check that they belong together.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = (cert.into(), key.into());
        let current = read(&cert, &key, &provider)?;
        Ok(Arc::new(TlsFiles {
            cert,
            key,
            provider,
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Read both files again; on success new connections get the new certificate, on failure
    /// the one in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = read(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The server configuration for listeners (HTTP/1.1 only, as git speaks it).
    pub(crate) fn acceptor(self: &Arc<Self>) -> tokio_rustls::TlsAcceptor {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for TlsFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let failed = |what, path: &Path, message: String| TlsError {
        what,
        path: path.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| failed("certificate", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(failed(
            "certificate",
            cert,
            "no certificate in the file".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        let expected = "an unencrypted PKCS#8, PKCS#1 or SEC1 private key in PEM";
        failed("key", key, format!("{e} (expected {expected})"))
    })?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| failed("key", key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| failed("key", key, format!("does not match the certificate: {e}")))?;
    Ok(certified)
}
