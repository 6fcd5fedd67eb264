//! SFTP file transfer through guacr against the real OpenSSH sshd (`scripts/peers.sh start`, user
//! guactest): the Guacamole `filesystem` object, `get` for listings and downloads, `put` and `file`
//! uploads with `ack` flow control. Files are checked on the server's own filesystem (the peer runs on
//! this machine), each test in a fresh directory of the test user's home used as `sftp-root-directory`.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guacr_tests::peers::{self, SshPeer};
use guacr_tests::{GuacClient, GuacrProcess};
use sha2::{Digest, Sha256};

const TEN_MB: usize = 10 * 1024 * 1024;
const LISTING: &str = "application/vnd.glyptodon.guacamole.stream-index+json";
const TIMEOUT: Duration = Duration::from_secs(60);

fn peer() -> SshPeer {
    let peer = peers::ssh();
    peer.require_up();
    peer
}

/// The test user's home, uid and gid from the password database.
fn test_user(name: &str) -> (PathBuf, u32, u32) {
    let out = std::process::Command::new("getent").args(["passwd", name]).output().expect("running getent");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let fields: Vec<&str> = line.split(':').collect();
    assert!(fields.len() >= 7, "user {name} missing (scripts/peers.sh start creates it): {line:?}");
    (PathBuf::from(fields[5]), fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// A fresh directory in the test user's home, owned by it; removed again on drop.
struct Area {
    dir: PathBuf,
    uid: u32,
    gid: u32,
}

impl Area {
    fn new(peer: &SshPeer, tag: &str) -> Area {
        let (home, uid, gid) = test_user(&peer.username);
        let dir = home.join(format!("guacr-sftp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        chown(&dir, Some(uid), Some(gid)).unwrap();
        Area { dir, uid, gid }
    }

    /// Writes a file as the test user would own it.
    fn put(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, data).unwrap();
        chown(&path, Some(self.uid), Some(self.gid)).unwrap();
        path
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deterministic incompressible bytes (xorshift), so a transfer cannot pass by accident.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Logs in with SFTP on, rooted at `root`, and waits for the `filesystem` object.
async fn open(guacr: &GuacrProcess, peer: &SshPeer, root: &Path, extra: &[(&str, &str)]) -> GuacClient {
    let mut client = GuacClient::connect(guacr.addr()).await.expect("connecting to guacr");
    let mut params = peer.ssh_params();
    params.push(("password".into(), peer.password.clone()));
    params.push(("enable-sftp".into(), "true".into()));
    params.push(("sftp-root-directory".into(), root.display().to_string()));
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    client.handshake("ssh", &params, 1024, 768).await.expect("handshake");
    let announced =
        client.wait_until_named("filesystem object", Duration::from_secs(20), |s| !s.filesystems.is_empty()).await;
    if let Err(e) = announced {
        panic!("{e}; error: {:?}; guacr log:\n{}", client.last_error(), guacr.log_tail(40));
    }
    let fs = client.state().filesystems.clone();
    assert_eq!(fs.get(&0).map(String::as_str), Some(root.to_str().unwrap()), "object 0 named after the root: {fs:?}");
    client
}

/// The directory listing of `name` as (entry, mimetype) pairs.
async fn list(client: &GuacClient, name: &str) -> Vec<(String, String)> {
    let stream = client.get(0, name, TIMEOUT).await.expect("listing");
    assert_eq!(stream.args.get(2).map(String::as_str), Some(LISTING), "listing mimetype: {:?}", stream.args);
    let json: serde_json::Value = serde_json::from_slice(&stream.data).expect("listing is JSON");
    let map = json.as_object().expect("listing is a JSON object");
    let mut entries: Vec<(String, String)> =
        map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect();
    entries.sort();
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_up_and_down_keep_their_sha256() {
    let peer = peer();
    let area = Area::new(&peer, "big");
    let guacr = GuacrProcess::start().expect("starting guacr");
    let client = open(&guacr, &peer, &area.dir, &[]).await;

    // Upload with `put` into the object, as guacamole-client's file browser does.
    let up = pseudo_random(TEN_MB, 1);
    let ack = client
        .upload(("put", &["0", "7", "application/octet-stream", "/up.bin"]), 7, &up, 6048, 8, TIMEOUT)
        .await
        .expect("upload");
    assert_eq!(ack.status, "0", "upload refused: {ack:?}");
    let arrived = std::fs::read(area.dir.join("up.bin")).expect("uploaded file on the server");
    assert_eq!(arrived.len(), TEN_MB);
    assert_eq!(sha256(&arrived), sha256(&up), "uploaded bytes differ");

    // Download a different file the server holds.
    let down = pseudo_random(TEN_MB, 2);
    area.put("down.bin", &down);
    let stream = client.get(0, "/down.bin", TIMEOUT).await.expect("download");
    assert_eq!(stream.args.get(2).map(String::as_str), Some("application/octet-stream"));
    let index: i64 = stream.index;
    assert!(index > 1000, "download stream {index} must not share the display's stream numbers");
    assert_eq!(stream.data.len(), TEN_MB);
    assert_eq!(sha256(&stream.data), sha256(&down), "downloaded bytes differ");
    assert!(client.last_error().is_none(), "{:?}", client.last_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_shows_what_the_shell_created() {
    let peer = peer();
    let area = Area::new(&peer, "list");
    let guacr = GuacrProcess::start().expect("starting guacr");
    let client = open(&guacr, &peer, &area.dir, &[]).await;
    assert_eq!(list(&client, "/").await, vec![], "fresh directory");

    // Created by the user's own shell in the same session.
    let dir = area.dir.display().to_string();
    client
        .type_text(&format!("touch {dir}/made-by-shell.txt && mkdir {dir}/sub && touch {dir}/sub/inner\n"))
        .await
        .unwrap();
    let wanted = vec![
        ("/made-by-shell.txt".to_string(), "application/octet-stream".to_string()),
        ("/sub".to_string(), LISTING.to_string()),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut entries = list(&client, "/").await;
    while entries != wanted && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        entries = list(&client, "/").await;
    }
    assert_eq!(entries, wanted);
    assert_eq!(list(&client, "/sub").await, vec![("/sub/inner".to_string(), "application/octet-stream".to_string())]);
    // `..` never leaves the root.
    assert_eq!(list(&client, "/sub/../..").await, wanted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_transfers_are_refused_with_a_status() {
    let peer = peer();
    let area = Area::new(&peer, "off");
    area.put("secret.txt", b"not for download");
    let guacr = GuacrProcess::start().expect("starting guacr");
    let client =
        open(&guacr, &peer, &area.dir, &[("sftp-disable-download", "true"), ("sftp-disable-upload", "true")]).await;
    // Browsing still works.
    assert_eq!(list(&client, "/").await, vec![("/secret.txt".to_string(), "application/octet-stream".to_string())]);

    let stream = client.get(0, "/secret.txt", TIMEOUT).await.expect("refused download still answers");
    assert!(stream.data.is_empty(), "no data may flow");
    let index = stream.index.to_string();
    let ack = client.state().acks.iter().find(|a| a.stream == index).cloned();
    let ack = ack.expect("an ack with the refusal on the download stream");
    assert_eq!(ack.status, "771", "CLIENT_FORBIDDEN: {ack:?}");

    let ack = client
        .upload(("put", &["0", "3", "text/plain", "/new.txt"]), 3, b"hello", 6048, 8, TIMEOUT)
        .await
        .expect("refused upload answers");
    assert_eq!(ack.status, "771", "CLIENT_FORBIDDEN: {ack:?}");
    // Drag and drop is not offered at all, as guacd sets no file handler.
    let ack = client
        .upload(("file", &["4", "text/plain", "dropped.txt"]), 4, b"hello", 6048, 8, TIMEOUT)
        .await
        .expect("refused file answers");
    assert_eq!(ack.status, "256", "UNSUPPORTED: {ack:?}");
    assert!(!area.dir.join("new.txt").exists());
    assert!(client.last_error().is_none(), "the session goes on: {:?}", client.last_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_file_lands_in_the_home_directory_or_the_root() {
    let peer = peer();
    let area = Area::new(&peer, "drop");
    let (home, _, _) = test_user(&peer.username);
    let name = format!("guacr-dropped-{}.txt", std::process::id());
    let target = home.join(&name);
    let _ = std::fs::remove_file(&target);
    let guacr = GuacrProcess::start().expect("starting guacr");
    // Root `/`: guacd's upload path, the login's home directory.
    let client = open(&guacr, &peer, Path::new("/"), &[]).await;
    let data = pseudo_random(100_000, 3);
    let ack = client.upload(("file", &["2", "text/plain", &name]), 2, &data, 6048, 4, TIMEOUT).await.expect("upload");
    assert_eq!(ack.status, "0", "{ack:?}");
    let arrived = std::fs::read(&target).expect("dropped file in the home directory");
    let _ = std::fs::remove_file(&target);
    assert_eq!(sha256(&arrived), sha256(&data));
    // A name with a path in it is refused, like guacd.
    let ack = client
        .upload(("file", &["5", "text/plain", "../escape.txt"]), 5, b"x", 6048, 4, TIMEOUT)
        .await
        .expect("refusal");
    assert_eq!(ack.status, "768", "CLIENT_BAD_REQUEST: {ack:?}");
    // A confining root keeps dropped files inside it.
    let confined = open(&guacr, &peer, &area.dir, &[]).await;
    let ack = confined.upload(("file", &["2", "text/plain", &name]), 2, b"inside", 6048, 4, TIMEOUT).await.unwrap();
    assert_eq!(ack.status, "0", "{ack:?}");
    assert_eq!(std::fs::read(area.dir.join(&name)).expect("dropped file in the root"), b"inside");
    assert!(!target.exists(), "nothing lands outside the root");
}
