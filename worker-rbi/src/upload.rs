//! Uploads, when `enable-upload` is set: files the user drops onto the client (Guacamole `file` streams)
//! are written beneath the profile's `uploads` directory; when the page then opens a file chooser (a click
//! on `<input type=file>`, intercepted with `Page.setInterceptFileChooserDialog`), the worker answers it
//! with the uploaded files (`DOM.setFileInputFiles`). Without `enable-upload` every chooser stays empty.
//!
//! The worker may write beneath that directory only (its Landlock rule). Names come from the client:
//! anything with a path separator, a control character or `..` is refused (768, like guacd), and the
//! session's uploads are bounded in total ([`MAX_TOTAL`], 781 beyond).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

/// Bytes a session may upload in all.
pub const MAX_TOTAL: u64 = 256 << 20;
/// Uploads open at once.
const MAX_OPEN: usize = 8;

/// Guacamole status codes an upload is answered with.
pub mod status {
    pub const SUCCESS: u16 = 0;
    pub const SERVER_ERROR: u16 = 512;
    pub const CLIENT_BAD_REQUEST: u16 = 768;
    pub const CLIENT_OVERRUN: u16 = 781;
}

struct Open {
    file: File,
    path: PathBuf,
}

#[derive(Default)]
pub struct Uploads {
    dir: PathBuf,
    open: HashMap<u32, Open>,
    /// Complete uploads, offered to the next file chooser.
    staged: Vec<PathBuf>,
    total: u64,
}

impl Uploads {
    pub fn new(dir: PathBuf) -> Uploads {
        Uploads { dir, ..Uploads::default() }
    }

    /// A `file` stream opens: the status to acknowledge it with.
    pub fn open(&mut self, stream: u32, name: &str) -> u16 {
        let valid = !name.is_empty()
            && name.len() <= 255
            && name != "."
            && name != ".."
            && !name.chars().any(|c| c == '/' || c == '\\' || c.is_control());
        if !valid {
            return status::CLIENT_BAD_REQUEST;
        }
        if self.open.len() >= MAX_OPEN || self.open.contains_key(&stream) {
            return status::CLIENT_OVERRUN;
        }
        // A second file of the same name gets a numbered name instead of replacing the first.
        let mut path = self.dir.join(name);
        let mut n = 1;
        while path.exists() || self.open.values().any(|o| o.path == path) {
            path = self.dir.join(format!("{n}-{name}"));
            n += 1;
        }
        match File::create(&path) {
            Ok(file) => {
                self.open.insert(stream, Open { file, path });
                status::SUCCESS
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot store an upload");
                status::SERVER_ERROR
            }
        }
    }

    /// Data on an upload: the status to acknowledge the blob with (anything but 0 closes the stream).
    pub fn blob(&mut self, stream: u32, data: &[u8]) -> u16 {
        let Some(open) = self.open.get_mut(&stream) else { return status::CLIENT_BAD_REQUEST };
        if self.total + data.len() as u64 > MAX_TOTAL {
            self.open.remove(&stream);
            return status::CLIENT_OVERRUN;
        }
        self.total += data.len() as u64;
        match open.file.write_all(data) {
            Ok(()) => status::SUCCESS,
            Err(e) => {
                tracing::warn!(error = %e, "Writing an upload failed");
                self.open.remove(&stream);
                status::SERVER_ERROR
            }
        }
    }

    /// The upload is complete: it is offered to the next file chooser.
    pub fn end(&mut self, stream: u32) -> u16 {
        match self.open.remove(&stream) {
            Some(open) => {
                tracing::info!(path = %open.path.display(), "Upload ready for the page's next file chooser");
                self.staged.push(open.path);
                status::SUCCESS
            }
            None => status::CLIENT_BAD_REQUEST,
        }
    }

    /// The upload was cut off; the partial file is never offered.
    pub fn abort(&mut self, stream: u32) {
        self.open.remove(&stream);
    }

    /// The files for a chooser (`multiple`: all staged ones, else the newest); they are handed over once.
    pub fn take_for_chooser(&mut self, multiple: bool) -> Vec<PathBuf> {
        if multiple {
            std::mem::take(&mut self.staged)
        } else {
            self.staged.pop().into_iter().collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_stored_checked_and_offered_once() {
        let dir = std::env::temp_dir().join(format!("guacr-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut uploads = Uploads::new(dir.clone());
        assert_eq!(uploads.open(1, "../escape"), status::CLIENT_BAD_REQUEST);
        assert_eq!(uploads.open(1, "a\u{7}"), status::CLIENT_BAD_REQUEST);
        assert_eq!(uploads.open(1, "note.txt"), status::SUCCESS);
        assert_eq!(uploads.open(2, "note.txt"), status::SUCCESS);
        assert_eq!(uploads.blob(1, b"hello "), status::SUCCESS);
        assert_eq!(uploads.blob(1, b"world"), status::SUCCESS);
        assert_eq!(uploads.end(1), status::SUCCESS);
        uploads.abort(2);
        assert_eq!(uploads.blob(2, b"x"), status::CLIENT_BAD_REQUEST);
        assert_eq!(std::fs::read(dir.join("note.txt")).unwrap(), b"hello world");
        assert_eq!(uploads.take_for_chooser(false), vec![dir.join("note.txt")]);
        assert!(uploads.take_for_chooser(true).is_empty());
        assert_eq!(uploads.open(3, "big"), status::SUCCESS);
        uploads.total = MAX_TOTAL;
        assert_eq!(uploads.blob(3, b"x"), status::CLIENT_OVERRUN);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
