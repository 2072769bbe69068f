//! cargo-fuzz entry of `cairn_fuzz::models_catalog` (the target itself, documented there).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_fuzz::models_catalog::run(data));
