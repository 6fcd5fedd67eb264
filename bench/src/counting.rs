//! A counting Guacamole client for the sessions that are load, not probes: it speaks the protocol like
//! the test harness's `GuacClient` (handshake, `sync` echoed, every blob acknowledged, `nop` keep-alives)
//! but decodes no image, so 50 sessions measure guacr rather than the bench's own PNG decoding. It
//! counts frames, bytes on the wire, image streams and their blob bytes by mimetype, `copy` and `cfill`.
//! The probe session (the first) stays a full `GuacClient`: latency needs composited pixels.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use guac_proto::{encode_instruction, Decoder, Instruction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Like guacamole-common-js (and `GuacClient`): a `nop` this often keeps guacr from timing us out.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// What the client has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub frames: u64,
    pub bytes: u64,
    /// mimetype -> (images, blob bytes after base64 decoding)
    pub images: BTreeMap<String, (u64, u64)>,
    pub copy: u64,
    pub cfill: u64,
    /// Why the connection ended (`error` message, EOF, a read error), once it has.
    pub closed: Option<String>,
    /// Open image streams: index -> mimetype, for their blobs.
    streams: BTreeMap<String, String>,
}

/// A session opened by [`CountingClient::open`]; dropping it closes the connection.
pub struct CountingClient {
    counts: Arc<Mutex<Counts>>,
    task: JoinHandle<()>,
}

impl Drop for CountingClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(c: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CountingClient {
    /// Connects, does the handshake (`select protocol`, `args`, size/image/…, `connect`, `ready`) and waits
    /// for the first frame. Returns the client and the time from `select` to the first `sync` in ms.
    pub async fn open(
        addr: SocketAddr,
        protocol: &str,
        params: &[(String, String)],
        size: (u32, u32),
        timeout: Duration,
    ) -> Result<(CountingClient, f64)> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to guacr at {addr}"))?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut dec = Decoder::new();
        let mut counts = Counts::default();
        let deadline = Instant::now() + timeout;
        let t0 = Instant::now();
        let mut out = BytesMut::new();
        encode_instruction(&mut out, "select", &[protocol]);
        wr.write_all(&out).await?;
        let args = next_instruction(&mut rd, &mut dec, &mut counts, deadline, "args").await?;
        out.clear();
        let (w, h) = (size.0.to_string(), size.1.to_string());
        encode_instruction(&mut out, "size", &[&w, &h, "96"]);
        encode_instruction(&mut out, "audio", &[]);
        encode_instruction(&mut out, "video", &[]);
        encode_instruction(&mut out, "image", &["image/png", "image/jpeg", "image/webp"]);
        encode_instruction(&mut out, "timezone", &["UTC"]);
        encode_instruction(&mut out, "name", &["bench"]);
        // One value per name guacr listed, in its order; the first element of `args` is its version.
        let names: Vec<String> = args.args().skip(1).map(str::to_owned).collect();
        let mut values: Vec<&str> = vec!["VERSION_1_5_0"];
        for n in &names {
            values.push(params.iter().rev().find(|(k, _)| k == n).map_or("", |(_, v)| v.as_str()));
        }
        encode_instruction(&mut out, "connect", &values);
        wr.write_all(&out).await?;
        next_instruction(&mut rd, &mut dec, &mut counts, deadline, "ready").await?;
        // From here on the session task answers syncs and blobs and sends keep-alives (guacr drops a
        // client that sends nothing for 15 s, and a first frame can take a while with 50 sessions opening).
        let counts = Arc::new(Mutex::new(counts));
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn(run(rd, wr, dec, counts.clone(), changed.clone()));
        let client = CountingClient { counts, task };
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let c = lock(&client.counts);
                if c.frames > 0 {
                    break;
                }
                if let Some(why) = &c.closed {
                    bail!("the session ended before its first frame: {why}");
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                bail!("timed out waiting for the first frame");
            }
        }
        Ok((client, t0.elapsed().as_secs_f64() * 1e3))
    }

    pub fn counts(&self) -> Counts {
        lock(&self.counts).clone()
    }
}

/// The next instruction, whatever it is (counted by the caller), within `deadline`.
async fn read_one(
    rd: &mut OwnedReadHalf,
    dec: &mut Decoder,
    counts: &mut Counts,
    deadline: Instant,
    what: &str,
) -> Result<Instruction> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(ins) = dec.decode().context("undecodable data from guacr")? {
            if ins.opcode() == "error" {
                bail!("guacr sent error while waiting for {what}: {:?} (status {:?})", ins.arg(0), ins.arg(1));
            }
            return Ok(ins);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, rd.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => bail!("timed out waiting for {what}"),
        };
        if n == 0 {
            bail!("guacr closed the connection while we waited for {what}");
        }
        counts.bytes += n as u64;
        dec.feed(&buf[..n]);
    }
}

/// Skips to the instruction `opcode` (during the handshake nothing else matters).
async fn next_instruction(
    rd: &mut OwnedReadHalf,
    dec: &mut Decoder,
    counts: &mut Counts,
    deadline: Instant,
    opcode: &str,
) -> Result<Instruction> {
    loop {
        let ins = read_one(rd, dec, counts, deadline, opcode).await?;
        if ins.opcode() == opcode {
            return Ok(ins);
        }
    }
}

/// Counts one instruction and queues what a real client answers (`sync` echo, `ack` of each blob).
fn count(ins: &Instruction, c: &mut Counts, replies: &mut BytesMut) {
    match ins.opcode() {
        "sync" => {
            c.frames += 1;
            encode_instruction(replies, "sync", &[ins.arg(0).unwrap_or("0")]);
        }
        "img" => {
            if let (Some(stream), Some(mime)) = (ins.arg(0), ins.arg(3)) {
                c.images.entry(mime.to_owned()).or_default().0 += 1;
                c.streams.insert(stream.to_owned(), mime.to_owned());
            }
        }
        "blob" => {
            if let (Some(stream), Some(data)) = (ins.arg(0), ins.arg(1)) {
                if let Some(mime) = c.streams.get(stream) {
                    let bytes = data.len() as u64 / 4 * 3;
                    if let Some(e) = c.images.get_mut(mime) {
                        e.1 += bytes;
                    }
                }
                encode_instruction(replies, "ack", &[stream, "OK", "0"]);
            }
        }
        "end" => {
            if let Some(stream) = ins.arg(0) {
                c.streams.remove(stream);
            }
        }
        "copy" => c.copy += 1,
        "cfill" => c.cfill += 1,
        "error" => c.closed = Some(format!("error {:?} (status {:?})", ins.arg(0), ins.arg(1))),
        _ => {}
    }
}

/// The session after `ready`: counts, answers, keeps alive; wakes `changed` after every read and at the end.
async fn run(rd: OwnedReadHalf, wr: OwnedWriteHalf, dec: Decoder, counts: Arc<Mutex<Counts>>, changed: Arc<Notify>) {
    serve(rd, wr, dec, &counts, &changed).await;
    changed.notify_waiters();
}

async fn serve(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    mut dec: Decoder,
    counts: &Mutex<Counts>,
    changed: &Notify,
) {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    let mut buf = vec![0u8; 256 * 1024];
    let mut replies = BytesMut::new();
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = match r {
                    Ok(0) => { lock(counts).closed.get_or_insert_with(|| "eof".into()); return; }
                    Ok(n) => n,
                    Err(e) => { lock(counts).closed.get_or_insert_with(|| format!("read error: {e}")); return; }
                };
                dec.feed(&buf[..n]);
                {
                    let mut c = lock(counts);
                    c.bytes += n as u64;
                    loop {
                        match dec.decode() {
                            Ok(Some(ins)) => count(&ins, &mut c, &mut replies),
                            Ok(None) => break,
                            Err(e) => { c.closed = Some(format!("undecodable data: {e}")); return; }
                        }
                    }
                }
                changed.notify_waiters();
            }
            _ = keep_alive.tick() => encode_instruction(&mut replies, "nop", &[]),
        }
        if !replies.is_empty() {
            if let Err(e) = wr.write_all(&replies).await {
                lock(counts).closed.get_or_insert_with(|| format!("write error: {e}"));
                return;
            }
            replies.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(c: &mut Counts, replies: &mut BytesMut, wire: &[u8]) {
        let mut dec = Decoder::new();
        dec.feed(wire);
        while let Some(ins) = dec.decode().unwrap() {
            count(&ins, c, replies);
        }
    }

    /// Images and their blob bytes are counted by mimetype, each blob is acknowledged and each `sync`
    /// echoed, like a real client.
    #[test]
    fn counts_frames_images_and_answers() {
        let mut c = Counts::default();
        let mut replies = BytesMut::new();
        let wire = b"3.img,1.3,2.14,1.0,9.image/png,1.0,1.0;4.blob,1.3,8.AAAAAAAA;3.end,1.3;\
            3.img,1.4,2.14,1.0,10.image/jpeg,1.0,1.0;4.blob,1.4,4.AAAA;4.blob,1.4,4.AAAA;3.end,1.4;\
            4.copy,1.0,1.0,1.0,1.1,1.1,2.12,1.0,1.0,1.0;5.cfill,2.14,1.0,1.0,1.0,1.0,3.255;4.sync,4.1234;";
        apply(&mut c, &mut replies, wire);
        assert_eq!(c.frames, 1);
        assert_eq!(c.images.get("image/png"), Some(&(1, 6)));
        assert_eq!(c.images.get("image/jpeg"), Some(&(1, 6)));
        assert_eq!((c.copy, c.cfill), (1, 1));
        assert!(c.streams.is_empty(), "ended streams are forgotten");
        assert_eq!(&replies[..], b"3.ack,1.3,2.OK,1.0;3.ack,1.4,2.OK,1.0;3.ack,1.4,2.OK,1.0;4.sync,4.1234;");
    }
}
