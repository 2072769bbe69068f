//! A smoltcp device over a Linux packet socket, filtered to what the DHCP client needs.
//!
//! The socket sees only ARP and IPv4/UDP to port 68 (a classic BPF filter attached before the
//! socket is bound), so the appliance's own traffic is never copied into init.

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Classic BPF: accept ARP, and unfragmented IPv4 UDP with destination port 68.
const FILTER: [libc::sock_filter; 12] = [
    op(0x28, 0, 0, 12),      // ldh [12]            ethertype
    op(0x15, 8, 0, 0x0806),  // jeq ARP -> accept
    op(0x15, 0, 8, 0x0800),  // jeq IPv4 else drop
    op(0x30, 0, 0, 23),      // ldb [23]            protocol
    op(0x15, 0, 6, 17),      // jeq UDP else drop
    op(0x28, 0, 0, 20),      // ldh [20]            flags/fragment offset
    op(0x45, 4, 0, 0x1fff),  // jset fragment -> drop
    op(0xb1, 0, 0, 14),      // ldxb 4*([14]&0xf)   IP header length
    op(0x48, 0, 0, 16),      // ldh [x+16]          UDP destination port
    op(0x15, 0, 1, 68),      // jeq 68 else drop
    op(0x06, 0, 0, 0x40000), // accept
    op(0x06, 0, 0, 0),       // drop
];

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A packet socket bound to one interface.
pub struct RawDevice {
    fd: OwnedFd,
    mtu: usize,
}

impl RawDevice {
    /// Opens a packet socket on interface `index` with the DHCP filter attached.
    pub fn open(index: u32, mtu: usize) -> io::Result<RawDevice> {
        let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
        // SAFETY: plain socket creation; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                proto,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let prog = libc::sock_fprog {
            len: FILTER.len() as u16,
            filter: FILTER.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at the static filter array; the kernel copies it.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is valid before we fill it.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a valid sockaddr_ll and the length matches it.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let dev = RawDevice { fd, mtu };
        // Frames queued before the filter was attached are dropped.
        let mut buf = vec![0u8; mtu + 14];
        while crate::sys::read_fd(dev.fd.as_raw_fd(), &mut buf).is_ok_and(|n| n > 0) {}
        Ok(dev)
    }

    /// The descriptor, for poll.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A received frame.
pub struct Rx(Vec<u8>);
/// Permission to send one frame.
pub struct Tx<'a>(&'a RawDevice);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        // A failed send is a lost packet; DHCP retransmits.
        let _ = crate::sys::write_fd(self.0.fd.as_raw_fd(), &buf);
        r
    }
}

impl Device for RawDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let mut buf = vec![0u8; self.mtu + 14];
        match crate::sys::read_fd(self.fd.as_raw_fd(), &mut buf) {
            Ok(n) if n > 0 => {
                buf.truncate(n);
                Some((Rx(buf), Tx(self)))
            }
            _ => None,
        }
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        c
    }
}
