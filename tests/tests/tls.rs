//! TLS on the guacd-compatible TCP entry: guacd's `-C`/`-K` flags and guacd.conf's `[ssl]` section (read
//! with `-c`, together with `[server]` and `[daemon]`). A rustls client checks the certificate, runs a
//! whole VNC session through TLS and sees frames.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use guac_proto::Decoder;
use guacr_tests::peers;
use guacr_tests::process::{free_port, guacr_bin, listens_on};
use guacr_tests::GuacrProcess;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// A self-signed certificate for localhost and 127.0.0.1, made by openssl.
    fn new() -> Certs {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("guacr-tls-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl (Debian package openssl) makes the test certificate");
        assert!(status.success());
        Certs { dir }
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connector(cert: &Path) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cert).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Instructions until one with `opcode` (or `error`) arrives; returns the opcodes seen.
async fn read_until<S: AsyncRead + Unpin>(stream: &mut S, decoder: &mut Decoder, opcode: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        while let Ok(Some(i)) = decoder.decode() {
            seen.push(i.opcode().to_string());
            if i.opcode() == opcode || i.opcode() == "error" {
                return seen;
            }
        }
        let left = deadline.checked_duration_since(Instant::now()).expect("timed out waiting");
        let buf = decoder.buffer_mut();
        buf.reserve(65536);
        let n = tokio::time::timeout(left, stream.read_buf(buf)).await.expect("timed out").expect("read");
        assert!(n > 0, "closed while waiting for {opcode}; saw {seen:?}");
    }
}

/// A whole VNC session over `stream`: handshake, then the first frame (`img` … `sync`).
async fn vnc_session_sees_a_frame<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let peer = peers::static_screen();
    let mut decoder = Decoder::new();
    stream.write_all(b"6.select,3.vnc;").await.unwrap();
    assert_eq!(read_until(&mut stream, &mut decoder, "args").await.last().map(String::as_str), Some("args"));
    let mut out = BytesMut::new();
    guac_proto::encode_instruction(&mut out, "size", &["1024", "768", "96"]);
    for opcode in ["audio", "video", "image"] {
        guac_proto::encode_instruction(&mut out, opcode, &[]);
    }
    let names: Vec<&str> = include_str!("../../supervisor/src/args/vnc.txt").lines().collect();
    let params = peer.vnc_params();
    let mut values = vec!["VERSION_1_5_0"];
    values.extend(names.iter().map(|n| params.iter().find(|(k, _)| k == n).map_or("", |(_, v)| v.as_str())));
    guac_proto::encode_instruction(&mut out, "connect", &values);
    stream.write_all(&out).await.unwrap();
    let seen = read_until(&mut stream, &mut decoder, "sync").await;
    assert_eq!(seen.last().map(String::as_str), Some("sync"), "a frame through TLS: {seen:?}");
    assert!(seen.iter().any(|o| o == "ready") && seen.iter().any(|o| o == "img" || o == "rect"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_entry_with_guacd_flags_serves_a_vnc_session() {
    peers::static_screen().require_up();
    let certs = Certs::new();
    let mut guacr = GuacrProcess::builder().arg("-C").arg(certs.cert()).arg("-K").arg(certs.key()).start().unwrap();
    let tcp = TcpStream::connect(guacr.addr()).await.unwrap();
    let tls = connector(&certs.cert()).connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS");
    assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    vnc_session_sees_a_frame(tls).await;

    // A plain-text client on the TLS port gets no Guacamole answer, and guacr carries on.
    let mut plain = TcpStream::connect(guacr.addr()).await.unwrap();
    plain.write_all(b"6.select,3.vnc;").await.unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(12), plain.read(&mut buf)).await.expect("closed in time");
    assert!(!String::from_utf8_lossy(&buf[..read.unwrap_or(0)]).contains("args"));
    // A client that does not trust the certificate fails the handshake.
    let other = Certs::new();
    let tcp = TcpStream::connect(guacr.addr()).await.unwrap();
    assert!(connector(&other.cert()).connect(ServerName::try_from("localhost").unwrap(), tcp).await.is_err());
    assert!(guacr.try_exit_status().is_none());
}

struct Guacd(std::process::Child);

impl Drop for Guacd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guacd_conf_configures_listener_pid_file_log_level_and_tls() {
    peers::static_screen().require_up();
    let certs = Certs::new();
    let port = free_port().unwrap();
    let pid_file = certs.dir.join("guacr.pid");
    let conf = certs.dir.join("guacd.conf");
    std::fs::write(
        &conf,
        format!(
            "# as guacd reads it\n[server]\nbind_host = 127.0.0.1\nbind_port = {port}\n\n[daemon]\npid_file = {}\n\
             log_level = debug\n\n[ssl]\nserver_certificate = {}\nserver_key = {}\n",
            pid_file.display(),
            certs.cert().display(),
            certs.key().display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(certs.dir.join("guacr.log")).unwrap();
    let child = Command::new(guacr_bin()).arg("-f").arg("-c").arg(&conf).stderr(log).spawn().unwrap();
    let guacd = Guacd(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listens_on(guacd.0.id(), port) {
        assert!(Instant::now() < deadline, "guacr did not listen on the port from guacd.conf");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), guacd.0.id().to_string());
    let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
    let tls = connector(&certs.cert()).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.expect("TLS");
    vnc_session_sees_a_frame(tls).await;
    let log = std::fs::read_to_string(certs.dir.join("guacr.log")).unwrap();
    assert!(log.contains("DEBUG"), "log_level = debug took effect");
    assert!(log.contains("tls=true"), "{log}");
}
