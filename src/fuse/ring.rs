//! FUSE over io_uring (Linux 6.14+): the kernel hands each request to a
//! ring entry registered for the CPU that sent it, and takes the replies and
//! the next requests in one `io_uring_enter` (`/dev/fuse` needs a read and a
//! write per request).
//!
//! The kernel offers it only while the fuse module's `enable_uring`
//! parameter is on; once every CPU's queue has an entry it sends every
//! request except FORGET and INTERRUPT here, so [`serve`] answers the same
//! set of operations as fuser's side. A thread owns a few entries of one
//! queue and answers whatever arrived for them in one go, so a burst of
//! requests costs one wake-up, not one each; fsyncs, which may take seconds,
//! go to a helper thread. Over a remote store, where any read may wait for
//! the network, each thread owns one entry. The threads are not pinned to
//! their queue's CPU: on 2 CPUs pinning put the loop device's worker and all
//! the answering on one CPU (random 4 KiB reads: 41k IOPS pinned, 51k
//! unpinned).

use super::abi::{self, InHeader, OutHeader, RingCmd, RingHeader};
use super::{Disk, Errno, MAX_WRITE};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

mod serve;

pub use crate::options::RingMode;

/// Where the kernel says whether it may use io_uring for FUSE.
pub const ENABLE_KNOB: &str = "/sys/module/fuse/parameters/enable_uring";

/// Entries a thread serves over a local store. Random 4 KiB I/O through a
/// loop device on 2 CPUs, 16 entries a queue: 1 entry a thread 27-33k
/// writes and 46-58k reads per second, 4 entries 41-51k and 59-71k,
/// 8 entries 46-56k and 67-74k.
pub const ENTRIES_PER_THREAD: usize = 8;

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

/// A ring for `entries` entries: 128-byte SQEs, one thread submitting.
fn new_ring(entries: usize) -> io::Result<IoUring<squeue::Entry128, cqueue::Entry>> {
    let size = entries.next_power_of_two().max(2) as u32;
    IoUring::<squeue::Entry128, cqueue::Entry>::builder().setup_single_issuer().setup_defer_taskrun().build(size)
}

/// Whether this process can set up the rings at all (the kernel may forbid
/// io_uring: `kernel.io_uring_disabled`, or a seccomp filter).
pub fn probe() -> io::Result<()> {
    new_ring(1).map(drop)
}

/// Makes the kernel stop waiting for every queue to have an entry: it
/// answers a registration that fuse refuses by serving the connection
/// through /dev/fuse. `refusal` names a queue that does not exist, so the
/// answer is EINVAL exactly when fuse itself refused it; true then.
fn refuse(refusal: &mut ThreadRing) -> bool {
    let limit = types::Timespec::new().sec(1);
    let wait = types::SubmitArgs::new().timespec(&limit);
    let answer = refusal
        .push_register(0)
        .and_then(|()| match refusal.ring.submitter().submit_with_args(1, &wait) {
            Err(err) if err.raw_os_error() == Some(libc::ETIME) => Ok(0),
            other => other,
        })
        .map(|_| refusal.ring.completion().next().map(|c| c.result()));
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
    /// Registers ring entries on the FUSE connection behind `fuse_fd`, on
    /// threads as [`plan_threads`] lays them out. Call as soon as fuser has
    /// answered INIT: from then on the kernel holds every request until all
    /// queues have an entry.
    ///
    /// Fails when an entry is refused or a queue's first thread cannot be
    /// started; the kernel is then made to serve through /dev/fuse (the
    /// error says whether that worked), and entries already registered serve
    /// nothing and end with the connection. A queue's further threads are
    /// extra capacity: one that cannot be started is logged and done without.
    pub fn start(
        fuse_fd: OwnedFd,
        disk: Arc<Disk>,
        threads: usize,
        entries_per_thread: usize,
    ) -> Result<Rings, StartError> {
        let fuse_fd = Arc::new(fuse_fd);
        let (queues, online) = cpus();
        // Made before any thread: if a queue ends up with no entry, refusing
        // one is what makes the kernel give up waiting and fall back.
        let mut refusal =
            ThreadRing::new(&fuse_fd, queues as u16, 1).map_err(|error| StartError { error, fell_back: false })?;
        Self::start_entries(&fuse_fd, disk, threads, entries_per_thread, &online)
            .map_err(|error| StartError { error, fell_back: refuse(&mut refusal) })
    }

    fn start_entries(
        fuse_fd: &Arc<OwnedFd>,
        disk: Arc<Disk>,
        threads: usize,
        entries_per_thread: usize,
        online: &[bool],
    ) -> io::Result<Rings> {
        let (report, registered) = mpsc::channel();
        let used = Arc::new(AtomicBool::new(false));
        let mut rings = Rings { threads: Vec::new(), used: used.clone() };
        let spawn = |planned: &PlannedThread| {
            let (fd, disk, used, report) = (fuse_fd.clone(), disk.clone(), used.clone(), report.clone());
            let PlannedThread { qid, n, entries } = *planned;
            std::thread::Builder::new().name(format!("ring-{qid}.{n}")).spawn(move || {
                match ThreadRing::new(&fd, qid as u16, entries).and_then(ThreadRing::register) {
                    Ok(ring) => {
                        let _ = report.send(Ok(()));
                        ring.serve(&disk, &used);
                    }
                    Err(err) => {
                        let _ = report.send(Err(err));
                    }
                }
            })
        };
        for planned in plan_threads(threads, entries_per_thread, online) {
            match spawn(&planned) {
                Ok(thread) => rings.threads.push(thread),
                Err(err) if planned.n == 0 => {
                    let qid = planned.qid;
                    return Err(io::Error::new(err.kind(), format!("cannot start a thread for queue {qid}: {err}")));
                }
                Err(err) => {
                    let started = rings.threads.len();
                    log::warn!("FUSE over io_uring: {started} threads, fewer than planned: {err}");
                    break;
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
        log::debug!("FUSE over io_uring: {} threads on {} queues", rings.threads.len(), online.len());
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

/// A ring thread to start: its queue, its number there, its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlannedThread {
    qid: usize,
    n: usize,
    entries: usize,
}

/// The ring threads for `threads` (the mount option): `2 x threads` entries
/// spread over the online CPUs' queues, `entries_per_thread` to a thread,
/// and one entry on each offline CPU's queue. Every queue's first thread
/// comes first: the kernel needs them all, the rest are extra capacity.
fn plan_threads(threads: usize, entries_per_thread: usize, online: &[bool]) -> Vec<PlannedThread> {
    let online_count = online.iter().filter(|&&o| o).count().max(1);
    let per_online_queue = (2 * threads).div_ceil(online_count).max(1);
    let batch = entries_per_thread.max(1);
    let first = online.iter().enumerate().map(|(qid, &is_online)| PlannedThread {
        qid,
        n: 0,
        entries: if is_online { batch.min(per_online_queue) } else { 1 },
    });
    let extra = (1..per_online_queue.div_ceil(batch)).flat_map(|n| {
        let entries = batch.min(per_online_queue - n * batch);
        (0..online.len()).filter(|&qid| online[qid]).map(move |qid| PlannedThread { qid, n, entries })
    });
    first.chain(extra).collect()
}

/// One ring entry's buffers: the kernel writes a request into them and
/// takes the reply from them.
struct Slot {
    header: Box<RingHeader>,
    payload: Vec<u8>,
    /// The two buffers as the kernel sees them; must outlive registration.
    iov: Box<[libc::iovec; 2]>,
}

/// What a thread does with the request in a slot.
enum Answer {
    /// The reply is in the slot: commit it under this id.
    Ready(u64),
    /// An fsync, which may take seconds: answer it off the thread.
    Fsync { commit_id: u64, unique: u64 },
}

impl Slot {
    fn new() -> Slot {
        let mut header = Box::new(RingHeader::new_zeroed());
        // The kernel insists on room for its largest request (max_write).
        let mut payload = vec![0u8; MAX_WRITE as usize];
        let iov = Box::new([
            libc::iovec { iov_base: header.as_mut_bytes().as_mut_ptr().cast(), iov_len: size_of::<RingHeader>() },
            libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() },
        ]);
        Slot { header, payload, iov }
    }

    /// Decodes the request in the slot and, unless `offload_fsync` and it
    /// is an fsync, writes the reply in its place.
    fn answer(&mut self, disk: &Disk, offload_fsync: bool) -> Answer {
        let commit_id = self.header.ent.commit_id;
        let in_len = (self.header.ent.payload_sz as usize).min(self.payload.len());
        let Ok((request, _)) = InHeader::read_from_prefix(&self.header.in_out) else {
            // Cannot happen (the buffer is larger than the struct); answer EIO.
            return Answer::Ready(self.reply(commit_id, 0, Err(Errno::EIO)));
        };
        if offload_fsync && serve::is_fsync(&request) {
            return Answer::Fsync { commit_id, unique: request.unique };
        }
        let result = serve::answer(disk, &request, &self.header.op_in, &mut self.payload, in_len);
        Answer::Ready(self.reply(commit_id, request.unique, result))
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

/// `user_data` of the eventfd read that wakes a thread when a helper has
/// finished an fsync; any other value is a slot's index.
const WAKE: u64 = u64::MAX;

/// An fsync a helper has answered: slot, commit id, request id, result.
type FinishedFsync = (usize, u64, u64, Result<usize, Errno>);

/// Fsyncs a thread handed to helpers, posted here when done and signalled
/// on the eventfd.
struct Finished {
    eventfd: OwnedFd,
    fsyncs: Mutex<Vec<FinishedFsync>>,
}

impl Finished {
    fn post(&self, slot: usize, commit_id: u64, unique: u64, result: Result<usize, Errno>) {
        self.fsyncs.lock().unwrap_or_else(|e| e.into_inner()).push((slot, commit_id, unique, result));
        if let Err(err) = nix::unistd::write(&self.eventfd, &1u64.to_ne_bytes()) {
            // Cannot happen short of a counter at u64::MAX - 1.
            log::error!("FUSE ring: cannot wake the thread an fsync finished for: {err}");
        }
    }
}

/// A thread-private ring carrying some entries of one queue.
struct ThreadRing {
    /// First, so that it goes before the buffers it points into.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    fuse_fd: Arc<OwnedFd>,
    qid: u16,
    slots: Vec<Slot>,
    /// Requests that arrived while registering (user data, result),
    /// answered first in `serve`.
    early: Vec<(u64, i32)>,
    /// Where the eventfd read puts the count; lives as long as the ring.
    wake_count: Box<u64>,
}

/// `sqe->len` of a REGISTER: the two iovecs. io-uring's `UringCmd80` has no
/// setter for it, so it is written at its ABI offset in the SQE.
const SQE_LEN_OFFSET: usize = 24;
const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);

impl ThreadRing {
    /// A ring and `slots` entries' buffers on queue `qid`, not yet registered.
    fn new(fuse_fd: &Arc<OwnedFd>, qid: u16, slots: usize) -> io::Result<ThreadRing> {
        // One more submission for the eventfd read.
        let ring = new_ring(slots + 1)?;
        let slots = (0..slots).map(|_| Slot::new()).collect();
        Ok(ThreadRing { ring, fuse_fd: fuse_fd.clone(), qid, slots, early: Vec::new(), wake_count: Box::new(0) })
    }

    fn register(mut self) -> io::Result<ThreadRing> {
        // A refusal completes at once; an accepted entry stays pending until
        // the kernel has a request for it. EAGAIN, "INIT not answered yet",
        // may also come later from io_uring's worker; `serve` registers
        // again then.
        let mut pending: Vec<usize> = (0..self.slots.len()).collect();
        while !pending.is_empty() {
            for slot in pending.drain(..) {
                self.push_register(slot)?;
            }
            self.ring.submit()?;
            let answers: Vec<_> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
            for (user_data, res) in answers {
                match res {
                    res if res == -libc::EAGAIN => pending.push(user_data as usize),
                    res if res < 0 => return Err(io::Error::from_raw_os_error(-res)),
                    _ => self.early.push((user_data, res)),
                }
            }
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(self)
    }

    fn push_register(&mut self, slot: usize) -> io::Result<()> {
        let iov = self.slots[slot].iov.as_ptr() as u64;
        let mut sqe = self.command(abi::URING_CMD_REGISTER, 0).addr(Some(iov)).build().user_data(slot as u64);
        // SAFETY: the SQE is 128 bytes (asserted above) and `len` is the u32
        // at offset 24 of every io_uring SQE.
        unsafe {
            let bytes = (&mut sqe as *mut squeue::Entry128).cast::<u8>();
            bytes.add(SQE_LEN_OFFSET).cast::<u32>().write_unaligned(2);
        }
        self.push(&sqe)
    }

    fn command(&self, cmd_op: u32, commit_id: u64) -> opcode::UringCmd80 {
        let req = RingCmd { flags: 0, commit_id, qid: self.qid, padding: [0; 6] };
        let mut cmd = [0u8; 80];
        cmd[..size_of::<RingCmd>()].copy_from_slice(req.as_bytes());
        opcode::UringCmd80::new(types::Fd(self.fuse_fd.as_raw_fd()), cmd_op).cmd(cmd)
    }

    /// Queues a command; the next `io_uring_enter` submits it.
    fn push(&mut self, sqe: &squeue::Entry128) -> io::Result<()> {
        // SAFETY: the buffers the command names (header, payload, iov, the
        // eventfd counter) live as long as the ring does.
        unsafe { self.ring.submission().push(sqe) }.map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn push_commit(&mut self, slot: usize, commit_id: u64) -> io::Result<()> {
        let sqe = self.command(abi::URING_CMD_COMMIT_AND_FETCH, commit_id).build().user_data(slot as u64);
        self.push(&sqe)
    }

    /// Answers requests until the kernel ends the connection: one
    /// `io_uring_enter` commits the replies to every request that arrived
    /// since the last one and waits for more. With several entries, an
    /// fsync goes to a helper thread, so that the other entries' requests
    /// need not wait for the disk to flush.
    fn serve(mut self, disk: &Arc<Disk>, used: &AtomicBool) {
        let offload_fsync = self.slots.len() > 1;
        let finished = match offload_fsync.then(new_eventfd).transpose() {
            Ok(eventfd) => eventfd.map(|eventfd| Arc::new(Finished { eventfd, fsyncs: Mutex::new(Vec::new()) })),
            Err(err) => {
                log::warn!("FUSE ring queue {}: no eventfd ({err}); fsyncs hold up this thread", self.qid);
                None
            }
        };
        let (mut fsyncs_out, mut wake_armed) = (0usize, false);
        let mut arrived = std::mem::take(&mut self.early);
        loop {
            for (user_data, res) in arrived.drain(..) {
                if user_data == WAKE {
                    wake_armed = false;
                    if res < 0 && res != -libc::EINTR {
                        log::error!("FUSE ring queue {}: {}", self.qid, io::Error::from_raw_os_error(-res));
                    }
                    let Some(finished) = &finished else { continue };
                    let done = std::mem::take(&mut *finished.fsyncs.lock().unwrap_or_else(|e| e.into_inner()));
                    fsyncs_out -= done.len();
                    for (slot, commit_id, unique, result) in done {
                        let commit_id = self.slots[slot].reply(commit_id, unique, result);
                        if let Err(err) = self.push_commit(slot, commit_id) {
                            log::error!("FUSE ring queue {}: cannot commit a reply: {err}", self.qid);
                            return;
                        }
                    }
                    continue;
                }
                let slot = user_data as usize;
                if res == -libc::EAGAIN {
                    // Registered a moment before the kernel finished INIT.
                    std::thread::sleep(Duration::from_millis(1));
                    if let Err(err) = self.push_register(slot) {
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
                let Some(entry) = self.slots.get_mut(slot) else {
                    log::error!("FUSE ring queue {}: completion for unknown entry {slot}", self.qid);
                    return;
                };
                let commit_id = match entry.answer(disk, finished.is_some()) {
                    Answer::Ready(commit_id) => commit_id,
                    Answer::Fsync { commit_id, unique } => {
                        match finished.as_ref().map(|f| fsync_in_helper(disk, f, slot, commit_id, unique)) {
                            Some(Ok(())) => {
                                fsyncs_out += 1;
                                continue;
                            }
                            // No thread to be had (a pids limit): here, then.
                            _ => entry.reply(commit_id, unique, disk.fsync().map(|()| 0)),
                        }
                    }
                };
                // Written once: a counter here would bounce one cache line
                // between all the threads on every request.
                if !used.load(Ordering::Relaxed) {
                    used.store(true, Ordering::Relaxed);
                }
                if let Err(err) = self.push_commit(slot, commit_id) {
                    log::error!("FUSE ring queue {}: cannot commit a reply: {err}", self.qid);
                    return;
                }
            }
            if let Some(finished) = &finished
                && fsyncs_out > 0
                && !wake_armed
            {
                let read =
                    opcode::Read::new(types::Fd(finished.eventfd.as_raw_fd()), (&raw mut *self.wake_count).cast(), 8);
                if let Err(err) = self.push(&read.build().user_data(WAKE).into()) {
                    log::error!("FUSE ring queue {}: cannot wait for fsyncs: {err}", self.qid);
                    return;
                }
                wake_armed = true;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    log::error!("FUSE ring queue {}: io_uring_enter failed: {err}", self.qid);
                    return;
                }
            }
            arrived.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        }
    }
}

fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before it is owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs an fsync on a thread of its own, which posts the result to `finished`.
fn fsync_in_helper(
    disk: &Arc<Disk>,
    finished: &Arc<Finished>,
    slot: usize,
    commit_id: u64,
    unique: u64,
) -> io::Result<()> {
    let (disk, finished) = (disk.clone(), finished.clone());
    std::thread::Builder::new()
        .name("ring-fsync".into())
        .spawn(move || finished.post(slot, commit_id, unique, disk.fsync().map(|()| 0)))
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(plan: &[PlannedThread]) -> Vec<(usize, usize, usize)> {
        plan.iter().map(|p| (p.qid, p.n, p.entries)).collect()
    }

    fn entries_of_queue(plan: &[PlannedThread], qid: usize) -> usize {
        plan.iter().filter(|p| p.qid == qid).map(|p| p.entries).sum()
    }

    #[test]
    fn two_cpus_sixteen_threads_make_two_threads_of_eight_a_queue() {
        let plan = plan_threads(16, 8, &[true, true]);
        assert_eq!(planned(&plan), [(0, 0, 8), (1, 0, 8), (0, 1, 8), (1, 1, 8)]);
    }

    #[test]
    fn every_queue_gets_its_first_thread_before_any_extra() {
        let plan = plan_threads(16, 4, &[true, false, true, true]);
        let firsts: Vec<_> = plan.iter().take_while(|p| p.n == 0).map(|p| p.qid).collect();
        assert_eq!(firsts, [0, 1, 2, 3]);
        assert!(plan.iter().skip(4).all(|p| p.n > 0));
        // 32 entries over 3 online queues: 11 each, as 4 + 4 + 3.
        for qid in [0, 2, 3] {
            assert_eq!(entries_of_queue(&plan, qid), 11, "queue {qid}");
        }
        assert_eq!(planned(&plan).iter().filter(|p| p.0 == 0).map(|p| p.2).collect::<Vec<_>>(), [4, 4, 3]);
        // An offline CPU's queue still needs an entry, and one is enough.
        assert_eq!(planned(&plan).iter().filter(|p| p.0 == 1).collect::<Vec<_>>(), [&(1, 0, 1)]);
    }

    #[test]
    fn one_entry_a_thread_keeps_a_thread_for_every_entry() {
        let plan = plan_threads(16, 1, &[true, true]);
        assert_eq!(plan.len(), 32);
        assert!(plan.iter().all(|p| p.entries == 1));
        assert_eq!(entries_of_queue(&plan, 1), 16);
    }

    #[test]
    fn more_cpus_than_entries_still_give_each_queue_one() {
        let plan = plan_threads(2, 8, &[true; 16]);
        assert_eq!(plan.len(), 16);
        assert!(plan.iter().all(|p| p.n == 0 && p.entries == 1));
        // Nonsense asked for (0 threads, 0 entries a thread) still serves.
        assert_eq!(planned(&plan_threads(0, 0, &[true])), [(0, 0, 1)]);
    }
}
