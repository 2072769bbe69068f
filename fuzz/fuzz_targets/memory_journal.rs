//! cargo-fuzz entry of `cairn_fuzz::memory_journal` (the target itself, documented there).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_fuzz::memory_journal::run(data));
