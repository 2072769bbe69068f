//! cargo-fuzz entry of `cairn_fuzz::backup_archive` (the target itself, documented there).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_fuzz::backup_archive::run(data));
