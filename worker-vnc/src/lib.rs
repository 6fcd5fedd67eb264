#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod clipboard;
pub mod rfb;
pub mod settings;
pub mod worker;
