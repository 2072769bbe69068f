//! Panic-free little helpers for the fixed binary layouts init reads and writes (GPT,
//! netlink, input events): out-of-range reads give zero, out-of-range writes are dropped.

/// Copies `data` into `buf` at `at`; does nothing if it would not fit.
pub fn put(buf: &mut [u8], at: usize, data: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at.saturating_add(data.len())) {
        dst.copy_from_slice(data);
    }
}

/// Sets one byte; does nothing out of range.
pub fn set(buf: &mut [u8], at: usize, v: u8) {
    if let Some(b) = buf.get_mut(at) {
        *b = v;
    }
}

fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = b.get(at..at.saturating_add(N)) {
        a.copy_from_slice(s);
    }
    a
}

/// Little-endian u16 at `at` (0 if out of range).
pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(array(b, at))
}

/// Little-endian u32 at `at` (0 if out of range).
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(b, at))
}

/// Little-endian u64 at `at` (0 if out of range).
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(b, at))
}

/// Native-endian u16 at `at` (0 if out of range).
pub fn ne16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(array(b, at))
}

/// Native-endian u32 at `at` (0 if out of range).
pub fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(array(b, at))
}

/// Native-endian i32 at `at` (0 if out of range).
pub fn ne_i32(b: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes(array(b, at))
}

/// 16 bytes at `at` (zeros if out of range).
pub fn bytes16(b: &[u8], at: usize) -> [u8; 16] {
    array(b, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_harmless() {
        let mut b = [0u8; 4];
        put(&mut b, 2, &[1, 2, 3]);
        assert_eq!(b, [0; 4]);
        put(&mut b, 2, &[1, 2]);
        assert_eq!(b, [0, 0, 1, 2]);
        assert_eq!(le32(&b, 0), 0x0201_0000);
        assert_eq!(le64(&b, 0), 0);
        set(&mut b, 9, 1);
        assert_eq!(le16(&b, usize::MAX), 0);
    }
}
