//! A worker that breaks the contract on purpose, for the supervisor's containment tests. Installed under
//! the name `guacr-worker-vnc` in a test's worker directory; the `hostname` parameter picks the attack:
//!
//! - `seq-jump`: publishes a valid frame, then moves `published` five steps ahead;
//! - `bad-size`: publishes a frame larger than the region;
//! - `bad-damage`: publishes a damage op outside the frame;
//! - `garbage-message`: sends bytes that are no control message;
//! - `huge-message`: sends a packet over the size bound;
//! - `bad-cursor`: sends a 4096-pixel-wide cursor;
//! - `silent`: stops answering (no heartbeats) but stays alive;
//! - `exit`: exits right after the start;
//! - `fail-769`: reports a failed login (a legitimate error, passed through);
//! - `fail-bogus`: reports a status a worker may not choose;
//! - `stream-bad-index`: a blob on a stream index outside the worker's range;
//! - `stream-blob-before-file`: a blob on a stream it never opened;
//! - `stream-oversize-blob`: opens a download, then sends a blob one byte over the chunk size;
//! - `stream-filesystem-flood`: defines a thousand filesystem objects;
//! - `stream-end-before-file`: ends a stream before opening it;
//! - `stream-blob-after-end`: opens, ends, then sends a blob on the ended stream;
//! - `stream-audio-unaccepted`: opens an `audio` stream in a type the client did not list;
//! - `stream-stray-ack`: acknowledges an upload nobody sent (ignored by the supervisor), then offers a
//!   download `after-ack.txt` and keeps sending heartbeats;
//! - `bystander`: a well-behaved session: sends heartbeats and offers a download `alive-N.txt`
//!   ("alive N") for the N-th key press.

use shm_proto::control::{StreamFromWorker, MAX_WORKER_STREAMS, STREAM_CHUNK};
use shm_proto::layout::{
    OFF_PUBLISHED, OFF_SLOTS, SLOT_DAMAGE_COUNT, SLOT_FLAGS, SLOT_HEIGHT, SLOT_SEQ, SLOT_SIZE, SLOT_WIDTH,
};
use shm_proto::{FromWorker, Rect, ToWorker};
use worker_common::WorkerSession;

fn main() {
    worker_common::run_worker("guacr-worker-hostile", |_args| async {
        attack().await;
        0
    })
}

async fn attack() {
    let mut session = WorkerSession::attach().expect("attach");
    let Some(ToWorker::Start { params, width, height, .. }) = session.wait_for_start().await.expect("start") else {
        return;
    };
    let mode = params.get("hostname").unwrap_or("").to_string();
    // Attacks happen from inside the sandbox, as a compromised real worker's would.
    worker_common::sandbox(&worker_common::Policy::default()).expect("sandbox");
    tracing::warn!(%mode, "Hostile test worker attacking");
    // A valid, connected session first, so the attack hits a running session.
    session.frames.resize(width.min(640), height.min(480)).unwrap();
    let (w, h) = session.frames.size();
    session.control.send(&FromWorker::Connected { width: w, height: h, name: "hostile".into() }).await.unwrap();
    session.frames.mark_dirty(Rect::new(0, 0, w, h));
    session.publish().await.unwrap();
    let first = session.frames.published();
    // Wait until the supervisor has taken the first frame.
    while let Ok(Some(msg)) = session.control.recv::<ToWorker>().await {
        if matches!(msg, ToWorker::Consumed { .. }) {
            break;
        }
    }
    let slot = |seq: u64| OFF_SLOTS + (seq % 2) as usize * SLOT_SIZE;
    let frames = &session.frames;
    let forge_frame = |seq: u64, width: u32, height: u32, count: u32| {
        frames.danger_store_u32(slot(seq) + SLOT_WIDTH, width);
        frames.danger_store_u32(slot(seq) + SLOT_HEIGHT, height);
        frames.danger_store_u32(slot(seq) + SLOT_DAMAGE_COUNT, count);
        frames.danger_store_u32(slot(seq) + SLOT_FLAGS, 0);
        frames.danger_store_u64(slot(seq) + SLOT_SEQ, seq);
    };
    match mode.as_str() {
        "seq-jump" => {
            frames.danger_store_u64(OFF_PUBLISHED, first + 5);
            session.control.send(&FromWorker::Published { seq: first + 5 }).await.unwrap();
        }
        "bad-size" => {
            forge_frame(first + 1, 100_000, 10, 0);
            frames.danger_store_u64(OFF_PUBLISHED, first + 1);
            session.control.send(&FromWorker::Published { seq: first + 1 }).await.unwrap();
        }
        "bad-damage" => {
            let seq = first + 1;
            let ops = frames.geometry().damage_offset((seq % 2) as usize);
            // kind Dirty, x = w - 1, y = 0, width 50, height 50: reaches past the right edge.
            for (i, word) in [1u32, w - 1, 0, 50, 50, 0, 0, 0].into_iter().enumerate() {
                frames.danger_store_u32(ops + i * 4, word);
            }
            forge_frame(seq, w, h, 1);
            frames.danger_store_u64(OFF_PUBLISHED, seq);
            session.control.send(&FromWorker::Published { seq }).await.unwrap();
        }
        "garbage-message" => session.control.danger_send_raw(&[0xff; 64]).await.unwrap(),
        "huge-message" => session.control.danger_send_raw(&vec![0; shm_proto::MAX_CONTROL_MESSAGE + 16]).await.unwrap(),
        "bad-cursor" => {
            let cursor =
                FromWorker::Cursor { hotspot_x: 0, hotspot_y: 0, width: 4096, height: 1, bgra: vec![0; 4096 * 4] };
            session.control.send(&cursor).await.unwrap();
        }
        "silent" => std::future::pending::<()>().await,
        "exit" => std::process::exit(3),
        "fail-769" => session.fail(769, "Authentication failure (test)").await,
        "fail-bogus" => session.fail(0, "bogus status").await,
        "stream-bad-index" => {
            send_streams(&session, [StreamFromWorker::Blob { stream: MAX_WORKER_STREAMS + 7, data: b"x".to_vec() }])
                .await
        }
        "stream-blob-before-file" => {
            send_streams(&session, [StreamFromWorker::Blob { stream: 3, data: b"early".to_vec() }]).await
        }
        "stream-oversize-blob" => {
            send_streams(
                &session,
                [file(1, "big.bin"), StreamFromWorker::Blob { stream: 1, data: vec![7; STREAM_CHUNK + 1] }],
            )
            .await
        }
        // Sound in a type the client never listed (the test client lists no audio at all).
        "stream-audio-unaccepted" => {
            let open = StreamFromWorker::Audio { stream: 0, mimetype: "audio/L16;rate=44100,channels=2".into() };
            send_streams(&session, [open, StreamFromWorker::Blob { stream: 0, data: vec![0; 64] }]).await
        }
        "stream-filesystem-flood" => {
            send_streams(
                &session,
                (0..1000).map(|object| StreamFromWorker::Filesystem { object, name: format!("flood-{object}") }),
            )
            .await
        }
        "stream-end-before-file" => {
            send_streams(&session, [StreamFromWorker::End { stream: 4 }, file(4, "late.txt")]).await
        }
        "stream-blob-after-end" => {
            let blob = StreamFromWorker::Blob { stream: 2, data: b"after end".to_vec() };
            send_streams(&session, [file(2, "ended.txt"), StreamFromWorker::End { stream: 2 }, blob]).await
        }
        "stream-stray-ack" => {
            let stray = StreamFromWorker::Ack { stream: 77, message: "late".into(), status: 0 };
            send_streams(&session, [stray]).await;
            send_streams(&session, download(0, "after-ack.txt", b"still relayed")).await;
            serve(&session, |_| None::<[StreamFromWorker; 0]>).await
        }
        "bystander" => {
            let mut presses = 0;
            serve(&session, |message| match message {
                ToWorker::Key { pressed: true, .. } => {
                    presses += 1;
                    Some(download(
                        presses % MAX_WORKER_STREAMS,
                        &format!("alive-{presses}.txt"),
                        format!("alive {presses}").as_bytes(),
                    ))
                }
                _ => None,
            })
            .await
        }
        other => tracing::error!(mode = other, "unknown attack"),
    }
    // Stay alive (quietly) so the supervisor has to kill us.
    std::future::pending::<()>().await
}

fn file(stream: u32, name: &str) -> StreamFromWorker {
    StreamFromWorker::File { stream, mimetype: "application/octet-stream".into(), name: name.into() }
}

/// A complete, valid download on `stream`.
fn download(stream: u32, name: &str, data: &[u8]) -> [StreamFromWorker; 3] {
    [file(stream, name), StreamFromWorker::Blob { stream, data: data.to_vec() }, StreamFromWorker::End { stream }]
}

/// Sends stream events in order; stops quietly once the supervisor has hung up (it does on a breach).
async fn send_streams(session: &WorkerSession, events: impl IntoIterator<Item = StreamFromWorker>) {
    for event in events {
        if session.control.send(&FromWorker::Stream(event)).await.is_err() {
            break;
        }
    }
}

/// Behaves: sends heartbeats (so the supervisor keeps the session) and whatever `respond` makes of each
/// message. Exits when the supervisor hangs up.
async fn serve<R>(session: &WorkerSession, mut respond: impl FnMut(ToWorker) -> Option<R>)
where
    R: IntoIterator<Item = StreamFromWorker>,
{
    let mut heartbeat = worker_common::heartbeat_timer();
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if session.control.send(&FromWorker::Heartbeat).await.is_err() {
                    break;
                }
            }
            message = session.control.recv::<ToWorker>() => match message {
                Ok(Some(ToWorker::Shutdown)) | Ok(None) | Err(_) => break,
                Ok(Some(message)) => {
                    if let Some(events) = respond(message) {
                        send_streams(session, events).await;
                    }
                }
            },
        }
    }
    std::process::exit(0)
}
