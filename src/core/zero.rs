//! Zero detection on written buffers.

/// True if every byte of `buf` is zero.
///
/// Compares machine words, which the compiler vectorises; on the write path
/// this runs once per request over data already in cache, so it costs far less
/// than storing a block that did not need to exist.
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only splits the slice.
    let (head, body, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|&b| b == 0)
        && body.chunks(16).all(|c| c.iter().fold(0u128, |acc, &w| acc | w) == 0)
        && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_zero() {
        assert!(is_zero(&[]));
    }

    #[test]
    fn finds_a_single_nonzero_byte_anywhere() {
        for len in [1usize, 7, 16, 63, 64, 255, 4096, 4097] {
            let zeros = vec![0u8; len + 3];
            for start in 0..3 {
                let slice = &zeros[start..start + len];
                assert!(is_zero(slice));
                for pos in 0..len {
                    let mut buf = zeros.clone();
                    buf[start + pos] = 1;
                    assert!(!is_zero(&buf[start..start + len]), "len {len} pos {pos}");
                }
            }
        }
    }
}
