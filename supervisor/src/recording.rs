//! Session recordings in guacd's format: the session's broadcast output (what every user receives, the
//! owner included) plus the requested input (`mouse`, `key`, clipboard), as Guacamole instructions.
//!
//! The session loop never touches the file: it hands `Bytes` (frames without a copy) to a dedicated writer
//! thread over a channel and goes on. The thread writes through a buffer and flushes at least once a
//! second, so a worker crash (which ends only the session) loses nothing the users were sent: what was
//! queued is written and flushed when the session drops the recorder. A write error (disk full) ends the
//! recording with one log line; the session goes on, unless guacr runs with `--recording-required`: then
//! a recording that stops (or cannot start) ends its session with `error` 512 ([`Recorder::lost`]).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use guac_proto::encode;
use shm_proto::control::Params;
use tracing::{error, info, warn};

/// guacd's default `recording-name`.
pub const DEFAULT_NAME: &str = "recording";
/// guacd tries `name`, then `name.1` … `name.255`.
const MAX_SUFFIX: u32 = 255;
/// The writer flushes at least this often.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes queued for the writer thread beyond which the recording is abandoned (a disk far slower than the
/// session): the session must never wait for the disk, nor hold unbounded memory for it.
const MAX_QUEUED: usize = 256 * 1024 * 1024;
/// Clipboard data is recorded in blobs of this size (guacd: 4096).
const CLIPBOARD_BLOCK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("recording directory {path} does not exist (set create-recording-path)")]
    NoDirectory { path: PathBuf },
    #[error("cannot create recording directory {path}: {source}")]
    CreateDirectory { path: PathBuf, source: std::io::Error },
    #[error("cannot open recording file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("no free recording file name for {path} (tried .1 to .{MAX_SUFFIX})")]
    NoFreeName { path: PathBuf },
    #[error("recording-path must be absolute, not {path:?}")]
    RelativePath { path: String },
    #[error("recording-name {name:?} must be a file name, not a path")]
    BadName { name: String },
}

/// What to record, from the connection's parameters (guacd's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSettings {
    pub path: String,
    pub name: String,
    pub create_path: bool,
    pub write_existing: bool,
    pub exclude_output: bool,
    pub exclude_mouse: bool,
    pub include_keys: bool,
    pub include_clipboard: bool,
}

impl RecordingSettings {
    /// `None` when `recording-path` is empty: no recording.
    pub fn from_params(params: &Params) -> Option<RecordingSettings> {
        let path = params.get("recording-path").filter(|p| !p.is_empty())?;
        Some(RecordingSettings {
            path: path.to_string(),
            name: params.get("recording-name").filter(|n| !n.is_empty()).unwrap_or(DEFAULT_NAME).to_string(),
            create_path: params.flag("create-recording-path"),
            write_existing: params.flag("recording-write-existing"),
            exclude_output: params.flag("recording-exclude-output"),
            exclude_mouse: params.flag("recording-exclude-mouse"),
            include_keys: params.flag("recording-include-keys"),
            include_clipboard: params.flag("recording-include-clipboard"),
        })
    }
}

/// Values for the `${GUAC_*}` tokens (guacamole-client's parameter tokens, which guacd users put in
/// `recording-path` and `recording-name`).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub username: String,
    pub client_address: String,
    pub connection_id: String,
    /// Seconds since the epoch; the date and time tokens are UTC.
    pub now_unix: u64,
}

impl Tokens {
    pub fn now(username: &str, client_address: &str, connection_id: &str) -> Tokens {
        Tokens {
            username: username.to_string(),
            client_address: client_address.to_string(),
            connection_id: connection_id.to_string(),
            now_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        }
    }

    /// Replaces the known tokens; unknown `${...}` stay as written (guacamole-client does the same).
    pub fn substitute(&self, text: &str) -> String {
        let (year, month, day) = civil_from_days((self.now_unix / 86_400) as i64);
        let secs = self.now_unix % 86_400;
        let date = format!("{year:04}{month:02}{day:02}");
        let time = format!("{:02}{:02}{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        // A user name from the client must not move the file elsewhere.
        let username: String = self.username.chars().map(|c| if c == '/' || c == '\0' { '_' } else { c }).collect();
        text.replace("${GUAC_DATE}", &date)
            .replace("${GUAC_TIME}", &time)
            .replace("${GUAC_USERNAME}", &username)
            .replace("${GUAC_CLIENT_ADDRESS}", &self.client_address)
            .replace("${GUAC_CLIENT_HOSTNAME}", &self.client_address)
            .replace("${GUAC_CONNECTION_ID}", self.connection_id.trim_start_matches('$'))
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's civil-from-days algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Opens the recording file as guacd does: `path/name`, else (unless `write_existing`) the first free
/// `name.N` for N in 1..=255; mode 0640; the directory is created (0750) when `create_path` is set.
pub fn open_file(settings: &RecordingSettings, tokens: &Tokens) -> Result<(File, PathBuf), RecordingError> {
    let dir = PathBuf::from(tokens.substitute(&settings.path));
    if !dir.is_absolute() {
        return Err(RecordingError::RelativePath { path: dir.display().to_string() });
    }
    let name = tokens.substitute(&settings.name);
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(RecordingError::BadName { name });
    }
    if !dir.is_dir() {
        if !settings.create_path {
            return Err(RecordingError::NoDirectory { path: dir });
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .map_err(|source| RecordingError::CreateDirectory { path: dir.clone(), source })?;
    }
    let base = dir.join(&name);
    let open = |path: &Path| {
        let mut options = OpenOptions::new();
        options.write(true).mode(0o640).custom_flags(nix::libc::O_NOFOLLOW);
        if settings.write_existing {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        options.open(path)
    };
    match open(&base) {
        Ok(file) => return Ok((file, base)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(source) => return Err(RecordingError::Open { path: base, source }),
    }
    for suffix in 1..=MAX_SUFFIX {
        let path = dir.join(format!("{name}.{suffix}"));
        match open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(RecordingError::Open { path, source }),
        }
    }
    Err(RecordingError::NoFreeName { path: base })
}

/// The session's handle on its recording. Dropping it lets the writer thread write what is queued, flush
/// and close the file.
pub struct Recorder {
    settings: RecordingSettings,
    queue: Option<mpsc::Sender<Bytes>>,
    queued: Arc<AtomicUsize>,
    failed: Arc<AtomicBool>,
    /// Set (once) when the recording stopped before the session ended: write error or queue overflow.
    lost: Arc<tokio::sync::watch::Sender<bool>>,
    /// `--recording-required`: a lost recording ends the session.
    required: bool,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Logged once: the recording stopped.
    reported: bool,
}

impl Recorder {
    /// Opens the file and starts the writer thread.
    pub fn start(settings: RecordingSettings, tokens: &Tokens) -> Result<Recorder, RecordingError> {
        let (file, path) = open_file(&settings, tokens)?;
        info!(path = %path.display(), "Recording session");
        let (queue, incoming) = mpsc::channel::<Bytes>();
        let queued = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(tokio::sync::watch::Sender::new(false));
        let thread = {
            let (queued, failed, lost) = (queued.clone(), failed.clone(), lost.clone());
            let span = tracing::Span::current();
            std::thread::Builder::new()
                .name("guacr-recording".into())
                .spawn(move || {
                    let _entered = span.enter();
                    write_loop(file, &path, incoming, &queued, &failed);
                    if failed.load(Ordering::Relaxed) {
                        lost.send_replace(true);
                    }
                })
                .map_err(|source| RecordingError::Open { path: PathBuf::from(&settings.path), source })?
        };
        Ok(Recorder {
            settings,
            queue: Some(queue),
            queued,
            failed,
            lost,
            required: false,
            thread: Some(thread),
            reported: false,
        })
    }

    /// The session's recorder, if `recording-path` asks for one. When the file cannot be opened the session
    /// goes unrecorded (guacd's behaviour), unless `required`: then the recorder is already lost, and the
    /// session ends at once.
    pub fn for_session(settings: Option<RecordingSettings>, tokens: &Tokens, required: bool) -> Option<Recorder> {
        let settings = settings?;
        match Recorder::start(settings.clone(), tokens) {
            Ok(mut recorder) => {
                recorder.required = required;
                Some(recorder)
            }
            Err(e) if required => {
                error!(error = %e, "Session cannot be recorded; ending it (--recording-required)");
                Some(Recorder {
                    settings,
                    queue: None,
                    queued: Arc::new(AtomicUsize::new(0)),
                    failed: Arc::new(AtomicBool::new(true)),
                    lost: Arc::new(tokio::sync::watch::Sender::new(true)),
                    required,
                    thread: None,
                    reported: true,
                })
            }
            Err(e) => {
                warn!(error = %e, "Session is not recorded");
                None
            }
        }
    }

    /// Resolves when a required recording stopped before the session ended (disk full, a disk that does not
    /// keep up, or a file that could not be opened); never for a recording that is not required. The
    /// session then ends with 512.
    pub async fn lost(recorder: Option<&Recorder>) {
        match recorder {
            Some(recorder) if recorder.required => {
                let mut lost = recorder.lost.subscribe();
                // The sender lives in `recorder`, which outlives this future: `wait_for` cannot fail.
                if lost.wait_for(|lost| *lost).await.is_ok() {
                    return;
                }
                std::future::pending().await
            }
            _ => std::future::pending().await,
        }
    }

    /// Whether the drawing output goes into the file.
    pub fn wants_output(&self) -> bool {
        !self.settings.exclude_output && self.is_active()
    }

    pub fn is_active(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues bytes (whole instructions) for the file. Never blocks.
    pub fn write(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let Some(queue) = &self.queue else { return };
        if self.failed.load(Ordering::Relaxed) {
            // The writer thread logged why.
            self.queue = None;
            return;
        }
        let queued = self.queued.fetch_add(bytes.len(), Ordering::AcqRel) + bytes.len();
        if queued > MAX_QUEUED {
            if !self.reported {
                self.reported = true;
                error!(queued, "Recording stopped: the disk does not keep up with the session");
            }
            self.queue = None;
            self.lost.send_replace(true);
            return;
        }
        if queue.send(bytes).is_err() {
            self.queue = None;
        }
    }

    /// Drawing output (frames, cursor, name, clipboard from the server), unless excluded.
    pub fn output(&mut self, bytes: &Bytes) {
        if self.wants_output() {
            self.write(bytes.clone());
        }
    }

    /// A user's pointer (guacd: `mouse x y mask timestamp`), unless excluded.
    pub fn mouse(&mut self, x: i32, y: i32, mask: u32) {
        if self.settings.exclude_mouse || !self.is_active() {
            return;
        }
        let mut out = BytesMut::new();
        encode(&mut out, "mouse").int(x.into()).int(y.into()).uint(mask.into()).uint(now_millis()).finish();
        self.write(out.freeze());
    }

    /// A user's key (guacd: `key keysym pressed timestamp`), when included.
    pub fn key(&mut self, keysym: u32, pressed: bool) {
        if !self.settings.include_keys || !self.is_active() {
            return;
        }
        let mut out = BytesMut::new();
        encode(&mut out, "key").uint(keysym.into()).uint(u64::from(pressed)).uint(now_millis()).finish();
        self.write(out.freeze());
    }

    /// Clipboard text a user sent, when included: a `clipboard` stream in blocks of 4096 bytes.
    pub fn clipboard(&mut self, stream: u32, mimetype: &str, data: &[u8]) {
        if !self.settings.include_clipboard || !self.is_active() {
            return;
        }
        let mut out = BytesMut::new();
        encode(&mut out, "clipboard").uint(stream.into()).str(mimetype).finish();
        for block in data.chunks(CLIPBOARD_BLOCK) {
            encode(&mut out, "blob").uint(stream.into()).base64(block).finish();
        }
        encode(&mut out, "end").uint(stream.into()).finish();
        self.write(out.freeze());
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Closing the channel makes the thread write what is left, flush and exit; nobody waits for it.
        self.queue = None;
        drop(self.thread.take());
    }
}

fn write_loop(file: File, path: &Path, incoming: mpsc::Receiver<Bytes>, queued: &AtomicUsize, failed: &AtomicBool) {
    let mut file = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut last_flush = Instant::now();
    let mut dirty = false;
    let result: std::io::Result<()> = (|| loop {
        let wait = FLUSH_INTERVAL.saturating_sub(last_flush.elapsed());
        match incoming.recv_timeout(wait) {
            Ok(bytes) => {
                queued.fetch_sub(bytes.len(), Ordering::AcqRel);
                file.write_all(&bytes)?;
                dirty = true;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                file.flush()?;
                return file.get_ref().sync_data();
            }
        }
        if dirty && last_flush.elapsed() >= FLUSH_INTERVAL {
            file.flush()?;
            dirty = false;
            last_flush = Instant::now();
        } else if !dirty {
            last_flush = Instant::now();
        }
    })();
    match result {
        Ok(()) => info!(path = %path.display(), "Recording closed"),
        Err(e) => {
            failed.store(true, Ordering::Relaxed);
            warn!(path = %path.display(), error = %e, "Recording stopped: cannot write the file");
        }
    }
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> RecordingSettings {
        RecordingSettings {
            path: dir.display().to_string(),
            name: DEFAULT_NAME.into(),
            create_path: false,
            write_existing: false,
            exclude_output: false,
            exclude_mouse: false,
            include_keys: false,
            include_clipboard: false,
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("guacr-rec-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn tokens_are_replaced() {
        // 2026-11-27 06:40:05 UTC
        let tokens = Tokens {
            username: "al/ice".into(),
            client_address: "127.0.0.1".into(),
            connection_id: "$abc".into(),
            now_unix: 1_795_761_605,
        };
        assert_eq!(
            tokens.substitute("${GUAC_USERNAME}-${GUAC_DATE}-${GUAC_TIME}-${GUAC_CONNECTION_ID}-${OTHER}"),
            "al_ice-20261127-064005-abc-${OTHER}"
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn existing_names_get_a_suffix_unless_write_existing() {
        let dir = temp_dir("suffix");
        let mut s = settings(&dir);
        assert!(matches!(open_file(&s, &Tokens::default()), Err(RecordingError::NoDirectory { .. })));
        s.create_path = true;
        let (_, first) = open_file(&s, &Tokens::default()).unwrap();
        let (_, second) = open_file(&s, &Tokens::default()).unwrap();
        let (_, third) = open_file(&s, &Tokens::default()).unwrap();
        assert_eq!(first, dir.join("recording"));
        assert_eq!(second, dir.join("recording.1"));
        assert_eq!(third, dir.join("recording.2"));
        s.write_existing = true;
        let (_, again) = open_file(&s, &Tokens::default()).unwrap();
        assert_eq!(again, dir.join("recording"));
        s.name = "../escape".into();
        assert!(matches!(open_file(&s, &Tokens::default()), Err(RecordingError::BadName { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_error_ends_the_recording_not_the_caller() {
        // /dev/full fails every write with ENOSPC: the disk-full case.
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let (queue, incoming) = mpsc::channel::<Bytes>();
        let (queued, failed) = (AtomicUsize::new(0), AtomicBool::new(false));
        queue.send(Bytes::from(vec![b'x'; 512 * 1024])).unwrap();
        drop(queue);
        write_loop(full, Path::new("/dev/full"), incoming, &queued, &failed);
        assert!(failed.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_required_recording_that_fails_is_lost_and_an_optional_one_is_not() {
        // /dev/full (a device, opened as guacd would with recording-write-existing) fails writes with ENOSPC.
        let mut s = settings(Path::new("/dev"));
        s.name = "full".into();
        s.write_existing = true;
        for required in [false, true] {
            let mut recorder = Recorder::for_session(Some(s.clone()), &Tokens::default(), required).unwrap();
            recorder.output(&Bytes::from(vec![b'x'; 512 * 1024]));
            let lost = tokio::time::timeout(Duration::from_secs(5), Recorder::lost(Some(&recorder))).await;
            assert_eq!(lost.is_ok(), required, "required: {required}");
            assert!(recorder.failed.load(Ordering::Relaxed), "the write failed either way");
        }
        // A file that cannot be opened: lost at once when required, no recorder otherwise.
        let missing = settings(Path::new("/nonexistent-guacr-recordings"));
        assert!(Recorder::for_session(Some(missing.clone()), &Tokens::default(), false).is_none());
        let recorder = Recorder::for_session(Some(missing), &Tokens::default(), true).unwrap();
        assert!(!recorder.is_active());
        tokio::time::timeout(Duration::from_secs(1), Recorder::lost(Some(&recorder))).await.unwrap();
        tokio::time::timeout(Duration::from_millis(50), Recorder::lost(None)).await.unwrap_err();
    }

    #[test]
    fn recorder_writes_output_and_requested_input_then_closes() {
        let dir = temp_dir("writer");
        let mut s = settings(&dir);
        s.create_path = true;
        s.include_keys = true;
        let mut recorder = Recorder::start(s, &Tokens::default()).unwrap();
        recorder.output(&Bytes::from_static(b"4.sync,1.1;"));
        recorder.mouse(1, 2, 0);
        recorder.key(65, true);
        recorder.clipboard(3, "text/plain", b"hi");
        let thread = recorder.thread.take().unwrap();
        drop(recorder);
        thread.join().unwrap();
        let text = std::fs::read_to_string(dir.join("recording")).unwrap();
        assert!(text.starts_with("4.sync,1.1;5.mouse,1.1,1.2,1.0,13."), "{text}");
        assert!(text.contains("3.key,2.65,1.1,13."), "{text}");
        assert!(!text.contains("clipboard"), "clipboard not requested: {text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
