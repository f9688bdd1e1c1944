//! The trailer kept with every block object.
//!
//! A block object is the block's raw bytes (exactly `block_size`) followed
//! by an 8-byte trailer: ASCII `OC32` and the CRC-32C of those bytes,
//! little-endian. The trailer is checked on every read from the backend; a
//! mismatch is an I/O error, never data.

pub use crate::core::crc32c::{Crc32c, crc32c};

pub const TRAILER_LEN: usize = 8;
const MAGIC: &[u8; 4] = b"OC32";

/// The trailer for a block whose bytes have CRC `crc`.
pub fn trailer(crc: u32) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..4].copy_from_slice(MAGIC);
    t[4..].copy_from_slice(&crc.to_le_bytes());
    t
}

/// Checks an object of a block of `block_size` bytes and returns the block's
/// bytes, or what is wrong with it.
pub fn verify(mut object: Vec<u8>, block_size: u64) -> Result<Vec<u8>, String> {
    let want = block_size as usize + TRAILER_LEN;
    if object.len() != want {
        return Err(format!("object is {} bytes, expected {want} (block and checksum trailer)", object.len()));
    }
    let (data, t) = object.split_at(block_size as usize);
    if &t[..4] != MAGIC {
        return Err("object has no onefs checksum trailer".into());
    }
    let stored = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    let actual = crc32c(data);
    if stored != actual {
        return Err(format!("checksum mismatch (stored crc32c {stored:08x}, data has {actual:08x})"));
    }
    object.truncate(block_size as usize);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_good_and_names_bad_objects() {
        let block = vec![7u8; 64];
        let mut object = block.clone();
        object.extend_from_slice(&trailer(crc32c(&block)));
        assert_eq!(verify(object.clone(), 64).unwrap(), block);
        let mut flipped = object.clone();
        flipped[10] ^= 1;
        assert!(verify(flipped, 64).unwrap_err().contains("checksum mismatch"));
        assert!(verify(object[..70].to_vec(), 64).unwrap_err().contains("expected 72"));
        let mut nomagic = object;
        nomagic[64] = b'X';
        assert!(verify(nomagic, 64).unwrap_err().contains("trailer"));
    }
}
