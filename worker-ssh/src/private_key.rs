//! Repairs of private keys that OpenSSH accepts but the key decoder we use (the `ssh-key` crate inside
//! russh) refuses, applied to the key text before it is decoded. Sans-IO: text in, text out.
//!
//! The one repair: an unencrypted OpenSSH ECDSA P-256 key whose private scalar starts with a zero byte.
//! OpenSSH writes the scalar as an `mpint`, which drops leading zero bytes (RFC 4251, section 5), so
//! about one P-256 key in 256 carries a 31-byte scalar; `ssh-key` 0.7.0-rc.11 requires at least 32 bytes
//! and answers "length invalid". The repair writes the same scalar as 32 bytes (a leading zero that
//! `ssh-key` accepts) and re-pads the private section. An encrypted key cannot be repaired before it is
//! decrypted, which russh does, so such a key (one passphrase-protected P-256 key in 256) is still refused.

use std::borrow::Cow;

use base64::Engine as _;

const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const END: &str = "-----END OPENSSH PRIVATE KEY-----";
const MAGIC: &[u8] = b"openssh-key-v1\0";
const P256_SCALAR: usize = 32;
/// The cipher "none" pads the private section to 8 bytes.
const BLOCK: usize = 8;

/// `text` with the repair above applied where it applies; otherwise `text` unchanged (including every key
/// this module does not understand: the decoder then says what is wrong with it).
pub fn repair(text: &str) -> Cow<'_, str> {
    match repaired_p256(text) {
        Some(fixed) => Cow::Owned(fixed),
        None => Cow::Borrowed(text),
    }
}

/// The binary `openssh-key-v1` blob inside the PEM-style armour.
fn unarmour(text: &str) -> Option<Vec<u8>> {
    let body = text.trim().strip_prefix(BEGIN)?.strip_suffix(END)?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn repaired_p256(text: &str) -> Option<String> {
    let blob = unarmour(text)?;
    let mut r = Reader { data: &blob, pos: 0 };
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let (cipher, kdf, kdf_options) = (r.string()?, r.string()?, r.string()?);
    if cipher != b"none" || kdf != b"none" || r.u32()? != 1 {
        return None;
    }
    let public = r.string()?;
    let private = r.string()?;
    if r.pos != blob.len() {
        return None;
    }
    let mut p = Reader { data: private, pos: 0 };
    let checks = p.take(8)?;
    let key_type = p.string()?;
    if key_type != b"ecdsa-sha2-nistp256" {
        return None;
    }
    let (curve, point, scalar, comment) = (p.string()?, p.string()?, p.string()?, p.string()?);
    // Only a scalar that lost leading zeros, and only if the rest is what the format says: padding 1, 2, 3….
    if scalar.is_empty() || scalar.len() >= P256_SCALAR || scalar[0] & 0x80 != 0 {
        return None;
    }
    let padding = &private[p.pos..];
    if padding.len() >= BLOCK || padding.iter().enumerate().any(|(i, b)| usize::from(*b) != i + 1) {
        return None;
    }
    let mut padded_scalar = vec![0u8; P256_SCALAR - scalar.len()];
    padded_scalar.extend_from_slice(scalar);
    let mut section = checks.to_vec();
    for field in [key_type, curve, point, &padded_scalar, comment] {
        put_string(&mut section, field);
    }
    let pad = (BLOCK - section.len() % BLOCK) % BLOCK;
    section.extend((1..=pad).map(|i| i as u8));
    let mut out = MAGIC.to_vec();
    for field in [&b"none"[..], b"none", kdf_options] {
        put_string(&mut out, field);
    }
    out.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut out, public);
    put_string(&mut out, &section);
    let encoded = base64::engine::general_purpose::STANDARD.encode(out);
    let mut armored = String::from(BEGIN);
    armored.push('\n');
    for line in encoded.as_bytes().chunks(70) {
        armored.push_str(std::str::from_utf8(line).ok()?);
        armored.push('\n');
    }
    armored.push_str(END);
    armored.push('\n');
    Some(armored)
}

fn put_string(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

/// A cursor over SSH wire data (RFC 4251): `None` when the data ends early.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway P-256 key from `ssh-keygen -t ecdsa -b 256 -N ''`, picked because its private scalar
    /// starts with a zero byte (31 bytes as an `mpint`). It protects nothing.
    const SHORT_SCALAR_KEY: &str = include_str!("../testdata/ecdsa_p256_short_scalar");
    /// The same kind of key with a full 32-byte scalar.
    const FULL_SCALAR_KEY: &str = include_str!("../testdata/ecdsa_p256_full_scalar");

    #[test]
    fn a_short_p256_scalar_is_refused_as_it_is_and_read_once_repaired() {
        // The decoder's refusal is what makes the repair necessary: if an update of ssh-key accepts the
        // key as it is, this line says so and the module can go.
        assert!(russh::keys::decode_secret_key(SHORT_SCALAR_KEY, None).is_err());
        let repaired = repair(SHORT_SCALAR_KEY);
        assert!(matches!(repaired, Cow::Owned(_)));
        let key = russh::keys::decode_secret_key(&repaired, None).expect("the repaired key decodes");
        // Still the same key: its public half is the one in the file.
        let original_public = public_blob(SHORT_SCALAR_KEY);
        let public = key.public_key().to_bytes().expect("public key encodes");
        assert_eq!(public, original_public);
    }

    #[test]
    fn other_keys_pass_through_untouched() {
        assert!(matches!(repair(FULL_SCALAR_KEY), Cow::Borrowed(_)));
        assert!(russh::keys::decode_secret_key(FULL_SCALAR_KEY, None).is_ok());
        for text in ["", "not a key", BEGIN, "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----"] {
            assert!(matches!(repair(text), Cow::Borrowed(_)), "{text}");
        }
        // Truncated or damaged keys are left to the decoder's own error.
        let cut = &SHORT_SCALAR_KEY[..SHORT_SCALAR_KEY.len() / 2];
        assert!(matches!(repair(&format!("{cut}\n{END}")), Cow::Borrowed(_)));
    }

    fn public_blob(text: &str) -> Vec<u8> {
        let blob = unarmour(text).expect("an armoured key");
        let mut r = Reader { data: &blob, pos: MAGIC.len() };
        for _ in 0..3 {
            r.string().expect("header");
        }
        r.u32().expect("count");
        r.string().expect("public key").to_vec()
    }
}
