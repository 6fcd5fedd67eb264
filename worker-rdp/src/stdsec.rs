//! Standard RDP security with encryption (MS-RDPBCGR 5.3), which IronRDP's connector does not implement:
//! it only speaks standard security at encryption level NONE. [`Shim`] sits between the TCP stream and
//! IronRDP's framed reader/writer, sans-IO, one whole PDU at a time:
//!
//! - it offers FIPS and RC4 40/56/128-bit in the client's GCC Security Data of the MCS Connect Initial
//!   (IronRDP offers none);
//! - it takes the server random and certificate from the MCS Connect Response and hands IronRDP the same
//!   response with Security Data "none", so IronRDP carries on as with an unencrypted server;
//! - before IronRDP's first Send Data Request (the Client Info PDU, sent after the channels are joined)
//!   it sends the Security Exchange PDU: our client random, RSA-encrypted with the server's key;
//! - from then on it encrypts and signs what IronRDP sends (slow-path and fast-path input) and checks and
//!   decrypts what the server sends, adding and removing the security headers, so IronRDP sees the
//!   session as it would at level NONE (a basic header only on licensing PDUs).
//!
//! A server that chooses no encryption is passed through untouched. The server's certificate is not
//! authenticated: standard RDP security has no trust anchor (the proprietary certificate is signed with a
//! key every Windows server shares), which SECURITY.md states.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use des::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use des::TdesEde3;
use hmac::{Hmac, Mac};
use ironrdp_pdu::gcc::{
    ClientSecurityData, ConferenceCreateRequest, ConferenceCreateResponse, EncryptionMethod, ServerSecurityData,
};
use ironrdp_pdu::mcs::{ConnectInitial, ConnectResponse, McsMessage, SendDataIndication, SendDataRequest};
use ironrdp_pdu::x224::{X224Data, X224};
use num_bigint::BigUint;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Basic security header flags (MS-RDPBCGR 2.2.8.1.1.2.1).
const SEC_EXCHANGE_PKT: u16 = 0x0001;
const SEC_ENCRYPT: u16 = 0x0008;
const SEC_LICENSE_PKT: u16 = 0x0080;
/// Fast-path header flags (bits 6-7 of the first byte): the data is encrypted.
const FASTPATH_ENCRYPTED: u8 = 0x80;
const FASTPATH_FLAGS: u8 = 0xc0;
/// FIPS security header after the basic one: length (always 0x10), version 1, padding length.
const FIPS_LENGTH: u16 = 0x10;
const FIPS_VERSION: u8 = 1;
const SIGNATURE_LEN: usize = 8;
/// The fixed initialisation vector of FIPS 3DES-CBC (5.3.6.2).
const FIPS_IV: [u8; 8] = [0x12, 0x34, 0x56, 0x78, 0x90, 0xab, 0xcd, 0xef];
/// The T.124 object identifier that opens the GCC Conference Create Response.
const T124_OID: [u8; 7] = [0x00, 0x05, 0x00, 0x14, 0x7c, 0x00, 0x01];
/// The H.221 key of the server's GCC user data (2.2.1.4: "McDn"), just before the data blocks.
const H221_SERVER_KEY: &[u8] = b"McDn";
/// The Server Security Data block's type (SC_SECURITY, 2.2.1.4.3).
const SC_SECURITY: u16 = 0x0c02;
/// RSA moduli we take from a server certificate, in bits (Windows and xrdp use 512 or 2048; the 256-bit
/// client random must be smaller than the modulus).
const MIN_MODULUS_BITS: u32 = 512;
const MAX_MODULUS_BITS: u32 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StdSecError {
    #[error("malformed {what} from the RDP server: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("the RDP server's {what} is too short ({len} bytes)")]
    Short { what: &'static str, len: usize },
    #[error("the RDP server chose encryption method {0:#x}, not one of those offered (FIPS, RC4 40/56/128-bit)")]
    UnsupportedMethod(u32),
    #[error("the RDP server's certificate is unusable: {0}")]
    Certificate(String),
    #[error("a PDU from the RDP server failed its integrity check (MAC)")]
    BadMac,
    #[error("cannot encode an RDP PDU: {0}")]
    Encode(String),
    #[error("no random numbers for the client random: {0}")]
    Random(String),
}

impl From<StdSecError> for io::Error {
    fn from(e: StdSecError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

fn malformed(what: &'static str, detail: impl std::fmt::Display) -> StdSecError {
    StdSecError::Malformed { what, detail: detail.to_string() }
}

fn encode_err(e: impl std::fmt::Display) -> StdSecError {
    StdSecError::Encode(e.to_string())
}

/// An RSA public key from the server certificate, as the spec keeps it: little-endian modulus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaKey {
    modulus: BigUint,
    exponent: BigUint,
    /// Bytes of the encrypted client random: the modulus length plus 8 bytes of zero padding.
    key_len: usize,
}

/// Reads the public key of a server certificate (2.2.1.4.3.1): the proprietary form (an RSA1 blob) or
/// an X.509 chain (version 2), whose last certificate is the server's.
pub fn parse_server_certificate(cert: &[u8]) -> Result<RsaKey, StdSecError> {
    let u32_at = |at: usize| -> Result<u32, StdSecError> {
        let b = cert.get(at..at + 4).ok_or(StdSecError::Short { what: "server certificate", len: cert.len() })?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let version = u32_at(0)? & 0x7fff_ffff;
    if version == 2 {
        return x509_chain_key(cert);
    }
    if version != 1 {
        return Err(StdSecError::Certificate(format!("unknown certificate version {version}")));
    }
    // dwSigAlgId, dwKeyAlgId (4 + 4), wPublicKeyBlobType, wPublicKeyBlobLen (2 + 2), then the blob.
    let blob_len = u32_at(12)? >> 16;
    let blob = cert
        .get(16..16 + blob_len as usize)
        .ok_or(StdSecError::Certificate(format!("public key blob of {blob_len} bytes overruns the certificate")))?;
    let field = |at: usize| -> Result<u32, StdSecError> {
        let b = blob.get(at..at + 4).ok_or(StdSecError::Certificate("short public key blob".into()))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if blob.get(..4) != Some(b"RSA1") {
        return Err(StdSecError::Certificate("public key blob is not RSA1".into()));
    }
    let (key_len, bit_len, exponent) = (field(4)?, field(8)?, field(16)?);
    if !(MIN_MODULUS_BITS..=MAX_MODULUS_BITS).contains(&bit_len) || key_len != bit_len / 8 + 8 {
        return Err(StdSecError::Certificate(format!("bad key size (keylen {key_len}, bitlen {bit_len})")));
    }
    let modulus = blob
        .get(20..20 + key_len as usize)
        .ok_or(StdSecError::Certificate("modulus overruns the public key blob".into()))?;
    let modulus = BigUint::from_bytes_le(modulus);
    if exponent == 0 || modulus.bits() < u64::from(MIN_MODULUS_BITS) {
        return Err(StdSecError::Certificate("degenerate RSA key".into()));
    }
    Ok(RsaKey { modulus, exponent: BigUint::from(exponent), key_len: key_len as usize })
}

/// Most certificates an X.509 chain may hold (a chain is a handful).
const MAX_CHAIN: u32 = 16;

/// The public key of the last (the server's own) certificate of an X.509 chain (2.2.1.4.2):
/// dwVersion, NumCertBlobs, then each certificate as its length and DER bytes.
fn x509_chain_key(cert: &[u8]) -> Result<RsaKey, StdSecError> {
    let bad = |detail: &str| StdSecError::Certificate(format!("X.509 chain: {detail}"));
    let u32_at =
        |at: usize| cert.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or(bad("truncated"));
    let count = u32_at(4)?;
    if count == 0 || count > MAX_CHAIN {
        return Err(bad(&format!("{count} certificates")));
    }
    let mut at = 8usize;
    let mut last = &[][..];
    for _ in 0..count {
        let len = u32_at(at)? as usize;
        last = cert.get(at + 4..at + 4 + len).ok_or(bad("a certificate overruns the chain"))?;
        at += 4 + len;
    }
    use x509_cert::der::Decode as _;
    let parsed = x509_cert::Certificate::from_der(last).map_err(|e| bad(&e.to_string()))?;
    let public_key = ironrdp_tls::extract_tls_server_public_key(&parsed).ok_or(bad("no public key"))?;
    let (modulus, exponent) = rsa_public_key(public_key).ok_or(bad("the public key is not RSA"))?;
    let modulus = BigUint::from_bytes_be(modulus);
    let bits = modulus.bits();
    if !(u64::from(MIN_MODULUS_BITS)..=u64::from(MAX_MODULUS_BITS)).contains(&bits) || exponent.is_empty() {
        return Err(bad(&format!("unusable RSA key of {bits} bits")));
    }
    // As with the proprietary form: the modulus length plus 8 bytes of padding.
    let key_len = bits.div_ceil(8) as usize + 8;
    Ok(RsaKey { modulus, exponent: BigUint::from_bytes_be(exponent), key_len })
}

/// The modulus and exponent of a PKCS#1 `RSAPublicKey` (SEQUENCE of two INTEGERs), big-endian.
fn rsa_public_key(der: &[u8]) -> Option<(&[u8], &[u8])> {
    /// One DER element: (tag, contents, rest).
    fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = der.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 3 || rest.len() < n {
                return None;
            }
            (rest[..n].iter().fold(0usize, |acc, b| acc << 8 | usize::from(*b)), &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (0x30, sequence, _) = element(der)? else { return None };
    let (0x02, modulus, rest) = element(sequence)? else { return None };
    let (0x02, exponent, _) = element(rest)? else { return None };
    Some((strip_zeros(modulus), strip_zeros(exponent)))
}

/// A DER INTEGER's magnitude without its leading zero bytes.
fn strip_zeros(integer: &[u8]) -> &[u8] {
    let zeros = integer.iter().take_while(|b| **b == 0).count();
    &integer[zeros..]
}

impl RsaKey {
    /// Raw RSA of the client random (5.3.4.1): little-endian in, little-endian out, zero-padded to
    /// `key_len` bytes.
    pub fn encrypt(&self, client_random: &[u8; 32]) -> Vec<u8> {
        let m = BigUint::from_bytes_le(client_random);
        let mut out = m.modpow(&self.exponent, &self.modulus).to_bytes_le();
        out.resize(self.key_len, 0);
        out
    }
}

type HmacSha1 = Hmac<Sha1>;

/// One direction of FIPS encryption: 3DES-CBC whose chaining runs on across PDUs, and the PDU count
/// the MAC covers.
struct FipsDirection {
    cipher: TdesEde3,
    chain: [u8; 8],
    count: u32,
}

impl FipsDirection {
    fn new(key: &[u8; 24]) -> FipsDirection {
        FipsDirection { cipher: TdesEde3::new(GenericArray::from_slice(key)), chain: FIPS_IV, count: 0 }
    }
}

/// The FIPS session keys (5.3.5.2) and cipher state of both directions.
pub struct Fips {
    encrypt: FipsDirection,
    decrypt: FipsDirection,
    sign_key: [u8; 20],
}

/// 168 key bits (21 bytes) to a 24-byte 3DES key: seven bits per byte and a parity bit, in the bit order
/// Microsoft's implementation uses (each byte's bits reversed before and after the split).
fn expand_des_key(bits: &[u8; 21]) -> [u8; 24] {
    let reversed: Vec<u8> = bits.iter().map(|b| b.reverse_bits()).collect();
    let bit = |n: usize| (reversed[n / 8] >> (7 - n % 8)) & 1;
    let mut key = [0u8; 24];
    for (i, byte) in key.iter_mut().enumerate() {
        let seven = (0..7).fold(0u8, |acc, j| (acc << 1) | bit(i * 7 + j));
        let spread = (seven << 1).reverse_bits() & 0xfe;
        // Odd parity in the low bit (DES ignores it; kept for fidelity).
        *byte = spread | u8::from(spread.count_ones() % 2 == 0);
    }
    key
}

fn sha1_of(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

impl Fips {
    /// The client's keys from both randoms.
    pub fn client(client_random: &[u8; 32], server_random: &[u8; 32]) -> Fips {
        let encrypt_t = sha1_of(&[&client_random[16..], &server_random[16..]]);
        let decrypt_t = sha1_of(&[&client_random[..16], &server_random[..16]]);
        let sign_key = sha1_of(&[&decrypt_t, &encrypt_t]);
        let widen = |t: [u8; 20]| {
            let mut k = [0u8; 21];
            k[..20].copy_from_slice(&t);
            k[20] = t[0];
            expand_des_key(&k)
        };
        Fips {
            encrypt: FipsDirection::new(&widen(encrypt_t)),
            decrypt: FipsDirection::new(&widen(decrypt_t)),
            sign_key,
        }
    }

    /// Basic header with `flags` and SEC_ENCRYPT, then the sealed `data` (tests play the server with it).
    #[cfg(test)]
    fn seal_slow_path(&mut self, flags: u16, data: &[u8]) -> Vec<u8> {
        let mut out = (flags | SEC_ENCRYPT).to_le_bytes().to_vec();
        out.extend_from_slice(&[0, 0]);
        out.extend(self.seal_bytes(data));
        out
    }

    /// The server's side of the same keys (tests play the server with it).
    #[cfg(test)]
    fn server(client_random: &[u8; 32], server_random: &[u8; 32]) -> Fips {
        let mut fips = Fips::client(client_random, server_random);
        std::mem::swap(&mut fips.encrypt, &mut fips.decrypt);
        fips
    }

    fn signature(&self, data: &[u8], count: u32) -> [u8; SIGNATURE_LEN] {
        let mut mac = <HmacSha1 as hmac::KeyInit>::new_from_slice(&self.sign_key).expect("HMAC takes any key length");
        mac.update(data);
        mac.update(&count.to_le_bytes());
        let full = mac.finalize().into_bytes();
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(&full[..SIGNATURE_LEN]);
        sig
    }

    /// Signs and encrypts `data`: (padding length, signature, ciphertext).
    fn seal(&mut self, data: &[u8]) -> (u8, [u8; SIGNATURE_LEN], Vec<u8>) {
        let sig = self.signature(data, self.encrypt.count);
        self.encrypt.count = self.encrypt.count.wrapping_add(1);
        let pad = (8 - data.len() % 8) % 8;
        let mut buf = data.to_vec();
        buf.resize(data.len() + pad, 0);
        let dir = &mut self.encrypt;
        for block in buf.chunks_exact_mut(8) {
            for (b, c) in block.iter_mut().zip(dir.chain) {
                *b ^= c;
            }
            dir.cipher.encrypt_block(GenericArray::from_mut_slice(block));
            dir.chain.copy_from_slice(block);
        }
        (pad as u8, sig, buf)
    }

    /// Decrypts and checks what [`seal`](Self::seal) made on the other side.
    fn open(&mut self, pad: u8, sig: &[u8], data: &[u8]) -> Result<Vec<u8>, StdSecError> {
        if !data.len().is_multiple_of(8) || usize::from(pad) > 7 || usize::from(pad) > data.len() {
            return Err(malformed("encrypted PDU", format!("{} bytes with {pad} bytes of padding", data.len())));
        }
        let mut buf = data.to_vec();
        let dir = &mut self.decrypt;
        for block in buf.chunks_exact_mut(8) {
            let mut next = [0u8; 8];
            next.copy_from_slice(block);
            dir.cipher.decrypt_block(GenericArray::from_mut_slice(block));
            for (b, c) in block.iter_mut().zip(dir.chain) {
                *b ^= c;
            }
            dir.chain = next;
        }
        buf.truncate(buf.len() - usize::from(pad));
        let count = dir.count;
        dir.count = dir.count.wrapping_add(1);
        // Constant time: a timing oracle on the MAC must not tell how many of its bytes were right.
        if !bool::from(self.signature(&buf, count)[..].ct_eq(sig)) {
            return Err(StdSecError::BadMac);
        }
        Ok(buf)
    }

    /// The FIPS header after the basic one (or after a fast-path length) and the sealed `data`
    /// (2.2.8.1.1.2.3).
    fn seal_bytes(&mut self, data: &[u8]) -> Vec<u8> {
        let (pad, sig, sealed) = self.seal(data);
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&FIPS_LENGTH.to_le_bytes());
        out.extend_from_slice(&[FIPS_VERSION, pad]);
        out.extend_from_slice(&sig);
        out.extend_from_slice(&sealed);
        out
    }

    /// The FIPS header after the 4-byte basic header: checks it and opens the data behind it.
    fn open_fips(&mut self, what: &'static str, rest: &[u8]) -> Result<Vec<u8>, StdSecError> {
        if rest.len() < 4 + SIGNATURE_LEN {
            return Err(StdSecError::Short { what, len: rest.len() });
        }
        let length = u16::from_le_bytes([rest[0], rest[1]]);
        if length != FIPS_LENGTH || rest[2] != FIPS_VERSION {
            return Err(malformed(what, format!("FIPS header length {length:#x}, version {}", rest[2])));
        }
        self.open(rest[3], &rest[4..4 + SIGNATURE_LEN], &rest[4 + SIGNATURE_LEN..])
    }
}

/// RC4 (MS-RDPBCGR 5.3.6.1), written out: the stream cipher is a dozen lines.
#[derive(Clone)]
struct Rc4 {
    state: [u8; 256],
    i: u8,
    j: u8,
}

impl Rc4 {
    fn new(key: &[u8]) -> Rc4 {
        let mut state = [0u8; 256];
        for (n, v) in state.iter_mut().enumerate() {
            *v = n as u8;
        }
        let mut j = 0u8;
        for n in 0..256 {
            j = j.wrapping_add(state[n]).wrapping_add(key[n % key.len()]);
            state.swap(n, usize::from(j));
        }
        Rc4 { state, i: 0, j: 0 }
    }

    fn apply(&mut self, data: &mut [u8]) {
        for b in data {
            self.i = self.i.wrapping_add(1);
            self.j = self.j.wrapping_add(self.state[usize::from(self.i)]);
            self.state.swap(usize::from(self.i), usize::from(self.j));
            let k =
                self.state[usize::from(self.state[usize::from(self.i)].wrapping_add(self.state[usize::from(self.j)]))];
            *b ^= k;
        }
    }
}

/// Packets one RC4 key encrypts before it is updated (5.3.7).
const RC4_KEY_LIFETIME: u32 = 4096;
const PAD1: [u8; 40] = [0x36; 40];
const PAD2: [u8; 48] = [0x5c; 48];

fn md5_of(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = md5::Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// One direction of RC4 encryption.
#[derive(Clone)]
struct Rc4Direction {
    initial: Vec<u8>,
    current: Vec<u8>,
    rc4: Rc4,
    /// Packets under the current key.
    uses: u32,
    /// Packets in all (the salted MAC covers it).
    total: u32,
}

impl Rc4Direction {
    fn new(key: Vec<u8>) -> Rc4Direction {
        Rc4Direction { rc4: Rc4::new(&key), initial: key.clone(), current: key, uses: 0, total: 0 }
    }

    /// Applies the key stream to one packet, updating the key every [`RC4_KEY_LIFETIME`] packets
    /// (5.3.7.1). Returns the packet's number for the salted MAC.
    fn apply(&mut self, method: EncryptionMethod, data: &mut [u8]) -> u32 {
        if self.uses == RC4_KEY_LIFETIME {
            let len = self.current.len();
            let sha = sha1_of(&[&self.initial, &PAD1, &self.current]);
            let mut next = md5_of(&[&self.initial, &PAD2, &sha])[..len].to_vec();
            Rc4::new(&next.clone()).apply(&mut next);
            salt(method, &mut next);
            self.rc4 = Rc4::new(&next);
            self.current = next;
            self.uses = 0;
        }
        self.rc4.apply(data);
        self.uses += 1;
        let number = self.total;
        self.total = self.total.wrapping_add(1);
        number
    }
}

/// 40- and 56-bit keys are 64-bit keys with their first bytes replaced (5.3.5.1).
fn salt(method: EncryptionMethod, key: &mut [u8]) {
    if method == EncryptionMethod::BIT_40 {
        key[..3].copy_from_slice(&[0xd1, 0x26, 0x9e]);
    } else if method == EncryptionMethod::BIT_56 {
        key[0] = 0xd1;
    }
}

/// RC4 session keys (5.3.5.1) and both directions' state.
#[derive(Clone)]
pub struct Rc4Keys {
    method: EncryptionMethod,
    mac_key: Vec<u8>,
    encrypt: Rc4Direction,
    decrypt: Rc4Direction,
}

impl Rc4Keys {
    /// The client's keys for `method` (40, 56 or 128 bits) from both randoms.
    pub fn client(method: EncryptionMethod, client_random: &[u8; 32], server_random: &[u8; 32]) -> Rc4Keys {
        let salted =
            |secret: &[u8], label: &[u8]| md5_of(&[secret, &sha1_of(&[label, secret, client_random, server_random])]);
        let pre_master = [&client_random[..24], &server_random[..24]].concat();
        let master = [salted(&pre_master, b"A"), salted(&pre_master, b"BB"), salted(&pre_master, b"CCC")].concat();
        let blob = [salted(&master, b"X"), salted(&master, b"YY"), salted(&master, b"ZZZ")].concat();
        let final_hash = |k: &[u8]| md5_of(&[k, client_random, server_random]);
        let len = if method == EncryptionMethod::BIT_128 { 16 } else { 8 };
        let sized = |k: &[u8]| {
            let mut k = k[..len].to_vec();
            salt(method, &mut k);
            k
        };
        Rc4Keys {
            method,
            mac_key: sized(&blob[..16]),
            decrypt: Rc4Direction::new(sized(&final_hash(&blob[16..32]))),
            encrypt: Rc4Direction::new(sized(&final_hash(&blob[32..48]))),
        }
    }

    /// The server's side of the same keys (tests play the server with it).
    #[cfg(test)]
    fn server(method: EncryptionMethod, client_random: &[u8; 32], server_random: &[u8; 32]) -> Rc4Keys {
        let mut keys = Rc4Keys::client(method, client_random, server_random);
        std::mem::swap(&mut keys.encrypt, &mut keys.decrypt);
        keys
    }

    /// The MAC of `data` (5.3.6.1), salted with the packet number (5.3.6.1.1) when `number` is given.
    fn signature(&self, data: &[u8], number: Option<u32>) -> [u8; SIGNATURE_LEN] {
        let length = (data.len() as u32).to_le_bytes();
        let number = number.map(u32::to_le_bytes);
        let sha = sha1_of(&[&self.mac_key, &PAD1, &length, data, number.as_ref().map_or(&[][..], |n| &n[..])]);
        let md5 = md5_of(&[&self.mac_key, &PAD2, &sha]);
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(&md5[..SIGNATURE_LEN]);
        sig
    }

    /// Signature (unsalted) and encrypted `data`.
    fn seal_bytes(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = self.signature(data, None).to_vec();
        let start = out.len();
        out.extend_from_slice(data);
        self.encrypt.apply(self.method, &mut out[start..]);
        out
    }

    /// Decrypts what follows the basic header (or fast-path length) and checks its MAC, salted or not.
    fn open(&mut self, what: &'static str, rest: &[u8], salted: bool) -> Result<Vec<u8>, StdSecError> {
        if rest.len() < SIGNATURE_LEN {
            return Err(StdSecError::Short { what, len: rest.len() });
        }
        let mut data = rest[SIGNATURE_LEN..].to_vec();
        let number = self.decrypt.apply(self.method, &mut data);
        if !bool::from(self.signature(&data, salted.then_some(number))[..].ct_eq(&rest[..SIGNATURE_LEN])) {
            return Err(StdSecError::BadMac);
        }
        Ok(data)
    }
}

/// The session's encryption: FIPS or RC4.
enum Keys {
    Fips(Box<Fips>),
    Rc4(Box<Rc4Keys>),
}

impl Keys {
    /// What follows the basic header (or a fast-path length): security fields and encrypted `data`.
    fn seal_bytes(&mut self, data: &[u8]) -> Vec<u8> {
        match self {
            Keys::Fips(fips) => fips.seal_bytes(data),
            Keys::Rc4(rc4) => rc4.seal_bytes(data),
        }
    }

    /// Basic header with `flags` and SEC_ENCRYPT, then [`seal_bytes`](Self::seal_bytes).
    fn seal_slow_path(&mut self, flags: u16, data: &[u8]) -> Vec<u8> {
        let mut out = (flags | SEC_ENCRYPT).to_le_bytes().to_vec();
        out.extend_from_slice(&[0, 0]);
        out.extend(self.seal_bytes(data));
        out
    }

    /// The inverse of [`seal_bytes`](Self::seal_bytes); `salted`: the sender used the salted MAC.
    fn open(&mut self, what: &'static str, rest: &[u8], salted: bool) -> Result<Vec<u8>, StdSecError> {
        match self {
            Keys::Fips(fips) => fips.open_fips(what, rest),
            Keys::Rc4(rc4) => rc4.open(what, rest, salted),
        }
    }
}

/// Security header flag: the MAC is salted with the packet number.
const SEC_SECURE_CHECKSUM: u16 = 0x0800;
/// Fast-path output flag (bits 6-7): the MAC is salted.
const FASTPATH_SECURE_CHECKSUM: u8 = 0x40;

/// The security exchange and encryption state once the server chose encryption.
struct Encrypted {
    keys: Keys,
    /// The Security Exchange PDU's user data, until it has been sent.
    exchange: Option<Vec<u8>>,
    /// Until the server's first PDU that is not a licensing PDU, IronRDP's PDUs carry a basic security
    /// header (Client Info, licensing); afterwards they carry none.
    licensing: bool,
    /// The MCS message channel, if the server opened one: its PDUs (auto-detect, heartbeat, multitransport)
    /// keep a basic security header at level NONE too (2.2.14.1, 2.2.16.1), which IronRDP reads and writes,
    /// and they come before licensing as well, so they neither lose their header nor end licensing.
    message_channel: Option<u16>,
}

enum Phase {
    /// Before IronRDP's MCS Connect Initial.
    Start,
    /// Waiting for the server's MCS Connect Response.
    AwaitResponse,
    /// The server chose no encryption: everything passes.
    Plain,
    Encrypted(Box<Encrypted>),
}

/// The sans-IO standard-security layer. Each call takes one whole PDU (TPKT or fast-path, as
/// `ironrdp_pdu::find_size` frames them) and returns the bytes for the other side.
pub struct Shim {
    phase: Phase,
    random: Box<dyn FnMut() -> Result<[u8; 32], StdSecError> + Send + Sync>,
}

impl Default for Shim {
    fn default() -> Shim {
        Shim::new(Box::new(|| {
            let mut r = [0u8; 32];
            getrandom::fill(&mut r).map_err(|e| StdSecError::Random(e.to_string()))?;
            Ok(r)
        }))
    }
}

fn x224_payload(pdu: &[u8]) -> Option<Vec<u8>> {
    let data = ironrdp_pdu::decode::<X224<X224Data<'_>>>(pdu).ok()?;
    Some(data.0.data.into_owned())
}

fn x224_frame(data: Vec<u8>) -> Result<Vec<u8>, StdSecError> {
    ironrdp_pdu::encode_vec(&X224(X224Data { data: Cow::Owned(data) })).map_err(encode_err)
}

impl Shim {
    /// A shim that draws client randoms from `random`.
    pub fn new(random: Box<dyn FnMut() -> Result<[u8; 32], StdSecError> + Send + Sync>) -> Shim {
        Shim { phase: Phase::Start, random }
    }

    /// Whether the server chose encryption (known once the Connect Response has passed).
    pub fn encrypted(&self) -> bool {
        matches!(self.phase, Phase::Encrypted(_))
    }

    /// A PDU IronRDP wrote → the bytes for the server.
    pub fn outgoing(&mut self, pdu: &[u8]) -> Result<Vec<u8>, StdSecError> {
        match &mut self.phase {
            Phase::Start => {
                let Some(data) = x224_payload(pdu).filter(|d| d.starts_with(&[0x7f, 0x65])) else {
                    return Ok(pdu.to_vec());
                };
                let mut initial = ironrdp_pdu::decode::<ConnectInitial>(&data).map_err(encode_err)?;
                let mut blocks = initial.conference_create_request.gcc_blocks().clone();
                let offered = EncryptionMethod::FIPS
                    | EncryptionMethod::BIT_128
                    | EncryptionMethod::BIT_56
                    | EncryptionMethod::BIT_40;
                blocks.security = ClientSecurityData { encryption_methods: offered, ext_encryption_methods: 0 };
                initial.conference_create_request = ConferenceCreateRequest::new(blocks).map_err(encode_err)?;
                self.phase = Phase::AwaitResponse;
                x224_frame(ironrdp_pdu::encode_vec(&initial).map_err(encode_err)?)
            }
            Phase::AwaitResponse | Phase::Plain => Ok(pdu.to_vec()),
            Phase::Encrypted(state) => state.outgoing(pdu),
        }
    }

    /// A PDU from the server → the bytes for IronRDP.
    pub fn incoming(&mut self, pdu: &[u8]) -> Result<Vec<u8>, StdSecError> {
        match &mut self.phase {
            Phase::AwaitResponse => {
                let Some(data) = x224_payload(pdu).filter(|d| d.starts_with(&[0x7f, 0x66])) else {
                    return Ok(pdu.to_vec());
                };
                self.connect_response(&data)
            }
            Phase::Start | Phase::Plain => Ok(pdu.to_vec()),
            Phase::Encrypted(state) => state.incoming(pdu),
        }
    }

    fn connect_response(&mut self, data: &[u8]) -> Result<Vec<u8>, StdSecError> {
        // IronRDP decodes at most 1 KiB of server certificate; a licensed Windows server sends an X.509
        // chain of several certificates. The certificate is read here and IronRDP decodes the rest.
        let lifted = lift_server_certificate(data);
        let data = lifted.as_ref().map_or(data, |(without_cert, _)| without_cert.as_slice());
        let response =
            ironrdp_pdu::decode::<ConnectResponse>(data).map_err(|e| malformed("MCS Connect Response", e))?;
        let security = response.conference_create_response.gcc_blocks().security.clone();
        if security.encryption_method.is_empty() {
            self.phase = Phase::Plain;
            return x224_frame(data.to_vec());
        }
        let method = security.encryption_method;
        if ![EncryptionMethod::FIPS, EncryptionMethod::BIT_128, EncryptionMethod::BIT_56, EncryptionMethod::BIT_40]
            .contains(&method)
        {
            return Err(StdSecError::UnsupportedMethod(method.bits()));
        }
        tracing::info!(method = ?method, level = ?security.encryption_level, "Standard RDP security with encryption");
        let server_random = security.server_random.ok_or(malformed("server security data", "no server random"))?;
        let key = parse_server_certificate(lifted.as_ref().map_or(&security.server_cert, |(_, cert)| cert))?;
        let client_random = (self.random)()?;
        let encrypted = key.encrypt(&client_random);
        let mut exchange = Vec::with_capacity(8 + encrypted.len());
        exchange.extend_from_slice(&SEC_EXCHANGE_PKT.to_le_bytes());
        exchange.extend_from_slice(&[0, 0]);
        exchange.extend_from_slice(&(encrypted.len() as u32).to_le_bytes());
        exchange.extend_from_slice(&encrypted);
        let message_channel =
            response.conference_create_response.gcc_blocks().message_channel.as_ref().map(|m| m.mcs_message_channel_id);
        let rewritten = without_security(data, response)?;
        self.phase = Phase::Encrypted(Box::new(Encrypted {
            keys: if method == EncryptionMethod::FIPS {
                Keys::Fips(Box::new(Fips::client(&client_random, &server_random)))
            } else {
                Keys::Rc4(Box::new(Rc4Keys::client(method, &client_random, &server_random)))
            },
            exchange: Some(exchange),
            licensing: true,
            message_channel,
        }));
        x224_frame(rewritten)
    }
}

/// The Server Security Data's certificate lifted out of a Connect Response (its MCS payload): the
/// response with the certificate's length set to 0, and the certificate. The blocks keep their lengths:
/// IronRDP reads a block's fields from the start and ignores what follows them. `None` when the response
/// has no encrypting Security Data or its blocks cannot be walked; IronRDP's decoder then judges it whole.
fn lift_server_certificate(data: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let key_end = end_of(data, end_of(data, 0, &T124_OID)?, H221_SERVER_KEY)?;
    // The user data's PER length (X.691: one byte, or two with the top bits 10).
    let first = *data.get(key_end)?;
    let (len, mut at) = if first & 0x80 == 0 {
        (usize::from(first), key_end + 1)
    } else if first & 0xc0 == 0x80 {
        (usize::from(first & 0x3f) << 8 | usize::from(*data.get(key_end + 1)?), key_end + 2)
    } else {
        return None;
    };
    let end = at.checked_add(len).filter(|end| *end <= data.len())?;
    let le16 = |i: usize| data.get(i..i + 2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let le32 = |i: usize| data.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    while at + 4 <= end {
        let (kind, block_len) = (le16(at)?, le16(at + 2)?);
        let block_end = at.checked_add(block_len).filter(|e| block_len > 4 && *e <= end)?;
        if kind == usize::from(SC_SECURITY) {
            // encryptionMethod, encryptionLevel, serverRandomLen, serverCertLen, serverRandom, serverCert.
            let fields = at + 4;
            if block_end < fields + 16 || le32(fields)? == 0 {
                return None;
            }
            let cert_at = (fields + 16).checked_add(le32(fields + 8)?)?;
            let cert_end = cert_at.checked_add(le32(fields + 12)?).filter(|e| *e <= block_end)?;
            let mut without_cert = data.to_vec();
            without_cert[fields + 12..fields + 16].fill(0);
            return Some((without_cert, data[cert_at..cert_end].to_vec()));
        }
        at = block_end;
    }
    None
}

/// Where the first `what` at or after `from` in `data` ends.
fn end_of(data: &[u8], from: usize, what: &[u8]) -> Option<usize> {
    data.get(from..)?.windows(what.len()).position(|w| w == what).map(|at| from + at + what.len())
}

/// The Connect Response with Security Data "none", which IronRDP accepts. IronRDP keeps the GCC node id
/// private, so it is read from the PER bytes behind the T.124 object identifier.
fn without_security(data: &[u8], response: ConnectResponse) -> Result<Vec<u8>, StdSecError> {
    let bad = |detail: &str| malformed("MCS Connect Response", detail);
    let mut i = end_of(data, 0, &T124_OID).ok_or(bad("no T.124 identifier"))?;
    // connectPDU length (PER: one byte, or two with the top bit set), then the CHOICE byte.
    i += if *data.get(i).ok_or(bad("truncated"))? & 0x80 != 0 { 2 } else { 1 };
    i += 1;
    let node = data.get(i..i + 2).ok_or(bad("truncated"))?;
    let user_id = u16::from_be_bytes([node[0], node[1]]).checked_add(1001).ok_or(bad("node id out of range"))?;
    let mut blocks = response.conference_create_response.into_gcc_blocks();
    blocks.security = ServerSecurityData::no_security();
    let rewritten = ConnectResponse {
        conference_create_response: ConferenceCreateResponse::new(user_id, blocks).map_err(encode_err)?,
        called_connect_id: response.called_connect_id,
        domain_parameters: response.domain_parameters,
    };
    ironrdp_pdu::encode_vec(&rewritten).map_err(encode_err)
}

/// A fast-path PDU's header length and total length (2.2.9.1.2 / 2.2.8.1.2).
fn fast_path_lengths(pdu: &[u8]) -> Result<usize, StdSecError> {
    let short = || StdSecError::Short { what: "fast-path PDU", len: pdu.len() };
    let first = *pdu.get(1).ok_or_else(short)?;
    let (header, total) = if first & 0x80 != 0 {
        (3, usize::from(first & 0x7f) << 8 | usize::from(*pdu.get(2).ok_or_else(short)?))
    } else {
        (2, usize::from(first))
    };
    if total != pdu.len() || total < header {
        return Err(malformed("fast-path PDU", format!("length field {total}, PDU of {} bytes", pdu.len())));
    }
    Ok(header)
}

/// A fast-path PDU: first byte, the long length form, `parts` in order.
fn fast_path(first: u8, parts: &[&[u8]]) -> Result<Vec<u8>, StdSecError> {
    let total = 3 + parts.iter().map(|p| p.len()).sum::<usize>();
    let length = u16::try_from(total).ok().filter(|l| *l <= 0x7fff).ok_or(encode_err("fast-path PDU too long"))?;
    let mut out = Vec::with_capacity(total);
    out.push(first);
    out.extend_from_slice(&(length | 0x8000).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(out)
}

impl Encrypted {
    fn outgoing(&mut self, pdu: &[u8]) -> Result<Vec<u8>, StdSecError> {
        if pdu.first().is_some_and(|b| b & 0x03 == 0) {
            // Fast-path input: everything after the length (numEvents included) is sealed.
            let header = fast_path_lengths(pdu)?;
            let sealed = self.keys.seal_bytes(&pdu[header..]);
            return fast_path((pdu[0] & !FASTPATH_FLAGS) | FASTPATH_ENCRYPTED, &[&sealed]);
        }
        let Ok(X224(McsMessage::SendDataRequest(request))) = ironrdp_pdu::decode::<X224<McsMessage<'_>>>(pdu) else {
            return Ok(pdu.to_vec());
        };
        let mut out = Vec::new();
        if let Some(exchange) = self.exchange.take() {
            let pdu = SendDataRequest {
                initiator_id: request.initiator_id,
                channel_id: request.channel_id,
                user_data: Cow::Owned(exchange),
            };
            out = ironrdp_pdu::encode_vec(&X224(pdu)).map_err(encode_err)?;
        }
        let data = request.user_data.as_ref();
        let user_data = if self.licensing || Some(request.channel_id) == self.message_channel {
            let flags = data.get(..2).map(|f| u16::from_le_bytes([f[0], f[1]])).ok_or(encode_err("headerless PDU"))?;
            if flags & SEC_LICENSE_PKT != 0 {
                // Client licensing PDUs travel unencrypted (the server did not ask otherwise).
                data.to_vec()
            } else {
                self.keys.seal_slow_path(flags, data.get(4..).ok_or(encode_err("short PDU"))?)
            }
        } else {
            self.keys.seal_slow_path(0, data)
        };
        let sealed = SendDataRequest { user_data: Cow::Owned(user_data), ..request };
        out.extend(ironrdp_pdu::encode_vec(&X224(sealed)).map_err(encode_err)?);
        Ok(out)
    }

    fn incoming(&mut self, pdu: &[u8]) -> Result<Vec<u8>, StdSecError> {
        if pdu.first().is_some_and(|b| b & 0x03 == 0) {
            let header = fast_path_lengths(pdu)?;
            if pdu[0] & FASTPATH_ENCRYPTED == 0 {
                return Ok(pdu.to_vec());
            }
            let salted = pdu[0] & FASTPATH_SECURE_CHECKSUM != 0;
            let plain = self.keys.open("fast-path PDU", &pdu[header..], salted)?;
            return fast_path(pdu[0] & !FASTPATH_FLAGS, &[&plain]);
        }
        let indication = match ironrdp_pdu::decode::<X224<McsMessage<'_>>>(pdu) {
            Ok(X224(McsMessage::SendDataIndication(indication))) => indication,
            _ => return Ok(pdu.to_vec()),
        };
        let data = indication.user_data.as_ref();
        if data.len() < 4 {
            return Err(StdSecError::Short { what: "security header", len: data.len() });
        }
        let flags = u16::from_le_bytes([data[0], data[1]]);
        let body = if flags & SEC_ENCRYPT != 0 {
            Cow::Owned(self.keys.open("slow-path PDU", &data[4..], flags & SEC_SECURE_CHECKSUM != 0)?)
        } else {
            Cow::Borrowed(&data[4..])
        };
        let user_data = if flags & SEC_LICENSE_PKT != 0 || Some(indication.channel_id) == self.message_channel {
            let mut with_header = (flags & !SEC_ENCRYPT).to_le_bytes().to_vec();
            with_header.extend_from_slice(&[0, 0]);
            with_header.extend_from_slice(&body);
            with_header
        } else {
            self.licensing = false;
            body.into_owned()
        };
        let plain = SendDataIndication { user_data: Cow::Owned(user_data), ..indication };
        ironrdp_pdu::encode_vec(&X224(plain)).map_err(encode_err)
    }
}

/// Bytes buffered on either side of the shim before a whole PDU is there (a PDU is at most 64 KiB).
const MAX_PENDING: usize = 256 * 1024;

/// Splits whole PDUs off the front of `buf`.
fn take_pdu(buf: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    if buf.is_empty() {
        return Ok(None);
    }
    let info = ironrdp_pdu::find_size(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match info {
        Some(info) if info.length == 0 => Err(io::Error::new(io::ErrorKind::InvalidData, "empty RDP PDU")),
        Some(info) if buf.len() >= info.length => Ok(Some(buf.drain(..info.length).collect())),
        _ if buf.len() > MAX_PENDING => Err(io::Error::new(io::ErrorKind::InvalidData, "RDP PDU too large")),
        _ => Ok(None),
    }
}

/// [`Shim`] over a byte stream: what IronRDP writes is framed, transformed and written on; what the
/// server sends is framed, transformed and read back.
pub struct ShimStream<T> {
    inner: T,
    shim: Shim,
    /// From IronRDP, not yet a whole PDU.
    written: Vec<u8>,
    /// For the server, not yet written.
    to_server: Vec<u8>,
    /// From the server, not yet a whole PDU.
    received: Vec<u8>,
    /// For IronRDP, not yet read.
    to_client: Vec<u8>,
}

impl<T> ShimStream<T> {
    /// `leftover`: bytes already read from the server.
    pub fn new(inner: T, leftover: &[u8]) -> ShimStream<T> {
        ShimStream {
            inner,
            shim: Shim::default(),
            written: Vec::new(),
            to_server: Vec::new(),
            received: leftover.to_vec(),
            to_client: Vec::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> ShimStream<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.to_server.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.to_server))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.to_server.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ShimStream<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.to_client.is_empty() {
                let n = this.to_client.len().min(out.remaining());
                out.put_slice(&this.to_client[..n]);
                this.to_client.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if let Some(pdu) = take_pdu(&mut this.received)? {
                let plain = this.shim.incoming(&pdu)?;
                this.to_client.extend_from_slice(&plain);
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                // End of stream: IronRDP sees it as such (a partial PDU is its error to report).
                return Poll::Ready(Ok(()));
            }
            this.received.extend_from_slice(buf.filled());
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ShimStream<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        this.written.extend_from_slice(buf);
        while let Some(pdu) = take_pdu(&mut this.written)? {
            let sealed = this.shim.outgoing(&pdu)?;
            this.to_server.extend_from_slice(&sealed);
        }
        // Written on in `poll_flush` (IronRDP flushes after every PDU) or the next write.
        let _ = this.drain(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironrdp_pdu::gcc::{
        EncryptionLevel, RdpVersion, ServerCoreData, ServerCoreOptionalData, ServerGccBlocks, ServerMessageChannelData,
        ServerNetworkData,
    };
    use ironrdp_pdu::mcs::DomainParameters;

    /// IronRDP's MCS Connect Initial as worker-rdp sends it (captured), Security Data offering nothing.
    const CONNECT_INITIAL: &str = "0300019b02f0807f6582018f0401010401010101ff301a020122020102020100020101020100020101020300ffff0201023019020101020101020101020101020100020101020204200201023020020300ffff020300fc17020300ffff020101020100020101020300ffff02010204820129000500147c0001811e000800100001c00044756361811201c0ea00040008000004000301ca03aa09040000280a0000670075006100630072000000000000000000000000000000000000000000000004000000000000000c0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001ca01000000000018000f00eb080000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000006000000000000000000000000000000000000000000000002c00c00000000000000000003c0140001000000636c6970726472000000800006c0080000000000";
    const CLIENT_RANDOM: [u8; 32] = [0x5a; 32];
    const SERVER_RANDOM: [u8; 32] = [0xa7; 32];

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// A test server's RSA key: n = (2^127 - 1)(2^521 - 1), two Mersenne primes (648 bits), e = 65537.
    fn server_key() -> (BigUint, BigUint) {
        let one = BigUint::from(1u32);
        let (p, q) = ((&one << 127u32) - &one, (&one << 521u32) - &one);
        let n = &p * &q;
        let phi = (&p - &one) * (&q - &one);
        let d = BigUint::from(65537u32).modinv(&phi).unwrap();
        (n, d)
    }

    /// A proprietary server certificate (2.2.1.4.3.1.1) holding `n`.
    fn proprietary_certificate(n: &BigUint) -> Vec<u8> {
        let bits = n.bits() as u32;
        let key_len = bits / 8 + 8;
        let mut blob = b"RSA1".to_vec();
        for v in [key_len, bits, bits / 8 - 1, 65537] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        let mut modulus = n.to_bytes_le();
        modulus.resize(key_len as usize, 0);
        blob.extend_from_slice(&modulus);
        let mut cert = Vec::new();
        for v in [1u32, 1, 1] {
            cert.extend_from_slice(&v.to_le_bytes());
        }
        cert.extend_from_slice(&6u16.to_le_bytes());
        cert.extend_from_slice(&(blob.len() as u16).to_le_bytes());
        cert.extend_from_slice(&blob);
        cert.extend_from_slice(&8u16.to_le_bytes());
        cert.extend_from_slice(&72u16.to_le_bytes());
        cert.extend_from_slice(&[0; 72]);
        cert
    }

    fn connect_response(security: ServerSecurityData) -> Vec<u8> {
        connect_response_with(security, None)
    }

    /// A Connect Response that opens the MCS message channel `message_channel`, if given.
    fn connect_response_with(security: ServerSecurityData, message_channel: Option<u16>) -> Vec<u8> {
        let blocks = ServerGccBlocks {
            core: ServerCoreData {
                version: RdpVersion(0x0008_0004),
                optional_data: ServerCoreOptionalData {
                    client_requested_protocols: None,
                    early_capability_flags: None,
                },
            },
            network: ServerNetworkData { channel_ids: vec![1004], io_channel: 1003 },
            security,
            message_channel: message_channel.map(|id| ServerMessageChannelData { mcs_message_channel_id: id }),
            multi_transport_channel: None,
        };
        let response = ConnectResponse {
            conference_create_response: ConferenceCreateResponse::new(31219, blocks).unwrap(),
            called_connect_id: 0,
            domain_parameters: DomainParameters::target(),
        };
        x224_frame(ironrdp_pdu::encode_vec(&response).unwrap()).unwrap()
    }

    fn fips_security(cert: Vec<u8>) -> ServerSecurityData {
        ServerSecurityData {
            encryption_method: EncryptionMethod::FIPS,
            encryption_level: EncryptionLevel::Fips,
            server_random: Some(SERVER_RANDOM),
            server_cert: cert,
        }
    }

    fn shim() -> Shim {
        Shim::new(Box::new(|| Ok(CLIENT_RANDOM)))
    }

    fn decode_response(pdu: &[u8]) -> ConnectResponse {
        ironrdp_pdu::decode::<ConnectResponse>(&x224_payload(pdu).unwrap()).unwrap()
    }

    fn send_data_request(user_data: &[u8]) -> Vec<u8> {
        let pdu = SendDataRequest { initiator_id: 1007, channel_id: 1003, user_data: Cow::Borrowed(user_data) };
        ironrdp_pdu::encode_vec(&X224(pdu)).unwrap()
    }

    fn send_data_indication(user_data: &[u8]) -> Vec<u8> {
        let pdu = SendDataIndication { initiator_id: 1002, channel_id: 1003, user_data: Cow::Borrowed(user_data) };
        ironrdp_pdu::encode_vec(&X224(pdu)).unwrap()
    }

    /// The user data of each Send Data Request in `bytes` (several PDUs back to back).
    fn requests(mut bytes: Vec<u8>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(pdu) = take_pdu(&mut bytes).unwrap() {
            match ironrdp_pdu::decode::<X224<McsMessage<'_>>>(&pdu).unwrap().0 {
                McsMessage::SendDataRequest(r) => out.push(r.user_data.into_owned()),
                other => panic!("not a Send Data Request: {other:?}"),
            }
        }
        assert!(bytes.is_empty());
        out
    }

    fn indication_data(pdu: &[u8]) -> Vec<u8> {
        match ironrdp_pdu::decode::<X224<McsMessage<'_>>>(pdu).unwrap().0 {
            McsMessage::SendDataIndication(i) => i.user_data.into_owned(),
            other => panic!("not a Send Data Indication: {other:?}"),
        }
    }

    /// A shim that went through the Connect Initial and Response with a FIPS server.
    fn connected_fips() -> Shim {
        let mut shim = shim();
        shim.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
        let (n, _) = server_key();
        shim.incoming(&connect_response(fips_security(proprietary_certificate(&n)))).unwrap();
        shim
    }

    #[test]
    fn the_connect_initial_offers_fips_and_the_response_reaches_ironrdp_unencrypted() {
        let mut shim = shim();
        let initial = shim.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
        let initial = ironrdp_pdu::decode::<ConnectInitial>(&x224_payload(&initial).unwrap()).unwrap();
        let original = ironrdp_pdu::decode::<ConnectInitial>(&x224_payload(&unhex(CONNECT_INITIAL)).unwrap()).unwrap();
        let (blocks, before) =
            (initial.conference_create_request.gcc_blocks(), original.conference_create_request.gcc_blocks());
        let offered =
            EncryptionMethod::FIPS | EncryptionMethod::BIT_128 | EncryptionMethod::BIT_56 | EncryptionMethod::BIT_40;
        assert_eq!(blocks.security.encryption_methods, offered);
        assert_eq!((&blocks.core, &blocks.network), (&before.core, &before.network), "nothing else changes");

        let (n, _) = server_key();
        let response = shim.incoming(&connect_response(fips_security(proprietary_certificate(&n)))).unwrap();
        let response = decode_response(&response);
        let gcc = response.conference_create_response.gcc_blocks();
        assert_eq!(gcc.security, ServerSecurityData::no_security());
        assert_eq!((gcc.network.io_channel, &gcc.network.channel_ids[..]), (1003, &[1004u16][..]));
        assert_eq!(response.conference_create_response, ConferenceCreateResponse::new(31219, gcc.clone()).unwrap());
        assert!(shim.encrypted());
    }

    #[test]
    fn a_server_without_encryption_is_passed_through() {
        let mut shim = shim();
        shim.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
        let response = connect_response(ServerSecurityData::no_security());
        assert_eq!(decode_response(&shim.incoming(&response).unwrap()), decode_response(&response));
        assert!(!shim.encrypted());
        let info = send_data_request(&[0x40, 0, 0, 0, 1, 2, 3]);
        assert_eq!(shim.outgoing(&info).unwrap(), info);
        let fast = [0x00, 0x05, 0x02, 0x01, 0x02];
        assert_eq!(shim.incoming(&fast).unwrap(), fast);
    }

    #[test]
    fn a_session_is_encrypted_and_signed_both_ways() {
        let mut shim = connected_fips();
        // IronRDP's Client Info PDU: first the Security Exchange PDU goes out, then the sealed Client Info.
        let sent = requests(shim.outgoing(&send_data_request(&[0x40, 0, 0, 0, b'i', b'n', b'f', b'o'])).unwrap());
        assert_eq!(sent.len(), 2);
        let exchange = &sent[0];
        assert_eq!(u16::from_le_bytes([exchange[0], exchange[1]]), SEC_EXCHANGE_PKT);
        let len = u32::from_le_bytes(exchange[4..8].try_into().unwrap()) as usize;
        assert_eq!((len, exchange.len()), (89, 8 + 89));
        assert_eq!(&exchange[8 + 81..], &[0; 8], "zero padding after the modulus-sized value");
        let (n, d) = server_key();
        let random = BigUint::from_bytes_le(&exchange[8..]).modpow(&d, &n).to_bytes_le();
        assert_eq!(random, CLIENT_RANDOM, "the server recovers our client random");

        let mut server = Fips::server(&CLIENT_RANDOM, &SERVER_RANDOM);
        let info = &sent[1];
        assert_eq!(u16::from_le_bytes([info[0], info[1]]), 0x40 | SEC_ENCRYPT);
        assert_eq!(server.open_fips("test", &info[4..]).unwrap(), b"info");

        // A licensing PDU keeps its basic header for IronRDP; a data PDU loses it.
        let license = server.seal_slow_path(SEC_LICENSE_PKT, b"valid client");
        let seen = indication_data(&shim.incoming(&send_data_indication(&license)).unwrap());
        assert_eq!(seen, [&[0x80, 0, 0, 0][..], b"valid client"].concat());
        let demand = server.seal_slow_path(0, b"demand active, 17b");
        assert_eq!(indication_data(&shim.incoming(&send_data_indication(&demand)).unwrap()), b"demand active, 17b");

        // Licensing is over: IronRDP's PDUs carry no header, ours carry the FIPS one.
        let sent = requests(shim.outgoing(&send_data_request(b"confirm active")).unwrap());
        assert_eq!(sent.len(), 1);
        assert_eq!(u16::from_le_bytes([sent[0][0], sent[0][1]]), SEC_ENCRYPT);
        assert_eq!(server.open_fips("test", &sent[0][4..]).unwrap(), b"confirm active");

        // Fast-path input: sealed from the byte after the length on.
        let input = [0x04, 0x06, 0x00, 0x1c, 0x01, 0x00];
        let sealed = shim.outgoing(&input).unwrap();
        assert_eq!(sealed[0], 0x04 | FASTPATH_ENCRYPTED);
        assert_eq!(fast_path_lengths(&sealed).unwrap(), 3);
        assert_eq!(server.open_fips("test", &sealed[3..]).unwrap(), &input[2..]);

        // Fast-path output from the server reaches IronRDP unencrypted.
        let (pad, sig, body) = server.seal(b"bitmap update");
        let mut fips = FIPS_LENGTH.to_le_bytes().to_vec();
        fips.extend_from_slice(&[FIPS_VERSION, pad]);
        let update = fast_path(FASTPATH_ENCRYPTED, &[&fips, &sig, &body]).unwrap();
        let plain = shim.incoming(&update).unwrap();
        assert_eq!(plain[0], 0);
        assert_eq!(&plain[fast_path_lengths(&plain).unwrap()..], b"bitmap update");
    }

    /// Message-channel PDUs (auto-detect here) keep their basic security header both ways and come before
    /// licensing without ending it.
    #[test]
    fn message_channel_pdus_keep_their_header_and_do_not_end_licensing() {
        const MESSAGE_CHANNEL: u16 = 1005;
        let mut shim = shim();
        shim.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
        let (n, _) = server_key();
        let response = connect_response_with(fips_security(proprietary_certificate(&n)), Some(MESSAGE_CHANNEL));
        shim.incoming(&response).unwrap();
        let mut server = Fips::server(&CLIENT_RANDOM, &SERVER_RANDOM);
        let sent = requests(shim.outgoing(&send_data_request(&[0x40, 0, 0, 0, 1])).unwrap());
        assert_eq!(server.open_fips("test", &sent[1][4..]).unwrap(), [1]);

        // Connect-time auto-detect request: IronRDP reads the header (SEC_AUTODETECT_REQ) itself.
        let request = server.seal_slow_path(0x1000, b"rtt request");
        let indication = SendDataIndication {
            initiator_id: 1002,
            channel_id: MESSAGE_CHANNEL,
            user_data: Cow::Borrowed(&request[..]),
        };
        let seen = indication_data(&shim.incoming(&ironrdp_pdu::encode_vec(&X224(indication)).unwrap()).unwrap());
        assert_eq!(seen, [&[0x00, 0x10, 0, 0][..], b"rtt request"].concat());
        // IronRDP's response carries its header (SEC_AUTODETECT_RSP), which is kept and gets SEC_ENCRYPT.
        let answer = [&[0x00, 0x20, 0, 0][..], b"rtt response"].concat();
        let request =
            SendDataRequest { initiator_id: 1007, channel_id: MESSAGE_CHANNEL, user_data: Cow::Borrowed(&answer) };
        let sent = requests(shim.outgoing(&ironrdp_pdu::encode_vec(&X224(request)).unwrap()).unwrap());
        assert_eq!(u16::from_le_bytes([sent[0][0], sent[0][1]]), 0x2000 | SEC_ENCRYPT);
        assert_eq!(server.open_fips("test", &sent[0][4..]).unwrap(), b"rtt response");
        // Licensing goes on: IronRDP's licensing PDU still travels with its header, unencrypted.
        let license = [&[0x80, 0, 0, 0][..], b"new license request"].concat();
        assert_eq!(requests(shim.outgoing(&send_data_request(&license)).unwrap()), [license]);
    }

    #[test]
    fn bad_input_from_the_server_is_a_clean_error() {
        let mut shim = connected_fips();
        shim.outgoing(&send_data_request(&[0x40, 0, 0, 0, 1])).unwrap();
        let mut server = Fips::server(&CLIENT_RANDOM, &SERVER_RANDOM);
        let mut tampered = server.seal_slow_path(0, b"some data PDU");
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(shim.incoming(&send_data_indication(&tampered)), Err(StdSecError::BadMac));
        let short = [0x08, 0, 0, 0, 0x10, 0];
        assert!(matches!(shim.incoming(&send_data_indication(&short)), Err(StdSecError::Short { .. })));
        assert!(matches!(shim.incoming(&send_data_indication(&[8, 0])), Err(StdSecError::Short { .. })));
        let mut odd = server.seal_slow_path(0, b"x");
        odd.pop();
        assert!(matches!(shim.incoming(&send_data_indication(&odd)), Err(StdSecError::Malformed { .. })));
        let mut bad_version = server.seal_slow_path(0, b"x");
        bad_version[6] = 2;
        assert!(matches!(shim.incoming(&send_data_indication(&bad_version)), Err(StdSecError::Malformed { .. })));
        assert!(matches!(shim.incoming(&[0x80, 0x09, 0x10, 0]), Err(StdSecError::Malformed { .. })));
        assert!(matches!(shim.incoming(&[0x80, 0x04, 0x10, 0]), Err(StdSecError::Short { .. })));
    }

    #[test]
    fn unusable_server_security_is_refused() {
        let (n, _) = server_key();
        let good = proprietary_certificate(&n);
        let refused = |security: ServerSecurityData| {
            let mut shim = shim();
            shim.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
            shim.incoming(&connect_response(security)).unwrap_err()
        };
        let two = EncryptionMethod::BIT_128 | EncryptionMethod::FIPS;
        let two = ServerSecurityData { encryption_method: two, ..fips_security(good.clone()) };
        assert_eq!(refused(two), StdSecError::UnsupportedMethod(0x12), "a server must pick one method");
        let mut version = good.clone();
        version[0] = 3;
        assert!(matches!(refused(fips_security(version)), StdSecError::Certificate(_)));
        assert!(matches!(refused(fips_security(good[..40].to_vec())), StdSecError::Certificate(_)));
        let mut not_rsa1 = good.clone();
        not_rsa1[16] = b'X';
        assert!(matches!(refused(fips_security(not_rsa1)), StdSecError::Certificate(_)));
        assert!(matches!(refused(fips_security(vec![1, 0])), StdSecError::Short { .. }));
        // A Connect Response IronRDP cannot decode, or one without the T.124 key.
        let mut shim = shim();
        shim.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
        let garbage = x224_frame(vec![0x7f, 0x66, 0x82, 0x01]).unwrap();
        assert!(matches!(shim.incoming(&garbage), Err(StdSecError::Malformed { .. })));
        let response = x224_payload(&connect_response(fips_security(good))).unwrap();
        let no_key = ironrdp_pdu::decode::<ConnectResponse>(&response).unwrap();
        let mut bytes = response.clone();
        let at = bytes.windows(7).position(|w| w == T124_OID).unwrap();
        bytes[at + 6] = 0x02;
        assert!(matches!(without_security(&bytes, no_key), Err(StdSecError::Malformed { .. })));
    }

    /// The stream frames PDUs that arrive in pieces, and a bad one from the server is an `InvalidData` error.
    #[tokio::test]
    async fn the_stream_frames_split_pdus_and_reports_bad_ones() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut server) = tokio::io::duplex(64 * 1024);
        let mut stream = ShimStream::new(ours, &[]);
        stream.shim = connected_fips();
        let info = send_data_request(&[0x40, 0, 0, 0, b'h', b'i']);
        for byte in &info {
            stream.write_all(std::slice::from_ref(byte)).await.unwrap();
        }
        stream.flush().await.unwrap();
        let mut got = vec![0u8; 4096];
        let n = server.read(&mut got).await.unwrap();
        let sent = requests(got[..n].to_vec());
        let mut fips = Fips::server(&CLIENT_RANDOM, &SERVER_RANDOM);
        assert_eq!(fips.open_fips("test", &sent[1][4..]).unwrap(), b"hi");

        let demand = send_data_indication(&fips.seal_slow_path(0, b"demand active"));
        let (head, tail) = demand.split_at(5);
        server.write_all(head).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            buf.truncate(n);
            let mut bad = [0u8; 64];
            let err = stream.read(&mut bad).await.unwrap_err();
            (buf, err)
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        server.write_all(tail).await.unwrap();
        let mut tampered = fips.seal_slow_path(0, b"tampered");
        tampered[10] ^= 1;
        server.write_all(&send_data_indication(&tampered)).await.unwrap();
        let (plain, err) = reader.await.unwrap();
        assert_eq!(indication_data(&plain), b"demand active");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("integrity"), "{err}");
    }

    /// Known answers from xrdp 0.9.21 (captured from the end-to-end tests; the client random was recovered
    /// with that xrdp's own key): its Connect Response (server random, 2048-bit proprietary certificate)
    /// and its first two encrypted PDUs after licensing, which our keys must open with valid MACs.
    const XRDP_FIPS_CLIENT_RANDOM: &str = "a0269b3b6eecb090ce0c541ba923fe95ea2a97b159fd50fc4dd087360ef7cc1a";
    const XRDP_FIPS_RESPONSE: &str = concat!(
        "0300020d02f0807f668202010a0100020100301a020116020103020100020101020100020101020300fff80201020482",
        "01db000500147c00012a14760a01010001c0004d63446e81c4010c0c000400080000000000030c0c00eb030100ec0300",
        "00020cac01100000000400000020000000780100007ab94dcf6a564433ae3a9b07be52efa9cbf6907597c66db9de7a39",
        "d4a290f0af01000000010000000100000006001c01525341310801000000080000ff00000001000100957fd1f17aa265",
        "c3c4c9d53867802addf03dfd80f92d16d371c6f30805ac988c4edcad6fdcd9f965d3bd8679e1627a88780770597b844d",
        "07ffb3768b5eba5c001375c8bee80efe03c1a54a7c9e51fa8d660e8c19ccbee2bfd775182b2eb81fe4fab960e9d1541b",
        "b806c15f83a96dcf4842ec07cb027c1f1ce3644d1baa9fcdc6f885b00582173872e777e312715d6bca1c55556ab0b48c",
        "841b6e7e0b511f41dd1b605c5cf8c003a8cb99f6adb94010525a724b2a0bf19e43f96462f9f8ba757a376f53c9b9290b",
        "c60a37128c5edbf698ccc56c1ff431b350ff76585551cf6516a24746ca2ebe6c74c4397767329e1794e27721943d824c",
        "e4133f5bcb16554498000000000000000008004800b57779f8735c7b9ad6ee7716ffc16deea7933000ce312f37daff54",
        "888883d3404c0bfb9d726b93239576401ea34552dea9d9d52c83ed55540b50d6d0ed8706080000000000000000",
    );
    const XRDP_FIPS_DEMAND_ACTIVE: &str = concat!(
        "030001bf02f08068000403eb7081b00800000010000106a1ea943fa33ec40c70de59b73593f67e37d4cf3a2c06b38b55",
        "f95803dc1753c8c3d958bfeb150ac33d8ae1d3181adbef8242987e270b0c90e524916c55351a6606602705a1d5edd52f",
        "0f3463e61dabdd9796855df4b6d78f74fd7018c73a91daa1d692481c42f68f84c314397c0bc8abedb263b6d79d1082eb",
        "ea5661db0041c40563a72e251da05e049ee94cd5d35aa1538f541ee62eae2dd0729892a905368e2e1052553187e103dc",
        "892f5de4626c139c3f6ff87ef06937d1e60ad909bf89f76650bc1bacb42bae6331d1740b4ed1be0e8b1b37b9ce29a58f",
        "b8cdb7f8fa608b2914da477aef75b454c34c3fa20238838975f9538e41b6aba9725b480e48812dd730c25b66a75cd136",
        "88af1bcfaa35deb410dde015125eab01963377f6a6408d409eefcd0303a1c91972ab05ef2510bcd02d2125073b3ba20c",
        "b15531bd6fe65f8b3180c6ef982d39fbc58582dcec48d0f5953596330dfb9b4765219bf33ad50a188aae7040935ef6c0",
        "487a2aa24a72d7be9e78eb223b709a274c7c8572ff1495b3a484d7bdd8eee6b7cb1b509060e8c117b35c5032c5a20879",
        "e7297600873cd6a04d177e0b4fbbe6",
    );
    const XRDP_FIPS_NEXT: &str =
        "0300003602f08068000403eb70280800000010000102f140b4c7581ed1107e8b2d7cf10a92f85fab72f484dac02effac67a4478c5ba6";
    const XRDP_RC4_CLIENT_RANDOM: &str = "49197a20ef8d3b1a0b5a29e4ef54f60baff3cd134c804773b121f793cfc4737b";
    const XRDP_RC4_RESPONSE: &str = concat!(
        "0300020d02f0807f668202010a0100020100301a020116020103020100020101020100020101020300fff80201020482",
        "01db000500147c00012a14760a01010001c0004d63446e81c4010c0c000400080000000000030c0c00eb030100ec0300",
        "00020cac0102000000030000002000000078010000f75a83f9089a9c5c70ad9683e67f4347539440cc31060d5e568dee",
        "3af8184fa201000000010000000100000006001c01525341310801000000080000ff00000001000100957fd1f17aa265",
        "c3c4c9d53867802addf03dfd80f92d16d371c6f30805ac988c4edcad6fdcd9f965d3bd8679e1627a88780770597b844d",
        "07ffb3768b5eba5c001375c8bee80efe03c1a54a7c9e51fa8d660e8c19ccbee2bfd775182b2eb81fe4fab960e9d1541b",
        "b806c15f83a96dcf4842ec07cb027c1f1ce3644d1baa9fcdc6f885b00582173872e777e312715d6bca1c55556ab0b48c",
        "841b6e7e0b511f41dd1b605c5cf8c003a8cb99f6adb94010525a724b2a0bf19e43f96462f9f8ba757a376f53c9b9290b",
        "c60a37128c5edbf698ccc56c1ff431b350ff76585551cf6516a24746ca2ebe6c74c4397767329e1794e27721943d824c",
        "e4133f5bcb16554498000000000000000008004800b57779f8735c7b9ad6ee7716ffc16deea7933000ce312f37daff54",
        "888883d3404c0bfb9d726b93239576401ea34552dea9d9d52c83ed55540b50d6d0ed8706080000000000000000",
    );
    const XRDP_RC4_DEMAND_ACTIVE: &str = concat!(
        "030001b502f08068000403eb7081a6080000002ea2edea00b572ac548f1d0ab9bfde2b5513f2e2506c5614b0dadd9879",
        "7aa316fc1570d3044c45453e14504a11a156a8dbb2ad2b50399d22467312189ac128e38d8bcfb6a792e1237941bda0d1",
        "62f72d5ca96039c41ab4745dd7f05c236ed74b3fb799886c48719660cc77f38a020db6b9caa2c12b23e6b122731c37aa",
        "9cb3674a032d673c09c15020fcc1a180407a62a19d9ea71c47aab4c15954b89741a2354c9977b0ce088d258288fe2341",
        "df098052b53965ae514261843d12ee426ab43dd5f5a2f4d91dd5778fa18a928ca72df846beef4aeed20465e4c432a996",
        "355807c5e3cff33dc4d765e5b58b64dc46142a614c40bf05f1b953f1e03b41b7b6970c67869f8f41532fd738a77036c2",
        "35246ef1d4b0b159a53f39002de6c589da5b0a9125a94473be89449df1d3c4d16a2e74183f07f17c19d8008bbc86a198",
        "96bcb0078b97460b363466148f89b71ab7973ff96eb6c170df2170d7fdf4baf1bd732793d96dd71c103765e80c161e64",
        "338042a16ce72815593f9d81d0bb8a271b916674db44887d432e3ca3cd7a39fd15eca01fae402d1ded70e16fa4dcf210",
        "c9bf151dcd",
    );
    const XRDP_RC4_NEXT: &str =
        "0300003002f08068000403eb7022080000003e8f42c80492a8f2fc62c2cacab2f6f1a77168bf11a11052e38f43050cc1";

    #[test]
    fn xrdp_pdus_open_with_our_keys() {
        let cases = [
            (XRDP_FIPS_CLIENT_RANDOM, XRDP_FIPS_RESPONSE, XRDP_FIPS_DEMAND_ACTIVE, XRDP_FIPS_NEXT),
            (XRDP_RC4_CLIENT_RANDOM, XRDP_RC4_RESPONSE, XRDP_RC4_DEMAND_ACTIVE, XRDP_RC4_NEXT),
        ];
        for (random, response, demand, next) in cases {
            let random: [u8; 32] = unhex(random).try_into().unwrap();
            let mut shim = Shim::new(Box::new(move || Ok(random)));
            shim.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
            shim.incoming(&unhex(response)).unwrap();
            assert!(shim.encrypted());
            shim.outgoing(&send_data_request(&[0x40, 0, 0, 0, 1, 2, 3, 4])).unwrap();
            // The Demand Active PDU: a Share Control header with its own length and type 0x11.
            let plain = indication_data(&shim.incoming(&unhex(demand)).unwrap());
            assert_eq!(usize::from(u16::from_le_bytes([plain[0], plain[1]])), plain.len());
            assert_eq!(&plain[2..4], &[0x11, 0x00], "Demand Active");
            let plain = indication_data(&shim.incoming(&unhex(next)).unwrap());
            assert_eq!(usize::from(u16::from_le_bytes([plain[0], plain[1]])), plain.len());
        }
    }

    /// A self-signed 1024-bit RSA certificate made for this test with `openssl req -x509`, and its modulus
    /// as `openssl x509 -modulus` prints it.
    const X509_DER: &str = concat!(
        "3082020830820171a00302010202145fce7854b5a0b8934c6755f421389bc27bef14a4300d06092a864886f70d01010b",
        "050030153113301106035504030c0a67756163722d746573743020170d3236313132373132353834395a180f32313236",
        "313130333132353834395a30153113301106035504030c0a67756163722d7465737430819f300d06092a864886f70d01",
        "0101050003818d0030818902818100bfe078fc8cc6107cb980d6ba8b408a94687556a0c773eadc177630fd798ed657c3",
        "93b04a32b692cde35a0c73fafeb781cfb9232f417d9b3e6c16cb363181d03470c8d2d05479ce03dbb7f9a9744ff0e2ce",
        "7aa6a7bc43e45573ae34f2ba562b8eb1eb03d82a4ae6ed12d9511fb8a43906fcd6598bc6bb23e0dac89409a59ab80b02",
        "03010001a3533051301d0603551d0e041604141e547d2d02b351f126f83275d2f1340e348234d8301f0603551d230418",
        "301680141e547d2d02b351f126f83275d2f1340e348234d8300f0603551d130101ff040530030101ff300d06092a8648",
        "86f70d01010b0500038181009765afe97b1ec105a85561732920a9900a555861254a927e2765793a59dd8d348832549f",
        "4508624afea149ba06fb9c73f3ba8e67773eda4f86af72a3deea694a1a3963646273a9d5d4bd0966922595a11ee0cdd2",
        "2a98fcdbe31c28ea5ff881f4f9dad5145ccc0a70a73acfdc3cb37cf27cc6e502d9d0e7900fbca612b688912f",
    );
    const X509_MODULUS: &str = concat!(
        "bfe078fc8cc6107cb980d6ba8b408a94687556a0c773eadc177630fd798ed657c393b04a32b692cde35a0c73fafeb781",
        "cfb9232f417d9b3e6c16cb363181d03470c8d2d05479ce03dbb7f9a9744ff0e2ce7aa6a7bc43e45573ae34f2ba562b8e",
        "b1eb03d82a4ae6ed12d9511fb8a43906fcd6598bc6bb23e0dac89409a59ab80b",
    );

    #[test]
    fn an_x509_chain_gives_the_last_certificates_key() {
        let der = unhex(X509_DER);
        let mut chain = (2u32 | 0x8000_0000).to_le_bytes().to_vec();
        chain.extend_from_slice(&2u32.to_le_bytes());
        for _ in 0..2 {
            chain.extend_from_slice(&(der.len() as u32).to_le_bytes());
            chain.extend_from_slice(&der);
        }
        chain.extend_from_slice(&[0; 16]);
        let key = parse_server_certificate(&chain).unwrap();
        assert_eq!(key.modulus, BigUint::from_bytes_be(&unhex(X509_MODULUS)));
        assert_eq!((key.exponent.clone(), key.key_len), (BigUint::from(65537u32), 128 + 8));
        assert_eq!(key.encrypt(&CLIENT_RANDOM).len(), 136);

        // Through the shim, with one certificate and with the chain of two, which is over the 1 KiB of
        // certificate that IronRDP's Connect Response decoder takes (a licensed Windows server sends such
        // chains): the Security Exchange carries a value of the key's size.
        let mut single = (2u32 | 0x8000_0000).to_le_bytes().to_vec();
        single.extend_from_slice(&1u32.to_le_bytes());
        single.extend_from_slice(&(der.len() as u32).to_le_bytes());
        single.extend_from_slice(&der);
        single.extend_from_slice(&[0; 12]);
        assert!(chain.len() > 1024 && single.len() <= 1024, "{} and {} bytes", chain.len(), single.len());
        let big = connect_response(fips_security(chain.clone()));
        assert!(
            ironrdp_pdu::decode::<ConnectResponse>(x224_payload(&big).unwrap().as_ref()).is_err(),
            "IronRDP alone refuses the chain: the reason for lift_server_certificate"
        );
        for (cert, response) in [(single.clone(), connect_response(fips_security(single))), (chain.clone(), big)] {
            let data = x224_payload(&response).unwrap();
            let (without_cert, lifted) = lift_server_certificate(&data).expect("the certificate is found");
            assert_eq!(lifted, cert);
            assert_eq!(without_cert.len(), data.len(), "no length changes");
            let mut shim = shim();
            shim.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
            let passed_on = shim.incoming(&response).unwrap();
            assert!(shim.encrypted());
            // IronRDP, behind the shim, sees a response without security, as for a short certificate.
            let passed_on = ironrdp_pdu::decode::<ConnectResponse>(x224_payload(&passed_on).unwrap().as_ref()).unwrap();
            assert!(passed_on.conference_create_response.gcc_blocks().security.encryption_method.is_empty());
            let sent = requests(shim.outgoing(&send_data_request(&[0x40, 0, 0, 0, 1])).unwrap());
            assert_eq!(sent[0].len(), 8 + 136);
        }
        // A response without encryption has nothing to lift.
        let plain = connect_response(ServerSecurityData::no_security());
        assert_eq!(lift_server_certificate(&x224_payload(&plain).unwrap()), None);

        // Damaged chains are refused.
        for bad in [&chain[..20], &chain[..8 + 4 + der.len() + 4 + 10]] {
            assert!(matches!(parse_server_certificate(bad), Err(StdSecError::Certificate(_))));
        }
        let mut none = chain.clone();
        none[4] = 0;
        assert!(matches!(parse_server_certificate(&none), Err(StdSecError::Certificate(_))));
        let mut garbled = chain.clone();
        let last = 8 + 4 + der.len() + 4;
        garbled[last] ^= 0xff;
        assert!(parse_server_certificate(&garbled).is_err());
        assert_eq!(rsa_public_key(&[0x30, 0x03, 0x02, 0x01, 0x05]), None);
        assert_eq!(rsa_public_key(&[0x30, 0x84, 0, 0, 0, 1]), None);
    }

    /// Random server bytes in every phase and with both ciphers: an error or a PDU, never a panic.
    #[test]
    fn random_server_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (n, _) = server_key();
        let rc4 = ServerSecurityData {
            encryption_method: EncryptionMethod::BIT_128,
            encryption_level: EncryptionLevel::High,
            ..fips_security(proprietary_certificate(&n))
        };
        for security in [fips_security(proprietary_certificate(&n)), rc4] {
            let mut awaiting = shim();
            awaiting.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
            let mut encrypted = shim();
            encrypted.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
            encrypted.incoming(&connect_response(security.clone())).unwrap();
            let response = connect_response(security);
            for round in 0..20_000u32 {
                let len = (next() % 300) as usize;
                let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let pdu = match round % 4 {
                    // Slow path: a Send Data Indication around random user data, security flags set.
                    0 => {
                        if body.len() >= 2 {
                            body[0] |= 0x08;
                        }
                        send_data_indication(&body)
                    }
                    // Fast path with the encrypted flag and a consistent length.
                    1 => fast_path(0x80 | (next() as u8 & 0x40), &[&body]).unwrap(),
                    // The real Connect Response with random bytes flipped, also to a shim that still awaits
                    // it (`awaiting` stops waiting at the first one that decodes).
                    2 => {
                        let mut r = response.clone();
                        let at = (next() as usize) % r.len();
                        r[at] ^= next() as u8 | 1;
                        let mut fresh = shim();
                        fresh.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
                        let _ = fresh.incoming(&r);
                        r
                    }
                    // Random bytes under a TPKT header of the right length.
                    _ => {
                        let mut t = vec![3, 0];
                        t.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
                        t.extend_from_slice(&body);
                        t
                    }
                };
                let _ = awaiting.incoming(&pdu);
                let _ = encrypted.incoming(&pdu);
            }
        }
    }

    /// RC4 of the classic test vector ("Key", "Plaintext").
    #[test]
    fn rc4_matches_the_reference_vector() {
        let mut data = *b"Plaintext";
        Rc4::new(b"Key").apply(&mut data);
        assert_eq!(data, [0xbb, 0xf3, 0x16, 0xe8, 0xd9, 0x40, 0xaf, 0x0a, 0xd3]);
    }

    /// An RC4 server (128, 56 and 40 bits): both directions, the salted MAC from the server, and keys
    /// updated after 4096 packets.
    #[test]
    fn an_rc4_session_is_encrypted_signed_and_rekeyed() {
        for method in [EncryptionMethod::BIT_128, EncryptionMethod::BIT_56, EncryptionMethod::BIT_40] {
            let mut shim = shim();
            shim.outgoing(&unhex(CONNECT_INITIAL)).unwrap();
            let (n, _) = server_key();
            let security = ServerSecurityData {
                encryption_method: method,
                encryption_level: EncryptionLevel::High,
                ..fips_security(proprietary_certificate(&n))
            };
            shim.incoming(&connect_response(security)).unwrap();
            let mut server = Rc4Keys::server(method, &CLIENT_RANDOM, &SERVER_RANDOM);
            let client = Rc4Keys::client(method, &CLIENT_RANDOM, &SERVER_RANDOM);
            let len = if method == EncryptionMethod::BIT_128 { 16 } else { 8 };
            assert_eq!((client.mac_key.len(), client.encrypt.current.len()), (len, len));
            if method == EncryptionMethod::BIT_40 {
                assert_eq!(&client.encrypt.current[..3], &[0xd1, 0x26, 0x9e]);
            }
            assert_ne!(client.encrypt.current, client.decrypt.current);

            let sent = requests(shim.outgoing(&send_data_request(&[0x40, 0, 0, 0, b'h', b'i'])).unwrap());
            assert_eq!(server.open("test", &sent[1][4..], false).unwrap(), b"hi");
            for i in 0..4200u32 {
                // Server → client, salted MAC on every other PDU.
                let salted = i % 2 == 0;
                let body = i.to_le_bytes();
                let number = server.encrypt.total;
                let sig = server.signature(&body, salted.then_some(number));
                let mut sealed = body.to_vec();
                server.encrypt.apply(method, &mut sealed);
                let flags = SEC_ENCRYPT | if salted { SEC_SECURE_CHECKSUM } else { 0 };
                let mut pdu = flags.to_le_bytes().to_vec();
                pdu.extend_from_slice(&[0, 0]);
                pdu.extend_from_slice(&sig);
                pdu.extend_from_slice(&sealed);
                assert_eq!(indication_data(&shim.incoming(&send_data_indication(&pdu)).unwrap()), body);
                // Client → server fast-path input.
                let input = [0x04, 0x06, 0x00, 0x1c, (i & 0xff) as u8, 0x00];
                let out = shim.outgoing(&input).unwrap();
                assert_eq!(server.open("test", &out[3..], false).unwrap(), &input[2..]);
            }
            assert_ne!(server.decrypt.current, server.decrypt.initial, "the key was updated");
            let mut bad = server.seal_bytes(b"x");
            bad[0] ^= 1;
            let pdu = [&SEC_ENCRYPT.to_le_bytes()[..], &[0, 0], &bad].concat();
            assert_eq!(shim.incoming(&send_data_indication(&pdu)), Err(StdSecError::BadMac));
        }
    }

    #[test]
    fn fips_keys_expand_to_odd_parity_3des_keys() {
        let key = expand_des_key(&[0xff; 21]);
        assert!(key.iter().all(|b| b.count_ones() % 2 == 1));
        assert_eq!(key, [0x7f; 24], "seven one bits per byte, reversed: 0b0111_1111");
        let key = expand_des_key(&[0; 21]);
        assert_eq!(key, [0x01; 24]);
        // Client and server derive matching directions.
        let (mut client, mut server) =
            (Fips::client(&CLIENT_RANDOM, &SERVER_RANDOM), Fips::server(&CLIENT_RANDOM, &SERVER_RANDOM));
        for message in [&b"first"[..], b"a longer second message, 33 bytes", b""] {
            let sealed = client.seal_slow_path(0, message);
            assert_eq!(server.open_fips("test", &sealed[4..]).unwrap(), message);
        }
    }
}
