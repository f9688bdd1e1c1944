//! FUSE over io_uring (Linux 6.14+): the kernel hands each request to a
//! ring entry registered for the CPU that sent it, and takes the reply and
//! the next request in one `io_uring_enter` (`/dev/fuse` needs a read and a
//! write per request).
//!
//! The kernel offers it only while the fuse module's `enable_uring`
//! parameter is on; once every CPU's queue has an entry it sends every
//! request except FORGET and INTERRUPT here, so [`serve`] answers the same
//! set of operations as fuser's side. Each thread owns one entry: a request
//! that waits for the disk holds up no other request. The threads are not
//! pinned to their queue's CPU: on 2 CPUs pinning put the loop device's
//! worker and all the answering on one CPU (random 4 KiB reads: 41k IOPS
//! pinned, 51k unpinned with 8 entries a queue, 67k with 16).

use super::abi::{self, InHeader, OutHeader, RingCmd, RingHeader};
use super::{Disk, Errno, MAX_WRITE};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

mod serve;

/// How `onefs mount` uses FUSE over io_uring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingMode {
    /// Use it when the kernel offers it, else `/dev/fuse`.
    #[default]
    Auto,
    /// Refuse to mount without it.
    On,
    /// Serve through `/dev/fuse` only.
    Off,
}

impl RingMode {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(Self::Auto),
            "on" => Some(Self::On),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

/// Where the kernel says whether it may use io_uring for FUSE.
pub const ENABLE_KNOB: &str = "/sys/module/fuse/parameters/enable_uring";

/// The running ring threads of one mount.
pub struct Rings {
    threads: Vec<JoinHandle<()>>,
    /// Set by the first request answered through a ring.
    used: Arc<AtomicBool>,
}

/// CPUs as the kernel counts them for its queues (`num_possible_cpus`),
/// and which of them are online.
fn cpus() -> (usize, Vec<bool>) {
    fn parse(list: &str) -> Vec<usize> {
        let mut cpus = Vec::new();
        for part in list.trim().split(',').filter(|p| !p.is_empty()) {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            if let (Ok(lo), Ok(hi)) = (lo.parse::<usize>(), hi.parse::<usize>()) {
                cpus.extend(lo..=hi);
            }
        }
        cpus
    }
    let read = |name: &str| std::fs::read_to_string(format!("/sys/devices/system/cpu/{name}")).unwrap_or_default();
    let possible = parse(&read("possible"));
    let count = possible.len().max(1);
    let online = parse(&read("online"));
    let flags = (0..count).map(|cpu| online.is_empty() || online.contains(&cpu)).collect();
    (count, flags)
}

/// A ring as each entry has: 128-byte SQEs, one thread submitting.
fn new_ring() -> io::Result<IoUring<squeue::Entry128, cqueue::Entry>> {
    IoUring::<squeue::Entry128, cqueue::Entry>::builder().setup_single_issuer().setup_defer_taskrun().build(2)
}

/// Whether this process can set up the rings at all (the kernel may forbid
/// io_uring: `kernel.io_uring_disabled`, or a seccomp filter).
pub fn probe() -> io::Result<()> {
    new_ring().map(drop)
}

/// Makes the kernel stop waiting for every queue to have an entry: it
/// answers a registration that fuse refuses by serving the connection
/// through /dev/fuse. `entry` names a queue that does not exist, so the
/// answer is EINVAL exactly when fuse itself refused it; true then.
fn refuse(entry: &mut Entry) -> bool {
    let limit = types::Timespec::new().sec(1);
    let wait = types::SubmitArgs::new().timespec(&limit);
    let answer = entry
        .submit_register()
        .and_then(|()| match entry.ring.submitter().submit_with_args(1, &wait) {
            Err(err) if err.raw_os_error() == Some(libc::ETIME) => Ok(0),
            other => other,
        })
        .map(|_| entry.ring.completion().next().map(|c| c.result()));
    match answer {
        Ok(Some(res)) if res == -libc::EINVAL => true,
        other => {
            log::error!("FUSE over io_uring: could not make the kernel fall back to /dev/fuse: {other:?}");
            false
        }
    }
}

/// Why the rings could not be started, and whether the kernel went back to
/// /dev/fuse. If it did not, it holds every request of the mount: the mount
/// is of no use and must be unmounted.
#[derive(Debug)]
pub struct StartError {
    pub error: io::Error,
    pub fell_back: bool,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)?;
        if !self.fell_back {
            f.write_str(" (and the kernel still waits for its queues)")?;
        }
        Ok(())
    }
}

impl std::error::Error for StartError {}

impl Rings {
    /// Registers ring entries on the FUSE connection behind `fuse_fd`, one
    /// thread each: about `2 x threads` (the mount option) spread over the
    /// online CPUs' queues, so that as many requests may wait for the disk
    /// as with fuser's workers, and one on each offline CPU's queue. Call as
    /// soon as fuser has answered INIT: from then on the kernel holds every
    /// request until all queues have an entry.
    ///
    /// Fails when an entry is refused or a queue's first thread cannot be
    /// started; the kernel is then made to serve through /dev/fuse (the
    /// error says whether that worked), and entries already registered serve
    /// nothing and end with the connection. A queue's further threads are
    /// extra capacity: one that cannot be started is logged and done without.
    pub fn start(fuse_fd: OwnedFd, disk: Arc<Disk>, threads: usize) -> Result<Rings, StartError> {
        let fuse_fd = Arc::new(fuse_fd);
        let (queues, online) = cpus();
        // Made before any thread: if a queue ends up with no entry, refusing
        // one is what makes the kernel give up waiting and fall back.
        let mut refusal =
            Entry::new(&fuse_fd, queues as u16).map_err(|error| StartError { error, fell_back: false })?;
        Self::start_entries(&fuse_fd, disk, threads, queues, online)
            .map_err(|error| StartError { error, fell_back: refuse(&mut refusal) })
    }

    fn start_entries(
        fuse_fd: &Arc<OwnedFd>,
        disk: Arc<Disk>,
        threads: usize,
        queues: usize,
        online: Vec<bool>,
    ) -> io::Result<Rings> {
        let online_count = online.iter().filter(|&&o| o).count().max(1);
        let per_online_queue = (2 * threads).div_ceil(online_count).max(1);
        let (report, registered) = mpsc::channel();
        let used = Arc::new(AtomicBool::new(false));
        let mut rings = Rings { threads: Vec::new(), used: used.clone() };
        let spawn = |qid: usize, n: usize| {
            let (fd, disk, used, report) = (fuse_fd.clone(), disk.clone(), used.clone(), report.clone());
            std::thread::Builder::new().name(format!("ring-{qid}.{n}")).spawn(move || {
                match Entry::new(&fd, qid as u16).and_then(Entry::register) {
                    Ok(entry) => {
                        let _ = report.send(Ok(()));
                        entry.serve(&disk, &used);
                    }
                    Err(err) => {
                        let _ = report.send(Err(err));
                    }
                }
            })
        };
        for qid in 0..queues {
            match spawn(qid, 0) {
                Ok(thread) => rings.threads.push(thread),
                Err(err) => {
                    return Err(io::Error::new(err.kind(), format!("cannot start a thread for queue {qid}: {err}")));
                }
            }
        }
        'extra: for n in 1..per_online_queue {
            for qid in (0..queues).filter(|&q| online[q]) {
                match spawn(qid, n) {
                    Ok(thread) => rings.threads.push(thread),
                    Err(err) => {
                        log::warn!("FUSE over io_uring: {} entries, fewer than planned: {err}", rings.threads.len());
                        break 'extra;
                    }
                }
            }
        }
        drop(report);
        for _ in 0..rings.threads.len() {
            match registered.recv() {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err),
                Err(_) => return Err(io::Error::other("a ring thread ended before registering")),
            }
        }
        log::debug!("FUSE over io_uring: {} entries on {queues} queues", rings.threads.len());
        Ok(rings)
    }

    /// Whether any request has been answered through a ring.
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// Waits (up to `limit`) for the threads, which end when the kernel
    /// tears the connection down.
    pub fn join(self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.threads.iter().any(|t| !t.is_finished()) {
            if Instant::now() > deadline {
                log::warn!("FUSE ring threads still running {limit:?} after the unmount; leaving them");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// One registered ring entry and the thread-private ring that carries it.
struct Entry {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    fuse_fd: Arc<OwnedFd>,
    qid: u16,
    header: Box<RingHeader>,
    payload: Vec<u8>,
    /// The two buffers as the kernel sees them; must outlive registration.
    iov: Box<[libc::iovec; 2]>,
}

/// `sqe->len` of a REGISTER: the two iovecs. io-uring's `UringCmd80` has no
/// setter for it, so it is written at its ABI offset in the SQE.
const SQE_LEN_OFFSET: usize = 24;
const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);

impl Entry {
    /// A ring and buffers for one entry on queue `qid`, not yet registered.
    fn new(fuse_fd: &Arc<OwnedFd>, qid: u16) -> io::Result<Entry> {
        let ring = new_ring()?;
        let mut header = Box::new(RingHeader::new_zeroed());
        // The kernel insists on room for its largest request (max_write).
        let mut payload = vec![0u8; MAX_WRITE as usize];
        let iov = Box::new([
            libc::iovec { iov_base: header.as_mut_bytes().as_mut_ptr().cast(), iov_len: size_of::<RingHeader>() },
            libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() },
        ]);
        Ok(Entry { ring, fuse_fd: fuse_fd.clone(), qid, header, payload, iov })
    }

    fn register(mut self) -> io::Result<Entry> {
        // A refusal completes at once; an accepted entry stays pending until
        // the kernel has a request for it (requests arrive only while this
        // thread waits in `serve`). EAGAIN, "INIT not answered yet", may also
        // come later from io_uring's worker; `serve` registers again then.
        loop {
            self.submit_register()?;
            let refused = self.ring.completion().next().map(|c| c.result());
            match refused {
                None => return Ok(self),
                Some(res) if res == -libc::EAGAIN => std::thread::sleep(Duration::from_millis(1)),
                Some(res) if res < 0 => return Err(io::Error::from_raw_os_error(-res)),
                Some(res) => return Err(io::Error::other(format!("registration answered {res}"))),
            }
        }
    }

    fn submit_register(&mut self) -> io::Result<()> {
        let mut sqe = self.command(abi::URING_CMD_REGISTER, 0).addr(Some(self.iov.as_ptr() as u64)).build();
        // SAFETY: the SQE is 128 bytes (asserted above) and `len` is the u32
        // at offset 24 of every io_uring SQE.
        unsafe {
            let bytes = (&mut sqe as *mut squeue::Entry128).cast::<u8>();
            bytes.add(SQE_LEN_OFFSET).cast::<u32>().write_unaligned(2);
        }
        self.submit(&sqe)
    }

    fn command(&self, cmd_op: u32, commit_id: u64) -> opcode::UringCmd80 {
        let req = RingCmd { flags: 0, commit_id, qid: self.qid, padding: [0; 6] };
        let mut cmd = [0u8; 80];
        cmd[..size_of::<RingCmd>()].copy_from_slice(req.as_bytes());
        opcode::UringCmd80::new(types::Fd(self.fuse_fd.as_raw_fd()), cmd_op).cmd(cmd)
    }

    /// Queues a command; the next `io_uring_enter` submits it.
    fn push(&mut self, sqe: &squeue::Entry128) -> io::Result<()> {
        // SAFETY: the buffers the command names (header, payload, iov) live
        // in `self` as long as the ring does.
        unsafe { self.ring.submission().push(sqe) }.map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn submit(&mut self, sqe: &squeue::Entry128) -> io::Result<()> {
        self.push(sqe)?;
        self.ring.submit()?;
        Ok(())
    }

    /// Answers requests until the kernel ends the connection: one
    /// `io_uring_enter` per request commits the last reply and waits for
    /// the next request.
    fn serve(mut self, disk: &Disk, used: &AtomicBool) {
        loop {
            let res = match self.ring.submit_and_wait(1) {
                Ok(_) => match self.ring.completion().next() {
                    Some(c) => c.result(),
                    None => continue,
                },
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    log::error!("FUSE ring queue {}: io_uring_enter failed: {err}", self.qid);
                    return;
                }
            };
            if res == -libc::EAGAIN {
                // Registered a moment before the kernel finished INIT.
                std::thread::sleep(Duration::from_millis(1));
                if let Err(err) = self.submit_register() {
                    log::error!("FUSE ring queue {}: cannot register: {err}", self.qid);
                    return;
                }
                continue;
            }
            if res < 0 {
                match -res {
                    // The connection is going away (unmount, abort).
                    libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => {}
                    errno => {
                        log::error!("FUSE ring queue {}: {}", self.qid, io::Error::from_raw_os_error(errno))
                    }
                }
                return;
            }
            let commit_id = self.answer(disk);
            // Written once: a counter here would bounce one cache line
            // between all the threads on every request.
            if !used.load(Ordering::Relaxed) {
                used.store(true, Ordering::Relaxed);
            }
            let sqe = self.command(abi::URING_CMD_COMMIT_AND_FETCH, commit_id).build();
            if let Err(err) = self.push(&sqe) {
                log::error!("FUSE ring queue {}: cannot commit a reply: {err}", self.qid);
                return;
            }
        }
    }

    /// Decodes the request in the entry, writes the reply in its place and
    /// returns the id to commit it under.
    fn answer(&mut self, disk: &Disk) -> u64 {
        let commit_id = self.header.ent.commit_id;
        let in_len = (self.header.ent.payload_sz as usize).min(self.payload.len());
        let Ok((request, _)) = InHeader::read_from_prefix(&self.header.in_out) else {
            // Cannot happen (the buffer is larger than the struct); answer EIO.
            return self.reply(commit_id, 0, Err(Errno::EIO));
        };
        let result = serve::answer(disk, &request, &self.header.op_in, &mut self.payload, in_len);
        self.reply(commit_id, request.unique, result)
    }

    fn reply(&mut self, commit_id: u64, unique: u64, result: Result<usize, Errno>) -> u64 {
        let (error, size) = match result {
            Ok(size) => (0, size),
            Err(errno) => (-i32::from(errno), 0),
        };
        let out = OutHeader { len: (size_of::<OutHeader>() + size) as u32, error, unique };
        self.header.in_out[..size_of::<OutHeader>()].copy_from_slice(out.as_bytes());
        self.header.ent.payload_sz = size as u32;
        commit_id
    }
}
