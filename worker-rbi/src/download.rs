//! Downloads, when `enable-download` is set: Chromium saves each download under the profile's
//! `downloads` directory, named by its GUID (`Browser.setDownloadBehavior` `allowAndName`); once it is
//! complete the worker streams the file to the user as a Guacamole `file` stream, in blobs of at most
//! [`STREAM_CHUNK`] bytes with at most [`STREAM_WINDOW`] unacknowledged, and ends it. The worker reads only
//! beneath that directory (its Landlock rule); the keeper removes it with the profile.
//!
//! Everything here comes from the browser (GUIDs, file names) and is checked: a GUID is hex digits and
//! dashes only, so it can never name a path outside the directory, and file names lose path separators
//! and control characters.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use shm_proto::control::{MAX_STREAM_NAME, MAX_WORKER_STREAMS, STREAM_CHUNK, STREAM_WINDOW};

/// Downloads streamed at once; later ones wait for a free stream.
const MAX_ACTIVE: usize = 8;

/// What the worker sends for a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Open { stream: u32, name: String },
    Blob { stream: u32, data: Vec<u8> },
    End { stream: u32 },
}

struct Active {
    file: File,
    unacked: u32,
}

#[derive(Default)]
pub struct Downloads {
    dir: PathBuf,
    /// GUID → file name, from `Browser.downloadWillBegin`.
    names: HashMap<String, String>,
    /// Completed downloads waiting for a stream: (GUID, name).
    queued: Vec<(String, String)>,
    active: HashMap<u32, Active>,
}

impl Downloads {
    pub fn new(dir: PathBuf) -> Downloads {
        Downloads { dir, ..Downloads::default() }
    }

    /// `Browser.downloadWillBegin`.
    pub fn will_begin(&mut self, guid: &str, suggested: &str) {
        if valid_guid(guid) && self.names.len() < 1024 {
            self.names.insert(guid.to_string(), file_name(suggested));
        }
    }

    /// `Browser.downloadProgress`: a completed download starts streaming.
    pub fn progress(&mut self, guid: &str, state: &str) -> Vec<Out> {
        if state != "completed" && state != "canceled" {
            return Vec::new();
        }
        let Some(name) = self.names.remove(guid) else { return Vec::new() };
        if state == "completed" {
            self.queued.push((guid.to_string(), name));
        }
        self.start_queued()
    }

    /// The client acknowledged a blob on `stream` (status 0), or refused the stream.
    pub fn ack(&mut self, stream: u32, status: u16) -> Vec<Out> {
        let Some(active) = self.active.get_mut(&stream) else { return Vec::new() };
        if status != 0 {
            self.active.remove(&stream);
            let mut out = vec![Out::End { stream }];
            out.extend(self.start_queued());
            return out;
        }
        active.unacked = active.unacked.saturating_sub(1);
        self.fill(stream)
    }

    fn start_queued(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        while self.active.len() < MAX_ACTIVE && !self.queued.is_empty() {
            let Some(stream) = (0..MAX_WORKER_STREAMS).find(|s| !self.active.contains_key(s)) else { break };
            let (guid, name) = self.queued.remove(0);
            match File::open(self.dir.join(&guid)) {
                Ok(file) => {
                    tracing::info!(%name, "Sending a download to the user");
                    self.active.insert(stream, Active { file, unacked: 0 });
                    out.push(Out::Open { stream, name });
                    out.extend(self.fill(stream));
                }
                Err(e) => tracing::warn!(%name, error = %e, "Cannot read a completed download"),
            }
        }
        out
    }

    /// Sends blobs until the window is full or the file ends.
    fn fill(&mut self, stream: u32) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(active) = self.active.get_mut(&stream) else { return out };
        while active.unacked < STREAM_WINDOW {
            let mut data = vec![0u8; STREAM_CHUNK];
            let n = match active.file.read(&mut data) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "Reading a download failed");
                    0
                }
            };
            if n == 0 {
                self.active.remove(&stream);
                out.push(Out::End { stream });
                out.extend(self.start_queued());
                return out;
            }
            data.truncate(n);
            active.unacked += 1;
            out.push(Out::Blob { stream, data });
        }
        out
    }
}

fn valid_guid(guid: &str) -> bool {
    !guid.is_empty() && guid.len() <= 64 && guid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The last path component of what the page suggested, without control characters, never empty.
fn file_name(suggested: &str) -> String {
    let base = suggested.rsplit(['/', '\\']).next().unwrap_or("");
    let mut name: String = base.chars().filter(|c| !c.is_control()).collect();
    while name.len() > MAX_STREAM_NAME.min(255) {
        name.pop();
    }
    if name.is_empty() || name == "." || name == ".." {
        "download".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_download_streams_within_the_window() {
        let dir = std::env::temp_dir().join(format!("guacr-dl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let guid = "0a1b-2c3d";
        let content: Vec<u8> = (0..STREAM_CHUNK * 20 + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join(guid), &content).unwrap();
        let mut downloads = Downloads::new(dir.clone());
        downloads.will_begin(guid, "../../etc/re\u{7}port.pdf");
        assert!(downloads.progress(guid, "inProgress").is_empty());
        let first = downloads.progress(guid, "completed");
        assert_eq!(first[0], Out::Open { stream: 0, name: "report.pdf".into() });
        assert_eq!(first.len(), 1 + STREAM_WINDOW as usize, "the window limits the blobs in flight");
        let mut received = Vec::new();
        let mut outs = first;
        let mut ended = false;
        while !ended {
            let mut acks = 0;
            for out in outs.drain(..) {
                match out {
                    Out::Blob { data, .. } => {
                        received.extend(data);
                        acks += 1;
                    }
                    Out::End { stream } => {
                        assert_eq!(stream, 0);
                        ended = true;
                    }
                    Out::Open { .. } => {}
                }
            }
            for _ in 0..acks {
                outs.extend(downloads.ack(0, 0));
            }
        }
        assert_eq!(received, content);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_names_and_refusals() {
        let mut downloads = Downloads::new(std::env::temp_dir());
        downloads.will_begin("../passwd", "x");
        assert!(downloads.progress("../passwd", "completed").is_empty(), "not a GUID: never opened");
        assert_eq!(file_name(""), "download");
        assert_eq!(file_name("a/.."), "download");
        assert_eq!(file_name("C:\\x\\y.txt"), "y.txt");
        assert!(downloads.ack(5, 0).is_empty(), "ack for no stream");
    }
}
