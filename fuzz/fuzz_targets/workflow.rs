//! cargo-fuzz entry of `cairn_fuzz::workflow` (the target itself, documented there).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_fuzz::workflow::run(data));
