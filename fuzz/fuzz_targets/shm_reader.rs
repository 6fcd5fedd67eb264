//! A hostile worker's view of the shared memory: arbitrary header words, slot descriptors and damage ops
//! written between the supervisor's acquires (`shm_proto::oracle::shm_reader`).
//!
//! Oracles: no panic, no out-of-bounds access (every access is bounds-checked and would panic), every
//! accepted frame lies within the supervisor's own geometry and every failure is a contract breach.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shm_proto::oracle::shm_reader(data);
});
