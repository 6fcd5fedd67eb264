//! Cross-process stress test: a child process (this test binary, re-executed) is the worker and writes
//! thousands of frames with known content into a real sealed memfd; the parent is the supervisor and checks
//! every frame it acquires against a model of what the child drew. A torn frame, a stale back surface or a
//! lost damage op shows up as a pixel mismatch.

use std::os::fd::OwnedFd;
use std::process::Command;

use command_fds::{CommandFdExt, FdMapping};
use shm_proto::{ControlChannel, FrameWriter, FromWorker, Geometry, Rect, SharedRegion, ToWorker};

const WIDTH: u32 = 256;
const HEIGHT: u32 = 128;
const ITERATIONS: u32 = 4000;
const CHILD_ENV: &str = "GUACR_SHM_STRESS_CHILD";

/// What iteration `k` draws: an optional copy, a filled rectangle, and the iteration number in row 0.
struct Step {
    copy: Option<(u32, u32, Rect)>,
    fill: Rect,
}

fn step(k: u32) -> Step {
    let mut state = u64::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |bound: u32| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % u64::from(bound)) as u32
    };
    let (w, h) = (1 + next(WIDTH / 2), 1 + next(HEIGHT / 2));
    let fill = Rect::new(next(WIDTH - w), 1 + next(HEIGHT - 1 - h), w, h);
    let copy = k.is_multiple_of(7).then(|| {
        let (w, h) = (1 + next(WIDTH / 3), 1 + next(HEIGHT / 3));
        let dst = Rect::new(next(WIDTH - w), 1 + next(HEIGHT - 1 - h), w, h);
        (next(WIDTH - w), 1 + next(HEIGHT - 1 - h), dst)
    });
    Step { copy, fill }
}

/// A plain image with the same operations, for the model (parent) and for drawing (child).
fn apply(pixels: &mut [u32], stride: usize, k: u32) {
    let s = step(k);
    if let Some((sx, sy, dst)) = s.copy {
        let src: Vec<u32> = (0..dst.h)
            .flat_map(|r| {
                let start = (sy + r) as usize * stride + sx as usize;
                pixels[start..start + dst.w as usize].to_vec()
            })
            .collect();
        for r in 0..dst.h {
            let start = (dst.y + r) as usize * stride + dst.x as usize;
            pixels[start..start + dst.w as usize]
                .copy_from_slice(&src[(r * dst.w) as usize..((r + 1) * dst.w) as usize]);
        }
    }
    for y in s.fill.y..s.fill.y + s.fill.h {
        let start = y as usize * stride + s.fill.x as usize;
        pixels[start..start + s.fill.w as usize].fill(k);
    }
    pixels[..WIDTH as usize].fill(k);
}

fn child_main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let control = ControlChannel::new(shm_proto::inherited_fd(shm_proto::WORKER_CONTROL_FD).unwrap()).unwrap();
        let mut frames = FrameWriter::attach(shm_proto::inherited_fd(shm_proto::WORKER_SHM_FD).unwrap()).unwrap();
        frames.resize(WIDTH, HEIGHT).unwrap();
        let stride = frames.stride() / 4;
        for k in 1..=ITERATIONS {
            let s = step(k);
            {
                let back = frames.back_mut();
                let row = |back: &mut [u8], y: u32, x: u32, w: u32, value: u32| {
                    let start = (y as usize * stride + x as usize) * 4;
                    for px in back[start..start + w as usize * 4].chunks_exact_mut(4) {
                        px.copy_from_slice(&value.to_le_bytes());
                    }
                };
                if s.copy.is_none() {
                    for y in s.fill.y..s.fill.y + s.fill.h {
                        row(back, y, s.fill.x, s.fill.w, k);
                    }
                    row(back, 0, 0, WIDTH, k);
                }
            }
            if let Some((sx, sy, dst)) = s.copy {
                frames.copy_rect(sx, sy, dst);
                let back = frames.back_mut();
                for y in s.fill.y..s.fill.y + s.fill.h {
                    let start = (y as usize * stride + s.fill.x as usize) * 4;
                    for px in back[start..start + s.fill.w as usize * 4].chunks_exact_mut(4) {
                        px.copy_from_slice(&k.to_le_bytes());
                    }
                }
                for px in back[..WIDTH as usize * 4].chunks_exact_mut(4) {
                    px.copy_from_slice(&k.to_le_bytes());
                }
            }
            frames.mark_dirty(s.fill);
            frames.mark_dirty(Rect::new(0, 0, WIDTH, 1));
            if let Some(seq) = frames.try_publish() {
                control.send(&FromWorker::Published { seq }).await.unwrap();
            } else if k % 3 == 0 {
                // Every third iteration waits for the supervisor instead of coalescing, so that the
                // reader checks well over a thousand frames however loaded the machine is.
                while let Some(message) = control.recv::<ToWorker>().await.unwrap() {
                    if matches!(message, ToWorker::Consumed { .. }) {
                        if let Some(seq) = frames.try_publish() {
                            control.send(&FromWorker::Published { seq }).await.unwrap();
                            break;
                        }
                    }
                }
            }
        }
        // Flush what is still pending once the supervisor releases the front.
        while frames.has_pending() {
            match control.recv::<ToWorker>().await.unwrap() {
                Some(ToWorker::Consumed { .. }) => {
                    if let Some(seq) = frames.try_publish() {
                        control.send(&FromWorker::Published { seq }).await.unwrap();
                    }
                }
                Some(_) => {}
                None => return,
            }
        }
        control.send(&FromWorker::Closed { message: "done".into() }).await.unwrap();
    });
}

#[test]
fn child_writer() {
    // Only does something when started by `thousands_of_frames_are_never_torn` as the child.
    if std::env::var_os(CHILD_ENV).is_some() {
        child_main();
    }
}

fn spawn_child(control: OwnedFd, memfd: OwnedFd) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "child_writer", "--nocapture", "--test-threads", "1"]).env(CHILD_ENV, "1");
    command
        .fd_mappings(vec![
            FdMapping { parent_fd: control, child_fd: shm_proto::WORKER_CONTROL_FD },
            FdMapping { parent_fd: memfd, child_fd: shm_proto::WORKER_SHM_FD },
        ])
        .unwrap();
    command.spawn().unwrap()
}

#[test]
fn thousands_of_frames_are_never_torn() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (frames_acquired, iterations_seen) = runtime.block_on(async {
        let (mut reader, memfd) = SharedRegion::create(Geometry::new(WIDTH, HEIGHT, 64).unwrap()).unwrap();
        let (ours, theirs) = ControlChannel::pair().unwrap();
        let mut child = spawn_child(theirs, memfd);
        let control = ControlChannel::new(ours).unwrap();
        let mut model = vec![0u32; (WIDTH * HEIGHT) as usize];
        let mut model_k = 0;
        let mut acquired = 0u32;
        let mut row = vec![0u8; WIDTH as usize * 4];
        loop {
            match control.recv::<FromWorker>().await.unwrap() {
                Some(FromWorker::Published { .. }) => {}
                Some(FromWorker::Closed { .. }) | None => break,
                Some(other) => panic!("unexpected {other:?}"),
            }
            let Some(frame) = reader.acquire().expect("honest worker breached the contract") else { continue };
            acquired += 1;
            reader.read_row(&frame, frame.full_rect(), 0, &mut row);
            let k = u32::from_le_bytes(row[..4].try_into().unwrap());
            assert!(k > model_k || (k == 0 && model_k == 0), "iteration went backwards: {k} after {model_k}");
            while model_k < k {
                model_k += 1;
                apply(&mut model, WIDTH as usize, model_k);
            }
            for y in 0..HEIGHT {
                reader.read_row(&frame, frame.full_rect(), y, &mut row);
                for (x, px) in row.chunks_exact(4).enumerate() {
                    let got = u32::from_le_bytes(px.try_into().unwrap());
                    let want = model[(y * WIDTH) as usize + x];
                    assert_eq!(got, want, "frame {} (iteration {k}) differs at {x},{y}", frame.seq);
                }
            }
            let seq = frame.seq;
            reader.release(frame);
            // The writer may already have exited after its last frame.
            let _ = control.send(&ToWorker::Consumed { seq }).await;
        }
        assert!(child.wait().unwrap().success(), "writer process failed");
        (acquired, model_k)
    });
    assert_eq!(iterations_seen, ITERATIONS, "the last frame must arrive");
    assert!(frames_acquired >= ITERATIONS / 3, "only {frames_acquired} frames acquired");
    eprintln!("{frames_acquired} frames acquired for {ITERATIONS} iterations");
}
