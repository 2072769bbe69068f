//! cargo-fuzz entry of `cairn_fuzz::kernel_cmdline` (the target itself, documented there).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_fuzz::kernel_cmdline::run(data));
