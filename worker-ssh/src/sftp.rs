//! SFTP file transfer over the session's own SSH connection (`enable-sftp`), as guacd offers it: one
//! Guacamole `filesystem` object rooted at `sftp-root-directory` for browsing (`get` of a directory: a JSON
//! listing), downloads (`get` of a file) and uploads (`put`), plus plain `file` uploads (drag and drop)
//! into the login's home directory, guacd's default upload path (into the root when
//! `sftp-root-directory` confines the user to something other than `/`).
//!
//! The service runs as its own task: the session loop hands it the owner's stream events and forwards
//! what it answers, so a slow SFTP server never stalls the terminal. Flow control follows the Guacamole
//! protocol: each upload blob is acknowledged once it is written (or buffered for the next write); each
//! download keeps at most [`WINDOW`] blobs unacknowledged.

use std::collections::HashMap;

use russh_sftp::client::fs::File;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::OpenFlags;
use shm_proto::control::{StreamFromWorker, StreamToWorker, MAX_WORKER_STREAMS, STREAM_CHUNK, STREAM_WINDOW};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::ssh::status;

/// The object index of the one filesystem.
pub const OBJECT: u32 = 0;
/// Mimetype of a directory listing (guacamole-common-js's stream index).
pub const LISTING_MIMETYPE: &str = "application/vnd.glyptodon.guacamole.stream-index+json";
/// Mimetype of a file in a listing and of a download.
const FILE_MIMETYPE: &str = "application/octet-stream";
/// Blobs in flight per download (the supervisor enforces the same window).
const WINDOW: u32 = if STREAM_WINDOW < 8 { STREAM_WINDOW } else { 8 };
/// Upload bytes gathered before one SFTP write: fewer round trips than one write per 6 KiB blob.
const WRITE_BUFFER: usize = 64 * 1024;
/// Entries a listing may hold (guacd's cap on one directory's listing is similar in spirit).
const MAX_LISTING: usize = 10_000;
/// Events queued from the session loop; more is a supervisor breaking its own windows.
pub const QUEUE: usize = 4096;

const CLIENT_FORBIDDEN: u16 = 0x0303;
const CLIENT_BAD_REQUEST: u16 = 0x0300;
const RESOURCE_NOT_FOUND: u16 = 0x0204;

/// What the SFTP service was asked to allow.
#[derive(Debug, Clone)]
pub struct SftpSettings {
    /// `sftp-root-directory` (default `/`): the object's root on the server.
    pub root: String,
    pub disable_download: bool,
    pub disable_upload: bool,
}

/// Resolves a name the client gave inside the object (`/`-separated, relative to the object's root) to a
/// path on the server. `.` and `..` are resolved here and never climb above the root, like guacd's
/// normalisation. `None` for names that are not paths.
pub fn resolve(root: &str, name: &str) -> Option<String> {
    let normal = normalize(name)?;
    Some(format!("{}{normal}", root.trim_end_matches('/')))
}

/// `name` as the client should see it: absolute inside the object, `.` and `..` resolved.
pub fn normalize(name: &str) -> Option<String> {
    if name.contains('\0') || name.contains('\\') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// The client-visible name of `entry` inside directory `dir` (both as the client names them).
fn child_name(dir: &str, entry: &str) -> String {
    let dir = dir.trim_end_matches('/');
    format!("{dir}/{entry}")
}

/// A `file` upload's name must be a plain file name (guacd refuses anything with a separator).
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// The JSON listing guacamole-common-js expects: full client-side name → mimetype.
pub fn listing_json(dir: &str, entries: &[(String, bool)]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    for (name, is_dir) in entries {
        let mimetype = if *is_dir { LISTING_MIMETYPE } else { FILE_MIMETYPE };
        map.insert(child_name(dir, name), serde_json::Value::String(mimetype.into()));
    }
    serde_json::Value::Object(map).to_string().into_bytes()
}

enum Source {
    /// A directory listing, sent from memory.
    Memory { data: Vec<u8>, offset: usize },
    /// A file being read.
    File(Box<File>),
}

struct Download {
    source: Source,
    unacked: u32,
}

struct Upload {
    file: Box<File>,
    buffer: Vec<u8>,
}

/// The service's state; one per session.
pub struct Service {
    sftp: SftpSession,
    settings: SftpSettings,
    out: mpsc::Sender<StreamFromWorker>,
    downloads: HashMap<u32, Download>,
    uploads: HashMap<u32, Upload>,
}

impl Service {
    /// Announces the filesystem (and `file` uploads unless disabled) and serves events until the session
    /// loop drops its sender.
    pub async fn run(
        sftp: SftpSession,
        settings: SftpSettings,
        mut events: mpsc::Receiver<StreamToWorker>,
        out: mpsc::Sender<StreamFromWorker>,
    ) {
        let name = settings.root.clone();
        let accept = !settings.disable_upload;
        let mut service = Service { sftp, settings, out, downloads: HashMap::new(), uploads: HashMap::new() };
        // Uploads are accepted before the filesystem is announced: a client that sees the filesystem may
        // drop a file at once, and the supervisor must already know that files are welcome.
        if !service.emit(StreamFromWorker::AcceptFiles { accept }).await
            || !service.emit(StreamFromWorker::Filesystem { object: OBJECT, name }).await
        {
            return;
        }
        while let Some(event) = events.recv().await {
            if !service.handle(event).await {
                break;
            }
        }
        let _ = service.sftp.close().await;
    }

    /// `false` once the session loop is gone.
    async fn emit(&self, message: StreamFromWorker) -> bool {
        self.out.send(message).await.is_ok()
    }

    async fn ack(&self, stream: u32, message: &str, status: u16) -> bool {
        self.emit(StreamFromWorker::Ack { stream, message: message.into(), status }).await
    }

    async fn handle(&mut self, event: StreamToWorker) -> bool {
        match event {
            StreamToWorker::File { stream, name, .. } => {
                if !plain_file_name(&name) {
                    return self.ack(stream, "SFTP: Illegal filename", CLIENT_BAD_REQUEST).await;
                }
                // guacd's default upload path is "." (the login's home directory). With a root other than
                // `/` the admin confined the user to it, so dropped files land in the root instead.
                let path = if self.settings.root.trim_end_matches('/').is_empty() {
                    name
                } else {
                    resolve(&self.settings.root, &name).unwrap_or(name)
                };
                self.open_upload(stream, path).await
            }
            StreamToWorker::Put { stream, name, .. } => match resolve(&self.settings.root, &name) {
                Some(path) => self.open_upload(stream, path).await,
                None => self.ack(stream, "SFTP: Illegal filename", CLIENT_BAD_REQUEST).await,
            },
            StreamToWorker::Blob { stream, data } => self.upload_blob(stream, data).await,
            StreamToWorker::End { stream } => self.upload_end(stream).await,
            StreamToWorker::Abort { stream } => {
                if self.uploads.remove(&stream).is_some() {
                    info!(stream, "Upload abandoned");
                }
                true
            }
            StreamToWorker::Get { object, name } if object == OBJECT => self.get(name).await,
            StreamToWorker::Get { object, .. } => {
                debug!(object, "get for an unknown object");
                true
            }
            StreamToWorker::Ack { stream, status, .. } => self.download_ack(stream, status).await,
        }
    }

    async fn open_upload(&mut self, stream: u32, path: String) -> bool {
        if self.settings.disable_upload {
            info!("Upload refused: sftp-disable-upload");
            return self.ack(stream, "SFTP: Upload disabled", CLIENT_FORBIDDEN).await;
        }
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        match self.sftp.open_with_flags(path.clone(), flags).await {
            Ok(file) => {
                info!(%path, "Upload started");
                self.uploads.insert(stream, Upload { file: Box::new(file), buffer: Vec::new() });
                self.ack(stream, "SFTP: File opened", 0).await
            }
            Err(e) => {
                warn!(%path, error = %e, "Cannot open the upload's file");
                self.ack(stream, "SFTP: Unable to open file", CLIENT_FORBIDDEN).await
            }
        }
    }

    async fn upload_blob(&mut self, stream: u32, data: Vec<u8>) -> bool {
        let Some(upload) = self.uploads.get_mut(&stream) else {
            return true;
        };
        upload.buffer.extend_from_slice(&data);
        if upload.buffer.len() >= WRITE_BUFFER {
            let chunk = std::mem::take(&mut upload.buffer);
            if let Err(e) = upload.file.write_all(&chunk).await {
                warn!(stream, error = %e, "Upload write failed");
                self.uploads.remove(&stream);
                return self.ack(stream, "SFTP: Write failed", status::UPSTREAM_ERROR).await;
            }
        }
        self.ack(stream, "SFTP: OK", 0).await
    }

    async fn upload_end(&mut self, stream: u32) -> bool {
        let Some(mut upload) = self.uploads.remove(&stream) else {
            return true;
        };
        let written = async {
            upload.file.write_all(&upload.buffer).await?;
            upload.file.flush().await?;
            upload.file.shutdown().await?;
            Ok::<_, std::io::Error>(())
        }
        .await;
        let closed = upload.file.close().await;
        match written.and(closed) {
            Ok(()) => {
                info!(stream, "Upload complete");
                self.ack(stream, "SFTP: OK", 0).await
            }
            Err(e) => {
                warn!(stream, error = %e, "Upload could not be completed");
                self.ack(stream, "SFTP: Write failed", status::UPSTREAM_ERROR).await
            }
        }
    }

    fn free_stream(&self) -> Option<u32> {
        (0..MAX_WORKER_STREAMS).find(|s| !self.downloads.contains_key(s))
    }

    async fn get(&mut self, name: String) -> bool {
        let Some(stream) = self.free_stream() else {
            warn!("Too many downloads at once; get ignored");
            return true;
        };
        let refuse = |mimetype: &str, status: u16, message: &str| {
            (
                StreamFromWorker::Body { object: OBJECT, stream, mimetype: mimetype.into(), name: name.clone() },
                StreamFromWorker::Abort { stream, status, message: message.into() },
            )
        };
        let Some(path) = resolve(&self.settings.root, &name) else {
            let (body, abort) = refuse(FILE_MIMETYPE, CLIENT_BAD_REQUEST, "SFTP: Illegal path");
            return self.emit(body).await && self.emit(abort).await;
        };
        let metadata = match self.sftp.metadata(path.clone()).await {
            Ok(metadata) => metadata,
            Err(e) => {
                debug!(%path, error = %e, "get of a path that cannot be read");
                let (body, abort) = refuse(FILE_MIMETYPE, RESOURCE_NOT_FOUND, "SFTP: No such file");
                return self.emit(body).await && self.emit(abort).await;
            }
        };
        if metadata.is_dir() {
            let entries = match self.sftp.read_dir(path.clone()).await {
                Ok(entries) => entries
                    .filter(|e| e.file_name() != "." && e.file_name() != "..")
                    .take(MAX_LISTING)
                    .map(|e| (e.file_name(), e.file_type().is_dir()))
                    .collect::<Vec<_>>(),
                Err(e) => {
                    debug!(%path, error = %e, "Directory cannot be listed");
                    let (body, abort) = refuse(LISTING_MIMETYPE, CLIENT_FORBIDDEN, "SFTP: Cannot list directory");
                    return self.emit(body).await && self.emit(abort).await;
                }
            };
            let data = listing_json(&normalize(&name).unwrap_or_default(), &entries);
            let body = StreamFromWorker::Body {
                object: OBJECT,
                stream,
                mimetype: LISTING_MIMETYPE.into(),
                name: name.clone(),
            };
            if !self.emit(body).await {
                return false;
            }
            self.downloads.insert(stream, Download { source: Source::Memory { data, offset: 0 }, unacked: 0 });
            return self.pump(stream).await;
        }
        if self.settings.disable_download {
            info!(%path, "Download refused: sftp-disable-download");
            let (body, abort) = refuse(FILE_MIMETYPE, CLIENT_FORBIDDEN, "SFTP: Download disabled");
            return self.emit(body).await && self.emit(abort).await;
        }
        let file = match self.sftp.open(path.clone()).await {
            Ok(file) => file,
            Err(e) => {
                debug!(%path, error = %e, "File cannot be opened");
                let (body, abort) = refuse(FILE_MIMETYPE, CLIENT_FORBIDDEN, "SFTP: Unable to open file");
                return self.emit(body).await && self.emit(abort).await;
            }
        };
        info!(%path, "Download started");
        let body = StreamFromWorker::Body { object: OBJECT, stream, mimetype: FILE_MIMETYPE.into(), name };
        if !self.emit(body).await {
            return false;
        }
        self.downloads.insert(stream, Download { source: Source::File(Box::new(file)), unacked: 0 });
        self.pump(stream).await
    }

    async fn download_ack(&mut self, stream: u32, status: u16) -> bool {
        let Some(download) = self.downloads.get_mut(&stream) else {
            return true;
        };
        if status != 0 {
            info!(stream, status, "Client stopped the download");
            self.downloads.remove(&stream);
            return self.emit(StreamFromWorker::End { stream }).await;
        }
        download.unacked = download.unacked.saturating_sub(1);
        self.pump(stream).await
    }

    /// Sends blobs on a download until its window is full or its source ends.
    async fn pump(&mut self, stream: u32) -> bool {
        loop {
            let Some(download) = self.downloads.get_mut(&stream) else {
                return true;
            };
            if download.unacked >= WINDOW {
                return true;
            }
            let chunk = match &mut download.source {
                Source::Memory { data, offset } => {
                    let end = (*offset + STREAM_CHUNK).min(data.len());
                    let chunk = data[*offset..end].to_vec();
                    *offset = end;
                    Ok(chunk)
                }
                Source::File(file) => {
                    let mut buf = vec![0; STREAM_CHUNK];
                    read_full(file, &mut buf).await.map(|n| {
                        buf.truncate(n);
                        buf
                    })
                }
            };
            match chunk {
                Ok(chunk) if chunk.is_empty() => {
                    self.downloads.remove(&stream);
                    return self.emit(StreamFromWorker::End { stream }).await;
                }
                Ok(chunk) => {
                    download.unacked += 1;
                    if !self.emit(StreamFromWorker::Blob { stream, data: chunk }).await {
                        return false;
                    }
                }
                Err(e) => {
                    warn!(stream, error = %e, "Download read failed");
                    self.downloads.remove(&stream);
                    let abort = StreamFromWorker::Abort {
                        stream,
                        status: status::UPSTREAM_ERROR,
                        message: "SFTP: Read failed".into(),
                    };
                    return self.emit(abort).await;
                }
            }
        }
    }
}

/// Reads until `buf` is full or the file ends, so every blob but the last is full-sized.
async fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_under_the_root() {
        assert_eq!(resolve("/", "/").as_deref(), Some("/"));
        assert_eq!(resolve("/", "/a/b").as_deref(), Some("/a/b"));
        assert_eq!(resolve("/srv/files/", "/../../etc/passwd").as_deref(), Some("/srv/files/etc/passwd"));
        assert_eq!(resolve("/srv", "a/./b/../c").as_deref(), Some("/srv/a/c"));
        assert_eq!(resolve("/srv", "a\0b"), None);
        assert!(plain_file_name("report.pdf"));
        assert!(!plain_file_name("../x") && !plain_file_name("") && !plain_file_name(".."));
    }

    #[test]
    fn listing_names_entries_by_full_path() {
        let json = listing_json("/", &[("dir".into(), true), ("f.txt".into(), false)]);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["/dir"], LISTING_MIMETYPE);
        assert_eq!(value["/f.txt"], FILE_MIMETYPE);
        let json = listing_json("/sub/", &[("x".into(), false)]);
        assert!(String::from_utf8(json).unwrap().contains("\"/sub/x\""));
    }
}
