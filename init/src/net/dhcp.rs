//! The DHCPv4 client: smoltcp's DHCP socket driven over any smoltcp device.
//!
//! smoltcp runs the protocol (discover, request, renew, rebind, lease expiry); this wrapper
//! keeps smoltcp's own interface addressed so unicast renewals can be sent, and turns socket
//! events into [`LeaseEvent`]s that the caller applies to the kernel with netlink.

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::dhcpv4;
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};
use std::net::Ipv4Addr;
use std::time::Duration;

/// An address lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// Assigned address.
    pub address: Ipv4Addr,
    /// Prefix length of the subnet.
    pub prefix: u8,
    /// Default gateway.
    pub router: Option<Ipv4Addr>,
    /// Resolvers.
    pub dns: Vec<Ipv4Addr>,
}

/// What the caller must apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A lease was obtained or changed: configure it.
    Bound(Lease),
    /// The lease was lost: remove the old configuration.
    Lost,
}

/// A DHCP client bound to one device.
pub struct Dhcp {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    bound: bool,
}

impl Dhcp {
    /// Creates a client for a device with this MAC address.
    pub fn new<D: Device + ?Sized>(mac: [u8; 6], dev: &mut D, now: Instant) -> Dhcp {
        let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        // Deterministic per device, different across devices.
        cfg.random_seed =
            u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 1]);
        let iface = Interface::new(cfg, dev, now);
        let mut sockets = SocketSet::new(vec![]);
        let mut socket = dhcpv4::Socket::new();
        // Renew at least every 12 hours even with very long leases.
        socket.set_max_lease_duration(Some(SmolDuration::from_secs(12 * 3600)));
        let handle = sockets.add(socket);
        Dhcp {
            iface,
            sockets,
            handle,
            bound: false,
        }
    }

    /// Runs the protocol once; returns a configuration change if one happened.
    pub fn poll<D: Device + ?Sized>(&mut self, dev: &mut D, now: Instant) -> Option<LeaseEvent> {
        self.iface.poll(now, dev, &mut self.sockets);
        let event = {
            let socket = self.sockets.get_mut::<dhcpv4::Socket>(self.handle);
            match socket.poll()? {
                dhcpv4::Event::Configured(c) => LeaseEvent::Bound(Lease {
                    address: c.address.address(),
                    prefix: c.address.prefix_len(),
                    router: c.router,
                    dns: c.dns_servers.iter().copied().collect(),
                }),
                // smoltcp reports "deconfigured" once at start; only a lost lease matters.
                dhcpv4::Event::Deconfigured if !self.bound => return None,
                dhcpv4::Event::Deconfigured => LeaseEvent::Lost,
            }
        };
        self.bound = matches!(event, LeaseEvent::Bound(_));
        match &event {
            LeaseEvent::Bound(l) => {
                let cidr = Ipv4Cidr::new(l.address, l.prefix);
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(cidr));
                });
                match l.router {
                    Some(r) => {
                        let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                    }
                    None => {
                        self.iface.routes_mut().remove_default_ipv4_route();
                    }
                }
            }
            LeaseEvent::Lost => {
                self.iface.update_ip_addrs(|a| a.clear());
                let _ = self.iface.routes_mut().remove_default_ipv4_route();
            }
        }
        Some(event)
    }

    /// How long the caller may sleep before the next `poll` (capped at one second).
    pub fn delay(&mut self, now: Instant) -> Duration {
        self.iface
            .poll_delay(now, &self.sockets)
            .map_or(Duration::from_secs(1), |d| {
                Duration::from_micros(d.total_micros()).min(Duration::from_secs(1))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{self, DeviceCapabilities, Medium};
    use smoltcp::wire::{
        DhcpMessageType, DhcpPacket, DhcpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
        IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
    };
    use std::collections::VecDeque;

    const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const SERVER_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    /// A wire to a scripted DHCP server (like QEMU's slirp): answers DISCOVER with OFFER and
    /// REQUEST with ACK, or NAK when `nak` is set.
    struct FakeNet {
        to_client: VecDeque<Vec<u8>>,
        nak: bool,
        lease_secs: u32,
        requests: usize,
    }

    struct Rx(Vec<u8>);
    struct Tx<'a>(&'a mut FakeNet);

    impl phy::RxToken for Rx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }
    impl phy::TxToken for Tx<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut buf = vec![0u8; len];
            let r = f(&mut buf);
            self.0.server(&buf);
            r
        }
    }
    impl phy::Device for FakeNet {
        type RxToken<'a> = Rx;
        type TxToken<'a> = Tx<'a>;
        fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
            let f = self.to_client.pop_front()?;
            Some((Rx(f), Tx(self)))
        }
        fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
            Some(Tx(self))
        }
        fn capabilities(&self) -> DeviceCapabilities {
            let mut c = DeviceCapabilities::default();
            c.medium = Medium::Ethernet;
            c.max_transmission_unit = 1514;
            c
        }
    }

    impl FakeNet {
        fn server(&mut self, frame: &[u8]) {
            let Ok(eth) = EthernetFrame::new_checked(frame) else {
                return;
            };
            if eth.ethertype() != EthernetProtocol::Ipv4 {
                return;
            }
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return;
            };
            let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                return;
            };
            if udp.dst_port() != 67 {
                return;
            }
            let Ok(dhcp) = DhcpPacket::new_checked(udp.payload()) else {
                return;
            };
            let Ok(req) = DhcpRepr::parse(&dhcp) else {
                return;
            };
            let reply_type = match req.message_type {
                DhcpMessageType::Discover => DhcpMessageType::Offer,
                DhcpMessageType::Request if self.nak => DhcpMessageType::Nak,
                DhcpMessageType::Request => {
                    self.requests += 1;
                    DhcpMessageType::Ack
                }
                _ => return,
            };
            let mut dns = heapless::Vec::new();
            let _ = dns.push(Ipv4Addr::new(10, 0, 2, 3));
            let reply = DhcpRepr {
                message_type: reply_type,
                transaction_id: req.transaction_id,
                secs: 0,
                client_hardware_address: req.client_hardware_address,
                client_ip: Ipv4Addr::UNSPECIFIED,
                your_ip: OFFERED,
                server_ip: SERVER,
                router: Some(SERVER),
                subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
                relay_agent_ip: Ipv4Addr::UNSPECIFIED,
                broadcast: false,
                requested_ip: None,
                client_identifier: None,
                server_identifier: Some(SERVER),
                parameter_request_list: None,
                dns_servers: Some(dns),
                max_size: None,
                lease_duration: Some(self.lease_secs),
                renew_duration: None,
                rebind_duration: None,
                additional_options: &[],
            };
            let udp_repr = UdpRepr {
                src_port: 67,
                dst_port: 68,
            };
            let ip_repr = Ipv4Repr {
                src_addr: SERVER,
                dst_addr: Ipv4Addr::BROADCAST,
                next_header: IpProtocol::Udp,
                payload_len: 8 + reply.buffer_len(),
                hop_limit: 64,
            };
            let eth_repr = EthernetRepr {
                src_addr: EthernetAddress(SERVER_MAC),
                dst_addr: EthernetAddress::BROADCAST,
                ethertype: EthernetProtocol::Ipv4,
            };
            let mut buf = vec![0u8; 14 + 20 + ip_repr.payload_len];
            let mut f = EthernetFrame::new_unchecked(&mut buf);
            eth_repr.emit(&mut f);
            let mut ipp = Ipv4Packet::new_unchecked(f.payload_mut());
            ip_repr.emit(&mut ipp, &smoltcp::phy::ChecksumCapabilities::default());
            let mut udpp = UdpPacket::new_unchecked(ipp.payload_mut());
            udp_repr.emit(
                &mut udpp,
                &SERVER.into(),
                &Ipv4Addr::BROADCAST.into(),
                reply.buffer_len(),
                |p| {
                    let mut d = DhcpPacket::new_unchecked(p);
                    let _ = reply.emit(&mut d);
                },
                &smoltcp::phy::ChecksumCapabilities::default(),
            );
            self.to_client.push_back(buf);
        }
    }

    fn run(net: &mut FakeNet, dhcp: &mut Dhcp, from_ms: i64, to_ms: i64) -> Vec<LeaseEvent> {
        let mut events = Vec::new();
        let mut t = from_ms;
        while t < to_ms {
            if let Some(e) = dhcp.poll(net, Instant::from_millis(t)) {
                events.push(e);
            }
            t += 100;
        }
        events
    }

    #[test]
    fn obtains_a_lease_like_from_qemu_slirp() {
        let mut net = FakeNet {
            to_client: VecDeque::new(),
            nak: false,
            lease_secs: 86400,
            requests: 0,
        };
        let mut dhcp = Dhcp::new(CLIENT_MAC, &mut net, Instant::from_millis(0));
        let events = run(&mut net, &mut dhcp, 0, 5_000);
        assert_eq!(
            events,
            vec![LeaseEvent::Bound(Lease {
                address: OFFERED,
                prefix: 24,
                router: Some(SERVER),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            })]
        );
        assert_eq!(net.requests, 1);
    }

    #[test]
    fn renews_before_a_short_lease_expires() {
        let mut net = FakeNet {
            to_client: VecDeque::new(),
            nak: false,
            lease_secs: 60,
            requests: 0,
        };
        let mut dhcp = Dhcp::new(CLIENT_MAC, &mut net, Instant::from_millis(0));
        let events = run(&mut net, &mut dhcp, 0, 120_000);
        assert!(matches!(events.first(), Some(LeaseEvent::Bound(_))));
        assert!(!events.contains(&LeaseEvent::Lost), "{events:?}");
        assert!(net.requests >= 2, "renewed {} times", net.requests);
    }

    #[test]
    fn a_nak_never_configures_an_address() {
        let mut net = FakeNet {
            to_client: VecDeque::new(),
            nak: true,
            lease_secs: 60,
            requests: 0,
        };
        let mut dhcp = Dhcp::new(CLIENT_MAC, &mut net, Instant::from_millis(0));
        let events = run(&mut net, &mut dhcp, 0, 10_000);
        assert!(
            events.iter().all(|e| !matches!(e, LeaseEvent::Bound(_))),
            "{events:?}"
        );
        assert!(dhcp.delay(Instant::from_millis(10_000)) <= Duration::from_secs(1));
    }
}
