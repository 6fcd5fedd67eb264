//! guacr's SSH worker: an SSH client (russh) whose terminal (vt100) is rendered with an embedded font
//! into the session's shared surface. The binary is `guacr-worker-ssh`; the supervisor starts it.

#![forbid(unsafe_code)]

pub mod font;
pub mod keys;
pub mod palette;
pub mod private_key;
pub mod settings;
pub mod sftp;
pub mod ssh;
pub mod term;
pub mod worker;
