//! Inflating one rectangle's share of a persistent zlib stream (ZRLE keeps one stream per connection,
//! Tight four). The server ends each rectangle's data with a sync flush, so all of the data inflates
//! now; the output is bounded by what the rectangle can possibly need.

use flate2::{Decompress, FlushDecompress, Status};

/// Inflates all of `input` into `out` (cleared first). Fails on corrupt data, on more than `limit`
/// bytes of output (a zlib bomb or a lying server) and on input left over that does not inflate.
pub(crate) fn inflate(z: &mut Decompress, input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), &'static str> {
    out.clear();
    let mut pos = 0;
    loop {
        if out.len() == out.capacity() {
            // One byte of slack beyond the limit lets a stream that is exactly `limit` long consume its
            // trailing flush marker; any byte of output there is an error below.
            let room = limit.saturating_add(1).saturating_sub(out.len());
            if room == 0 {
                break;
            }
            out.reserve_exact(room.min(out.capacity().max(64 * 1024)));
        }
        let (in_before, out_before) = (z.total_in(), z.total_out());
        let status = z.decompress_vec(&input[pos..], out, FlushDecompress::Sync).map_err(|_| "corrupt zlib data")?;
        let consumed = (z.total_in() - in_before) as usize;
        let produced = z.total_out() - out_before;
        pos += consumed;
        let room_left = out.len() < out.capacity();
        if status == Status::StreamEnd || (consumed == 0 && produced == 0 && room_left) {
            break;
        }
        if pos == input.len() && room_left {
            break;
        }
    }
    if out.len() > limit {
        return Err("zlib data inflates beyond the rectangle");
    }
    if pos < input.len() {
        return Err("zlib data does not inflate completely");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn deflate_sync(z: &mut flate2::Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2 + 64);
    z.compress_vec(data, &mut out, flate2::FlushCompress::Sync).unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression};

    #[test]
    fn a_persistent_stream_inflates_piece_by_piece() {
        let mut c = Compress::new(Compression::default(), true);
        let mut d = Decompress::new(true);
        let mut out = Vec::new();
        for piece in [&b"hello hello hello"[..], b"", b"world"] {
            let wire = deflate_sync(&mut c, piece);
            inflate(&mut d, &wire, &mut out, piece.len()).unwrap();
            assert_eq!(out, piece);
        }
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let mut c = Compress::new(Compression::best(), true);
        let wire = deflate_sync(&mut c, &vec![0u8; 1 << 20]);
        assert!(wire.len() < 4096);
        assert!(inflate(&mut Decompress::new(true), &wire, &mut Vec::new(), 1000).is_err());
        assert!(inflate(&mut Decompress::new(true), &[0xff; 64], &mut Vec::new(), 1000).is_err());
    }
}
