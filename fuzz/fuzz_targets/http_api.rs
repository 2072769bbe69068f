//! cargo-fuzz entry of `cairn_fuzz::http_api` (the target itself, documented there).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_fuzz::http_api::run(data));
