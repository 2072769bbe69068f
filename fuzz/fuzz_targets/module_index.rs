//! cargo-fuzz entry of `cairn_fuzz::module_index` (the target itself, documented there).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_fuzz::module_index::run(data));
