//! Bounds on the HTTPS server's connections: how many there may be (in all and per client
//! address), how long a connection may wait for its next request (protocol detection and
//! headers included), how long a request body may take, and how long a response write may stall.
//!
//! A connection is *idle* while none of its requests is in flight: from its start (after the TLS
//! handshake) until its first request's headers are read, and between requests. An idle
//! connection is closed once it has been idle for [`Limits::idle_timeout`], whatever it sends
//! meanwhile. A request's body must arrive within [`Limits::body_timeout`] plus one second per
//! [`BODY_MIN_RATE`] bytes received, or the request is answered 408 and the connection closed.

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Connections served at once, in all.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections served at once from one client address (one IPv6 /64).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 32;
/// How long a connection may wait for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The base time a request body gets to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per second a body must average beyond [`BODY_TIMEOUT`] (each such many bytes received
/// buy one more second).
pub const BODY_MIN_RATE: u64 = 16 * 1024;
/// How long a response write may make no progress (a client that stopped reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a closing connection keeps reading what the client still sends (see
/// [`Guarded`]'s shutdown).
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// How many bytes a closing connection reads and discards at most.
pub const LINGER_BYTES: u64 = 16 << 20;
/// Closing connections that linger at once, box-wide (a lingering connection has left the
/// admission counts; when these are taken, a connection closes at once).
pub const MAX_LINGERING: usize = 64;
/// HTTP/2: streams a client may have open at once.
pub const H2_MAX_STREAMS: u32 = 32;
/// HTTP/2: largest header list a client may send (bytes, as HPACK counts them).
pub const H2_MAX_HEADER_LIST: u32 = 32 * 1024;
/// HTTP/2: how often an otherwise quiet connection is pinged.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// HTTP/2: how long a ping may go unanswered before the connection is closed.
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2: streams a client may reset before being answered (rapid-reset bound).
pub const H2_MAX_PENDING_RESETS: usize = 20;
/// HTTP/2: streams the server may reset for a client's protocol errors before closing.
pub const H2_MAX_ERROR_RESETS: usize = 64;

/// The connection bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once, in all.
    pub max_connections: usize,
    /// Connections served at once from one client address.
    pub max_per_address: usize,
    /// How long a connection may wait for its next request.
    pub idle_timeout: Duration,
    /// The base time a request body gets to arrive.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_per_address: MAX_CONNECTIONS_PER_ADDRESS,
            idle_timeout: IDLE_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
        }
    }
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64 (one host's share).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per: HashMap<IpAddr, usize>,
}

/// Admission of new connections against the global and per-address limits; it also counts
/// the requests in flight on all of them (what a shutdown waits for).
pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
    requests: Arc<AtomicUsize>,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The server serves [`Limits::max_connections`] already.
    Full,
    /// This address has [`Limits::max_per_address`] connections already.
    PerAddress,
}

/// A connection's place in the counts, given back on drop.
pub struct Permit {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Admission {
    /// Admission with these limits.
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
            requests: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a connection from `ip`, or says why it is refused.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let key = address_key(ip);
        let mut c = self.counts();
        if c.total >= self.limits.max_connections {
            return Err(Refused::Full);
        }
        let n = c.per.entry(key).or_default();
        if *n >= self.limits.max_per_address {
            return Err(Refused::PerAddress);
        }
        *n += 1;
        c.total += 1;
        Ok(Permit {
            admission: self.clone(),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    /// Requests in flight now, on every connection.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The state of a new connection admitted here, idle from now.
    pub fn connection(&self) -> Arc<ConnState> {
        ConnState::new(self.limits.idle_timeout, self.requests.clone())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.admission.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per.remove(&self.key);
            }
        }
    }
}

/// One connection's requests in flight and idle clock.
pub struct ConnState {
    idle_timeout: Duration,
    in_flight: AtomicUsize,
    all_requests: Arc<AtomicUsize>,
    idle_since: Mutex<Instant>,
    reader: Mutex<Option<Waker>>,
}

/// A request in flight on its connection (the connection is not idle while one lives).
pub struct InFlight(Arc<ConnState>);

impl ConnState {
    /// A connection idle from now; its requests are also counted in `all_requests`.
    pub fn new(idle_timeout: Duration, all_requests: Arc<AtomicUsize>) -> Arc<ConnState> {
        Arc::new(ConnState {
            idle_timeout,
            in_flight: AtomicUsize::new(0),
            all_requests,
            idle_since: Mutex::new(Instant::now()),
            reader: Mutex::new(None),
        })
    }

    /// Marks a request in flight until the returned value drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.all_requests.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn idle_deadline(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) + self.idle_timeout
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.all_requests.fetch_sub(1, Ordering::SeqCst);
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            // The reader waits on the socket only; wake it so it arms the idle deadline.
            let waker = self
                .0
                .reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_LINGERING`] places of closing connections, given back on drop.
struct LingerSlot;

impl LingerSlot {
    fn take() -> Option<LingerSlot> {
        LINGERING
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_LINGERING).then_some(n + 1)
            })
            .ok()
            .map(|_| LingerSlot)
    }
}

impl Drop for LingerSlot {
    fn drop(&mut self) {
        LINGERING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a connection is in its close.
enum Closing {
    /// Not closing.
    Open,
    /// The close was sent; reading and discarding until the deadline or the byte cap.
    Lingering {
        deadline: Pin<Box<Sleep>>,
        drained: u64,
        _slot: LingerSlot,
    },
    /// Closed.
    Done,
}

/// A connection's transport with the idle deadline on reads and the stall deadline on writes.
///
/// Its shutdown lingers: after the close is sent, the connection leaves the admission counts
/// (its [`Permit`] is dropped) and what the client still sends is read and discarded (for
/// [`LINGER_TIME`] or [`LINGER_BYTES`] at most, in one of [`MAX_LINGERING`] places) until the
/// client closes too. Without it, a request answered before its body was read (a 401, a 413, a
/// refused restore) is closed with unread bytes in the socket, the kernel resets the
/// connection, and the client loses the answer it had not read yet.
pub struct Guarded<T> {
    io: T,
    conn: Arc<ConnState>,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    write_stalled: bool,
    permit: Option<Permit>,
    closing: Closing,
}

impl<T> Guarded<T> {
    /// Guards `io`, whose requests are counted in `conn`; `permit` (its place in the admission
    /// counts) is given back when it starts closing.
    pub fn new(io: T, conn: Arc<ConnState>, permit: Option<Permit>) -> Guarded<T> {
        let deadline = conn.idle_deadline();
        Guarded {
            io,
            conn,
            read_timer: Box::pin(tokio::time::sleep_until(deadline)),
            write_timer: Box::pin(tokio::time::sleep(WRITE_TIMEOUT)),
            write_stalled: false,
            permit,
            closing: Closing::Open,
        }
    }

    fn write_progress<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.write_stalled = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.write_stalled {
                    self.write_stalled = true;
                    self.write_timer
                        .as_mut()
                        .reset(Instant::now() + WRITE_TIMEOUT);
                }
                match self.write_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let idle = this.conn.in_flight.load(Ordering::SeqCst) == 0;
        if idle && Instant::now() >= this.conn.idle_deadline() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within the idle deadline",
            )));
        }
        if let Poll::Ready(r) = Pin::new(&mut this.io).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        // Registered before the count is read again, so a request finishing in between still
        // wakes this reader.
        {
            let mut reader = this.conn.reader.lock().unwrap_or_else(|p| p.into_inner());
            match reader.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *reader = Some(cx.waker().clone()),
            }
        }
        if this.conn.in_flight.load(Ordering::SeqCst) == 0 {
            let deadline = this.conn.idle_deadline();
            if this.read_timer.deadline() != deadline {
                this.read_timer.as_mut().reset(deadline);
            }
            if this.read_timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the idle deadline",
                )));
            }
        }
        Poll::Pending
    }
}

impl<T: AsyncWrite + AsyncRead + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.write_progress(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.write_progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.write_progress(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Closing::Open = this.closing {
            let r = Pin::new(&mut this.io).poll_shutdown(cx);
            match this.write_progress(cx, r) {
                Poll::Ready(Ok(())) => {
                    this.permit = None;
                    this.closing = match LingerSlot::take() {
                        Some(slot) => Closing::Lingering {
                            deadline: Box::pin(tokio::time::sleep(LINGER_TIME)),
                            drained: 0,
                            _slot: slot,
                        },
                        None => Closing::Done,
                    };
                }
                other => return other,
            }
        }
        let Closing::Lingering {
            deadline, drained, ..
        } = &mut this.closing
        else {
            return Poll::Ready(Ok(()));
        };
        let mut buf = [0u8; 8192];
        loop {
            if *drained >= LINGER_BYTES || deadline.as_mut().poll(cx).is_ready() {
                this.closing = Closing::Done;
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    *drained += rb.filled().len() as u64;
                }
                // The client closed (or the connection broke): nothing is left to protect.
                Poll::Ready(_) => {
                    this.closing = Closing::Done;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Set on a request (extension) when its body missed its deadline; the API answers 408.
#[derive(Clone, Default)]
pub struct BodyDeadline(Arc<AtomicBool>);

impl BodyDeadline {
    /// Whether the body missed its deadline.
    pub fn missed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// A request body with a deadline: [`Limits::body_timeout`] from the request's start plus one
/// second per [`BODY_MIN_RATE`] bytes received.
pub struct TimedBody {
    inner: Incoming,
    started: Instant,
    timeout: Duration,
    received: u64,
    timer: Option<Pin<Box<Sleep>>>,
    missed: BodyDeadline,
}

impl TimedBody {
    /// `inner` with its deadline starting now; `missed` is set when it passes.
    pub fn new(inner: Incoming, timeout: Duration, missed: BodyDeadline) -> TimedBody {
        TimedBody {
            inner,
            started: Instant::now(),
            timeout,
            received: 0,
            timer: None,
            missed,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.missed.missed() {
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.started
                    + this.timeout
                    + Duration::from_secs(this.received / BODY_MIN_RATE);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    this.missed.0.store(true, Ordering::SeqCst);
                    return Poll::Ready(Some(Err(BodyTimedOut.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> TrackedBody<B> {
    /// `inner`, keeping `in_flight` alive as long as it is.
    pub fn new(inner: B, in_flight: InFlight) -> TrackedBody<B> {
        TrackedBody {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_per_address_and_in_all() {
        let a = Admission::new(Limits {
            max_connections: 3,
            max_per_address: 2,
            ..Limits::default()
        });
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = a.admit(one).unwrap();
        let _p2 = a.admit(one).unwrap();
        assert_eq!(a.admit(one).err(), Some(Refused::PerAddress));
        let _p3 = a.admit(two).unwrap();
        assert_eq!(a.admit(two).err(), Some(Refused::Full));
        drop(p1);
        assert_eq!(a.open(), 2);
        assert!(a.admit(one).is_ok());
        // One IPv6 host's addresses share a /64.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(address_key(v6a), address_key(v6b));
    }
}
