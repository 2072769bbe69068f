//! Network bring-up, on its own thread so a slow or absent network never delays the boot.
//!
//! Loopback always comes up. Then, per configuration: nothing (`off`), a static address, or
//! DHCPv4 on the first wired interface, applied to the kernel with netlink. An interface that
//! appears later (a USB NIC, a late driver) is picked up when it does; no network at all is a
//! normal state that the console and API report, not an error.

pub mod dhcp;
pub mod netlink;
pub mod rawdev;

use crate::cmdline::NetMode;
use crate::config::StaticNet;
use netlink::{Netlink, RouteOrigin};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// File the resolver reads (`/etc/resolv.conf` links here).
pub const RESOLV_CONF: &str = "/run/cairn/resolv.conf";

pub use crate::bootinfo::NetState;

/// What the network thread needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// Mode after command line and config file.
    pub mode: NetMode,
    /// Interface name to use instead of the first wired one.
    pub interface: Option<String>,
    /// Static settings when `mode` is static.
    pub static_net: Option<StaticNet>,
}

/// The running network configuration (one thread); `stop` undoes it.
pub struct NetHandle {
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetHandle {
    /// Stops the network thread, which first removes the addresses and routes it configured.
    /// Returns once it has (the thread answers within one poll).
    pub fn stop(mut self) {
        if let Some(w) = self.stop.take() {
            let _ = crate::sys::write_fd(w.as_raw_fd(), b"s");
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("network thread panicked");
        }
    }
}

/// The read end of a network thread's stop pipe.
struct Stop(OwnedFd);

impl Stop {
    /// Waits up to `d`; true when a stop was requested (now or before).
    fn wait(&self, d: Duration) -> bool {
        crate::sys::poll(&[self.0.as_raw_fd()], Some(d))
            .map(|r| r.first().is_some_and(|x| *x != 0))
            .unwrap_or(false)
    }
}

/// Starts the network thread; it updates `state` and writes a byte to `wake` on every change.
pub fn start(plan: NetPlan, state: Arc<Mutex<NetState>>, wake: Arc<OwnedFd>) -> NetHandle {
    let (rd, wr) = match crate::sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            warn!("network: stop pipe: {e}; running without");
            let spawned = std::thread::Builder::new()
                .name("net".into())
                .spawn(move || run(plan, None, &state, &wake));
            return NetHandle {
                stop: None,
                thread: spawned.ok(),
            };
        }
    };
    let spawned = std::thread::Builder::new()
        .name("net".into())
        .spawn(move || run(plan, Some(Stop(rd)), &state, &wake));
    match spawned {
        Ok(t) => NetHandle {
            stop: Some(wr),
            thread: Some(t),
        },
        Err(e) => {
            warn!("network thread could not start: {e}");
            NetHandle {
                stop: None,
                thread: None,
            }
        }
    }
}

/// Waits up to `d` for a stop (or just sleeps when there is no stop pipe).
fn stopped(stop: &Option<Stop>, d: Duration) -> bool {
    match stop {
        Some(s) => s.wait(d),
        None => {
            crate::sys::sleep(d);
            false
        }
    }
}

fn publish(state: &Arc<Mutex<NetState>>, wake: &OwnedFd, f: impl FnOnce(&mut NetState)) {
    let mut g = match state.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    f(&mut g);
    drop(g);
    let _ = crate::sys::write_fd(wake.as_raw_fd(), b"n");
}

fn ifindex(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The first wired, physical interface (Ethernet type, backed by a device, not wireless).
fn first_wired() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        let base = Path::new("/sys/class/net").join(n);
        std::fs::read_to_string(base.join("type")).is_ok_and(|t| t.trim() == "1")
            && base.join("device").exists()
            && !base.join("wireless").exists()
            && !base.join("phy80211").exists()
    })
}

fn mac_of(name: &str) -> Option<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

fn mtu_of(name: &str) -> usize {
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1500)
}

fn write_resolv(dns: &[Ipv4Addr]) {
    let mut text = String::from("# written by cairn-init\n");
    for d in dns {
        text.push_str(&format!("nameserver {d}\n"));
    }
    let tmp = format!("{RESOLV_CONF}.tmp");
    if std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, RESOLV_CONF))
        .is_err()
    {
        warn!("could not write {RESOLV_CONF}");
    }
}

fn run(plan: NetPlan, stop: Option<Stop>, state: &Arc<Mutex<NetState>>, wake: &OwnedFd) {
    let mode = match plan.mode {
        NetMode::Dhcp => "dhcp",
        NetMode::Static => "static",
        NetMode::Off => "off",
    };
    // A new configuration starts from a clean report (a reconfiguration replaces the old one).
    publish(state, wake, |s| {
        *s = NetState {
            mode: mode.into(),
            state: "configuring".into(),
            ..NetState::default()
        }
    });
    let mut nl = match Netlink::open() {
        Ok(n) => n,
        Err(e) => {
            publish(state, wake, |s| {
                s.mode = mode.into();
                s.state = "failed".into();
                s.error = Some(format!("netlink: {e}"));
            });
            return;
        }
    };
    if let Some(lo) = ifindex("lo")
        && let Err(e) = nl.link_up(lo)
    {
        warn!("loopback: {e}");
    }
    if plan.mode == NetMode::Off {
        info!("network: off by configuration");
        publish(state, wake, |s| {
            s.mode = mode.into();
            s.state = "off".into();
        });
        return;
    }
    publish(state, wake, |s| {
        s.mode = mode.into();
        s.state = "no-interface".into();
    });
    // Wait for an interface; none is a normal state, so keep looking, ever more slowly.
    let started = Instant::now();
    let name = loop {
        let found = match &plan.interface {
            Some(n) => ifindex(n).map(|_| n.clone()),
            None => first_wired(),
        };
        if let Some(n) = found {
            break n;
        }
        let pause = if started.elapsed() < Duration::from_secs(10) {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(2)
        };
        if stopped(&stop, pause) {
            return;
        }
    };
    let Some(index) = ifindex(&name) else {
        return;
    };
    if let Err(e) = nl.link_up(index) {
        publish(state, wake, |s| {
            s.state = "failed".into();
            s.error = Some(format!("{name}: link up: {e}"));
        });
        return;
    }
    publish(state, wake, |s| {
        s.interface = Some(name.clone());
        s.state = "configuring".into();
    });
    match (plan.mode, plan.static_net) {
        (NetMode::Static, Some(st)) => {
            apply_static(&mut nl, index, &name, &st, state, wake);
            // Static settings need no care; hold them until told to stop, then undo them.
            while !stopped(&stop, Duration::from_secs(3600)) {}
            let _ = nl.del_address(index, st.address.addr, st.address.prefix);
            if st.gateway.is_some() {
                let _ = nl.del_default_route(RouteOrigin::Static);
            }
            info!("network: static configuration on {name} removed");
        }
        _ => run_dhcp(&mut nl, index, &name, stop.as_ref(), state, wake),
    }
}

fn apply_static(
    nl: &mut Netlink,
    index: u32,
    name: &str,
    st: &StaticNet,
    state: &Arc<Mutex<NetState>>,
    wake: &OwnedFd,
) {
    let result = nl
        .add_address(index, st.address.addr, st.address.prefix)
        .and_then(|_| match st.gateway {
            Some(g) => nl.set_default_route(index, g, RouteOrigin::Static),
            None => Ok(()),
        });
    match result {
        Ok(()) => {
            write_resolv(&st.dns);
            info!(
                "network: {name} {}/{} (static)",
                st.address.addr, st.address.prefix
            );
            publish(state, wake, |s| {
                s.state = "configured".into();
                s.addresses = vec![format!("{}/{}", st.address.addr, st.address.prefix)];
                s.gateway = st.gateway;
                s.dns = st.dns.clone();
                s.configured_ms = Some(crate::sys::boot_ms());
            });
        }
        Err(e) => publish(state, wake, |s| {
            s.state = "failed".into();
            s.error = Some(format!("{name}: static configuration: {e}"));
        }),
    }
}

fn run_dhcp(
    nl: &mut Netlink,
    index: u32,
    name: &str,
    stop: Option<&Stop>,
    state: &Arc<Mutex<NetState>>,
    wake: &OwnedFd,
) {
    let Some(mac) = mac_of(name) else {
        publish(state, wake, |s| {
            s.state = "failed".into();
            s.error = Some(format!("{name}: no MAC address"));
        });
        return;
    };
    let mut dev = match rawdev::RawDevice::open(index, mtu_of(name)) {
        Ok(d) => d,
        Err(e) => {
            publish(state, wake, |s| {
                s.state = "failed".into();
                s.error = Some(format!("{name}: packet socket: {e}"));
            });
            return;
        }
    };
    // A kernel socket on port 68 keeps the kernel from answering unicast DHCP replies with
    // ICMP port-unreachable once the address is configured.
    let _port68 = std::net::UdpSocket::bind("0.0.0.0:68").ok();
    let epoch = Instant::now();
    let now = || smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let mut client = dhcp::Dhcp::new(mac, &mut dev, now());
    let mut current: Option<dhcp::Lease> = None;
    loop {
        if let Some(ev) = client.poll(&mut dev, now()) {
            match ev {
                dhcp::LeaseEvent::Bound(lease) => {
                    if let Some(old) = &current
                        && (old.address != lease.address || old.prefix != lease.prefix)
                    {
                        let _ = nl.del_address(index, old.address, old.prefix);
                    }
                    let r = nl
                        .add_address(index, lease.address, lease.prefix)
                        .and_then(|_| match lease.router {
                            Some(g) => nl.set_default_route(index, g, RouteOrigin::Dhcp),
                            None => Ok(()),
                        });
                    if let Err(e) = r {
                        warn!("network: applying lease on {name}: {e}");
                    }
                    write_resolv(&lease.dns);
                    info!(
                        "network: {name} {}/{} via DHCP (gateway {})",
                        lease.address,
                        lease.prefix,
                        lease.router.map_or("none".to_string(), |g| g.to_string())
                    );
                    let l = lease.clone();
                    publish(state, wake, |s| {
                        s.state = "configured".into();
                        s.addresses = vec![format!("{}/{}", l.address, l.prefix)];
                        s.gateway = l.router;
                        s.dns = l.dns.clone();
                        s.error = None;
                        if s.configured_ms.is_none() {
                            s.configured_ms = Some(crate::sys::boot_ms());
                        }
                    });
                    current = Some(lease);
                }
                dhcp::LeaseEvent::Lost => {
                    if let Some(old) = current.take() {
                        let _ = nl.del_address(index, old.address, old.prefix);
                        let _ = nl.del_default_route(RouteOrigin::Dhcp);
                    }
                    warn!("network: DHCP lease on {name} lost");
                    publish(state, wake, |s| {
                        s.state = "configuring".into();
                        s.addresses.clear();
                        s.gateway = None;
                    });
                }
            }
        }
        let delay = client.delay(now());
        if delay.is_zero() {
            continue;
        }
        let mut fds = vec![dev.raw_fd()];
        if let Some(s) = stop {
            fds.push(s.0.as_raw_fd());
        }
        match crate::sys::poll(&fds, Some(delay)) {
            Ok(r) if r.get(1).is_some_and(|x| *x != 0) => {
                if let Some(old) = current.take() {
                    let _ = nl.del_address(index, old.address, old.prefix);
                    let _ = nl.del_default_route(RouteOrigin::Dhcp);
                }
                info!("network: DHCP on {name} stopped");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                debug!("network: poll: {e}");
                crate::sys::sleep(Duration::from_millis(100));
            }
        }
    }
}
