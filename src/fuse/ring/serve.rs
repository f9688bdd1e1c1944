//! Answers one FUSE request that came through the ring: decode the op's
//! header and payload, ask [`Disk`], encode the reply into the payload.
//! Same answers as fuser's side in `fuse/mod.rs`; only the wire differs.

use crate::fuse::abi::{self, opcode};
use crate::fuse::{Disk, NAME_MAX, TTL};
use fuser::{Errno, FileAttr, FileType, INodeNo};
use std::time::{SystemTime, UNIX_EPOCH};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The op's fixed header, or EINVAL when the kernel sent too few bytes.
fn op_header<T: FromBytes + KnownLayout + Immutable>(op_in: &[u8]) -> Result<T, Errno> {
    T::read_from_prefix(op_in).map(|(value, _)| value).map_err(|_| Errno::EINVAL)
}

/// Writes `value` at the start of the payload; returns its length.
fn put<T: IntoBytes + Immutable>(payload: &mut [u8], value: &T) -> Result<usize, Errno> {
    let bytes = value.as_bytes();
    payload.get_mut(..bytes.len()).ok_or(Errno::EIO)?.copy_from_slice(bytes);
    Ok(bytes.len())
}

fn wire_time(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn type_bits(kind: FileType) -> u32 {
    match kind {
        FileType::Directory => libc::S_IFDIR,
        _ => libc::S_IFREG,
    }
}

fn wire_attr(a: &FileAttr) -> abi::Attr {
    let (atime, atimensec) = wire_time(a.atime);
    let (mtime, mtimensec) = wire_time(a.mtime);
    let (ctime, ctimensec) = wire_time(a.ctime);
    abi::Attr {
        ino: a.ino.0,
        size: a.size,
        blocks: a.blocks,
        atime,
        mtime,
        ctime,
        atimensec,
        mtimensec,
        ctimensec,
        mode: type_bits(a.kind) | u32::from(a.perm),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: a.flags,
    }
}

fn attr_out(payload: &mut [u8], attr: &FileAttr) -> Result<usize, Errno> {
    put(payload, &abi::AttrOut { attr_valid: TTL.as_secs(), attr_valid_nsec: 0, dummy: 0, attr: wire_attr(attr) })
}

/// A name argument: the payload up to its terminating NUL.
fn name(payload: &[u8]) -> &[u8] {
    payload.split(|&b| b == 0).next().unwrap_or_default()
}

/// Whether `request` asks for a flush to the disk (which may take seconds).
pub fn is_fsync(request: &abi::InHeader) -> bool {
    matches!(request.opcode, opcode::FSYNC | opcode::FSYNCDIR)
}

/// Answers `request`; `payload[..in_len]` holds its variable part (name,
/// data) on entry and the reply's arguments on return (their length is the
/// `Ok` value).
pub fn answer(
    disk: &Disk,
    request: &abi::InHeader,
    op_in: &[u8],
    payload: &mut [u8],
    in_len: usize,
) -> Result<usize, Errno> {
    let ino = INodeNo(request.nodeid);
    match request.opcode {
        opcode::LOOKUP => {
            let attr = disk.lookup(ino, name(&payload[..in_len]))?;
            let entry = abi::EntryOut {
                nodeid: attr.ino.0,
                generation: 0,
                entry_valid: TTL.as_secs(),
                attr_valid: TTL.as_secs(),
                entry_valid_nsec: 0,
                attr_valid_nsec: 0,
                attr: wire_attr(&attr),
            };
            put(payload, &entry)
        }
        opcode::GETATTR => attr_out(payload, &disk.getattr(ino)?),
        opcode::SETATTR => {
            let s: abi::SetattrIn = op_header(op_in)?;
            let given = |bit: u32| s.valid & bit != 0;
            let attr = disk.setattr(
                ino,
                given(abi::FATTR_MODE).then_some(s.mode),
                given(abi::FATTR_UID).then_some(s.uid),
                given(abi::FATTR_GID).then_some(s.gid),
                given(abi::FATTR_SIZE).then_some(s.size),
            )?;
            attr_out(payload, &attr)
        }
        opcode::OPEN => {
            let open: abi::OpenIn = op_header(op_in)?;
            let flags = disk.open(ino, open.flags as i32)?;
            put(payload, &abi::OpenOut { fh: 0, open_flags: flags.bits(), backing_id: 0 })
        }
        opcode::OPENDIR => {
            disk.opendir(ino)?;
            put(payload, &abi::OpenOut { fh: 0, open_flags: 0, backing_id: 0 })
        }
        opcode::READ => {
            let read: abi::IoIn = op_header(op_in)?;
            let buf = payload.get_mut(..read.size as usize).ok_or(Errno::EINVAL)?;
            disk.read(read.offset, buf)
        }
        opcode::WRITE => {
            let write: abi::IoIn = op_header(op_in)?;
            let data = payload.get(..write.size as usize).filter(|_| write.size as usize <= in_len);
            let written = disk.write(write.offset, data.ok_or(Errno::EINVAL)?)?;
            put(payload, &abi::WriteOut { size: written, padding: 0 })
        }
        opcode::READDIR => {
            let read: abi::IoIn = op_header(op_in)?;
            let limit = (read.size as usize).min(payload.len());
            let mut used = 0;
            for (ino, next, kind, entry_name) in disk.readdir(ino, read.offset)? {
                let header = abi::DirentHeader {
                    ino: ino.0,
                    off: next,
                    namelen: entry_name.len() as u32,
                    kind: type_bits(kind) >> 12,
                };
                let size = (size_of::<abi::DirentHeader>() + entry_name.len()).next_multiple_of(8);
                if used + size > limit {
                    break;
                }
                let slot = &mut payload[used..used + size];
                slot.fill(0);
                slot[..size_of::<abi::DirentHeader>()].copy_from_slice(header.as_bytes());
                slot[size_of::<abi::DirentHeader>()..][..entry_name.len()].copy_from_slice(entry_name.as_bytes());
                used += size;
            }
            Ok(used)
        }
        opcode::STATFS => {
            let s = disk.statfs();
            let out = abi::StatfsOut {
                blocks: s.blocks,
                bfree: s.free,
                bavail: s.free,
                files: 1,
                ffree: 0,
                bsize: s.block_size,
                namelen: NAME_MAX,
                frsize: s.block_size,
                ..Default::default()
            };
            put(payload, &out)
        }
        opcode::FSYNC | opcode::FSYNCDIR => disk.fsync().map(|()| 0),
        // close() promises nothing about durability; fsync does.
        opcode::FLUSH | opcode::RELEASE | opcode::RELEASEDIR | opcode::ACCESS => Ok(0),
        opcode::FALLOCATE => {
            let f: abi::FallocateIn = op_header(op_in)?;
            disk.fallocate(f.offset, f.length, f.mode as i32).map(|()| 0)
        }
        opcode::LSEEK => {
            let l: abi::LseekIn = op_header(op_in)?;
            let offset = disk.lseek(l.offset as i64, l.whence as i32)?;
            put(payload, &abi::LseekOut { offset })
        }
        opcode::GETXATTR | opcode::REMOVEXATTR => Err(Errno::ENODATA),
        opcode::LISTXATTR => {
            let x: abi::XattrSizeIn = op_header(op_in)?;
            if x.size == 0 { put(payload, &abi::XattrSizeOut { size: 0, padding: 0 }) } else { Ok(0) }
        }
        opcode::SETXATTR => Err(Errno::ENOTSUP),
        // The namespace is fixed: exactly one file, no others.
        opcode::CREATE
        | opcode::MKNOD
        | opcode::MKDIR
        | opcode::SYMLINK
        | opcode::LINK
        | opcode::UNLINK
        | opcode::RMDIR
        | opcode::RENAME
        | opcode::RENAME2
        | opcode::TMPFILE => Err(Errno::EPERM),
        _ => Err(Errno::ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Geometry;
    use crate::fuse::{Access, DISK_NAME};
    use crate::image::Image;
    use crate::store::MemStore;
    use std::sync::Arc;
    use zerocopy::FromZeros;

    const BS: u64 = 4096;
    const BLOCKS: u64 = 16;

    fn disk(read_only: bool) -> (Disk, Arc<MemStore>) {
        let store = Arc::new(MemStore::new(BS));
        let image = Image::open(Geometry::new(BLOCKS * BS, BS).unwrap(), store.clone()).unwrap();
        let access = Access { uid: 1000, gid: 100, mode: 0o640, read_only };
        (Disk::new(Arc::new(image), access), store)
    }

    /// One request through `answer`, as the ring would deliver it.
    fn ask<T: IntoBytes + Immutable>(
        disk: &Disk,
        op: u32,
        nodeid: u64,
        op_in: &T,
        data: &[u8],
    ) -> (Result<usize, Errno>, Vec<u8>) {
        let request = abi::InHeader { opcode: op, unique: 42, nodeid, ..abi::InHeader::new_zeroed() };
        let mut header = [0u8; abi::OP_HEADER_SIZE];
        header[..op_in.as_bytes().len()].copy_from_slice(op_in.as_bytes());
        let mut payload = vec![0xAAu8; 1 << 16];
        payload[..data.len()].copy_from_slice(data);
        let result = answer(disk, &request, &header, &mut payload, data.len());
        let len = *result.as_ref().unwrap_or(&0);
        payload.truncate(len);
        (result, payload)
    }

    fn io(offset: u64, size: u32) -> abi::IoIn {
        abi::IoIn { offset, size, ..abi::IoIn::new_zeroed() }
    }

    fn decode<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> T {
        assert_eq!(bytes.len(), size_of::<T>(), "reply has the size of {}", std::any::type_name::<T>());
        T::read_from_bytes(bytes).unwrap()
    }

    #[test]
    fn lookup_finds_disk_img_only_and_encodes_its_attributes() {
        let (disk, _) = disk(false);
        let (result, reply) = ask(&disk, opcode::LOOKUP, 1, &(), b"disk.img\0");
        assert_eq!(result, Ok(size_of::<abi::EntryOut>()));
        let entry: abi::EntryOut = decode(&reply);
        assert_eq!((entry.nodeid, entry.attr.ino, entry.attr.size), (2, 2, BLOCKS * BS));
        assert_eq!(entry.attr.mode, libc::S_IFREG | 0o640);
        assert_eq!((entry.attr.uid, entry.attr.gid, entry.attr.nlink), (1000, 100, 1));
        assert_eq!(entry.entry_valid, TTL.as_secs());

        assert_eq!(ask(&disk, opcode::LOOKUP, 1, &(), b"other\0").0, Err(Errno::ENOENT));
        assert_eq!(ask(&disk, opcode::LOOKUP, 1, &(), b"disk.im\0").0, Err(Errno::ENOENT));
        assert_eq!(ask(&disk, opcode::LOOKUP, 2, &(), b"disk.img\0").0, Err(Errno::ENOENT));
    }

    #[test]
    fn getattr_tells_the_directory_from_the_file() {
        let (disk, _) = disk(false);
        let root: abi::AttrOut = decode(&ask(&disk, opcode::GETATTR, 1, &[0u8; 16], &[]).1);
        assert_eq!((root.attr.ino, root.attr.mode, root.attr.nlink), (1, libc::S_IFDIR | 0o755, 2));
        let file: abi::AttrOut = decode(&ask(&disk, opcode::GETATTR, 2, &[0u8; 16], &[]).1);
        assert_eq!((file.attr.size, file.attr.blocks), (BLOCKS * BS, 0));
        assert_eq!(ask(&disk, opcode::GETATTR, 3, &[0u8; 16], &[]).0, Err(Errno::ENOENT));
    }

    #[test]
    fn writes_land_in_blocks_and_read_back_through_the_payload() {
        let (disk, store) = disk(false);
        let data: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8 + 1).collect();
        let (result, reply) = ask(&disk, opcode::WRITE, 2, &io(BS - 1000, data.len() as u32), &data);
        assert_eq!(result, Ok(8));
        assert_eq!(decode::<abi::WriteOut>(&reply).size, 6000);
        assert_eq!(store.snapshot().len(), 3, "the write spans blocks 0, 1 and 2");

        let (result, reply) = ask(&disk, opcode::READ, 2, &io(BS - 1000, 6000), &[]);
        assert_eq!(result, Ok(6000));
        assert_eq!(reply, data);
        let (_, zeros) = ask(&disk, opcode::READ, 2, &io(5 * BS, 100), &[]);
        assert_eq!(zeros, vec![0u8; 100], "never-written bytes read as zeros");

        let file: abi::AttrOut = decode(&ask(&disk, opcode::GETATTR, 2, &[0u8; 16], &[]).1);
        assert_eq!(file.attr.blocks, 3 * BS / 512, "st_blocks counts what is stored");
    }

    #[test]
    fn a_write_claiming_more_data_than_arrived_is_refused() {
        let (disk, store) = disk(false);
        assert_eq!(ask(&disk, opcode::WRITE, 2, &io(0, 4096), &[1u8; 100]).0, Err(Errno::EINVAL));
        assert_eq!(store.snapshot().len(), 0);
    }

    #[test]
    fn read_only_mounts_refuse_writes_and_punches() {
        let (disk, store) = disk(true);
        assert_eq!(ask(&disk, opcode::WRITE, 2, &io(0, 3), b"abc").0, Err(Errno::EROFS));
        let punch = abi::FallocateIn {
            offset: 0,
            length: BS,
            mode: (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32,
            ..abi::FallocateIn::new_zeroed()
        };
        assert_eq!(ask(&disk, opcode::FALLOCATE, 2, &punch, &[]).0, Err(Errno::EROFS));
        let open = abi::OpenIn { flags: libc::O_RDWR as u32, open_flags: 0 };
        assert_eq!(ask(&disk, opcode::OPEN, 2, &open, &[]).0, Err(Errno::EROFS));
        assert_eq!(store.snapshot().len(), 0);
    }

    #[test]
    fn open_asks_for_direct_io_only_for_o_direct() {
        let (disk, _) = disk(false);
        let flags = |f: i32| {
            let open = abi::OpenIn { flags: f as u32, open_flags: 0 };
            decode::<abi::OpenOut>(&ask(&disk, opcode::OPEN, 2, &open, &[]).1).open_flags
        };
        let direct = fuser::FopenFlags::FOPEN_DIRECT_IO.bits();
        assert_eq!(flags(libc::O_RDWR) & direct, 0);
        assert_ne!(flags(libc::O_RDWR | libc::O_DIRECT) & direct, 0);
        let open = abi::OpenIn { flags: 0, open_flags: 0 };
        assert_eq!(ask(&disk, opcode::OPEN, 1, &open, &[]).0, Err(Errno::EISDIR));
    }

    #[test]
    fn punching_frees_blocks_and_lseek_sees_the_holes() {
        let (disk, store) = disk(false);
        for block in [2, 3, 7] {
            ask(&disk, opcode::WRITE, 2, &io(block * BS, 4), b"data").0.unwrap();
        }
        let punch = abi::FallocateIn {
            offset: 3 * BS,
            length: BS,
            mode: (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32,
            ..abi::FallocateIn::new_zeroed()
        };
        assert_eq!(ask(&disk, opcode::FALLOCATE, 2, &punch, &[]).0, Ok(0));
        assert_eq!(store.snapshot().len(), 2);
        let seek = |offset: u64, whence: i32| {
            let l = abi::LseekIn { offset, whence: whence as u32, ..abi::LseekIn::new_zeroed() };
            let (result, reply) = ask(&disk, opcode::LSEEK, 2, &l, &[]);
            result.map(|_| decode::<abi::LseekOut>(&reply).offset)
        };
        assert_eq!(seek(0, libc::SEEK_DATA), Ok(2 * BS));
        assert_eq!(seek(2 * BS, libc::SEEK_HOLE), Ok(3 * BS));
        assert_eq!(seek(3 * BS, libc::SEEK_DATA), Ok(7 * BS));
        assert_eq!(seek(8 * BS, libc::SEEK_DATA), Err(Errno::ENXIO));
        let grow = abi::FallocateIn { offset: BLOCKS * BS, length: 1, ..abi::FallocateIn::new_zeroed() };
        assert_eq!(ask(&disk, opcode::FALLOCATE, 2, &grow, &[]).0, Err(Errno::EFBIG));
    }

    #[test]
    fn readdir_lists_three_entries_and_resumes_at_an_offset() {
        let (disk, _) = disk(false);
        let names = |offset: u64, size: u32| {
            let (result, reply) = ask(&disk, opcode::READDIR, 1, &io(offset, size), &[]);
            let mut names = vec![];
            let mut at = 0;
            while at < result.unwrap() {
                let (header, rest) = abi::DirentHeader::read_from_prefix(&reply[at..]).unwrap();
                let name = String::from_utf8(rest[..header.namelen as usize].to_vec()).unwrap();
                names.push((name, header.ino, header.off, header.kind));
                at += (size_of::<abi::DirentHeader>() + header.namelen as usize).next_multiple_of(8);
            }
            names
        };
        let all = names(0, 4096);
        assert_eq!(all.len(), 3);
        assert_eq!((all[2].0.as_str(), all[2].1, all[2].2, all[2].3), (DISK_NAME, 2, 3, libc::DT_REG as u32));
        assert_eq!(all[0].3, libc::DT_DIR as u32);
        assert_eq!(names(2, 4096).len(), 1, "resumes after the second entry");
        assert_eq!(names(0, 40).len(), 1, "stops where the next entry would not fit");
        assert_eq!(ask(&disk, opcode::READDIR, 2, &io(0, 4096), &[]).0, Err(Errno::ENOTDIR));
    }

    #[test]
    fn statfs_counts_in_onefs_blocks() {
        let (disk, _) = disk(false);
        ask(&disk, opcode::WRITE, 2, &io(0, 1), b"x").0.unwrap();
        let s: abi::StatfsOut = decode(&ask(&disk, opcode::STATFS, 1, &(), &[]).1);
        assert_eq!((s.blocks, s.bfree, s.bavail, s.bsize, s.namelen), (BLOCKS, BLOCKS - 1, BLOCKS - 1, BS as u32, 255));
    }

    #[test]
    fn size_owner_and_namespace_are_fixed() {
        let (disk, _) = disk(false);
        let setattr =
            |valid: u32, size: u64, mode: u32| abi::SetattrIn { valid, size, mode, ..abi::SetattrIn::new_zeroed() };
        assert_eq!(ask(&disk, opcode::SETATTR, 2, &setattr(abi::FATTR_SIZE, 0, 0), &[]).0, Err(Errno::EPERM));
        assert_eq!(
            ask(&disk, opcode::SETATTR, 2, &setattr(abi::FATTR_SIZE, BLOCKS * BS + 1, 0), &[]).0,
            Err(Errno::EFBIG)
        );
        assert_eq!(ask(&disk, opcode::SETATTR, 2, &setattr(abi::FATTR_MODE, 0, 0o777), &[]).0, Err(Errno::EPERM));
        let same = ask(&disk, opcode::SETATTR, 2, &setattr(abi::FATTR_SIZE | abi::FATTR_MODE, BLOCKS * BS, 0o640), &[]);
        assert_eq!(same.0, Ok(size_of::<abi::AttrOut>()), "setting what already holds is fine");
        for op in [opcode::CREATE, opcode::MKDIR, opcode::UNLINK, opcode::RENAME, opcode::SYMLINK, opcode::LINK] {
            assert_eq!(ask(&disk, op, 1, &[0u8; 16], b"x\0").0, Err(Errno::EPERM), "opcode {op}");
        }
        assert_eq!(ask(&disk, 4000, 1, &(), &[]).0, Err(Errno::ENOSYS), "unknown opcodes get ENOSYS");
    }

    #[test]
    fn xattrs_are_absent() {
        let (disk, _) = disk(false);
        let size = |n: u32| abi::XattrSizeIn { size: n, padding: 0 };
        assert_eq!(ask(&disk, opcode::GETXATTR, 2, &size(0), b"user.x\0").0, Err(Errno::ENODATA));
        let (result, reply) = ask(&disk, opcode::LISTXATTR, 2, &size(0), &[]);
        assert_eq!((result, decode::<abi::XattrSizeOut>(&reply).size), (Ok(8), 0));
        assert_eq!(ask(&disk, opcode::LISTXATTR, 2, &size(100), &[]).0, Ok(0));
        assert_eq!(ask(&disk, opcode::SETXATTR, 2, &[0u8; 16], b"user.x\0v").0, Err(Errno::ENOTSUP));
    }
}
