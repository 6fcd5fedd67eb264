//! The stream and object relay between the session's owner and its worker (file transfer, browsing,
//! downloads). Sans-IO: each call takes one event, updates the relay's state and writes the Guacamole
//! instructions for the client into `out`; what goes to the worker is returned.
//!
//! The worker is untrusted, so everything it says is checked here: stream and object indices within the
//! ranges `shm-proto` allows, names and mimetypes within their bounds and free of control characters,
//! blobs only on streams it opened and within the flow-control window, acks only for client streams that
//! are relayed to it. A breach ends the session like any other contract breach ([`StreamBreach`]).
//!
//! The worker's stream indices are its own (`0..MAX_WORKER_STREAMS`); on the wire they become
//! `WORKER_STREAM_BASE + index`, a range the display's image and clipboard streams (`1..=1000`, see
//! `ClientDisplay::stream`) never reach, so the two never collide.

use std::collections::HashMap;

use bytes::BytesMut;
use guac_proto::{encode, Status};
use shm_proto::control::{
    StreamFromWorker, StreamToWorker, CLIENT_STREAM_CHUNK, MAX_ACK_MESSAGE, MAX_MIMETYPE, MAX_STREAM_NAME,
    MAX_WORKER_OBJECTS, MAX_WORKER_STREAMS, STREAM_CHUNK, STREAM_WINDOW,
};
use tracing::{debug, info};

/// Where the worker's stream indices start on the wire.
pub(crate) const WORKER_STREAM_BASE: u32 = 1024;
/// Uploads relayed to the worker at once.
const MAX_UPLOADS: usize = 16;
/// Client blobs an upload may have in flight before the worker acknowledged them. guacamole-common-js and
/// guacamole-client wait for each `ack`; a client that does not is cut off rather than allowed to queue
/// without bound.
const UPLOAD_WINDOW: u32 = 64;

/// The worker broke the stream contract.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum StreamBreach {
    #[error("stream index {0} is outside the worker's range")]
    StreamIndex(u32),
    #[error("object index {0} is outside the worker's range")]
    ObjectIndex(u32),
    #[error("object {0} is not defined")]
    NoObject(u32),
    #[error("stream {0} is already open")]
    StreamOpen(u32),
    #[error("stream {0} is not open")]
    StreamClosed(u32),
    #[error("blob of {0} bytes exceeds the chunk size")]
    BlobTooLarge(usize),
    #[error("stream {0} ran past the flow-control window")]
    Window(u32),
    #[error("invalid {what}")]
    Text { what: &'static str },
    #[error("status {0} is not an error status")]
    Status(u16),
    #[error("audio mimetype {0:?} is not one the client accepts")]
    AudioType(String),
}

/// A stream the worker opened toward the client.
#[derive(Debug)]
struct Outgoing {
    /// Blobs sent that the client has not acknowledged yet.
    unacked: u32,
    /// The client refused the stream: blobs already on their way from the worker are dropped until its `End`.
    cancelled: bool,
    /// An `audio` stream: clients do not acknowledge its blobs, so no window; the session drops its blobs
    /// while the client is behind instead ([`StreamRelay::is_audio_blob`]).
    audio: bool,
}

/// A client upload relayed to the worker.
#[derive(Debug)]
struct Upload {
    /// Blobs relayed that the worker has not acknowledged yet.
    unacked: u32,
    /// The client sent `end`; the worker's next `ack` is the last.
    ended: bool,
}

/// Stream and object state of one session (its owner's side).
#[derive(Debug, Default)]
pub(crate) struct StreamRelay {
    objects: [bool; MAX_WORKER_OBJECTS as usize],
    accept_files: bool,
    outgoing: HashMap<u32, Outgoing>,
    uploads: HashMap<u32, Upload>,
    /// The audio mimetypes the owner listed in its handshake.
    client_audio: Vec<String>,
}

fn ack(out: &mut BytesMut, stream: u32, message: &str, status: Status) {
    encode(out, "ack").uint(stream.into()).str(message).uint(status.code().into()).finish();
}

/// A name (path) or message from the worker: bounded, no control characters.
fn check_text(text: &str, limit: usize, what: &'static str) -> Result<(), StreamBreach> {
    if text.len() > limit || text.chars().any(char::is_control) {
        return Err(StreamBreach::Text { what });
    }
    Ok(())
}

/// A mimetype: non-empty, bounded, printable ASCII (`type/subtype; param=value`).
fn check_mimetype(mimetype: &str) -> Result<(), StreamBreach> {
    let ok = !mimetype.is_empty()
        && mimetype.len() <= MAX_MIMETYPE
        && mimetype.contains('/')
        && mimetype.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(StreamBreach::Text { what: "mimetype" })
    }
}

fn check_stream(stream: u32) -> Result<(), StreamBreach> {
    if stream < MAX_WORKER_STREAMS {
        Ok(())
    } else {
        Err(StreamBreach::StreamIndex(stream))
    }
}

/// Whether a client's name and mimetype are fit to pass on (the worker gets them as they are otherwise).
fn client_text_ok(mimetype: &str, name: &str) -> bool {
    mimetype.len() <= MAX_MIMETYPE && name.len() <= MAX_STREAM_NAME && !name.chars().any(char::is_control)
}

impl StreamRelay {
    /// Whether client stream `stream` is an upload relayed to the worker.
    pub(crate) fn owns_upload(&self, stream: u32) -> bool {
        self.uploads.contains_key(&stream)
    }

    /// `file` from the client: relayed when the worker takes files and the user may upload.
    pub(crate) fn client_file(
        &mut self,
        stream: u32,
        mimetype: String,
        name: String,
        may_upload: bool,
        out: &mut BytesMut,
    ) -> Option<StreamToWorker> {
        if !self.accept_files {
            ack(out, stream, "File transfer is not supported.", Status::Unsupported);
            return None;
        }
        self.open_upload(stream, &mimetype, &name, may_upload, out)?;
        Some(StreamToWorker::File { stream, mimetype, name })
    }

    /// `put` from the client: relayed when the object exists and the user may upload.
    pub(crate) fn client_put(
        &mut self,
        object: u32,
        stream: u32,
        mimetype: String,
        name: String,
        may_upload: bool,
        out: &mut BytesMut,
    ) -> Option<StreamToWorker> {
        if !self.object_defined(object) {
            ack(out, stream, "No such object.", Status::ResourceNotFound);
            return None;
        }
        self.open_upload(stream, &mimetype, &name, may_upload, out)?;
        Some(StreamToWorker::Put { object, stream, mimetype, name })
    }

    fn open_upload(
        &mut self,
        stream: u32,
        mimetype: &str,
        name: &str,
        may_upload: bool,
        out: &mut BytesMut,
    ) -> Option<()> {
        let refusal = if !may_upload {
            Some(("Uploads are not allowed.", Status::ClientForbidden))
        } else if self.uploads.contains_key(&stream) {
            Some(("Stream already open.", Status::ClientBadRequest))
        } else if self.uploads.len() >= MAX_UPLOADS {
            Some(("Too many uploads at once.", Status::ClientTooMany))
        } else if !client_text_ok(mimetype, name) {
            Some(("Invalid file name or type.", Status::ClientBadRequest))
        } else {
            None
        };
        if let Some((message, status)) = refusal {
            ack(out, stream, message, status);
            return None;
        }
        self.uploads.insert(stream, Upload { unacked: 0, ended: false });
        Some(())
    }

    /// A blob on a relayed upload (the caller checked [`Self::owns_upload`]).
    pub(crate) fn client_blob(&mut self, stream: u32, data: Vec<u8>, out: &mut BytesMut) -> Option<StreamToWorker> {
        let upload = self.uploads.get_mut(&stream)?;
        if upload.ended {
            ack(out, stream, "Stream already ended.", Status::ClientBadRequest);
            return None;
        }
        upload.unacked += 1;
        if upload.unacked > UPLOAD_WINDOW || data.len() > CLIENT_STREAM_CHUNK {
            info!(stream, "Client ignored the upload's flow control; upload cut off");
            self.uploads.remove(&stream);
            ack(out, stream, "Upload sent too much without acknowledgement.", Status::ClientOverrun);
            return Some(StreamToWorker::Abort { stream });
        }
        Some(StreamToWorker::Blob { stream, data })
    }

    /// `end` on a relayed upload.
    pub(crate) fn client_end(&mut self, stream: u32) -> Option<StreamToWorker> {
        let upload = self.uploads.get_mut(&stream)?;
        upload.ended = true;
        Some(StreamToWorker::End { stream })
    }

    /// `get` from the client: relayed when the object exists.
    pub(crate) fn client_get(&mut self, object: u32, name: String) -> Option<StreamToWorker> {
        if !self.object_defined(object) || name.len() > MAX_STREAM_NAME || name.chars().any(char::is_control) {
            debug!(object, "get for an unknown object or with an invalid name ignored");
            return None;
        }
        Some(StreamToWorker::Get { object, name })
    }

    /// `ack` from the client. `None` when it is not about one of the worker's streams (image streams).
    pub(crate) fn client_ack(&mut self, stream: u32, message: &str, status: u16) -> Option<StreamToWorker> {
        let index = stream.checked_sub(WORKER_STREAM_BASE).filter(|i| *i < MAX_WORKER_STREAMS)?;
        let outgoing = self.outgoing.get_mut(&index)?;
        if outgoing.cancelled {
            return None;
        }
        outgoing.unacked = outgoing.unacked.saturating_sub(1);
        if status != 0 {
            outgoing.cancelled = true;
        }
        let message: String = message.chars().filter(|c| !c.is_control()).take(MAX_ACK_MESSAGE).collect();
        Some(StreamToWorker::Ack { stream: index, message, status })
    }

    fn object_defined(&self, object: u32) -> bool {
        self.objects.get(object as usize).copied().unwrap_or(false)
    }

    /// Sets the audio mimetypes the owner's client listed in its handshake (what `Audio` may open).
    pub(crate) fn set_client_audio(&mut self, mimetypes: Vec<String>) {
        self.client_audio = mimetypes;
    }

    /// True for a blob on an open audio stream: sound that may be dropped while the client is behind
    /// (late sound is worth less than none, and it must not hold up the session).
    pub(crate) fn is_audio_blob(&self, message: &StreamFromWorker) -> bool {
        matches!(message, StreamFromWorker::Blob { stream, .. } if self.outgoing.get(stream).is_some_and(|o| o.audio))
    }

    /// One stream event from the worker: checked, then written for the client into `out`.
    pub(crate) fn worker(&mut self, message: StreamFromWorker, out: &mut BytesMut) -> Result<(), StreamBreach> {
        match message {
            StreamFromWorker::Filesystem { object, name } => {
                let slot = self.objects.get_mut(object as usize).ok_or(StreamBreach::ObjectIndex(object))?;
                check_text(&name, MAX_STREAM_NAME, "object name")?;
                *slot = true;
                encode(out, "filesystem").uint(object.into()).str(&name).finish();
            }
            StreamFromWorker::Undefine { object } => {
                let slot = self.objects.get_mut(object as usize).ok_or(StreamBreach::ObjectIndex(object))?;
                if !*slot {
                    return Err(StreamBreach::NoObject(object));
                }
                *slot = false;
                encode(out, "undefine").uint(object.into()).finish();
            }
            StreamFromWorker::AcceptFiles { accept } => self.accept_files = accept,
            StreamFromWorker::Body { object, stream, mimetype, name } => {
                if object >= MAX_WORKER_OBJECTS {
                    return Err(StreamBreach::ObjectIndex(object));
                }
                if !self.object_defined(object) {
                    return Err(StreamBreach::NoObject(object));
                }
                self.open_outgoing(stream, &mimetype, &name)?;
                encode(out, "body")
                    .uint(object.into())
                    .uint((WORKER_STREAM_BASE + stream).into())
                    .str(&mimetype)
                    .str(&name)
                    .finish();
            }
            StreamFromWorker::File { stream, mimetype, name } => {
                self.open_outgoing(stream, &mimetype, &name)?;
                encode(out, "file").uint((WORKER_STREAM_BASE + stream).into()).str(&mimetype).str(&name).finish();
            }
            StreamFromWorker::Blob { stream, data } => {
                check_stream(stream)?;
                if data.len() > STREAM_CHUNK {
                    return Err(StreamBreach::BlobTooLarge(data.len()));
                }
                let outgoing = self.outgoing.get_mut(&stream).ok_or(StreamBreach::StreamClosed(stream))?;
                if outgoing.cancelled {
                    return Ok(());
                }
                if !outgoing.audio {
                    if outgoing.unacked >= STREAM_WINDOW {
                        return Err(StreamBreach::Window(stream));
                    }
                    outgoing.unacked += 1;
                }
                encode(out, "blob").uint((WORKER_STREAM_BASE + stream).into()).base64(&data).finish();
            }
            StreamFromWorker::Audio { stream, mimetype } => {
                check_mimetype(&mimetype)?;
                if !shm_proto::control::client_accepts_audio(&self.client_audio, &mimetype) {
                    return Err(StreamBreach::AudioType(mimetype));
                }
                self.open_outgoing(stream, &mimetype, "")?;
                if let Some(outgoing) = self.outgoing.get_mut(&stream) {
                    outgoing.audio = true;
                }
                encode(out, "audio").uint((WORKER_STREAM_BASE + stream).into()).str(&mimetype).finish();
            }
            StreamFromWorker::End { stream } => {
                check_stream(stream)?;
                let outgoing = self.outgoing.remove(&stream).ok_or(StreamBreach::StreamClosed(stream))?;
                if !outgoing.cancelled {
                    encode(out, "end").uint((WORKER_STREAM_BASE + stream).into()).finish();
                }
            }
            StreamFromWorker::Abort { stream, status, message } => {
                check_stream(stream)?;
                check_text(&message, MAX_ACK_MESSAGE, "abort message")?;
                let status = Status::from_code(status)
                    .filter(|s| s.code() >= Status::Unsupported.code())
                    .ok_or(StreamBreach::Status(status))?;
                let outgoing = self.outgoing.remove(&stream).ok_or(StreamBreach::StreamClosed(stream))?;
                if !outgoing.cancelled {
                    let wire = WORKER_STREAM_BASE + stream;
                    ack(out, wire, &message, status);
                    encode(out, "end").uint(wire.into()).finish();
                }
            }
            StreamFromWorker::Ack { stream, message, status } => {
                check_text(&message, MAX_ACK_MESSAGE, "ack message")?;
                let Some(upload) = self.uploads.get_mut(&stream) else {
                    // Never reaches the client. It may be a late ack for an upload the relay cut off.
                    debug!(stream, "Worker acknowledged a stream that is not relayed to it; dropped");
                    return Ok(());
                };
                let status = Status::from_code(status).ok_or(StreamBreach::Status(status))?;
                upload.unacked = upload.unacked.saturating_sub(1);
                if status != Status::Success || upload.ended {
                    self.uploads.remove(&stream);
                }
                ack(out, stream, &message, status);
            }
        }
        Ok(())
    }

    fn open_outgoing(&mut self, stream: u32, mimetype: &str, name: &str) -> Result<(), StreamBreach> {
        check_stream(stream)?;
        check_mimetype(mimetype)?;
        check_text(name, MAX_STREAM_NAME, "stream name")?;
        if self.outgoing.contains_key(&stream) {
            return Err(StreamBreach::StreamOpen(stream));
        }
        self.outgoing.insert(stream, Outgoing { unacked: 0, cancelled: false, audio: false });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: &mut BytesMut) -> String {
        String::from_utf8(out.split().to_vec()).unwrap()
    }

    fn relay_with_object() -> StreamRelay {
        let mut relay = StreamRelay::default();
        let mut out = BytesMut::new();
        relay.worker(StreamFromWorker::Filesystem { object: 0, name: "SFTP".into() }, &mut out).unwrap();
        assert_eq!(text(&mut out), "10.filesystem,1.0,4.SFTP;");
        relay
    }

    #[test]
    fn download_is_mapped_past_the_display_streams_and_flow_controlled() {
        let mut relay = relay_with_object();
        let mut out = BytesMut::new();
        assert_eq!(relay.client_get(0, "/f".into()), Some(StreamToWorker::Get { object: 0, name: "/f".into() }));
        assert_eq!(relay.client_get(1, "/f".into()), None, "undefined object");
        let body = StreamFromWorker::Body {
            object: 0,
            stream: 2,
            mimetype: "application/octet-stream".into(),
            name: "/f".into(),
        };
        relay.worker(body.clone(), &mut out).unwrap();
        assert_eq!(text(&mut out), "4.body,1.0,4.1026,24.application/octet-stream,2./f;");
        assert_eq!(relay.worker(body, &mut out), Err(StreamBreach::StreamOpen(2)));
        for _ in 0..STREAM_WINDOW {
            relay.worker(StreamFromWorker::Blob { stream: 2, data: b"hi".to_vec() }, &mut out).unwrap();
        }
        assert!(text(&mut out).starts_with("4.blob,4.1026,4.aGk=;"));
        assert_eq!(
            relay.worker(StreamFromWorker::Blob { stream: 2, data: vec![] }, &mut out),
            Err(StreamBreach::Window(2))
        );
        assert_eq!(
            relay.client_ack(1026, "OK", 0),
            Some(StreamToWorker::Ack { stream: 2, message: "OK".into(), status: 0 })
        );
        relay.worker(StreamFromWorker::Blob { stream: 2, data: vec![] }, &mut out).unwrap();
        assert_eq!(relay.client_ack(7, "OK", 0), None, "image stream acks are not relayed");
        relay.worker(StreamFromWorker::End { stream: 2 }, &mut out).unwrap();
        assert!(text(&mut out).ends_with("3.end,4.1026;"));
        assert_eq!(relay.worker(StreamFromWorker::End { stream: 2 }, &mut out), Err(StreamBreach::StreamClosed(2)));
    }

    #[test]
    fn hostile_worker_messages_are_breaches() {
        let mut relay = relay_with_object();
        let mut out = BytesMut::new();
        let cases = [
            StreamFromWorker::Filesystem { object: MAX_WORKER_OBJECTS, name: "x".into() },
            StreamFromWorker::Filesystem { object: 0, name: "a\nb".into() },
            StreamFromWorker::Undefine { object: 3 },
            StreamFromWorker::Body { object: 3, stream: 0, mimetype: "text/plain".into(), name: "x".into() },
            StreamFromWorker::Body {
                object: 0,
                stream: MAX_WORKER_STREAMS,
                mimetype: "text/plain".into(),
                name: "x".into(),
            },
            StreamFromWorker::File { stream: 0, mimetype: "bad\u{7}/x".into(), name: "x".into() },
            StreamFromWorker::File { stream: 0, mimetype: "text/plain".into(), name: "x".repeat(MAX_STREAM_NAME + 1) },
            StreamFromWorker::Blob { stream: 5, data: vec![] },
            StreamFromWorker::Blob { stream: 5, data: vec![0; STREAM_CHUNK + 1] },
            StreamFromWorker::Abort { stream: 5, status: 0, message: String::new() },
        ];
        for case in cases {
            assert!(relay.worker(case.clone(), &mut out).is_err(), "{case:?}");
        }
        relay
            .worker(StreamFromWorker::File { stream: 1, mimetype: "text/plain".into(), name: "a".into() }, &mut out)
            .unwrap();
        let bad_status = StreamFromWorker::Abort { stream: 1, status: 0, message: String::new() };
        assert_eq!(relay.worker(bad_status, &mut out), Err(StreamBreach::Status(0)));
    }

    #[test]
    fn audio_opens_only_in_a_type_the_client_accepts_and_has_no_window() {
        let mut relay = StreamRelay::default();
        let mut out = BytesMut::new();
        let stereo = "audio/L16;rate=44100,channels=2";
        let open = StreamFromWorker::Audio { stream: 0, mimetype: stereo.into() };
        assert_eq!(
            relay.worker(open.clone(), &mut out),
            Err(StreamBreach::AudioType(stereo.into())),
            "no audio listed"
        );
        relay.set_client_audio(vec!["audio/L8".into(), "audio/L16".into()]);
        let ogg = StreamFromWorker::Audio { stream: 0, mimetype: "audio/ogg".into() };
        assert_eq!(relay.worker(ogg, &mut out), Err(StreamBreach::AudioType("audio/ogg".into())));
        let bad = StreamFromWorker::Audio { stream: 0, mimetype: "audio/L16\n".into() };
        assert!(relay.worker(bad, &mut out).is_err());
        let far = StreamFromWorker::Audio { stream: MAX_WORKER_STREAMS, mimetype: stereo.into() };
        assert_eq!(relay.worker(far, &mut out), Err(StreamBreach::StreamIndex(MAX_WORKER_STREAMS)));
        relay.worker(open.clone(), &mut out).unwrap();
        assert_eq!(text(&mut out), "5.audio,4.1024,31.audio/L16;rate=44100,channels=2;");
        assert_eq!(relay.worker(open, &mut out), Err(StreamBreach::StreamOpen(0)));
        // Clients never acknowledge audio blobs: far more than a window's worth are relayed.
        let blob = StreamFromWorker::Blob { stream: 0, data: vec![0; STREAM_CHUNK] };
        assert!(relay.is_audio_blob(&blob));
        for _ in 0..STREAM_WINDOW * 4 {
            relay.worker(blob.clone(), &mut out).unwrap();
        }
        assert!(text(&mut out).starts_with("4.blob,4.1024,"));
        let oversize = StreamFromWorker::Blob { stream: 0, data: vec![0; STREAM_CHUNK + 1] };
        assert_eq!(relay.worker(oversize, &mut out), Err(StreamBreach::BlobTooLarge(STREAM_CHUNK + 1)));
        relay.worker(StreamFromWorker::End { stream: 0 }, &mut out).unwrap();
        assert_eq!(text(&mut out), "3.end,4.1024;");
        assert!(!relay.is_audio_blob(&blob), "closed");
        // A file stream keeps its window and is not audio.
        relay
            .worker(StreamFromWorker::File { stream: 1, mimetype: "text/plain".into(), name: "a".into() }, &mut out)
            .unwrap();
        assert!(!relay.is_audio_blob(&StreamFromWorker::Blob { stream: 1, data: vec![] }));
    }

    #[test]
    fn uploads_need_permission_and_follow_acks() {
        let mut relay = relay_with_object();
        let mut out = BytesMut::new();
        assert_eq!(relay.client_file(4, "text/plain".into(), "a".into(), true, &mut out), None);
        assert_eq!(text(&mut out), "3.ack,1.4,31.File transfer is not supported.,3.256;");
        relay.worker(StreamFromWorker::AcceptFiles { accept: true }, &mut out).unwrap();
        assert_eq!(relay.client_file(4, "text/plain".into(), "a".into(), false, &mut out), None);
        assert!(text(&mut out).ends_with("3.771;"));
        assert!(relay.client_put(0, 5, "text/plain".into(), "/a".into(), true, &mut out).is_some());
        assert!(relay.owns_upload(5));
        relay.worker(StreamFromWorker::Ack { stream: 5, message: "OK".into(), status: 0 }, &mut out).unwrap();
        assert_eq!(text(&mut out), "3.ack,1.5,2.OK,1.0;");
        for _ in 0..UPLOAD_WINDOW {
            assert!(matches!(relay.client_blob(5, vec![1], &mut out), Some(StreamToWorker::Blob { .. })));
        }
        assert_eq!(relay.client_blob(5, vec![1], &mut out), Some(StreamToWorker::Abort { stream: 5 }));
        assert!(text(&mut out).ends_with("3.781;"));
        assert!(!relay.owns_upload(5));
        // A late ack for the cut-off upload is harmless.
        relay.worker(StreamFromWorker::Ack { stream: 5, message: "OK".into(), status: 0 }, &mut out).unwrap();
        assert!(out.is_empty());
        assert!(relay.client_file(6, "text/plain".into(), "b".into(), true, &mut out).is_some());
        assert_eq!(relay.client_end(6), Some(StreamToWorker::End { stream: 6 }));
        relay.worker(StreamFromWorker::Ack { stream: 6, message: "OK".into(), status: 0 }, &mut out).unwrap();
        assert!(!relay.owns_upload(6));
    }
}
