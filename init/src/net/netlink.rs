//! rtnetlink requests for what init configures: link up, IPv4 addresses, the default route.
//!
//! Five message kinds with fixed layouts do not justify a netlink crate in PID 1; each request
//! is built by hand, sent with NLM_F_ACK, and its acknowledgement checked.

use crate::bytes::{ne_i32, ne16, ne32, put};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTN_UNICAST: u8 = 1;

/// Who set a route (shown by `ip route` as `proto`).
#[derive(Debug, Clone, Copy)]
pub enum RouteOrigin {
    /// Learned by DHCP.
    Dhcp = 16,
    /// From the static configuration.
    Static = 4,
}

/// An open rtnetlink socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// Builds one netlink message: header, fixed payload, then attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Msg {
        let mut buf = vec![0u8; 16];
        put(&mut buf, 4, &kind.to_ne_bytes());
        put(
            &mut buf,
            6,
            &(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes(),
        );
        put(&mut buf, 8, &seq.to_ne_bytes());
        buf.extend_from_slice(payload);
        Msg { buf }
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Msg {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        put(&mut self.buf, 0, &len.to_ne_bytes());
        self.buf
    }
}

fn ifaddrmsg(prefix: u8, index: u32) -> [u8; 8] {
    let mut p = [0u8; 8];
    p[0] = libc::AF_INET as u8;
    p[1] = prefix;
    p[3] = 0; // RT_SCOPE_UNIVERSE
    put(&mut p, 4, &index.to_ne_bytes());
    p
}

fn rtmsg(origin: RouteOrigin) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0] = libc::AF_INET as u8;
    p[4] = RT_TABLE_MAIN;
    p[5] = origin as u8;
    p[6] = 0; // RT_SCOPE_UNIVERSE
    p[7] = RTN_UNICAST;
    p
}

fn broadcast(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32))
    };
    Ipv4Addr::from(u32::from(addr) | !mask)
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket creation; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: the option value points at a timeval of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Netlink { fd, seq: 1 })
    }

    fn request(&mut self, msg: Vec<u8>) -> io::Result<()> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        crate::sys::write_fd(self.fd.as_raw_fd(), &msg)?;
        let mut buf = [0u8; 4096];
        loop {
            let n = crate::sys::read_fd(self.fd.as_raw_fd(), &mut buf)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = ne32(&buf, off) as usize;
                let kind = ne16(&buf, off + 4);
                let mseq = ne32(&buf, off + 8);
                if len < 16 {
                    break;
                }
                if kind == NLMSG_ERROR && mseq == seq {
                    let code = ne_i32(&buf, off + 16);
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// Sets a link administratively up.
    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        let mut p = [0u8; 16];
        p[0] = libc::AF_UNSPEC as u8;
        put(&mut p, 4, &(index as i32).to_ne_bytes());
        put(&mut p, 8, &(libc::IFF_UP as u32).to_ne_bytes());
        put(&mut p, 12, &(libc::IFF_UP as u32).to_ne_bytes());
        let m = Msg::new(RTM_NEWLINK, 0, self.seq, &p).finish();
        self.request(m)
    }

    /// Adds (or replaces) an IPv4 address on a link.
    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let m = Msg::new(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_REPLACE,
            self.seq,
            &ifaddrmsg(prefix, index),
        )
        .attr(IFA_LOCAL, &addr.octets())
        .attr(IFA_ADDRESS, &addr.octets())
        .attr(IFA_BROADCAST, &broadcast(addr, prefix).octets())
        .finish();
        self.request(m)
    }

    /// Removes an IPv4 address from a link; a missing address is not an error.
    pub fn del_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let m = Msg::new(RTM_DELADDR, 0, self.seq, &ifaddrmsg(prefix, index))
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets())
            .finish();
        match self.request(m) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r,
        }
    }

    /// Sets the default route through `gateway` on a link.
    pub fn set_default_route(
        &mut self,
        index: u32,
        gateway: Ipv4Addr,
        origin: RouteOrigin,
    ) -> io::Result<()> {
        let m = Msg::new(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            self.seq,
            &rtmsg(origin),
        )
        .attr(RTA_GATEWAY, &gateway.octets())
        .attr(RTA_OIF, &index.to_ne_bytes())
        .finish();
        self.request(m)
    }

    /// Removes the default route; a missing route is not an error.
    pub fn del_default_route(&mut self, origin: RouteOrigin) -> io::Result<()> {
        let m = Msg::new(RTM_DELROUTE, 0, self.seq, &rtmsg(origin)).finish();
        match self.request(m) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_aligned_and_sized() {
        let m = Msg::new(RTM_NEWADDR, NLM_F_CREATE, 9, &ifaddrmsg(24, 2))
            .attr(IFA_LOCAL, &[10, 0, 2, 15])
            .attr(7, &[1, 2, 3]) // odd-sized attribute gets padded
            .finish();
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWADDR);
        assert_eq!(m[16 + 1], 24);
    }

    #[test]
    fn broadcast_addresses() {
        assert_eq!(
            broadcast(Ipv4Addr::new(10, 0, 2, 15), 24),
            Ipv4Addr::new(10, 0, 2, 255)
        );
        assert_eq!(
            broadcast(Ipv4Addr::new(10, 0, 2, 15), 32),
            Ipv4Addr::new(10, 0, 2, 15)
        );
        assert_eq!(
            broadcast(Ipv4Addr::new(10, 0, 2, 15), 0),
            Ipv4Addr::BROADCAST
        );
    }
}
