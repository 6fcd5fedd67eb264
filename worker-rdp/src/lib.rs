#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod audio;
pub mod cert;
pub mod clipboard;
pub mod keymap;
pub mod settings;
pub mod stdsec;
pub mod worker;
