//! The server certificate check, as guacd (FreeRDP) does it:
//!
//! - `ignore-cert`: any certificate is accepted.
//! - otherwise a certificate is accepted when its SHA-256 fingerprint is listed in `cert-fingerprints`,
//!   or when it chains to a root in the system store and names the host (WebPKI), or, with `cert-tofu`,
//!   as a certificate seen for the first time. guacr keeps no certificate store between sessions (the
//!   worker has no filesystem), so with `cert-tofu` every session is a first use; the fingerprint is
//!   logged so it can be pinned with `cert-fingerprints`.
//! - anything else fails the TLS handshake, and the error names the fingerprint.
//!
//! We verify ourselves instead of using `ironrdp_tls`'s validation: its default accepts anything, and
//! its strict mode loads the system roots during the handshake, after the sandbox has closed the
//! filesystem. The roots are loaded here before the sandbox goes up.

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// A SHA-256 certificate fingerprint (`sha256:AB:CD:…`, colons optional, any case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let (algorithm, hex) = text.trim().split_once(':')?;
        if !algorithm.eq_ignore_ascii_case("sha256") {
            return None;
        }
        let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(Fingerprint(out))
    }

    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// What the user asked for (`ignore-cert`, `cert-tofu`, `cert-fingerprints`) plus the system roots.
#[derive(Debug, Clone, Default)]
pub struct CertPolicy {
    pub ignore: bool,
    pub tofu: bool,
    pub fingerprints: Vec<Fingerprint>,
    /// System trust anchors, loaded before the sandbox (empty with `ignore-cert`).
    pub roots: Vec<CertificateDer<'static>>,
}

impl CertPolicy {
    /// Loads the system roots unless certificates are ignored. Reads `/etc/ssl`: call before the sandbox.
    pub fn load_roots(&mut self) {
        if self.ignore {
            return;
        }
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::debug!(%error, "Skipping part of the system certificate store");
        }
        self.roots = loaded.certs;
    }
}

/// Why a certificate was accepted or refused, kept for the log and the user's error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ignored,
    Pinned(String),
    Trusted(String),
    FirstUse(String),
    Refused { fingerprint: String, reason: String },
}

/// The rustls verifier that applies a [`CertPolicy`].
#[derive(Debug)]
pub struct PolicyVerifier {
    policy: CertPolicy,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    verdict: Mutex<Option<Verdict>>,
}

impl PolicyVerifier {
    pub fn new(policy: CertPolicy, provider: Arc<CryptoProvider>) -> PolicyVerifier {
        let mut store = rustls::RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(policy.roots.iter().cloned());
        let webpki = (added > 0)
            .then(|| WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone()).build().ok())
            .flatten();
        PolicyVerifier { policy, webpki, provider, verdict: Mutex::new(None) }
    }

    /// The decision of the last handshake.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The decision for one certificate (sans-IO; the handshake calls it).
    pub fn decide(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
    ) -> Verdict {
        if self.policy.ignore {
            return Verdict::Ignored;
        }
        let fingerprint = Fingerprint::of(end_entity.as_ref());
        let shown = fingerprint.to_string();
        if self.policy.fingerprints.contains(&fingerprint) {
            return Verdict::Pinned(shown);
        }
        let reason = match &self.webpki {
            Some(webpki) => match webpki.verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now()) {
                Ok(_) => return Verdict::Trusted(shown),
                Err(e) => e.to_string(),
            },
            None => "no system trust anchors".to_string(),
        };
        if self.policy.tofu {
            return Verdict::FirstUse(shown);
        }
        Verdict::Refused { fingerprint: shown, reason }
    }
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.decide(end_entity, intermediates, server_name);
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(verdict.clone());
        match verdict {
            Verdict::Refused { fingerprint, reason } => Err(rustls::Error::General(format!(
                "server certificate is not trusted ({reason}); its fingerprint is {fingerprint}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration for RDP: ring provider, TLS 1.2 and 1.3, no resumption, our verifier.
pub fn client_config(
    verifier: Arc<PolicyVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn fingerprints_parse_like_freerdp() {
        let hex = "ab:".repeat(31) + "ab";
        let fp = Fingerprint::parse(&format!("SHA256:{hex}")).unwrap();
        assert_eq!(fp.0, [0xab; 32]);
        assert_eq!(Fingerprint::parse(&format!("sha256:{}", "AB".repeat(32))), Some(fp.clone()));
        assert!(fp.to_string().starts_with("sha256:AB:AB"));
        assert_eq!(Fingerprint::parse(&fp.to_string()), Some(fp));
        assert_eq!(Fingerprint::parse("sha1:0102"), None);
        assert_eq!(Fingerprint::parse("sha256:abcd"), None);
        assert_eq!(Fingerprint::parse(&format!("sha256:{}", "zz".repeat(32))), None);
    }

    #[test]
    fn decisions() {
        let cert = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let verifier = |policy| PolicyVerifier::new(policy, provider());
        let fp = Fingerprint::of(cert.as_ref());
        assert_eq!(
            verifier(CertPolicy { ignore: true, ..Default::default() }).decide(&cert, &[], &name),
            Verdict::Ignored
        );
        let strict = verifier(CertPolicy::default()).decide(&cert, &[], &name);
        assert!(matches!(strict, Verdict::Refused { ref fingerprint, .. } if *fingerprint == fp.to_string()));
        let pinned = verifier(CertPolicy { fingerprints: vec![fp.clone()], ..Default::default() });
        assert_eq!(pinned.decide(&cert, &[], &name), Verdict::Pinned(fp.to_string()));
        let other = verifier(CertPolicy { fingerprints: vec![Fingerprint([1; 32])], ..Default::default() });
        assert!(matches!(other.decide(&cert, &[], &name), Verdict::Refused { .. }));
        let tofu = verifier(CertPolicy { tofu: true, ..Default::default() });
        assert_eq!(tofu.decide(&cert, &[], &name), Verdict::FirstUse(fp.to_string()));
    }
}
