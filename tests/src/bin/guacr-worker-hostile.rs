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
//! - `fail-bogus`: reports a status a worker may not choose.

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
        other => tracing::error!(mode = other, "unknown attack"),
    }
    // Stay alive (quietly) so the supervisor has to kill us.
    std::future::pending::<()>().await
}
