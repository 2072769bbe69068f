//! The kernel command line: any bytes give options and warnings, never a panic.

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let (_opts, _warnings) = cairn_init::cmdline::boot_options(&line);
}
