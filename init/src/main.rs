//! cairn-init: PID 1 of the Cairn appliance (and the kernel's modprobe helper).

#[cfg(target_os = "linux")]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().map(String::as_str).unwrap_or("");
    if cairn_init::boot::invoked_as_modprobe(argv0) {
        std::process::exit(cairn_init::coldplug::modprobe_main(&args));
    }
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("cairn-init is the appliance's PID 1; run it as /init in the Cairn image");
        std::process::exit(2);
    }
    cairn_init::boot::pid1_main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("cairn-init only runs on Linux");
    std::process::exit(2);
}
