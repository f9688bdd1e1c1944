//! CRC-32C (Castagnoli) and the trailer kept with every block object.
//!
//! A block object is the block's raw bytes (exactly `block_size`) followed
//! by an 8-byte trailer: ASCII `OC32` and the CRC-32C of those bytes,
//! little-endian. The trailer is checked on every read from the backend; a
//! mismatch is an I/O error, never data.

pub const TRAILER_LEN: usize = 8;
const MAGIC: &[u8; 4] = b"OC32";

const fn table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            k += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static TABLE: [u32; 256] = table();

/// A running CRC-32C.
#[derive(Clone, Copy)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    pub fn new() -> Self {
        Crc32c(!0)
    }

    pub fn update(&mut self, data: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE 4.2 (checked just above).
            self.0 = unsafe { update_sse42(self.0, data) };
            return;
        }
        self.0 = update_table(self.0, data);
    }

    pub fn finish(self) -> u32 {
        !self.0
    }
}

pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(data);
    crc.finish()
}

fn update_table(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42(mut crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut chunks = data.chunks_exact(8);
    let mut c = crc as u64;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        c = _mm_crc32_u64(c, u64::from_le_bytes(word));
    }
    crc = c as u32;
    for &b in chunks.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    crc
}

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
    fn known_vectors_and_both_implementations_agree() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        let data: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 251) as u8).collect();
        assert_eq!(!update_table(!0, &data), crc32c(&data));
        let mut split = Crc32c::new();
        split.update(&data[..333]);
        split.update(&data[333..]);
        assert_eq!(split.finish(), crc32c(&data));
    }

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
