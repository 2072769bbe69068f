//! The boot banner: what an operator standing at the box (or reading its serial port) needs.

use crate::bootinfo::BootInfo;

/// What the appliance told init when it became ready.
#[derive(Debug, Clone, Default)]
pub struct ReadyFacts {
    /// TLS certificate fingerprint.
    pub fingerprint: String,
    /// HTTPS port.
    pub port: u16,
    /// Extra lines (e.g. the one-time setup code).
    pub notes: Vec<String>,
}

fn url(addr: &str, port: u16) -> String {
    let host = addr.split('/').next().unwrap_or(addr);
    if port == 443 {
        format!("https://{host}/")
    } else {
        format!("https://{host}:{port}/")
    }
}

/// Renders the banner.
pub fn render(info: &BootInfo, ready: &ReadyFacts) -> String {
    let rule = "=".repeat(72);
    let mut out = format!("\n{rule}\n");
    out.push_str(&format!(
        " Cairn {} ({}) on kernel {}, host {}\n",
        info.version, info.arch, info.kernel, info.hostname
    ));
    let net = &info.network;
    if net.addresses.is_empty() {
        let why = match net.state.as_str() {
            "off" => "network off by configuration".to_string(),
            "no-interface" => "no network interface".to_string(),
            "failed" => format!(
                "network failed: {}",
                net.error.as_deref().unwrap_or("unknown error")
            ),
            _ => "waiting for an address".to_string(),
        };
        out.push_str(&format!(
            " Console:     {} ({why})\n",
            url("<address>", ready.port)
        ));
    } else {
        for a in &net.addresses {
            out.push_str(&format!(
                " Console:     {}   ({} {a})\n",
                url(a, ready.port),
                net.interface.as_deref().unwrap_or("?")
            ));
        }
    }
    out.push_str(&format!(" TLS SHA-256: {}\n", ready.fingerprint));
    for n in &ready.notes {
        out.push_str(&format!(" {n}\n"));
    }
    match info.data.state.as_str() {
        "ok" => out.push_str(&format!(
            " Data:        {}{}\n",
            info.data.device.as_deref().unwrap_or("?"),
            info.data.grown.as_ref().map_or(String::new(), |g| format!(
                " (grown from {} MiB to {} MiB)",
                g.from_bytes >> 20,
                g.to_bytes >> 20
            ))
        )),
        _ => out.push_str(&format!(
            " Data:        DEGRADED, READ-ONLY: {}\n",
            info.data.reason.as_deref().unwrap_or("unknown")
        )),
    }
    let t = &info.timeline;
    let opt = |v: Option<u64>| v.map_or("pending".to_string(), |v| format!("{v} ms"));
    out.push_str(&format!(
        " Boot:        kernel {} ms > init > disks {} ms > modules {} > network {} > ready {}\n",
        t.init_ms,
        t.disks_ms,
        opt((t.modules_ms > 0).then_some(t.modules_ms)),
        opt(t.network_ms),
        opt(t.ready_ms)
    ));
    if info.appliance.crash_loop {
        out.push_str(" Appliance:   CRASH LOOP, see the messages above\n");
    }
    for w in info.warnings.iter().take(8) {
        out.push_str(&format!(" Warning:     {w}\n"));
    }
    out.push_str(&format!("{rule}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootinfo::{DataInfo, NetState, Timeline};

    fn info() -> BootInfo {
        BootInfo {
            version: "0.1.0".into(),
            arch: "x86_64".into(),
            kernel: "6.1.0".into(),
            hostname: "cairn".into(),
            timeline: Timeline {
                init_ms: 1800,
                modules_ms: 1900,
                disks_ms: 2000,
                network_ms: Some(2100),
                ready_ms: Some(2500),
            },
            data: DataInfo {
                state: "ok".into(),
                device: Some("/dev/vda2".into()),
                ..Default::default()
            },
            network: NetState {
                state: "configured".into(),
                interface: Some("eth0".into()),
                addresses: vec!["10.0.2.15/24".into()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn shows_url_fingerprint_and_timeline() {
        let ready = ReadyFacts {
            fingerprint: "AA:BB".into(),
            port: 443,
            notes: vec!["Setup code: 1234-5678".into()],
        };
        let b = render(&info(), &ready);
        assert!(b.contains("https://10.0.2.15/"), "{b}");
        assert!(b.contains("TLS SHA-256: AA:BB"));
        assert!(b.contains("Setup code: 1234-5678"));
        assert!(b.contains("ready 2500 ms"));
    }

    #[test]
    fn shows_degraded_mode_and_missing_network() {
        let mut i = info();
        i.data = DataInfo {
            state: "degraded".into(),
            reason: Some("mounting data partition /dev/vda2: Invalid argument".into()),
            ..Default::default()
        };
        i.network = NetState {
            state: "no-interface".into(),
            ..Default::default()
        };
        let b = render(
            &i,
            &ReadyFacts {
                port: 8443,
                ..Default::default()
            },
        );
        assert!(
            b.contains("DEGRADED, READ-ONLY: mounting data partition"),
            "{b}"
        );
        assert!(b.contains("no network interface"));
        assert!(b.contains(":8443/"));
    }
}
