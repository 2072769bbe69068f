//! A disk with a volatile write cache, served to QEMU over NBD on a Unix socket: the power-cut
//! tests' block layer (in the spirit of Jepsen's LazyFS).
//!
//! QEMU's own disk backends write through to the host's page cache, so a SIGKILLed QEMU still
//! leaves every write the guest made on the image, flushed or not, and a power-cut test cannot
//! catch a missing flush. Here a write lands in memory; it reaches the image file only when the
//! guest flushes (`NBD_CMD_FLUSH`, which QEMU sends for the guest's cache flushes) or writes with
//! FUA. At a cut ([`LazyDisk::cut`]) the unflushed writes are lost, except a random subset of
//! them (seeded, the seed reported): a real disk's cache reaches the platters in any order and
//! may have written back some of it, so a store that relies on order without a flush is caught
//! too.
//!
//! The server speaks the fixed-newstyle handshake with `NBD_OPT_GO` (and the old
//! `NBD_OPT_EXPORT_NAME`), then simple replies to READ, WRITE (with FUA), FLUSH, TRIM,
//! WRITE_ZEROES and DISC; other options are answered "unsupported", which QEMU accepts.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The cache's unit: writes are tracked in blocks of this many bytes.
const BLOCK: u64 = 4096;
/// The largest request accepted (QEMU sends at most 32 MiB).
const MAX_REQUEST: u32 = 32 << 20;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const INFO_EXPORT: u16 = 0;

const TFLAG_HAS_FLAGS: u16 = 1 << 0;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_FUA: u16 = 1 << 3;
const TFLAG_SEND_TRIM: u16 = 1 << 5;
const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_FLAG_FUA: u16 = 1;

const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// What a cut did, for the test's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// The seed that chose which unflushed blocks survived.
    pub seed: u64,
    /// Unflushed blocks at the cut.
    pub unflushed: usize,
    /// Of those, the ones written back anyway (the random subset).
    pub written_back: usize,
    /// Flushes the guest made since this disk was attached.
    pub flushes: u64,
}

impl std::fmt::Display for CutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} unflushed blocks of {} KiB at the cut, {} of them written back (seed {}); {} flushes before it",
            self.unflushed,
            BLOCK / 1024,
            self.written_back,
            self.seed,
            self.flushes
        )
    }
}

/// The disk's state: the image file and the blocks written since the last flush.
struct Cache {
    file: File,
    size: u64,
    dirty: BTreeMap<u64, Box<[u8]>>,
    flushes: u64,
    /// Set by a cut: nothing reaches the file afterwards.
    cut: bool,
}

impl Cache {
    fn block(&self, n: u64) -> std::io::Result<Box<[u8]>> {
        if let Some(b) = self.dirty.get(&n) {
            return Ok(b.clone());
        }
        let mut b = vec![0u8; BLOCK as usize].into_boxed_slice();
        let at = n * BLOCK;
        let len = BLOCK.min(self.size - at) as usize;
        self.file.read_exact_at(&mut b[..len], at)?;
        Ok(b)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done as u64;
            let n = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let take = (BLOCK as usize - within).min(out.len() - done);
            match self.dirty.get(&n) {
                Some(b) => out[done..done + take].copy_from_slice(&b[within..within + take]),
                None => self.file.read_exact_at(&mut out[done..done + take], at)?,
            }
            done += take;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let n = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let take = (BLOCK as usize - within).min(data.len() - done);
            let mut b = if take == BLOCK as usize {
                vec![0u8; BLOCK as usize].into_boxed_slice()
            } else {
                self.block(n)?
            };
            b[within..within + take].copy_from_slice(&data[done..done + take]);
            self.dirty.insert(n, b);
            done += take;
        }
        Ok(())
    }

    /// Writes every unflushed block to the file (the guest's flush).
    fn flush(&mut self) -> std::io::Result<()> {
        if self.cut {
            return Err(std::io::Error::other("the power was cut"));
        }
        for (n, b) in std::mem::take(&mut self.dirty) {
            self.write_block(n, &b)?;
        }
        self.flushes += 1;
        Ok(())
    }

    fn write_block(&self, n: u64, b: &[u8]) -> std::io::Result<()> {
        let at = n * BLOCK;
        let len = BLOCK.min(self.size - at) as usize;
        self.file.write_all_at(&b[..len], at)
    }
}

/// A disk image served over NBD with a volatile write cache.
pub struct LazyDisk {
    socket: PathBuf,
    cache: Arc<Mutex<Cache>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LazyDisk {
    /// Serves `image` on the Unix socket `socket` (QEMU connects to it).
    pub fn serve(image: &Path, socket: &Path) -> Result<LazyDisk> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .with_context(|| format!("opening {}", image.display()))?;
        let size = file.metadata()?.len();
        if size == 0 || size % 512 != 0 {
            bail!(
                "{}: {size} bytes is not a disk image (a multiple of 512)",
                image.display()
            );
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("binding the NBD socket {}", socket.display()))?;
        listener.set_nonblocking(true)?;
        let cache = Arc::new(Mutex::new(Cache {
            file,
            size,
            dirty: BTreeMap::new(),
            flushes: 0,
            cut: false,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (cache, stop) = (cache.clone(), stop.clone());
            std::thread::Builder::new()
                .name("lazy-disk".into())
                .spawn(move || accept_loop(&listener, &cache, &stop))?
        };
        Ok(LazyDisk {
            socket: socket.to_path_buf(),
            cache,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Bytes written since the last flush (in whole blocks).
    pub fn unflushed_bytes(&self) -> u64 {
        self.lock().dirty.len() as u64 * BLOCK
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The power cut, after QEMU is dead: the unflushed writes are lost, except a random subset
    /// (chosen by `seed`) that the disk had written back anyway. Nothing reaches the file after.
    pub fn cut(&self, seed: u64) -> Result<CutReport> {
        let mut c = self.lock();
        let dirty = std::mem::take(&mut c.dirty);
        let mut report = CutReport {
            seed,
            unflushed: dirty.len(),
            written_back: 0,
            flushes: c.flushes,
        };
        let mut rng = seed | 1;
        for (n, b) in &dirty {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng & 1 == 1 {
                c.write_block(*n, b)?;
                report.written_back += 1;
            }
        }
        c.cut = true;
        Ok(report)
    }
}

impl Drop for LazyDisk {
    fn drop(&mut self) {
        // Without a cut, the disk loses what was never flushed (QEMU flushes when it exits
        // cleanly, so only a killed QEMU leaves anything here).
        self.lock().cut = true;
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn accept_loop(listener: &UnixListener, cache: &Mutex<Cache>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                // A read timeout lets the loop see `stop` while QEMU is idle.
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                if let Err(e) = serve_client(stream, cache, stop)
                    && !stop.load(Ordering::SeqCst)
                {
                    eprintln!("cairn-qemu: NBD client ended: {e:#}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("cairn-qemu: NBD accept failed: {e}");
                return;
            }
        }
    }
}

/// Reads exactly `buf`, riding out the read timeout unless the disk is being dropped.
fn read_full(r: &mut impl Read, buf: &mut [u8], stop: &AtomicBool) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => bail!("the client closed the connection"),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    bail!("the disk was dropped");
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn option_reply(w: &mut impl Write, option: u32, kind: u32, data: &[u8]) -> Result<()> {
    w.write_all(&OPT_REPLY_MAGIC.to_be_bytes())?;
    w.write_all(&option.to_be_bytes())?;
    w.write_all(&kind.to_be_bytes())?;
    w.write_all(&u32::try_from(data.len())?.to_be_bytes())?;
    w.write_all(data)?;
    w.flush()?;
    Ok(())
}

fn serve_client(stream: UnixStream, cache: &Mutex<Cache>, stop: &AtomicBool) -> Result<()> {
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = BufWriter::new(stream);
    let size = cache.lock().unwrap_or_else(|p| p.into_inner()).size;
    let tflags = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES;
    // Handshake.
    w.write_all(&NBDMAGIC.to_be_bytes())?;
    w.write_all(&IHAVEOPT.to_be_bytes())?;
    w.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    w.flush()?;
    let mut b4 = [0u8; 4];
    read_full(&mut r, &mut b4, stop)?;
    let no_zeroes = u32::from_be_bytes(b4) & CLIENT_NO_ZEROES != 0;
    // Options until one starts the transmission.
    loop {
        let mut head = [0u8; 16];
        read_full(&mut r, &mut head, stop)?;
        if u64_at(&head, 0) != IHAVEOPT {
            bail!("bad option magic");
        }
        let (option, len) = (u32_at(&head, 8), u32_at(&head, 12));
        if len > 64 * 1024 {
            bail!("option {option} of {len} bytes");
        }
        let mut data = vec![0u8; len as usize];
        read_full(&mut r, &mut data, stop)?;
        match option {
            OPT_EXPORT_NAME => {
                w.write_all(&size.to_be_bytes())?;
                w.write_all(&tflags.to_be_bytes())?;
                if !no_zeroes {
                    w.write_all(&[0u8; 124])?;
                }
                w.flush()?;
                break;
            }
            OPT_GO | OPT_INFO => {
                let mut info = Vec::with_capacity(12);
                info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                info.extend_from_slice(&size.to_be_bytes());
                info.extend_from_slice(&tflags.to_be_bytes());
                option_reply(&mut w, option, REP_INFO, &info)?;
                option_reply(&mut w, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    break;
                }
            }
            OPT_ABORT => {
                option_reply(&mut w, option, REP_ACK, &[])?;
                return Ok(());
            }
            _ => option_reply(&mut w, option, REP_ERR_UNSUP, &[])?,
        }
    }
    // Transmission: one request at a time, answered in order.
    let mut buf = Vec::new();
    loop {
        let mut head = [0u8; 28];
        read_full(&mut r, &mut head, stop)?;
        if u32_at(&head, 0) != REQUEST_MAGIC {
            bail!("bad request magic");
        }
        let (flags, kind) = (u16_at(&head, 4), u16_at(&head, 6));
        let (cookie, offset, len) = (u64_at(&head, 8), u64_at(&head, 16), u32_at(&head, 24));
        if kind == CMD_WRITE {
            if len > MAX_REQUEST {
                bail!("a write of {len} bytes");
            }
            buf.resize(len as usize, 0);
            read_full(&mut r, &mut buf, stop)?;
        }
        if kind == CMD_DISC {
            return Ok(());
        }
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= size);
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        let (error, data): (u32, &[u8]) = if c.cut {
            (EIO, &[])
        } else {
            match kind {
                CMD_READ if len <= MAX_REQUEST && in_range => {
                    buf.resize(len as usize, 0);
                    match c.read(offset, &mut buf) {
                        Ok(()) => (0, &buf[..]),
                        Err(_) => (EIO, &[]),
                    }
                }
                CMD_WRITE | CMD_WRITE_ZEROES if in_range && len <= MAX_REQUEST => {
                    let zeroes;
                    let data: &[u8] = if kind == CMD_WRITE {
                        &buf
                    } else {
                        zeroes = vec![0u8; len as usize];
                        &zeroes
                    };
                    // FUA: durable on its own, as if a flush followed.
                    let fua = flags & CMD_FLAG_FUA != 0;
                    match c
                        .write(offset, data)
                        .and_then(|()| if fua { c.flush() } else { Ok(()) })
                    {
                        Ok(()) => (0, &[]),
                        Err(_) => (EIO, &[]),
                    }
                }
                CMD_FLUSH => match c.flush() {
                    Ok(()) => (0, &[]),
                    Err(_) => (EIO, &[]),
                },
                // A discard may leave the old data: nothing to do.
                CMD_TRIM if in_range => (0, &[]),
                CMD_READ | CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM => (ENOSPC, &[]),
                _ => (EINVAL, &[]),
            }
        };
        w.write_all(&SIMPLE_REPLY_MAGIC.to_be_bytes())?;
        w.write_all(&error.to_be_bytes())?;
        w.write_all(&cookie.to_be_bytes())?;
        w.write_all(data)?;
        w.flush()?;
        drop(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, bytes: u64) -> PathBuf {
        let p = dir.join("disk.img");
        let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, data).unwrap();
        p
    }

    fn cache_of(p: &Path) -> Cache {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap();
        let size = file.metadata().unwrap().len();
        Cache {
            file,
            size,
            dirty: BTreeMap::new(),
            flushes: 0,
            cut: false,
        }
    }

    #[test]
    fn unflushed_writes_are_read_back_but_reach_the_file_only_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), 64 * 1024);
        let mut c = cache_of(&p);
        // Unaligned, across a block boundary.
        c.write(4000, &[7u8; 200]).unwrap();
        let mut back = [0u8; 300];
        c.read(3950, &mut back).unwrap();
        assert_eq!(
            back[..50],
            (3950..4000u64).map(|i| (i % 251) as u8).collect::<Vec<_>>()[..]
        );
        assert!(back[50..250].iter().all(|b| *b == 7));
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(
            on_disk[4000],
            (4000 % 251) as u8,
            "reached the file before a flush"
        );
        c.flush().unwrap();
        let on_disk = std::fs::read(&p).unwrap();
        assert!(on_disk[4000..4200].iter().all(|b| *b == 7));
        assert_eq!(on_disk[4200], (4200 % 251) as u8);
    }

    /// A minimal NBD client: the handshake with NBD_OPT_GO, then requests.
    struct Client {
        s: UnixStream,
        cookie: u64,
    }

    impl Client {
        fn connect(sock: &Path) -> (Client, u64) {
            let mut s = UnixStream::connect(sock).unwrap();
            let mut hello = [0u8; 18];
            s.read_exact(&mut hello).unwrap();
            assert_eq!(u64_at(&hello, 0), NBDMAGIC);
            assert_eq!(u64_at(&hello, 8), IHAVEOPT);
            s.write_all(&(1u32 | CLIENT_NO_ZEROES).to_be_bytes())
                .unwrap();
            // An option the server does not know, then GO.
            for (opt, data) in [(8u32, vec![]), (OPT_GO, vec![0, 0, 0, 0, 0, 0])] {
                s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
                s.write_all(&opt.to_be_bytes()).unwrap();
                s.write_all(&(data.len() as u32).to_be_bytes()).unwrap();
                s.write_all(&data).unwrap();
            }
            let mut size = 0;
            let mut kinds = Vec::new();
            loop {
                let mut h = [0u8; 20];
                s.read_exact(&mut h).unwrap();
                assert_eq!(u64_at(&h, 0), OPT_REPLY_MAGIC);
                let mut d = vec![0u8; u32_at(&h, 16) as usize];
                s.read_exact(&mut d).unwrap();
                let kind = u32_at(&h, 12);
                kinds.push(kind);
                if kind == REP_INFO {
                    size = u64_at(&d, 2);
                }
                if kind == REP_ACK {
                    break;
                }
            }
            assert_eq!(kinds, [REP_ERR_UNSUP, REP_INFO, REP_ACK]);
            (Client { s, cookie: 0 }, size)
        }

        fn request(
            &mut self,
            kind: u16,
            flags: u16,
            offset: u64,
            len: u32,
            data: &[u8],
        ) -> (u32, Vec<u8>) {
            self.cookie += 1;
            let mut h = Vec::new();
            h.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            h.extend_from_slice(&flags.to_be_bytes());
            h.extend_from_slice(&kind.to_be_bytes());
            h.extend_from_slice(&self.cookie.to_be_bytes());
            h.extend_from_slice(&offset.to_be_bytes());
            h.extend_from_slice(&len.to_be_bytes());
            self.s.write_all(&h).unwrap();
            self.s.write_all(data).unwrap();
            let mut r = [0u8; 16];
            self.s.read_exact(&mut r).unwrap();
            assert_eq!(u32_at(&r, 0), SIMPLE_REPLY_MAGIC);
            assert_eq!(u64_at(&r, 8), self.cookie);
            let error = u32_at(&r, 4);
            let mut out = vec![
                0u8;
                if kind == CMD_READ && error == 0 {
                    len as usize
                } else {
                    0
                }
            ];
            self.s.read_exact(&mut out).unwrap();
            (error, out)
        }
    }

    #[test]
    fn a_cut_loses_what_was_not_flushed_and_keeps_what_was() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), 1 << 20);
        let disk = LazyDisk::serve(&p, &dir.path().join("d.nbd")).unwrap();
        let (mut c, size) = Client::connect(disk.socket());
        assert_eq!(size, 1 << 20);
        assert_eq!(c.request(CMD_WRITE, 0, 0, 4096, &[1u8; 4096]).0, 0);
        assert_eq!(c.request(CMD_FLUSH, 0, 0, 0, &[]).0, 0);
        // FUA: durable on its own.
        assert_eq!(
            c.request(CMD_WRITE, CMD_FLAG_FUA, 8192, 4096, &[2u8; 4096])
                .0,
            0
        );
        // Forty unflushed blocks; the guest reads its own writes back.
        for i in 0..40u64 {
            assert_eq!(
                c.request(CMD_WRITE, 0, 65536 + i * 4096, 4096, &[3u8; 4096])
                    .0,
                0
            );
        }
        let (e, back) = c.request(CMD_READ, 0, 65536, 8192, &[]);
        assert_eq!(e, 0);
        assert!(back.iter().all(|b| *b == 3));
        // Out of range and bad commands are errors, not crashes.
        assert_eq!(c.request(CMD_READ, 0, (1 << 20) - 512, 4096, &[]).0, ENOSPC);
        assert_eq!(c.request(99, 0, 0, 0, &[]).0, EINVAL);
        assert_eq!(disk.unflushed_bytes(), 40 * 4096);
        drop(c);
        let report = disk.cut(0x1234_5678).unwrap();
        assert_eq!(report.unflushed, 40);
        assert_eq!(report.flushes, 2);
        assert!(
            report.written_back > 0 && report.written_back < 40,
            "a random subset survives: {report}"
        );
        drop(disk);
        let on_disk = std::fs::read(&p).unwrap();
        assert!(
            on_disk[..4096].iter().all(|b| *b == 1),
            "flushed write lost"
        );
        assert!(
            on_disk[8192..12288].iter().all(|b| *b == 2),
            "FUA write lost"
        );
        // Each block is either the new one whole or the old one whole.
        let mut survived = 0;
        for i in 0..40usize {
            let at = 65536 + i * 4096;
            let b = &on_disk[at..at + 4096];
            if b.iter().all(|x| *x == 3) {
                survived += 1;
            } else {
                let old: Vec<u8> = (at..at + 4096).map(|j| (j % 251) as u8).collect();
                assert_eq!(b, &old[..], "block {i} torn");
            }
        }
        assert_eq!(survived, report.written_back);
    }

    #[test]
    fn a_garbage_client_is_dropped_and_the_next_one_served() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), 1 << 16);
        let disk = LazyDisk::serve(&p, &dir.path().join("d.nbd")).unwrap();
        {
            let mut s = UnixStream::connect(disk.socket()).unwrap();
            let mut hello = [0u8; 18];
            s.read_exact(&mut hello).unwrap();
            s.write_all(&[0xff; 64]).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
        let (mut c, size) = Client::connect(disk.socket());
        assert_eq!(size, 1 << 16);
        let (e, back) = c.request(CMD_READ, 0, 0, 512, &[]);
        assert_eq!(e, 0);
        assert_eq!(back[1], 1);
    }

    /// QEMU's own NBD client (the one the VMs use) against the server, driven through the
    /// monitor's `qemu-io`: its writes are read back, a flush makes them durable, a cut loses
    /// the rest but whole blocks.
    #[test]
    fn qemu_writes_through_it_and_a_cut_drops_what_it_did_not_flush() {
        let arch = crate::Arch::host().unwrap_or(crate::Arch::X86_64);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let disk = LazyDisk::serve(&p, &dir.path().join("d.nbd")).unwrap();
        let qmp = dir.path().join("q.sock");
        struct Killed(std::process::Child);
        impl Drop for Killed {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let qemu = std::process::Command::new(crate::qemu_binary(arch))
            .args(["-machine", "none", "-nodefaults", "-display", "none"])
            .arg("-drive")
            .arg(format!(
                "if=none,id=disk0,format=raw,file.driver=nbd,file.server.type=unix,\
                 file.server.path={}",
                disk.socket().display()
            ))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(std::process::Stdio::null())
            // The monitor's qemu-io prints to QEMU's standard output.
            .stdout(std::fs::File::create(dir.path().join("out")).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("QEMU runs (cargo xtask deps installs it)");
        let qemu = Killed(qemu);
        let out = dir.path().join("out");
        let io = |cmd: &str| -> String {
            let before = std::fs::read_to_string(&out).unwrap_or_default().len();
            let line = format!("qemu-io disk0 \"{cmd}\"");
            crate::qmp::execute(
                &qmp,
                "human-monitor-command",
                Some(serde_json::json!({"command-line": line})),
            )
            .unwrap();
            std::fs::read_to_string(&out).unwrap_or_default()[before..].to_string()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !qmp.exists() {
            assert!(std::time::Instant::now() < deadline, "no QMP socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        let out = io("write -P 0x5a 0 4096");
        assert!(out.contains("wrote 4096"), "{out}");
        io("flush");
        let out = io("write -P 0xa5 65536 8192");
        assert!(out.contains("wrote 8192"), "{out}");
        let out = io("read -P 0xa5 65536 8192");
        assert!(
            out.contains("read 8192") && !out.contains("verification failed"),
            "{out}"
        );
        assert_eq!(disk.unflushed_bytes(), 8192);
        drop(qemu);
        let report = disk.cut(7).unwrap();
        assert_eq!(report.unflushed, 2, "{report}");
        drop(disk);
        let on_disk = std::fs::read(&p).unwrap();
        assert!(
            on_disk[..4096].iter().all(|b| *b == 0x5a),
            "the flushed write was lost"
        );
        for at in [65536, 69632] {
            let b = &on_disk[at..at + 4096];
            assert!(
                b.iter().all(|x| *x == 0xa5) || b.iter().all(|x| *x == 0),
                "block at {at} torn"
            );
        }
    }
}
