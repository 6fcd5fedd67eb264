//! Terminal typescripts (`typescript-path`, `typescript-name`, `create-typescript-path`,
//! `typescript-write-existing`), readable by `scriptreplay`: a data file holding the terminal's raw output
//! between guacd's header and footer lines, and `<data file>.timing` with one `seconds bytes` line per
//! chunk.
//!
//! The worker is locked down and opens no files, so it sends the terminal output it parsed
//! (`FromWorker::Typescript`) and the supervisor writes it. That costs one copy of the output over the
//! control socket, only while a typescript is on; passing the two descriptors to the worker instead would
//! need descriptor passing on the control socket (and an exception to "a worker holds only these
//! descriptors") for no measurable gain. The bytes are never parsed here, only written.
//!
//! The files are opened like recordings (`recording::open_file`: `name`, else the first free `name.N`,
//! mode 0640). A dedicated thread writes them, so the session loop never waits for the disk.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use shm_proto::control::Params;
use tracing::{info, warn};

use crate::recording::{open_file, RecordingError, RecordingSettings, Tokens};

/// guacd's default `typescript-name`.
pub const DEFAULT_NAME: &str = "typescript";
/// First line of the data file (`scriptreplay` skips the first line).
const HEADER: &[u8] = b"[BEGIN TYPESCRIPT]\n";
/// Last line, written when the session ends.
const FOOTER: &[u8] = b"\n[END TYPESCRIPT]\n";
/// Output queued for the writer thread beyond which the typescript is abandoned (a disk far slower than
/// the terminal): the session never waits for the disk nor holds unbounded memory for it.
const MAX_QUEUED: usize = 64 * 1024 * 1024;
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The session's typescript. Dropping it writes what is queued, the footer, and closes both files.
pub struct Typescript {
    queue: Option<mpsc::Sender<(Instant, Vec<u8>)>>,
    queued: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Typescript {
    /// `Ok(None)` when `typescript-path` is not set.
    pub fn start(params: &Params, tokens: &Tokens) -> Result<Option<Typescript>, RecordingError> {
        let Some(path) = params.get("typescript-path") else {
            return Ok(None);
        };
        let settings = RecordingSettings {
            path: path.to_string(),
            name: params.get("typescript-name").unwrap_or(DEFAULT_NAME).to_string(),
            create_path: params.flag("create-typescript-path"),
            write_existing: params.flag("typescript-write-existing"),
            exclude_output: false,
            exclude_mouse: false,
            include_keys: false,
            include_clipboard: false,
        };
        let (data, data_path) = open_file(&settings, tokens)?;
        let mut timing_name = data_path.clone().into_os_string();
        timing_name.push(".timing");
        let timing_path = PathBuf::from(timing_name);
        let timing = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&timing_path)
            .map_err(|source| RecordingError::Open { path: timing_path.clone(), source })?;
        info!(data = %data_path.display(), timing = %timing_path.display(), "Writing typescript");
        let (queue, incoming) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("typescript".into())
            .spawn({
                let queued = queued.clone();
                move || write_files(data, timing, incoming, queued)
            })
            .map_err(|source| RecordingError::Open { path: data_path, source })?;
        Ok(Some(Typescript { queue: Some(queue), queued, thread: Some(thread) }))
    }

    /// Queues terminal output; never waits.
    pub fn write(&mut self, data: Vec<u8>) {
        let Some(queue) = &self.queue else { return };
        let len = data.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > MAX_QUEUED
            || queue.send((Instant::now(), data)).is_err()
        {
            warn!("Typescript cannot keep up with the terminal (or failed); it stops here");
            self.queue = None;
        }
    }
}

impl Drop for Typescript {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            // The thread only writes what was queued; the session is over, so waiting costs no one.
            let _ = thread.join();
        }
    }
}

/// The session's typescript, opened on the worker's first output (the worker sends output only when
/// `typescript-path` is set). A failure to open is logged once and the session goes on without one.
#[derive(Default)]
pub struct TypescriptSlot {
    typescript: Option<Typescript>,
    tried: bool,
}

impl TypescriptSlot {
    pub fn write(&mut self, params: &Params, data: Vec<u8>) {
        if !self.tried {
            self.tried = true;
            let username = params.get("username").unwrap_or("");
            match Typescript::start(params, &Tokens::now(username, "", "")) {
                Ok(typescript) => self.typescript = typescript,
                Err(error) => warn!(%error, "Terminal output is not written to a typescript"),
            }
        }
        if let Some(typescript) = &mut self.typescript {
            typescript.write(data);
        }
    }
}

fn write_files(data: File, timing: File, incoming: mpsc::Receiver<(Instant, Vec<u8>)>, queued: Arc<AtomicUsize>) {
    let mut data = BufWriter::new(data);
    let mut timing = BufWriter::new(timing);
    let mut last = Instant::now();
    let mut last_flush = Instant::now();
    let result = (|| -> std::io::Result<()> {
        data.write_all(HEADER)?;
        loop {
            match incoming.recv_timeout(FLUSH_INTERVAL) {
                Ok((at, chunk)) => {
                    queued.fetch_sub(chunk.len(), Ordering::Relaxed);
                    let delay = at.saturating_duration_since(last).as_secs_f64();
                    last = at.max(last);
                    data.write_all(&chunk)?;
                    writeln!(timing, "{delay:.6} {}", chunk.len())?;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last_flush.elapsed() >= FLUSH_INTERVAL {
                data.flush()?;
                timing.flush()?;
                last_flush = Instant::now();
            }
        }
        data.write_all(FOOTER)?;
        data.flush()?;
        timing.flush()
    })();
    if let Err(error) = result {
        warn!(%error, "Typescript write failed; typescript ends here");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_what_scriptreplay_reads() {
        let dir = std::env::temp_dir().join(format!("guacr-typescript-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let params = Params(vec![
            ("typescript-path".into(), dir.display().to_string()),
            ("create-typescript-path".into(), "true".into()),
        ]);
        for _ in 0..2 {
            let mut typescript = Typescript::start(&params, &Tokens::default()).unwrap().unwrap();
            typescript.write(b"hello ".to_vec());
            typescript.write(b"world\r\n".to_vec());
        }
        let data = std::fs::read(dir.join("typescript")).unwrap();
        assert_eq!(data, b"[BEGIN TYPESCRIPT]\nhello world\r\n\n[END TYPESCRIPT]\n");
        let timing = std::fs::read_to_string(dir.join("typescript.timing")).unwrap();
        let counts: Vec<&str> = timing.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
        assert_eq!(counts, ["6", "7"]);
        assert!(timing.lines().all(|l| l.split(' ').next().unwrap().parse::<f64>().is_ok()));
        // The second session got guacd's unique suffix.
        assert!(dir.join("typescript.1").exists() && dir.join("typescript.1.timing").exists());
        assert_eq!(Typescript::start(&Params::default(), &Tokens::default()).unwrap().map(|_| ()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
