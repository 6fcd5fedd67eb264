//! Transcript tests: a fake server's bytes in, events and client bytes out.

use super::*;

const W: u32 = 8;
const H: u32 = 4;

fn config() -> ClientConfig {
    ClientConfig {
        username: None,
        password: Some(Secret("guacpass".into())),
        encodings: vec![encoding::TIGHT, encoding::ZRLE, encoding::COPY_RECT, encoding::RAW, encoding::CURSOR],
        swap_red_blue: false,
        max_width: 64,
        max_height: 64,
        max_cut_text: 16,
    }
}

struct Fixture {
    client: Client,
    pixels: Vec<u8>,
}

impl Fixture {
    fn new(config: ClientConfig) -> Fixture {
        let pixels = vec![0; (config.max_width * config.max_height) as usize * BPP];
        Fixture { client: Client::new(config), pixels }
    }

    /// Feeds bytes and collects every event they produce.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, RfbError> {
        self.client.receive(bytes);
        self.drain()
    }

    fn drain(&mut self) -> Result<Vec<Event>, RfbError> {
        let stride = self.client.config.max_width as usize * BPP;
        let mut surface = Surface::new(&mut self.pixels, stride);
        let mut events = Vec::new();
        while let Some(e) = self.client.poll(&mut surface)? {
            events.push(e);
        }
        Ok(events)
    }

    fn take_output(&mut self) -> Vec<u8> {
        let out = self.client.pending_output().to_vec();
        self.client.consume_output(out.len());
        out
    }

    fn pixel(&self, x: u32, y: u32) -> [u8; 4] {
        let o = (y * self.client.config.max_width + x) as usize * BPP;
        self.pixels[o..o + 4].try_into().unwrap()
    }

    /// A 3.8 handshake with security None, up to Connected.
    fn connected(config: ClientConfig) -> Fixture {
        let mut f = Fixture::new(config);
        f.feed(b"RFB 003.008\n").unwrap();
        f.feed(&[1, SEC_NONE]).unwrap();
        f.feed(&[0, 0, 0, 0]).unwrap();
        let events = f.feed(&server_init(W, H, "desk")).unwrap();
        assert_eq!(events, vec![Event::Connected { width: W, height: H, name: "desk".into() }]);
        f.take_output();
        f
    }
}

fn server_init(w: u32, h: u32, name: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_u16(&mut b, w as u16);
    put_u16(&mut b, h as u16);
    b.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    put_u32(&mut b, name.len() as u32);
    b.extend_from_slice(name.as_bytes());
    b
}

/// One rectangle of a test FramebufferUpdate: x, y, w, h, encoding, payload.
type TestRect = (u16, u16, u16, u16, i32, Vec<u8>);

fn update(rects: &[TestRect]) -> Vec<u8> {
    let mut b = vec![0, 0];
    put_u16(&mut b, rects.len() as u16);
    for (x, y, w, h, enc, payload) in rects {
        for v in [x, y, w, h] {
            put_u16(&mut b, *v);
        }
        put_u32(&mut b, *enc as u32);
        b.extend_from_slice(payload);
    }
    b
}

fn update_request(incremental: bool, w: u16, h: u16) -> Vec<u8> {
    let mut b = vec![3, incremental as u8, 0, 0, 0, 0];
    put_u16(&mut b, w);
    put_u16(&mut b, h);
    b
}

#[test]
fn vnc_authentication_3_8() {
    let mut f = Fixture::new(config());
    assert!(f.feed(b"RFB 003.008\n").unwrap().is_empty());
    assert_eq!(f.take_output(), b"RFB 003.008\n");
    f.feed(&[2, SEC_NONE, SEC_VNC]).unwrap();
    assert_eq!(f.take_output(), [SEC_VNC], "VNC auth preferred when a password is set");
    let challenge = [9u8; 16];
    f.feed(&challenge).unwrap();
    assert_eq!(f.take_output(), auth::vnc_response(b"guacpass", &challenge));
    f.feed(&[0, 0, 0, 0]).unwrap();
    assert_eq!(f.take_output(), [1], "ClientInit, shared");
    assert!(!f.client.is_connected());
    let events = f.feed(&server_init(W, H, "x")).unwrap();
    assert_eq!(events, vec![Event::Connected { width: W, height: H, name: "x".into() }]);
    let out = f.take_output();
    let mut expect = vec![0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0];
    expect.extend_from_slice(&[2, 0, 0, 5]);
    for e in config().encodings {
        put_u32(&mut expect, e as u32);
    }
    expect.extend_from_slice(&update_request(false, W as u16, H as u16));
    assert_eq!(out, expect);
}

#[test]
fn wrong_password_3_8_carries_the_reason() {
    let mut f = Fixture::new(config());
    f.feed(b"RFB 003.008\n").unwrap();
    f.feed(&[1, SEC_VNC]).unwrap();
    f.feed(&[0; 16]).unwrap();
    assert!(f.feed(&[0, 0, 0, 1, 0, 0, 0, 8, b'b', b'a']).unwrap().is_empty(), "waits for the reason");
    assert!(matches!(f.client.eof_error(), RfbError::AuthenticationFailed(_)), "EOF here is a rejection");
    let err = f.feed(b"d pw!!").unwrap_err();
    assert!(err.is_auth_failure());
    assert_eq!(err.to_string(), "authentication failed: bad pw!!");
    assert!(matches!(f.drain(), Err(RfbError::AlreadyFailed)));
}

#[test]
fn version_3_3_vnc_auth_and_3_7_none() {
    let mut f = Fixture::new(config());
    f.feed(b"RFB 003.003\n").unwrap();
    assert_eq!(f.take_output(), b"RFB 003.003\n");
    f.feed(&[0, 0, 0, 2]).unwrap();
    f.feed(&[1; 16]).unwrap();
    assert_eq!(f.take_output().len(), 16);
    let err = f.feed(&[0, 0, 0, 1]).unwrap_err();
    assert!(err.is_auth_failure());

    // 3.7 with None: no SecurityResult, straight to ClientInit.
    let mut f = Fixture::new(ClientConfig { password: None, ..config() });
    f.feed(b"RFB 003.007\n").unwrap();
    f.feed(&[1, SEC_NONE]).unwrap();
    assert_eq!(f.take_output(), [b"RFB 003.007\n".as_slice(), &[SEC_NONE, 1]].concat());
    assert_eq!(f.feed(&server_init(2, 2, "")).unwrap().len(), 1);
    // 3.3 with None and Apple's 3.889.
    let mut f = Fixture::new(config());
    f.feed(b"RFB 003.889\n").unwrap();
    assert_eq!(f.take_output(), b"RFB 003.008\n");
    let mut f = Fixture::new(config());
    f.feed(b"RFB 003.003\n").unwrap();
    f.feed(&[0, 0, 0, 1]).unwrap();
    assert_eq!(f.take_output(), [b"RFB 003.003\n".as_slice(), &[1]].concat());
}

#[test]
fn handshake_failures() {
    let refused = |greeting: &[u8], rest: &[u8], config: ClientConfig| {
        let mut f = Fixture::new(config);
        f.feed(greeting).and_then(|_| f.feed(rest)).unwrap_err()
    };
    let e = refused(b"RFB 003.008\n", &[0, 0, 0, 0, 4, b'b', b'u', b's', b'y'], config());
    assert_eq!(e.to_string(), "server refused the connection: busy");
    let e = refused(b"RFB 003.003\n", &[0, 0, 0, 0, 0, 0, 0, 3, b'x', b'\n', b'y'], config());
    assert!(matches!(e, RfbError::Refused(ref r) if r == "x y"), "control characters are neutralised: {e:?}");
    let e = refused(b"RFB 003.008\n", &[1, SEC_VNC], ClientConfig { password: None, ..config() });
    assert!(e.is_auth_failure(), "{e}");
    let e = refused(b"RFB 003.008\n", &[2, 30, 16], config());
    assert!(matches!(e, RfbError::UnsupportedSecurity(ref t) if t == &[30, 16]));
    let e = refused(b"SSH-2.0-Open", &[], config());
    assert!(matches!(e, RfbError::NotRfb(_)));
    let e = refused(b"RFB 002.000\n", &[], config());
    assert!(matches!(e, RfbError::UnsupportedVersion { major: 2, minor: 0 }));
    // Hostile ServerInit: too large, empty, absurd name length.
    for (w, h) in [(65, 4), (4, 65), (0, 4), (65535, 65535)] {
        let mut f = Fixture::new(config());
        f.feed(b"RFB 003.008\n").unwrap();
        f.feed(&[1, SEC_NONE, 0, 0, 0, 0]).unwrap();
        assert!(matches!(f.feed(&server_init(w, h, "n")), Err(RfbError::BadFramebufferSize { .. })));
    }
    let mut f = Fixture::new(config());
    f.feed(b"RFB 003.008\n").unwrap();
    f.feed(&[1, SEC_NONE, 0, 0, 0, 0]).unwrap();
    let mut init = server_init(4, 4, "");
    init.truncate(20);
    init.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(f.feed(&init), Err(RfbError::TooLong { .. })));
    // EOF in the middle of the handshake.
    let f = Fixture::new(config());
    assert!(matches!(f.client.eof_error(), RfbError::ClosedDuringHandshake));
}

#[test]
fn vencrypt_plain_sends_username_and_password() {
    let mut f = Fixture::new(ClientConfig { username: Some("bob".into()), ..config() });
    f.feed(b"RFB 003.008\n").unwrap();
    f.feed(&[2, SEC_VNC, SEC_VENCRYPT]).unwrap();
    assert_eq!(f.take_output(), [b"RFB 003.008\n".as_slice(), &[SEC_VENCRYPT]].concat());
    f.feed(&[0, 2]).unwrap();
    assert_eq!(f.take_output(), [0, 2]);
    f.feed(&[0, 2, 0, 0, 1, 3, 0, 0, 1, 0]).unwrap();
    let mut expect = vec![0, 0, 1, 0, 0, 0, 0, 3, 0, 0, 0, 8];
    expect.extend_from_slice(b"bobguacpass");
    assert_eq!(f.take_output(), expect);
    f.feed(&[0, 0, 0, 0]).unwrap();
    assert_eq!(f.take_output(), [1]);
    // Only TLS subtypes: nothing we can do.
    let mut f = Fixture::new(ClientConfig { username: Some("bob".into()), ..config() });
    f.feed(b"RFB 003.008\n").unwrap();
    f.feed(&[1, SEC_VENCRYPT, 0, 2]).unwrap();
    assert!(matches!(f.feed(&[0, 1, 0, 0, 1, 2]), Err(RfbError::UnsupportedSecurity(_))));
}

#[test]
fn raw_rectangles_stream_byte_by_byte() {
    let mut f = Fixture::connected(config());
    let mut payload = Vec::new();
    for i in 0..6u8 {
        payload.extend_from_slice(&[i, 10 + i, 20 + i, 0]);
    }
    let bytes = update(&[(1, 1, 3, 2, encoding::RAW, payload), (0, 0, 0, 0, encoding::RAW, vec![])]);
    let mut events = Vec::new();
    for b in &bytes {
        events.extend(f.feed(&[*b]).unwrap());
        if !events.contains(&Event::UpdateEnd) && !events.is_empty() {
            assert!(f.client.in_update());
        }
    }
    assert_eq!(events, vec![Event::Drawn(Rect::new(1, 1, 3, 2)), Event::UpdateEnd]);
    assert_eq!(f.pixel(1, 1), [0, 10, 20, 0]);
    assert_eq!(f.pixel(3, 2), [5, 15, 25, 0]);
    assert_eq!(f.pixel(0, 0), [0; 4]);
    assert!(!f.client.in_update());
    assert_eq!(f.take_output(), update_request(true, W as u16, H as u16), "asks for the next update");
    assert_eq!(f.client.buffered(), 0);
}

#[test]
fn copy_rect_and_bounds() {
    let mut f = Fixture::connected(config());
    let events = f.feed(&update(&[(4, 0, 2, 2, encoding::COPY_RECT, vec![0, 0, 0, 1])])).unwrap();
    assert_eq!(events, vec![Event::Copy { src_x: 0, src_y: 1, dst: Rect::new(4, 0, 2, 2) }, Event::UpdateEnd]);
    // Destination or source outside the framebuffer.
    for (x, y, w, h, src) in
        [(7, 0, 2, 1, [0, 0, 0, 0]), (0, 0, 2, 2, [0, 7, 0, 0]), (0, 0, 2, 2, [255, 255, 255, 255])]
    {
        let mut f = Fixture::connected(config());
        let e = f.feed(&update(&[(x, y, w, h, encoding::COPY_RECT, src.to_vec())])).unwrap_err();
        assert!(matches!(e, RfbError::RectOutOfBounds { .. }), "{e}");
    }
    let mut f = Fixture::connected(config());
    let e = f.feed(&update(&[(0, 0, 65535, 65535, encoding::RAW, vec![])])).unwrap_err();
    assert!(matches!(e, RfbError::RectOutOfBounds { .. }));
}

#[test]
fn zrle_and_tight_rectangles_reach_the_surface() {
    use flate2::{Compress, Compression};
    let mut f = Fixture::connected(config());
    let mut z = Compress::new(Compression::fast(), true);
    let zrle = zlib::deflate_sync(&mut z, &[1, 7, 8, 9]);
    let mut payload = (zrle.len() as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(&zrle);
    let events = f
        .feed(&update(&[(0, 0, 2, 2, encoding::ZRLE, payload), (2, 0, 2, 2, encoding::TIGHT, vec![0x80, 1, 2, 3])]))
        .unwrap();
    assert_eq!(
        events,
        vec![Event::Drawn(Rect::new(0, 0, 2, 2)), Event::Drawn(Rect::new(2, 0, 2, 2)), Event::UpdateEnd]
    );
    assert_eq!(f.pixel(1, 1), [7, 8, 9, 0]);
    assert_eq!(f.pixel(3, 1), [3, 2, 1, 0]);
    // A ZRLE length far beyond the rectangle fails before any waiting.
    let mut f = Fixture::connected(config());
    let e = f.feed(&update(&[(0, 0, 2, 2, encoding::ZRLE, u32::MAX.to_be_bytes().to_vec())])).unwrap_err();
    assert!(matches!(e, RfbError::TooLong { .. }));
}

#[test]
fn cursor_shape_with_mask() {
    let mut f = Fixture::connected(config());
    let mut payload = Vec::new();
    for i in 0..4u8 {
        payload.extend_from_slice(&[i, i, i, 0]);
    }
    // 2×2 cursor, mask rows 0b10 and 0b01.
    payload.extend_from_slice(&[0b1000_0000, 0b0100_0000]);
    let events = f.feed(&update(&[(1, 5, 2, 2, encoding::CURSOR, payload)])).unwrap();
    let Event::Cursor(c) = &events[0] else { panic!("{events:?}") };
    assert_eq!((c.hotspot_x, c.hotspot_y, c.width, c.height), (1, 1, 2, 2), "hotspot clamped into the image");
    assert_eq!(c.bgra, [0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 255]);
    let events = f.feed(&update(&[(0, 0, 0, 0, encoding::CURSOR, vec![])])).unwrap();
    assert!(matches!(&events[0], Event::Cursor(c) if c.width == 1 && c.bgra == [0; 4]));
    let e = f.feed(&update(&[(0, 0, 4000, 4000, encoding::CURSOR, vec![])])).unwrap_err();
    assert!(matches!(e, RfbError::TooLong { .. }));
}

#[test]
fn desktop_size_changes_and_requests_a_full_update() {
    let mut f = Fixture::connected(config());
    let events = f.feed(&update(&[(0, 0, 16, 16, encoding::DESKTOP_SIZE, vec![])])).unwrap();
    assert_eq!(events, vec![Event::Resized { width: 16, height: 16 }, Event::UpdateEnd]);
    assert_eq!(f.take_output(), update_request(false, 16, 16));
    let events = f.feed(&update(&[(0, 0, 16, 16, encoding::RAW, vec![7; 16 * 16 * 4])])).unwrap();
    assert_eq!(events[0], Event::Drawn(Rect::new(0, 0, 16, 16)));
    assert!(f.feed(&update(&[(0, 0, 100, 16, encoding::DESKTOP_SIZE, vec![])])).is_err(), "beyond the maximum");
}

fn ext_desktop_size(reason: u16, status: u16, w: u16, h: u16) -> TestRect {
    let mut screens = vec![1, 0, 0, 0];
    put_u32(&mut screens, 0x42);
    put_u16(&mut screens, 0);
    put_u16(&mut screens, 0);
    put_u16(&mut screens, w);
    put_u16(&mut screens, h);
    put_u32(&mut screens, 0);
    (reason, status, w, h, encoding::EXTENDED_DESKTOP_SIZE, screens)
}

#[test]
fn set_desktop_size_once_supported() {
    let mut f = Fixture::connected(config());
    f.client.request_desktop_size(20, 10);
    assert!(f.take_output().is_empty(), "no support known yet: the size waits");
    let events = f.feed(&update(&[ext_desktop_size(0, 0, W as u16, H as u16)])).unwrap();
    assert_eq!(events, vec![Event::UpdateEnd]);
    assert!(f.client.can_resize());
    let out = f.take_output();
    let mut expect = vec![251, 0, 0, 20, 0, 10, 1, 0, 0, 0, 0, 0x42, 0, 0, 0, 0, 0, 20, 0, 10, 0, 0, 0, 0];
    expect.extend_from_slice(&update_request(true, W as u16, H as u16));
    assert_eq!(out, expect);
    // While one request is in flight, newer sizes wait; only the newest is sent afterwards.
    f.client.request_desktop_size(30, 10);
    f.client.request_desktop_size(1000, 1000);
    assert!(f.take_output().is_empty());
    let events = f.feed(&update(&[ext_desktop_size(1, 0, 20, 10)])).unwrap();
    assert_eq!(events, vec![Event::Resized { width: 20, height: 10 }, Event::UpdateEnd]);
    let out = f.take_output();
    assert_eq!(&out[..6], &[251, 0, 0, 64, 0, 64], "clamped to the maximum");
    let events = f.feed(&update(&[ext_desktop_size(1, 3, 20, 10)])).unwrap();
    assert_eq!(events, vec![Event::ResizeRefused { status: 3 }, Event::UpdateEnd]);
    assert_eq!(f.client.size(), (20, 10));
}

#[test]
fn cut_text_is_bounded_and_the_rest_skipped() {
    let mut f = Fixture::connected(config());
    let mut bytes = vec![3, 0, 0, 0];
    put_u32(&mut bytes, 20);
    bytes.extend_from_slice(b"0123456789abcdefghij");
    bytes.push(2); // Bell
    let events = f.feed(&bytes).unwrap();
    assert_eq!(events, vec![Event::CutText(b"0123456789abcdef".to_vec()), Event::Bell]);
    // Extended clipboard (negative length) is skipped whole.
    let mut bytes = vec![3, 0, 0, 0];
    put_u32(&mut bytes, (-5i32) as u32);
    bytes.extend_from_slice(&[9; 5]);
    bytes.push(2);
    assert_eq!(f.feed(&bytes).unwrap(), vec![Event::Bell]);
}

#[test]
fn input_is_dropped_before_the_handshake_and_clamped_after() {
    let mut f = Fixture::new(config());
    assert!(!f.client.key_event(0x61, true));
    assert!(!f.client.pointer_event(1, 1, 0));
    assert!(!f.client.cut_text(b"x"));
    assert!(f.take_output().is_empty());
    let mut f = Fixture::connected(config());
    assert!(f.client.key_event(0xff0d, true));
    assert!(f.client.pointer_event(-5, 999, 0x11));
    assert!(f.client.cut_text(b"hi"));
    assert_eq!(
        f.take_output(),
        [&[4, 1, 0, 0, 0, 0, 0xff, 0x0d][..], &[5, 0x11, 0, 0, 0, H as u8 - 1], &[6, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']]
            .concat()
    );
}

#[test]
fn unknown_messages_and_encodings_fail() {
    let mut f = Fixture::connected(config());
    assert!(matches!(f.feed(&[77]), Err(RfbError::UnknownMessage(77))));
    let mut f = Fixture::connected(config());
    assert!(matches!(f.feed(&update(&[(0, 0, 1, 1, 5, vec![])])), Err(RfbError::UnknownEncoding(5))));
    // Colour map entries are skipped.
    let mut f = Fixture::connected(config());
    assert_eq!(f.feed(&[1, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 2]).unwrap(), vec![Event::Bell]);
}

#[test]
fn last_rect_ends_an_update_early() {
    let mut f = Fixture::connected(config());
    let mut bytes =
        update(&[(0, 0, 1, 1, encoding::TIGHT, vec![0x80, 1, 2, 3]), (0, 0, 0, 0, encoding::LAST_RECT, vec![])]);
    bytes[2..4].copy_from_slice(&[0xff, 0xff]);
    bytes.push(2);
    let events = f.feed(&bytes).unwrap();
    assert_eq!(events, vec![Event::Drawn(Rect::new(0, 0, 1, 1)), Event::UpdateEnd, Event::Bell]);
}

/// Any split of a session's bytes gives the same events as feeding them at once.
#[test]
fn splitting_the_input_never_changes_the_result() {
    use flate2::{Compress, Compression};
    let mut z = Compress::new(Compression::fast(), true);
    let zrle = zlib::deflate_sync(&mut z, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    let mut zrle_payload = (zrle.len() as u32).to_be_bytes().to_vec();
    zrle_payload.extend_from_slice(&zrle);
    let mut session = b"RFB 003.008\n".to_vec();
    session.extend_from_slice(&[1, SEC_NONE, 0, 0, 0, 0]);
    session.extend_from_slice(&server_init(W, H, "split"));
    session.extend_from_slice(&update(&[
        ext_desktop_size(0, 0, W as u16, H as u16),
        (0, 0, 2, 2, encoding::ZRLE, zrle_payload),
        (2, 0, 2, 1, encoding::RAW, vec![5; 8]),
        (4, 0, 2, 2, encoding::COPY_RECT, vec![0, 0, 0, 0]),
        (0, 2, 4, 2, encoding::TIGHT, vec![0x80, 1, 2, 3]),
    ]));
    let mut whole = Fixture::new(config());
    let expected = whole.feed(&session).unwrap();
    assert_eq!(expected.len(), 6);
    for chunk in [1, 2, 3, 5, 7, 13] {
        let mut f = Fixture::new(config());
        let mut events = Vec::new();
        for piece in session.chunks(chunk) {
            events.extend(f.feed(piece).unwrap());
        }
        assert_eq!(events, expected, "chunk size {chunk}");
        assert_eq!(f.pixels, whole.pixels);
    }
}

/// Random garbage after the handshake never panics; it ends in an error or a wait for more input.
#[test]
fn garbage_never_panics() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..2000 {
        let mut f = Fixture::connected(config());
        let len = (seed % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Bias towards valid message types and small numbers.
                match seed % 4 {
                    0 => 0,
                    1 => (seed >> 8) as u8 % 4,
                    _ => (seed >> 16) as u8,
                }
            })
            .collect();
        let _ = f.feed(&bytes);
        assert!(f.client.buffered() <= bytes.len());
    }
}

/// Random payloads behind valid rectangle headers of every encoding reach the decoders; whatever they
/// hold, the result is an event, a wait or an error, and the surface outside the framebuffer is untouched.
#[test]
fn random_rectangles_never_panic_or_escape_the_framebuffer() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let encodings = [
        encoding::RAW,
        encoding::COPY_RECT,
        encoding::TIGHT,
        encoding::ZRLE,
        encoding::CURSOR,
        encoding::EXTENDED_DESKTOP_SIZE,
    ];
    let iterations = std::env::var("GUACR_RANDOM_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(5000);
    for _ in 0..iterations {
        let mut f = Fixture::connected(config());
        let enc = encodings[(next() % encodings.len() as u64) as usize];
        let (x, y) = ((next() % W as u64) as u16, (next() % H as u64) as u16);
        let (w, h) = ((next() % (W as u64 + 2)) as u16, (next() % (H as u64 + 2)) as u16);
        let len = (next() % 64) as usize;
        let mut payload: Vec<u8> = (0..len).map(|_| (next() >> 24) as u8).collect();
        let deflated = next() % 2 == 0;
        match enc {
            // Half the time the data is valid zlib, so the tile and filter parsers see random content.
            encoding::ZRLE if deflated => {
                let mut z = flate2::Compress::new(flate2::Compression::fast(), true);
                let data = zlib::deflate_sync(&mut z, &payload);
                payload = (data.len() as u32).to_be_bytes().to_vec();
                payload.extend_from_slice(&data);
            }
            encoding::ZRLE => payload.splice(0..0, (len as u32).to_be_bytes()).for_each(drop),
            encoding::TIGHT if deflated && payload.len() >= 2 => {
                // Basic compression on stream 0 with an explicit filter, then compressed random data.
                let filter = payload[1] % 3;
                let mut z = flate2::Compress::new(flate2::Compression::fast(), true);
                let mut head = vec![0x40, filter];
                if filter == 1 {
                    head.push(payload[0] % 4);
                    head.extend((0..(payload[0] % 4 + 1) * 3).map(|i| i.wrapping_mul(37)));
                }
                let data = zlib::deflate_sync(&mut z, &payload[2..]);
                head.extend_from_slice(&[(data.len() & 0x7f) as u8 | 0x80, (data.len() >> 7) as u8]);
                head.extend_from_slice(&data);
                payload = head;
            }
            encoding::TIGHT if !payload.is_empty() => payload[0] &= 0x9f,
            _ => {}
        }
        let _ = f.feed(&update(&[(x, y, w, h, enc, payload)]));
        // Rows below the framebuffer (H) in the 64-row surface are never written.
        let stride = f.client.config.max_width as usize * BPP;
        assert!(f.pixels[H as usize * stride..].iter().all(|&b| b == 0));
        assert!(f.pixels.chunks(stride).take(H as usize).all(|row| row[W as usize * BPP..].iter().all(|&b| b == 0)));
    }
}
