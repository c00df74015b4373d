//! Test certificates: a certificate authority of its own and a server certificate it signs
//! for `127.0.0.1` and `localhost`, written as PEM files, so that a server under test serves
//! HTTPS and a client trusts exactly that authority ([`TestCa::git_trust`]).

use std::io;
use std::path::{Path, PathBuf};

/// A certificate authority and one server certificate it signed, as PEM files in a folder.
#[derive(Debug)]
pub struct TestCa {
    /// The authority's certificate, for clients, alone in its folder.
    pub ca: PathBuf,
    /// The server's certificate chain (leaf, then the authority).
    pub cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub key: PathBuf,
}

impl TestCa {
    /// A new authority named `name`, with its files `<name>-trust/ca.pem`, `<name>-cert.pem`
    /// and `<name>-key.pem` written into `dir`.
    pub fn new(dir: &Path, name: &str) -> io::Result<TestCa> {
        let failed = |e: rcgen::Error| io::Error::other(e.to_string());
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("gitcache test CA {name}"),
        );
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().map_err(failed)?;
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(failed)?;
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(failed)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let leaf = params.signed_by(&key, &ca).map_err(failed)?;
        let trust = dir.join(format!("{name}-trust"));
        std::fs::create_dir_all(&trust)?;
        let written = TestCa {
            ca: trust.join("ca.pem"),
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&written.ca, ca.pem())?;
        std::fs::write(&written.cert, format!("{}{}", leaf.pem(), ca.pem()))?;
        std::fs::write(&written.key, key.serialize_pem())?;
        Ok(written)
    }

    /// `git -c` settings that make git trust this authority and no other: its file, and its
    /// folder (git builds on libcurl-gnutls take the folder, not the file).
    pub fn git_trust(&self) -> [String; 2] {
        let folder = self.ca.parent().expect("the file is in its folder");
        [
            format!("http.sslCAInfo={}", self.ca.display()),
            format!("http.sslCAPath={}", folder.display()),
        ]
    }
}
