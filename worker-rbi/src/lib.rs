//! guacr's remote browser isolation (RBI) worker.
//!
//! - [`settings`]: the `rbi` parameters (`url`, `allowed-urls`, `denied-urls`, ...).
//! - [`keeper`]: the launcher process that starts Chromium confined, and cleans up after it.
//! - [`cdp`]: a sans-IO Chrome DevTools Protocol codec for `--remote-debugging-pipe`.
//! - [`download`]: completed downloads streamed to the user (`enable-download`).
//! - [`render`]: screencast frames (JPEG or PNG) into the back surface, damage by tile comparison.
//! - [`input`]: Guacamole mouse and keysyms as CDP input events.
//! - [`upload`]: files dropped by the user, handed to the page's file choosers (`enable-upload`).
//! - [`worker`]: the session loop.
#![forbid(unsafe_code)]

pub mod cdp;
pub mod download;
pub mod input;
pub mod keeper;
pub mod render;
pub mod settings;
pub mod upload;
pub mod worker;
