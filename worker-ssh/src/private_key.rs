//! Repairs of private keys that OpenSSH accepts but the key decoder we use (the `ssh-key` crate inside
//! russh) refuses, applied before the key is decoded. Sans-IO: text (and passphrase) in, key out.
//!
//! The one repair: an OpenSSH ECDSA P-256 key whose private scalar starts with a zero byte. OpenSSH writes
//! the scalar as an `mpint`, which drops leading zero bytes (RFC 4251, section 5), so about one P-256 key
//! in 256 carries a 31-byte scalar; `ssh-key` 0.7.0-rc.11 requires at least 32 bytes and answers "length
//! invalid". The repair writes the same scalar as 32 bytes (a leading zero that `ssh-key` accepts) and
//! re-pads the private section. An unencrypted key is repaired as text ([`repair`]); a passphrase-protected
//! one is decrypted here first, with ssh-key's own KDF and ciphers, and only if russh alone refuses it
//! ([`decode`]).

use std::borrow::Cow;

use base64::Engine as _;
use russh::keys::ssh_key;
use zeroize::Zeroizing;

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
    let container = Container::parse(&blob)?;
    if container.cipher != b"none" || container.kdf != b"none" || !container.tag.is_empty() {
        return None;
    }
    let section = repaired_section(container.private, BLOCK)?;
    Some(armour(container.kdf_options, container.public, &section))
}

/// Decodes `text` (decrypted with `passphrase` when it is protected) as russh's `decode_secret_key` does,
/// with the repair above applied where it applies: to the text of an unencrypted key, and to the decrypted
/// private section of a passphrase-protected one. Any key the repair does not apply to gets the decoder's
/// own answer (a wrong passphrase included).
pub fn decode(text: &str, passphrase: Option<&str>) -> Result<russh::keys::PrivateKey, russh::keys::Error> {
    let error = match russh::keys::decode_secret_key(&repair(text), passphrase) {
        Ok(key) => return Ok(key),
        Err(error) => error,
    };
    let repaired = passphrase.and_then(|passphrase| decrypted_and_repaired_p256(text, passphrase));
    match repaired.map(|plain| russh::keys::decode_secret_key(&plain, None)) {
        Some(Ok(key)) => Ok(key),
        _ => Err(error),
    }
}

/// The unencrypted, repaired text of a passphrase-protected P-256 key whose scalar lost its leading zero,
/// or `None` for every other key, including one that `passphrase` does not open (its check numbers differ
/// or its authentication tag fails).
fn decrypted_and_repaired_p256(text: &str, passphrase: &str) -> Option<Zeroizing<String>> {
    let blob = unarmour(text)?;
    let container = Container::parse(&blob)?;
    // ssh-key reads the cipher and the KDF's salt and rounds; it only refuses to decode the decrypted
    // section, which is the part repaired here.
    let encrypted = ssh_key::PrivateKey::from_openssh(text).ok()?;
    let cipher = encrypted.cipher();
    if cipher.is_none() || encrypted.algorithm().as_str() != "ecdsa-sha2-nistp256" {
        return None;
    }
    let tag = match cipher.has_tag() {
        true => Some(ssh_key::cipher::Tag::try_from(container.tag).ok()?),
        false if container.tag.is_empty() => None,
        false => return None,
    };
    let (key, iv) = encrypted.kdf().derive_key_and_iv(cipher, passphrase).ok()?;
    let mut section = Zeroizing::new(container.private.to_vec());
    cipher.decrypt(&key, &iv, &mut section, tag).ok()?;
    let (first, second) = (section.get(0..4)?, section.get(4..8)?);
    if first != second {
        return None;
    }
    let repaired = Zeroizing::new(repaired_section(&section, cipher.block_size())?);
    Some(Zeroizing::new(armour(b"", container.public, &repaired)))
}

/// The fields of an `openssh-key-v1` container (the private section still encrypted when it is).
struct Container<'a> {
    cipher: &'a [u8],
    kdf: &'a [u8],
    kdf_options: &'a [u8],
    public: &'a [u8],
    private: &'a [u8],
    /// An AEAD cipher's authentication tag, which follows the private section; empty otherwise.
    tag: &'a [u8],
}

impl<'a> Container<'a> {
    /// `blob` is the container without its armour ([`unarmour`]); `None` unless it holds exactly one key.
    fn parse(blob: &'a [u8]) -> Option<Self> {
        let mut r = Reader { data: blob, pos: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return None;
        }
        let (cipher, kdf, kdf_options) = (r.string()?, r.string()?, r.string()?);
        if r.u32()? != 1 {
            return None;
        }
        let (public, private) = (r.string()?, r.string()?);
        Some(Self { cipher, kdf, kdf_options, public, private, tag: &blob[r.pos..] })
    }
}

/// A plaintext private section (check numbers, one key, padding 1, 2, 3… to `block`) whose P-256 scalar
/// lost leading zeros, rewritten with a 32-byte scalar and padded to [`BLOCK`]; `None` for any other.
fn repaired_section(private: &[u8], block: usize) -> Option<Vec<u8>> {
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
    if padding.len() >= block || padding.iter().enumerate().any(|(i, b)| usize::from(*b) != i + 1) {
        return None;
    }
    let mut padded_scalar = Zeroizing::new(vec![0u8; P256_SCALAR - scalar.len()]);
    padded_scalar.extend_from_slice(scalar);
    let mut section = checks.to_vec();
    for field in [key_type, curve, point, &padded_scalar, comment] {
        put_string(&mut section, field);
    }
    let pad = (BLOCK - section.len() % BLOCK) % BLOCK;
    section.extend((1..=pad).map(|i| i as u8));
    Some(section)
}

/// An unencrypted `openssh-key-v1` key (cipher and KDF "none") with one public key and its private
/// section, in its PEM-style armour.
fn armour(kdf_options: &[u8], public: &[u8], section: &[u8]) -> String {
    let mut out = Zeroizing::new(MAGIC.to_vec());
    for field in [&b"none"[..], b"none", kdf_options] {
        put_string(&mut out, field);
    }
    out.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut out, public);
    put_string(&mut out, section);
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*out));
    let mut armored = String::from(BEGIN);
    armored.push('\n');
    for line in encoded.as_bytes().chunks(70) {
        // Base64 is ASCII: every chunk is UTF-8.
        armored.push_str(std::str::from_utf8(line).unwrap_or_default());
        armored.push('\n');
    }
    armored.push_str(END);
    armored.push('\n');
    armored
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

    /// [`SHORT_SCALAR_KEY`] protected with the passphrase "keypass" by `ssh-keygen -p` (its default,
    /// aes256-ctr with bcrypt-pbkdf), and by `ssh-keygen -p -Z chacha20-poly1305@openssh.com` (an AEAD
    /// cipher, whose tag follows the private section). OpenSSH keeps the 31-byte scalar in both.
    const SHORT_SCALAR_AES256CTR: &str = include_str!("../testdata/ecdsa_p256_short_scalar_aes256ctr");
    const SHORT_SCALAR_CHACHA: &str = include_str!("../testdata/ecdsa_p256_short_scalar_chacha");

    #[test]
    fn a_passphrase_protected_short_p256_scalar_is_read_once_decrypted_and_repaired() {
        let original_public = public_blob(SHORT_SCALAR_KEY);
        for text in [SHORT_SCALAR_AES256CTR, SHORT_SCALAR_CHACHA] {
            // What russh alone answers, and why this path exists.
            assert!(russh::keys::decode_secret_key(text, Some("keypass")).is_err());
            assert!(matches!(repair(text), Cow::Borrowed(_)), "nothing to repair before decryption");
            let key = decode(text, Some("keypass")).expect("decrypted, repaired and decoded");
            assert_eq!(key.public_key().to_bytes().expect("public key encodes"), original_public);
            // The same secret as the unencrypted file: the same signature.
            let unencrypted = decode(SHORT_SCALAR_KEY, None).expect("the unencrypted key decodes");
            assert_eq!(key.key_data(), unencrypted.key_data());
        }
    }

    #[test]
    fn a_wrong_or_missing_passphrase_keeps_the_decoders_own_error() {
        for text in [SHORT_SCALAR_AES256CTR, SHORT_SCALAR_CHACHA] {
            assert!(matches!(decode(text, None), Err(russh::keys::Error::KeyIsEncrypted)));
            let wrong = decode(text, Some("wrong")).expect_err("a wrong passphrase opens nothing");
            let russh_alone = russh::keys::decode_secret_key(text, Some("wrong")).expect_err("refused");
            assert_eq!(wrong.to_string(), russh_alone.to_string());
        }
        // Keys the repair does not concern decode as russh decodes them.
        assert!(decode(FULL_SCALAR_KEY, None).is_ok());
        assert!(decode("not a key", Some("keypass")).is_err());
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
