//! Test harness for guacr's integration tests (`tests/tests/*.rs`).
//!
//! - [`GuacClient`]: an async Guacamole client that decodes and draws everything it receives
//!   (PNG, JPEG, WebP, `copy`, `rect`/`cfill`, ...), echoes `sync` and acknowledges blobs.
//! - [`GuacrProcess`]: starts the `guacr` supervisor on a free port for one test.
//! - [`peers`]: the real VNC servers started by `scripts/peers.sh start`; [`peers::VncPeer::require_up`]
//!   panics when one is missing, so a test never passes without its server.
//! - [`x11_screenshot`]: the truth, straight from the X server behind a VNC server (`xwd`).
//! - [`compare`]: pixel comparison with a per-channel tolerance.
//! - [`browser::Browser`]: headless Chromium over the DevTools protocol, for the web client's tests.
//! - [`web`]: a configuration with named connections to the peers, signed tokens, and a plain client of
//!   guacr's `/websocket-tunnel`.
//!
//! ```no_run
//! use std::time::Duration;
//! use guacr_tests::{compare, peers, x11_screenshot, GuacClient, GuacrProcess};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let peer = peers::static_screen();
//! peer.require_up();
//! let guacr = GuacrProcess::start()?;
//! let mut client = GuacClient::connect(guacr.addr()).await?;
//! client.handshake("vnc", &peer.vnc_params(), 1024, 768).await?;
//! client.wait_frames(1, Duration::from_secs(10)).await?;
//! let truth = x11_screenshot(&peer.display)?;
//! let diff = compare(&client.screenshot(), &truth, 0);
//! assert!(diff.is_identical(), "{diff}; guacr log: {}", guacr.log_path().display());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod browser;
pub mod client;
pub mod display;
pub mod image;
pub mod keys;
pub mod pages;
pub mod peers;
pub mod process;
pub mod web;
pub mod xwd;

pub use client::{ClientError, ClientState, GuacClient, HandshakeOptions, ServerError};
pub use display::{Display, Layer};
pub use image::{compare, diff_image, Diff, RgbImage};
pub use process::{GuacrBuilder, GuacrProcess, Signal};
pub use xwd::{parse_xwd, x11_screenshot};

/// Where tests should write debugging artefacts (screenshots of failures): `<bin_dir>/test-artifacts`.
pub fn artifact_dir() -> std::path::PathBuf {
    process::bin_dir().join("test-artifacts")
}
