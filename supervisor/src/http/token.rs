//! Signed connection tokens: what an integrator hands a user so that the user can open exactly one
//! connection, with parameters the user never sees in clear text and cannot change.
//!
//! Format: `base64url(payload) "." base64url(HMAC-SHA256(key, base64url(payload)))`, both without
//! padding. The MAC covers the encoded payload exactly as sent, so there is no canonical-JSON question.
//! The payload is JSON:
//!
//! ```json
//! {"protocol": "vnc", "parameters": {"hostname": "10.0.0.5", "port": "5900", "password": "..."},
//!  "expiry": 1767225600, "read_only": false, "join": null}
//! ```
//!
//! `expiry` is in Unix seconds; `read_only` and `join` are optional. Unknown fields are refused, and the
//! payload is parsed only after its MAC has been verified (in constant time).

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Longest token accepted (the payload carries every connection parameter, certificates included).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Shortest key accepted: 32 bytes (256 bits) of key material, as HMAC-SHA256 deserves.
pub const MIN_KEY_LEN: usize = 32;

/// The signing key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey(<{} bytes redacted>)", self.0.len())
    }
}

impl TokenKey {
    pub fn new(key: &[u8]) -> Result<TokenKey, TokenKeyError> {
        if key.len() < MIN_KEY_LEN {
            return Err(TokenKeyError::TooShort { len: key.len() });
        }
        Ok(TokenKey(key.to_vec()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // INVARIANT: HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenKeyError {
    #[error("the token key has {len} bytes; at least {MIN_KEY_LEN} are required (e.g. `openssl rand -hex 32`)")]
    TooShort { len: usize },
}

/// What a token grants.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPayload {
    /// `vnc`, `ssh`, `rdp`, ...
    pub protocol: String,
    /// Connection parameters with guacd's names.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Unix seconds after which the token is refused.
    pub expiry: u64,
    /// The user may watch but not type, point or paste.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Join this existing connection (`$<uuid>`) instead of opening a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
}

impl fmt::Debug for TokenPayload {
    /// Parameter values are redacted: they carry passwords and keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPayload")
            .field("protocol", &self.protocol)
            .field("parameters", &format_args!("<values redacted for {:?}>", self.parameters.keys()))
            .field("expiry", &self.expiry)
            .field("read_only", &self.read_only)
            .field("join", &self.join)
            .finish()
    }
}

/// Why a token was refused. Every variant is reported to the client as 769 (unauthorized), without
/// saying which: the log has the detail.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("tokens are not enabled (no token key configured)")]
    Disabled,
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("token is not two base64url parts joined by a dot")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token payload is not valid: {0}")]
    BadPayload(String),
    #[error("token expired {seconds_ago} s ago")]
    Expired { seconds_ago: u64 },
}

/// Signs `payload` (for integrators' tooling and the tests).
pub fn sign(payload: &TokenPayload, key: &TokenKey) -> String {
    // INVARIANT: a struct of strings, a map of strings, integers and bools always serialises.
    let json = serde_json::to_vec(payload).unwrap_or_default();
    let body = URL_SAFE_NO_PAD.encode(json);
    let mut mac = key.mac();
    mac.update(body.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{body}.{tag}")
}

/// Checks the signature, then the payload, then the expiry against `now` (Unix seconds).
pub fn verify(token: &str, key: Option<&TokenKey>, now: u64) -> Result<TokenPayload, TokenError> {
    let key = key.ok_or(TokenError::Disabled)?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let (body, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
    if body.is_empty() || tag.contains('.') {
        return Err(TokenError::Malformed);
    }
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
    let mut mac = key.mac();
    mac.update(body.as_bytes());
    // Constant-time comparison inside `verify_slice`.
    mac.verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
    // Only authenticated bytes are parsed from here on.
    let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?;
    let payload: TokenPayload = serde_json::from_slice(&json).map_err(|e| TokenError::BadPayload(e.to_string()))?;
    if payload.expiry <= now {
        return Err(TokenError::Expired { seconds_ago: now - payload.expiry });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn payload(expiry: u64) -> TokenPayload {
        TokenPayload {
            protocol: "vnc".into(),
            parameters: [("hostname".to_string(), "127.0.0.1".to_string()), ("port".into(), "5902".into())]
                .into_iter()
                .collect(),
            expiry,
            read_only: false,
            join: None,
        }
    }

    #[test]
    fn round_trip() {
        let token = sign(&payload(2000), &key());
        assert_eq!(verify(&token, Some(&key()), 1000), Ok(payload(2000)));
        assert!(!token.contains('='), "no padding: {token}");
    }

    #[test]
    fn refusals() {
        let token = sign(&payload(2000), &key());
        assert_eq!(verify(&token, None, 1000), Err(TokenError::Disabled));
        assert_eq!(verify(&token, Some(&key()), 2000), Err(TokenError::Expired { seconds_ago: 0 }));
        let other = TokenKey::new(b"another key that is long enough!!").unwrap();
        assert_eq!(verify(&token, Some(&other), 1000), Err(TokenError::BadSignature));
        // Tampering with the payload: change the port and keep the old signature.
        let (_, tag) = token.split_once('.').unwrap();
        let mut forged = payload(2000);
        forged.parameters.insert("port".into(), "22".into());
        let forged_body = sign(&forged, &key()).split_once('.').unwrap().0.to_string();
        assert_eq!(verify(&format!("{forged_body}.{tag}"), Some(&key()), 1000), Err(TokenError::BadSignature));
        assert_eq!(verify("no-dot", Some(&key()), 1000), Err(TokenError::Malformed));
        assert_eq!(verify(&format!("{token}.x"), Some(&key()), 1000), Err(TokenError::Malformed));
        assert_eq!(verify(&"a".repeat(MAX_TOKEN_LEN + 1), Some(&key()), 1000), Err(TokenError::TooLong));
    }

    #[test]
    fn unknown_fields_are_refused_even_when_signed() {
        let body = URL_SAFE_NO_PAD.encode(br#"{"protocol":"vnc","expiry":9999999999,"hostname":"x"}"#);
        let mut mac = key().mac();
        mac.update(body.as_bytes());
        let token = format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        assert!(matches!(verify(&token, Some(&key()), 1000), Err(TokenError::BadPayload(_))));
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(TokenKey::new(b"short").unwrap_err(), TokenKeyError::TooShort { len: 5 });
        assert!(!format!("{:?}", key()).contains("0123"));
    }
}
