//! Arbitrary packets through the supervisor's control-message decoder
//! (`shm_proto::oracle::control_decoder`): no panic; what decodes round-trips unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shm_proto::oracle::control_decoder(data);
});
