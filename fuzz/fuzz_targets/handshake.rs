//! Drives `ServerHandshake` with arbitrary client bytes and arbitrary clock steps.
//!
//! Input: byte 0 picks whether a valid `select` is prepended (so the fuzzer reaches the states
//! after it quickly) and how many parameter names `args` lists; byte 1 is the clock step in
//! seconds between instructions; the rest is the client's byte stream.
//!
//! Oracles: no panic; after an error every call says `Finished`; a `ConnectRequest` has one
//! value per name, in `args` order.

#![no_main]

use std::time::{Duration, Instant};

use guac_proto::handshake::{HandshakeError, HandshakeEvent, ServerHandshake};
use guac_proto::Decoder;
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &["hostname", "port", "username", "password", "read-only", "dpi"];

fuzz_target!(|data: &[u8]| {
    let [flags, step, stream @ ..] = data else {
        return;
    };
    let names = &NAMES[..usize::from(flags >> 1) % (NAMES.len() + 1)];
    let step = Duration::from_secs(u64::from(*step % 20));

    let mut decoder = Decoder::new();
    if flags & 1 == 1 {
        decoder.feed(b"6.select,3.vnc;");
    }
    decoder.feed(stream);

    let start = Instant::now();
    let mut now = start;
    let mut hs = ServerHandshake::new(now);
    let mut finished = false;
    while let Ok(Some(instruction)) = decoder.decode() {
        now += step;
        if let Err(error) = hs.handle_timeout(now) {
            assert!(matches!(error, HandshakeError::Timeout { .. }));
            finished = true;
        }
        match hs.handle(&instruction, now) {
            Ok(HandshakeEvent::Pending) => assert!(!finished),
            Ok(HandshakeEvent::Selected(_)) => {
                assert!(!finished);
                let args = hs.send_args(names);
                assert!(args.ends_with(b";"));
            }
            Ok(HandshakeEvent::Connected(request)) => {
                assert!(!finished);
                assert!(hs.is_complete());
                assert_eq!(request.params.len(), names.len());
                assert!(request.params.iter().zip(names).all(|((name, _), expected)| name == expected));
                let _ = format!("{request:?}");
                finished = true;
            }
            Err(error) => {
                assert!(!finished || error == HandshakeError::Finished);
                finished = true;
                assert_eq!(hs.handle(&instruction, now), Err(HandshakeError::Finished));
            }
        }
        assert!(hs.poll_timeout() >= start);
    }
});
