//! Forges' webhook signatures: an HMAC-SHA256 of the event's body with a shared secret, in
//! hex, sent by GitHub as `X-Hub-Signature-256: sha256=<hex>` and by Gitea and Forgejo as
//! `X-Gitea-Signature` / `X-Forgejo-Signature: <hex>`. Checked in constant time, before
//! anything in the body is looked at.
//!
//! # Example
//!
//! ```
//! use gitcache_upstream::signature::{sign, verify};
//!
//! let body = br#"{"ref":"refs/heads/main"}"#;
//! let mut headers = hyper::HeaderMap::new();
//! let value = format!("sha256={}", sign(b"s3cret", body));
//! headers.insert("x-hub-signature-256", value.parse().unwrap());
//! assert!(verify(b"s3cret", &headers, body).is_ok());
//! assert!(verify(b"other", &headers, body).is_err());
//! ```

use hmac::{KeyInit as _, Mac as _};

/// Why an event is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No signature header, or one that is not hex of the right length.
    #[error("the event carries no usable signature (X-Hub-Signature-256 or X-Gitea-Signature)")]
    Unsigned,
    /// The signature does not match the body.
    #[error("the event's signature does not match")]
    BadSignature,
}

/// Check `body` against the signature in `headers` with `secret`.
pub fn verify(secret: &[u8], headers: &hyper::HeaderMap, body: &[u8]) -> Result<(), Refused> {
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .or_else(|| {
            ["x-gitea-signature", "x-forgejo-signature"]
                .iter()
                .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        })
        .ok_or(Refused::Unsigned)?;
    let signature = decode_hex(signature.trim()).ok_or(Refused::Unsigned)?;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(|_| Refused::BadSignature)?;
    mac.update(body);
    // Compared in constant time by the MAC itself.
    mac.verify_slice(&signature)
        .map_err(|_| Refused::BadSignature)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// HMAC-SHA256 of `body` with `secret`, in hex: what a forge puts in the signature header.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> hyper::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    hyper::header::HeaderName::from_static(k),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn signatures_of_both_forges() {
        let body = br#"{"repository":{"full_name":"acme/widgets"}}"#;
        let good = sign(b"s3cret", body);
        let github = format!("sha256={good}");
        assert_eq!(
            verify(
                b"s3cret",
                &headers(&[("x-hub-signature-256", &github)]),
                body
            ),
            Ok(())
        );
        assert_eq!(
            verify(b"s3cret", &headers(&[("x-gitea-signature", &good)]), body),
            Ok(())
        );
        assert_eq!(
            verify(
                b"other",
                &headers(&[("x-hub-signature-256", &github)]),
                body
            ),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(
                b"s3cret",
                &headers(&[("x-hub-signature-256", &github)]),
                b"{}"
            ),
            Err(Refused::BadSignature)
        );
        for bad in [&good[..63], "zz", &format!("sha1={good}")] {
            assert_eq!(
                verify(b"s3cret", &headers(&[("x-hub-signature-256", bad)]), body),
                Err(Refused::Unsigned),
                "{bad}"
            );
        }
        assert_eq!(
            verify(b"s3cret", &headers(&[]), body),
            Err(Refused::Unsigned)
        );
    }
}
