//! `GET /recordings/<path>`: session recordings from the configured directory (`[recordings] dir`), for
//! players such as guacamole-common-js's `Guacamole.SessionRecording` over a `StaticHTTPTunnel`. Only users
//! listed in `[recordings] users` may fetch them, with their access key (`Authorization: Bearer KEY`).
//!
//! The file is opened one path component at a time beneath the directory's descriptor (`openat` with
//! `O_NOFOLLOW`): `.` and `..` are refused before any system call, a symbolic link anywhere on the path
//! fails to open, and only a regular file is served (a FIFO or device is never even read: it is opened
//! non-blocking and refused after `fstat`).
//!
//! Zero-copy: hyper owns the sockets it serves and writes only bodies it is given as buffers, so the
//! HTTP entry's listener ([`super::listener`]) reads each connection's request head first and answers a
//! recording request itself on the raw socket: the head, then `sendfile(2)` from the page cache to the
//! socket, then close. Only a request the listener could not read in time (head over 8 KiB or slower than
//! 10 s) reaches the axum route, which sends the file through hyper in 1 MiB `pread` chunks. A single
//! `Range` is honoured either way.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::Mode;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::WebState;

/// Bytes read per chunk of the body.
const CHUNK: usize = 1024 * 1024;
/// Longest path accepted after `/recordings/`.
const MAX_PATH: usize = 1024;
/// Bytes per `sendfile` call (the kernel's own limit is about 2 GiB).
const SENDFILE_MAX: usize = 16 * 1024 * 1024;
/// A client that takes no bytes for this long is dropped.
const STALL: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordingPathError {
    #[error("empty path")]
    Empty,
    #[error("path longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("path component {component:?} is not allowed")]
    BadComponent { component: String },
}

/// The path's components, each a plain name: no empty component, `.`, `..` or NUL.
pub fn components(path: &str) -> Result<Vec<&str>, RecordingPathError> {
    if path.is_empty() {
        return Err(RecordingPathError::Empty);
    }
    if path.len() > MAX_PATH {
        return Err(RecordingPathError::TooLong);
    }
    path.split('/')
        .map(|c| {
            if c.is_empty() || c == "." || c == ".." || c.contains('\0') {
                Err(RecordingPathError::BadComponent { component: c.to_string() })
            } else {
                Ok(c)
            }
        })
        .collect()
}

/// Opens `components` beneath `dir` without following any symbolic link: the file and its length, or
/// `Ok(None)` when the result is not a regular file.
fn open_beneath(dir: &Path, components: &[&str]) -> nix::Result<Option<(File, u64)>> {
    let directory = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut current: OwnedFd = open(dir, directory, Mode::empty())?;
    let (last, parents) = components.split_last().expect("components() never returns an empty list");
    for name in parents {
        current = openat(&current, *name, directory | OFlag::O_NOFOLLOW, Mode::empty())?;
    }
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let file = File::from(openat(&current, *last, flags, Mode::empty())?);
    let metadata = nix::sys::stat::fstat(&file)?;
    let regular = metadata.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG;
    Ok(regular.then_some((file, metadata.st_size as u64)))
}

/// What a `Range` header asks for, given the file's length.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, or one we serve whole (several ranges, another unit, bad syntax: RFC 9110 lets a server
    /// ignore them).
    Whole,
    /// Bytes `start..end` (end exclusive).
    Part { start: u64, end: u64 },
    /// Outside the file: 416.
    Unsatisfiable,
}

pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return RangeRequest::Whole };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeRequest::Whole };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if len > 0 => RangeRequest::Part { start: len.saturating_sub(n), end: len },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Whole,
        },
        (false, _) => {
            let Some(start) = parse(first) else { return RangeRequest::Whole };
            let end = if last.is_empty() {
                len
            } else {
                match parse(last) {
                    Some(l) if l >= start => l.saturating_add(1).min(len),
                    _ => return RangeRequest::Whole,
                }
            };
            if start >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part { start, end }
            }
        }
        (true, true) => RangeRequest::Whole,
    }
}

/// Why a recording request gets no file: the status and a short body (the log has the detail).
struct Refused {
    status: StatusCode,
    message: &'static str,
    /// `bytes */LEN` for a 416.
    content_range: Option<String>,
}

impl Refused {
    fn new(status: StatusCode, message: &'static str) -> Refused {
        Refused { status, message, content_range: None }
    }

    fn not_found() -> Refused {
        Refused::new(StatusCode::NOT_FOUND, "not found\n")
    }
}

/// A request that passed every check: the open file and which bytes to send.
struct Granted {
    file: File,
    len: u64,
    start: u64,
    end: u64,
    status: StatusCode,
    user: String,
}

/// Authorises and opens: the same checks for both ways of answering.
async fn check(
    state: &WebState,
    path: &str,
    authorization: Option<&str>,
    range: Option<&str>,
) -> Result<Granted, Refused> {
    let Some(config) = state.settings.recordings.as_ref() else {
        return Err(Refused::not_found());
    };
    let key = authorization.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).unwrap_or_default();
    let Some(user) = state.settings.user_for_key(key) else {
        warn!(?path, "Recording request refused: access key not accepted");
        return Err(Refused::new(StatusCode::UNAUTHORIZED, "access key not accepted\n"));
    };
    if !config.may_fetch(&user.name) {
        warn!(user = %user.name, ?path, "Recording request refused: user may not fetch recordings");
        return Err(Refused::new(StatusCode::FORBIDDEN, "not allowed\n"));
    }
    let parts = match components(path) {
        Ok(parts) => parts.into_iter().map(str::to_string).collect::<Vec<_>>(),
        Err(e) => {
            warn!(user = %user.name, ?path, error = %e, "Recording request refused");
            return Err(Refused::not_found());
        }
    };
    let dir = config.dir.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        open_beneath(&dir, &parts)
    })
    .await;
    let (file, len) = match opened {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => {
            warn!(user = %user.name, ?path, "Recording request refused: not a regular file");
            return Err(Refused::not_found());
        }
        Ok(Err(errno)) => {
            // ELOOP, ENOTDIR: a symbolic link on the path (or a file used as a directory); ENOENT: nothing.
            info!(user = %user.name, ?path, error = %errno, "Recording not served");
            return Err(Refused::not_found());
        }
        Err(_) => return Err(Refused::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")),
    };
    let (status, start, end) = match parse_range(range, len) {
        RangeRequest::Whole => (StatusCode::OK, 0, len),
        RangeRequest::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeRequest::Unsatisfiable => {
            let mut refused = Refused::new(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            refused.content_range = Some(format!("bytes */{len}"));
            return Err(refused);
        }
    };
    Ok(Granted { file, len, start, end, status, user: user.name.clone() })
}

/// The response headers of a granted request, in order.
fn granted_headers(granted: &Granted) -> Vec<(header::HeaderName, String)> {
    let mut headers = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, (granted.end - granted.start).to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::CACHE_CONTROL, "no-store".to_string()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
    ];
    if granted.status == StatusCode::PARTIAL_CONTENT {
        headers.push((header::CONTENT_RANGE, format!("bytes {}-{}/{}", granted.start, granted.end - 1, granted.len)));
    }
    headers
}

fn refused_response(refused: Refused) -> Response {
    let mut response = (refused.status, refused.message).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if refused.status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(value) = refused.content_range.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(header::CONTENT_RANGE, value);
    }
    response
}

/// The axum route: reached only when the listener did not answer the request itself (a request head over
/// 8 KiB or slower than 10 s). The body goes through hyper in chunks read with `pread`.
pub(crate) async fn serve(
    State(state): State<Arc<WebState>>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let granted = match check(&state, &path, text(header::AUTHORIZATION), text(header::RANGE)).await {
        Ok(granted) => granted,
        Err(refused) => return refused_response(refused),
    };
    info!(user = %granted.user, ?path, bytes = granted.end - granted.start, zero_copy = false, "Serving recording");
    let fields = granted_headers(&granted);
    let body = Body::from_stream(chunks(Arc::new(granted.file), granted.start, granted.end));
    let mut response = Response::new(body);
    *response.status_mut() = granted.status;
    for (name, value) in fields {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Whether a request head asks for a recording (`GET` or `HEAD` beneath `/recordings/`).
pub(crate) fn is_recording_request(head: &[u8]) -> bool {
    head.starts_with(b"GET /recordings/") || head.starts_with(b"HEAD /recordings/")
}

/// Answers a recording request on the raw socket: the head, then the file with `sendfile(2)` (page cache
/// to socket, no copy through user space), then the connection closes.
pub(crate) async fn serve_raw(mut stream: TcpStream, head: &[u8], peer: SocketAddr, state: &WebState) {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut fields);
    let parsed = matches!(request.parse(head), Ok(httparse::Status::Complete(_)));
    let target = request.path.unwrap_or_default();
    let head_only = request.method == Some("HEAD");
    let raw = target.strip_prefix("/recordings/").unwrap_or_default();
    // The query, if any, means nothing here; %-escapes are decoded as the axum route would.
    let raw = raw.split_once('?').map_or(raw, |(path, _)| path);
    let path = percent_encoding::percent_decode_str(raw).decode_utf8().ok();
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let result = match (parsed, &path) {
        (true, Some(path)) => check(state, path, header("authorization"), header("range")).await,
        _ => Err(Refused::new(StatusCode::BAD_REQUEST, "bad request\n")),
    };
    let mut out = String::new();
    let granted = match result {
        Ok(granted) => {
            out.push_str(&format!("HTTP/1.1 {}\r\n", status_line(granted.status)));
            for (name, value) in granted_headers(&granted) {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            Some(granted)
        }
        Err(refused) => {
            out.push_str(&format!("HTTP/1.1 {}\r\n", status_line(refused.status)));
            out.push_str("content-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n");
            if refused.status == StatusCode::UNAUTHORIZED {
                out.push_str("www-authenticate: Bearer\r\n");
            }
            if let Some(range) = &refused.content_range {
                out.push_str(&format!("content-range: {range}\r\n"));
            }
            let body = if head_only { "" } else { refused.message };
            out.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n{body}", refused.message.len()));
            None
        }
    };
    if let Some(granted) = &granted {
        out.push_str("connection: close\r\n\r\n");
        info!(
            user = %granted.user,
            path = ?path.as_deref().unwrap_or_default(),
            bytes = granted.end - granted.start,
            zero_copy = true,
            "Serving recording"
        );
    }
    let sent = async {
        stream.write_all(out.as_bytes()).await?;
        match granted {
            Some(granted) if !head_only => send_file(&stream, &granted.file, granted.start, granted.end).await,
            _ => Ok(()),
        }
    }
    .await;
    if let Err(e) = sent {
        info!(%peer, error = %e, "Recording transfer ended early");
    }
    let _ = stream.shutdown().await;
}

fn status_line(status: StatusCode) -> String {
    format!("{} {}", status.as_str(), status.canonical_reason().unwrap_or(""))
}

/// `sendfile(2)` from `file` (bytes `start..end`) to the non-blocking socket, waiting for room between
/// calls; a client that takes nothing for `STALL` is dropped.
async fn send_file(stream: &TcpStream, file: &File, start: u64, end: u64) -> std::io::Result<()> {
    let mut offset = i64::try_from(start).map_err(std::io::Error::other)?;
    let end = i64::try_from(end).map_err(std::io::Error::other)?;
    while offset < end {
        tokio::time::timeout(STALL, stream.writable())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading"))??;
        let count = usize::try_from(end - offset).unwrap_or(usize::MAX).min(SENDFILE_MAX);
        match stream.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile64(stream, file, Some(&mut offset), count).map_err(std::io::Error::from)
        }) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "recording shrank")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The file's bytes `start..end` as a stream of chunks, each read with `pread` on the blocking pool. A file
/// that shrinks meanwhile ends the stream with an error (hyper then aborts the response: the client sees a
/// short body, never padding).
fn chunks(
    file: Arc<File>,
    start: u64,
    end: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::try_unfold((file, start), move |(file, offset)| async move {
        if offset >= end {
            return Ok(None);
        }
        let want = (end - offset).min(CHUNK as u64) as usize;
        let reader = file.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buffer = BytesMut::zeroed(want);
            let mut filled = 0;
            while filled < want {
                match reader.read_at(&mut buffer[filled..], offset + filled as u64) {
                    Ok(0) => {
                        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "recording shrank"));
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(buffer.freeze())
        })
        .await
        .map_err(std::io::Error::other)??;
        let next = offset + chunk.len() as u64;
        Ok(Some((chunk, (file, next))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_beneath_the_directory() {
        assert_eq!(components("2026/session.1").unwrap(), ["2026", "session.1"]);
        assert_eq!(components(""), Err(RecordingPathError::Empty));
        for bad in ["../etc/passwd", "a/../b", "./a", "a//b", "/abs", "a/", "a\0b"] {
            assert!(matches!(components(bad), Err(RecordingPathError::BadComponent { .. })), "{bad:?}");
        }
        assert_eq!(components(&"a".repeat(MAX_PATH + 1)), Err(RecordingPathError::TooLong));
    }

    #[test]
    fn the_listener_answers_only_recording_requests() {
        assert!(is_recording_request(b"GET /recordings/a HTTP/1.1\r\n\r\n"));
        assert!(is_recording_request(b"HEAD /recordings/a HTTP/1.1\r\n\r\n"));
        for other in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"GET /recordings HTTP/1.1", b"POST /recordings/a HTTP/1.1"] {
            assert!(!is_recording_request(other), "{:?}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Part { start: 0, end: 10 });
        assert_eq!(parse_range(Some("bytes=90-"), 100), Part { start: 90, end: 100 });
        assert_eq!(parse_range(Some("bytes=90-500"), 100), Part { start: 90, end: 100 });
        assert_eq!(parse_range(Some("bytes=-10"), 100), Part { start: 90, end: 100 });
        assert_eq!(parse_range(Some("bytes=-500"), 100), Part { start: 0, end: 100 });
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=5-1"), 100), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=x-1"), 100), Whole);
    }

    #[test]
    fn symlinks_fifos_and_directories_are_not_opened() {
        let dir = std::env::temp_dir().join(format!("guacr-recordings-route-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("day")).unwrap();
        std::fs::write(dir.join("day/rec"), b"4.sync,1.1;").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.join("day"), dir.join("linked-day")).unwrap();
        nix::unistd::mkfifo(&dir.join("fifo"), Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        let (mut file, len) = open_beneath(&dir, &["day", "rec"]).unwrap().expect("a regular file");
        assert_eq!(len, 11);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "4.sync,1.1;");
        assert_eq!(open_beneath(&dir, &["link"]).unwrap_err(), nix::errno::Errno::ELOOP);
        // With O_DIRECTORY the kernel reports a symbolic link to a directory as "not a directory".
        assert_eq!(open_beneath(&dir, &["linked-day", "rec"]).unwrap_err(), nix::errno::Errno::ENOTDIR);
        assert!(open_beneath(&dir, &["fifo"]).unwrap().is_none(), "a FIFO is not served (and open did not block)");
        assert!(open_beneath(&dir, &["day"]).unwrap().is_none(), "a directory is not served");
        assert_eq!(open_beneath(&dir, &["absent"]).unwrap_err(), nix::errno::Errno::ENOENT);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
