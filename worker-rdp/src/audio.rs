//! Sound output: the RDPSND static channel's handler and what turns its waves into a Guacamole `audio`
//! stream. IronRDP's channel calls the handler synchronously while it processes a PDU; the handler only
//! queues the PCM (bounded: the oldest sound is dropped first), and the worker sends the queue to the
//! supervisor right after ([`AudioQueue::take`], [`chunks`]).
//!
//! Like guacd: 16-bit PCM only (no server-side codec to decode), at 44100 or 22050 Hz, stereo or mono,
//! and only the rates and channel counts the client plays (its handshake's `audio` list, see
//! [`shm_proto::control::client_accepts_audio`]). The stream's mimetype is
//! `audio/L16;rate=R,channels=C`; RDP's PCM is little-endian, which is what Guacamole's clients play.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ironrdp_rdpsnd::client::RdpsndClientHandler;
use ironrdp_rdpsnd::pdu::{AudioFormat, PitchPdu, VolumePdu, WaveFormat};
use shm_proto::control::{client_accepts_audio, STREAM_CHUNK};
use tracing::info;

/// The worker's stream index for sound (the client sees `1024 + AUDIO_STREAM`).
pub const AUDIO_STREAM: u32 = 0;

/// Most PCM bytes kept while they wait to be sent: about a second at 44100 Hz stereo. Sound beyond that
/// is late anyway; the oldest is dropped.
pub const MAX_QUEUED_AUDIO: usize = 44100 * 4;

/// The PCM formats we take, in order of preference (rate, channels).
const CANDIDATES: [(u32, u16); 4] = [(44100, 2), (44100, 1), (22050, 2), (22050, 1)];

/// The Guacamole mimetype of 16-bit PCM at `rate` with `channels`.
pub fn mimetype(rate: u32, channels: u16) -> String {
    format!("audio/L16;rate={rate},channels={channels}")
}

fn pcm16(rate: u32, channels: u16) -> AudioFormat {
    let block_align = channels * 2;
    AudioFormat {
        format: WaveFormat::PCM,
        n_channels: channels,
        n_samples_per_sec: rate,
        n_avg_bytes_per_sec: rate * u32::from(block_align),
        n_block_align: block_align,
        bits_per_sample: 16,
        data: None,
    }
}

/// The formats to offer the server for a client that listed `client` (empty: no sound at all).
pub fn formats_for(client: &[String]) -> Vec<AudioFormat> {
    CANDIDATES
        .iter()
        .filter(|(rate, channels)| client_accepts_audio(client, &mimetype(*rate, *channels)))
        .map(|(rate, channels)| pcm16(*rate, *channels))
        .collect()
}

/// What the channel queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioEvent {
    /// PCM in this mimetype.
    Wave { mimetype: String, data: Vec<u8> },
    /// The server closed or renegotiated the channel: the current stream ends.
    Close,
}

/// The queue between the channel's handler and the worker.
#[derive(Debug, Clone, Default)]
pub struct AudioQueue {
    inner: Arc<Mutex<Queued>>,
}

#[derive(Debug, Default)]
struct Queued {
    events: VecDeque<AudioEvent>,
    bytes: usize,
    dropped: usize,
}

impl AudioQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, event: AudioEvent) {
        let mut q = self.lock();
        if let AudioEvent::Wave { data, .. } = &event {
            q.bytes += data.len();
        }
        q.events.push_back(event);
        // Drop the oldest sound (never a Close) until the queue is within its bound.
        while q.bytes > MAX_QUEUED_AUDIO {
            let Some(index) = q.events.iter().position(|e| matches!(e, AudioEvent::Wave { .. })) else {
                break;
            };
            if let Some(AudioEvent::Wave { data, .. }) = q.events.remove(index) {
                q.bytes -= data.len();
                q.dropped += data.len();
            }
        }
    }

    /// Takes everything queued, and how many PCM bytes were dropped since the last call.
    pub fn take(&self) -> (Vec<AudioEvent>, usize) {
        let mut q = self.lock();
        q.bytes = 0;
        (q.events.drain(..).collect(), std::mem::take(&mut q.dropped))
    }
}

/// The RDPSND handler: offers the client's formats and queues what the server plays.
#[derive(Debug)]
pub struct Backend {
    formats: Vec<AudioFormat>,
    queue: AudioQueue,
}

impl Backend {
    pub fn new(formats: Vec<AudioFormat>, queue: AudioQueue) -> Backend {
        Backend { formats, queue }
    }
}

impl RdpsndClientHandler for Backend {
    fn get_formats(&self) -> &[AudioFormat] {
        &self.formats
    }

    // IronRDP keeps those of ours the server offered; logged because it is the one sign in a test that
    // the channel was negotiated with a server that plays nothing.
    fn choose_formats(&self, server_formats: &[AudioFormat]) -> Vec<AudioFormat> {
        let ours = self.formats.iter().filter(|f| server_formats.iter().any(|s| f.matches_for_negotiation(s))).count();
        info!(offered = server_formats.len(), taken = ours, "RDP server opened the sound channel");
        self.formats.clone()
    }

    fn wave(&mut self, format: &AudioFormat, _ts: u32, data: Cow<'_, [u8]>) {
        // Only formats we offered come here (IronRDP keeps the server's picks among ours), but a PCM
        // block cut mid-sample would shift every later sample: whole frames only.
        let frame = usize::from(format.n_block_align.max(1));
        let whole = data.len() - data.len() % frame;
        if format.format != WaveFormat::PCM || format.bits_per_sample != 16 || whole == 0 {
            return;
        }
        let mimetype = mimetype(format.n_samples_per_sec, format.n_channels);
        self.queue.push(AudioEvent::Wave { mimetype, data: data[..whole].to_vec() });
    }

    // The client plays at its own volume; Guacamole has no volume or pitch instruction.
    fn set_volume(&mut self, _volume: VolumePdu) {}

    fn set_pitch(&mut self, _pitch: PitchPdu) {}

    fn close(&mut self) {
        self.queue.push(AudioEvent::Close);
    }
}

/// PCM split into blobs of at most [`STREAM_CHUNK`] bytes (a whole number of 16-bit stereo frames, so
/// mono and stereo samples never straddle two blobs).
pub fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    const _: () = assert!(STREAM_CHUNK.is_multiple_of(4));
    data.chunks(STREAM_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(types: &[&str]) -> Vec<String> {
        types.iter().map(|t| t.to_string()).collect()
    }

    fn rates(formats: &[AudioFormat]) -> Vec<(u32, u16)> {
        formats.iter().map(|f| (f.n_samples_per_sec, f.n_channels)).collect()
    }

    #[test]
    fn formats_follow_what_the_client_plays() {
        assert!(formats_for(&[]).is_empty());
        assert!(formats_for(&listed(&["audio/L8", "audio/ogg"])).is_empty());
        let all = formats_for(&listed(&["audio/L8", "audio/L16"]));
        assert_eq!(rates(&all), [(44100, 2), (44100, 1), (22050, 2), (22050, 1)]);
        let f = &all[0];
        assert_eq!(
            (f.format, f.bits_per_sample, f.n_block_align, f.n_avg_bytes_per_sec),
            (WaveFormat::PCM, 16, 4, 176400)
        );
        assert_eq!(all[3].n_avg_bytes_per_sec, 44100);
        let one = formats_for(&listed(&["audio/L16;rate=22050,channels=1"]));
        assert_eq!(rates(&one), [(22050, 1)]);
        assert_eq!(mimetype(22050, 1), "audio/L16;rate=22050,channels=1");
    }

    #[test]
    fn waves_are_queued_whole_and_bounded() {
        let queue = AudioQueue::default();
        let mut backend = Backend::new(formats_for(&listed(&["audio/L16"])), queue.clone());
        let stereo = pcm16(44100, 2);
        backend.wave(&stereo, 0, Cow::Borrowed(&[1, 2, 3, 4, 5, 6]));
        backend.wave(&stereo, 0, Cow::Borrowed(&[1, 2]));
        backend.close();
        let (events, dropped) = queue.take();
        assert_eq!(
            events,
            [AudioEvent::Wave { mimetype: mimetype(44100, 2), data: vec![1, 2, 3, 4] }, AudioEvent::Close]
        );
        assert_eq!(dropped, 0);
        // More than the bound: the oldest sound goes, the newest stays, a Close is kept.
        let block = vec![7u8; MAX_QUEUED_AUDIO / 2];
        backend.wave(&stereo, 0, Cow::Borrowed(&[9; 8]));
        backend.close();
        for _ in 0..3 {
            backend.wave(&stereo, 0, Cow::Borrowed(&block));
        }
        let (events, dropped) = queue.take();
        assert_eq!(dropped, 8 + block.len());
        assert_eq!(events.len(), 3);
        assert_eq!(events[0], AudioEvent::Close);
        assert!(events[1..].iter().all(|e| matches!(e, AudioEvent::Wave { data, .. } if data.len() == block.len())));
        assert_eq!(queue.take(), (Vec::new(), 0));
    }

    #[test]
    fn pcm_is_chunked_to_whole_blobs() {
        let data: Vec<u8> = (0..STREAM_CHUNK * 2 + 100).map(|i| i as u8).collect();
        let parts: Vec<&[u8]> = chunks(&data).collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [STREAM_CHUNK, STREAM_CHUNK, 100]);
        assert_eq!(parts.concat(), data);
        assert!(parts.iter().all(|p| p.len().is_multiple_of(4)));
    }
}
