//! The process-wide encoder pool: a fixed set of dedicated OS threads (`--encoder-threads`, default one
//! per core) that run every session's frame encodes.
//!
//! Why not tokio's blocking pool: `spawn_blocking` grows to hundreds of threads (one per waiting job, so
//! the core count is not a bound without an extra semaphore and an extra task hop), and its queue is one
//! FIFO for every kind of blocking work. Here a job goes from the session loop straight into the pool's
//! queue and wakes a parked encoder thread: one handoff.
//!
//! Fairness: jobs queue per session (the fairness key) and the threads take sessions round-robin, one
//! job per turn, so a session with a backlog cannot starve the others: every queued session gets a
//! thread within `sessions / threads` turns. (The session loop keeps at most one encode in flight per
//! session anyway; the per-session queues make the guarantee independent of that.)
//!
//! Bounded: at most `capacity` jobs are queued or running at once; a submitter beyond that waits
//! (asynchronously) for a place, which pushes back on the session's frame scheduler like a slow client.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job produced no result.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The job panicked on its encoder thread (the thread survives and takes the next job).
    #[error("encoder job panicked")]
    Panicked,
    /// The pool was shut down before the job ran.
    #[error("encoder pool is shut down")]
    Closed,
}

/// Queued jobs per fairness key, and the round-robin order of the keys that have any.
#[derive(Default)]
struct Queue {
    jobs: HashMap<u64, VecDeque<Job>>,
    turn: VecDeque<u64>,
    closed: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Inner {
    /// A panicking job never holds the lock (jobs run outside it), so a poisoned lock still holds a
    /// consistent queue.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next job in round-robin order over the keys, waiting while there is none. `None` once closed.
    fn next(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if q.closed {
                return None;
            }
            if let Some(key) = q.turn.pop_front() {
                let Some(jobs) = q.jobs.get_mut(&key) else { continue };
                let job = jobs.pop_front();
                if jobs.is_empty() {
                    q.jobs.remove(&key);
                } else {
                    // More from this session: back to the end of the line, after every other session.
                    q.turn.push_back(key);
                }
                if let Some(job) = job {
                    return Some(job);
                }
                continue;
            }
            q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The pool. Dropping it stops the threads once they finish their current job; queued jobs are dropped
/// and their submitters get [`PoolError::Closed`].
pub struct EncoderPool {
    inner: Arc<Inner>,
    places: Arc<Semaphore>,
    next_key: AtomicU64,
}

impl EncoderPool {
    /// Starts `threads` encoder threads (at least one), admitting at most `capacity` jobs at once, with the
    /// kernel's default time slice.
    #[cfg(test)]
    pub fn new(threads: usize, capacity: usize) -> std::io::Result<Self> {
        Self::with_slice(threads, capacity, None)
    }

    /// Like [`EncoderPool::new`], each thread asking the kernel for a time slice of `slice` (`--encoder-slice-us`).
    ///
    /// Why: on busy cores (the peers, the workers and other sessions all runnable) a woken encoder thread
    /// otherwise waits for the running task's slice (1.4 ms by default on two cores) before it gets the
    /// core, which is the handoff's tail. With a short slice EEVDF gives it an earlier deadline, so it
    /// preempts at once; the CPU share it gets is the same.
    pub fn with_slice(threads: usize, capacity: usize, slice: Option<Duration>) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let inner = Arc::new(Inner { queue: Mutex::new(Queue::default()), wake: Condvar::new() });
        for i in 0..threads {
            let inner = inner.clone();
            std::thread::Builder::new().name(format!("guacr-encode-{i}")).spawn(move || {
                if let Some(slice) = slice {
                    match shm_proto::request_thread_slice(slice) {
                        Ok(()) => debug!(thread = i, slice_us = slice.as_micros(), "Encoder thread's time slice set"),
                        Err(e) => warn!(thread = i, error = %e, "The kernel refused the encoder thread's time slice"),
                    }
                }
                while let Some(job) = inner.next() {
                    job();
                }
            })?;
        }
        Ok(Self { inner, places: Arc::new(Semaphore::new(capacity.max(1))), next_key: AtomicU64::new(0) })
    }

    /// A fresh fairness key (one per session).
    pub fn key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` on an encoder thread in `key`'s turn and resolves to its result. With a place free the job
    /// is queued right here, before the caller first polls the future (so the handoff does not depend on
    /// when the session loop gets to it); otherwise the future waits for a place and queues it then.
    pub fn run<T, F>(&self, key: u64, f: F) -> impl Future<Output = Result<T, PoolError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        // A panic is caught so the thread lives on; the submitter sees `Panicked` (its sender is dropped
        // without a value).
        let job = move || {
            if let Ok(value) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
                let _ = tx.send(value);
            }
        };
        let inner = self.inner.clone();
        let places = self.places.clone();
        let queued = match places.clone().try_acquire_owned() {
            Ok(place) => Ok(submit(&inner, key, place, job)),
            Err(_) => Err(job),
        };
        async move {
            match queued {
                Ok(submitted) => submitted?,
                Err(job) => {
                    let place = places.clone().acquire_owned().await.map_err(|_| PoolError::Closed)?;
                    submit(&inner, key, place, job)?;
                }
            }
            // No value: the job panicked, or the pool shut down and dropped it unrun.
            rx.await.map_err(|_| if places.is_closed() { PoolError::Closed } else { PoolError::Panicked })
        }
    }
}

fn submit(
    inner: &Inner,
    key: u64,
    place: OwnedSemaphorePermit,
    f: impl FnOnce() + Send + 'static,
) -> Result<(), PoolError> {
    let job: Job = Box::new(move || {
        f();
        // The place is free again only once the job has run: the bound covers running jobs too.
        drop(place);
    });
    let mut q = inner.lock();
    if q.closed {
        return Err(PoolError::Closed);
    }
    let jobs = q.jobs.entry(key).or_default();
    let first = jobs.is_empty();
    jobs.push_back(job);
    if first {
        q.turn.push_back(key);
    }
    drop(q);
    inner.wake.notify_one();
    Ok(())
}

impl Drop for EncoderPool {
    fn drop(&mut self) {
        let mut q = self.inner.lock();
        q.closed = true;
        q.jobs.clear();
        q.turn.clear();
        drop(q);
        self.places.close();
        self.inner.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test]
    async fn runs_jobs_and_returns_results() {
        let pool = EncoderPool::new(2, 8).unwrap();
        let (a, b) = tokio::join!(pool.run(pool.key(), || 2 + 2), pool.run(pool.key(), || "x".repeat(3)));
        assert_eq!(a.unwrap(), 4);
        assert_eq!(b.unwrap(), "xxx");
        assert!(std::thread::current().name() != Some("guacr-encode-0"));
    }

    #[tokio::test]
    async fn a_panicking_job_is_reported_and_the_thread_survives() {
        let pool = EncoderPool::new(1, 8).unwrap();
        let r = pool.run(0, || -> u32 { panic!("boom") }).await;
        assert!(matches!(r, Err(PoolError::Panicked)));
        assert_eq!(pool.run(0, || 7).await.unwrap(), 7);
    }

    /// One thread; session 1 queues many jobs before session 2 queues one: session 2's job runs second,
    /// not after session 1's whole backlog.
    #[tokio::test]
    async fn sessions_take_turns() {
        let pool = EncoderPool::new(1, 64).unwrap();
        let (order_tx, order_rx) = mpsc::channel();
        // Hold the only thread until everything is queued.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let blocker = tokio::spawn(pool.run(1, move || {
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
        }));
        let mut jobs = Vec::new();
        for i in 0..5 {
            let tx = order_tx.clone();
            jobs.push(tokio::spawn(pool.run(1, move || tx.send((1, i)).unwrap())));
            tokio::task::yield_now().await;
        }
        let tx = order_tx.clone();
        jobs.push(tokio::spawn(pool.run(2, move || tx.send((2, 0)).unwrap())));
        // Every job has been polled (queued) before the thread is released.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        release_tx.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        let order: Vec<_> = order_rx.try_iter().collect();
        assert_eq!(order.len(), 6);
        let second = order.iter().position(|&(s, _)| s == 2).unwrap();
        assert!(second <= 1, "session 2 waited behind session 1's backlog: {order:?}");
    }

    /// Dropping the pool drops queued jobs; their submitters hear `Closed`, not a panic.
    #[tokio::test]
    async fn queued_jobs_of_a_dropped_pool_report_closed() {
        let pool = EncoderPool::new(1, 8).unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let running = pool.run(0, move || {
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
        });
        // Give the thread time to take the first job off the queue.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = pool.run(1, || 1);
        drop(pool);
        release_tx.send(()).unwrap();
        assert!(running.await.is_ok(), "the running job finishes");
        assert!(matches!(queued.await, Err(PoolError::Closed)));
    }

    /// At most `capacity` jobs are admitted; the next submitter waits until one has run.
    #[tokio::test]
    async fn admission_is_bounded() {
        let pool = EncoderPool::new(1, 1).unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let first = tokio::spawn(pool.run(0, move || {
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
        }));
        tokio::task::yield_now().await;
        let mut second = Box::pin(pool.run(1, || 1));
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut second).await;
        assert!(waited.is_err(), "second job admitted beyond the capacity");
        release_tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(second.await.unwrap(), 1);
    }

    /// Threads of a pool with a slice run under that slice; a pool without one leaves the kernel's default.
    #[tokio::test]
    async fn encoder_threads_run_with_the_requested_slice() {
        let default = std::thread::spawn(shm_proto::thread_slice).join().unwrap().unwrap();
        let pool = EncoderPool::with_slice(2, 8, Some(Duration::from_micros(250))).unwrap();
        let (a, b) = tokio::join!(pool.run(0, shm_proto::thread_slice), pool.run(1, shm_proto::thread_slice));
        let plain = EncoderPool::new(1, 8).unwrap();
        let unchanged = plain.run(0, shm_proto::thread_slice).await.unwrap().unwrap();
        assert_eq!(unchanged, default, "a pool without a slice changed the thread's slice");
        if default.is_zero() {
            // A kernel before 6.12 has no per-thread slice: it accepts the request and reports none.
            eprintln!("this kernel has no per-thread slice; checked that the request is harmless");
            assert_eq!((a.unwrap().unwrap(), b.unwrap().unwrap()), (Duration::ZERO, Duration::ZERO));
        } else {
            assert_eq!(a.unwrap().unwrap(), Duration::from_micros(250));
            assert_eq!(b.unwrap().unwrap(), Duration::from_micros(250));
        }
    }
}
