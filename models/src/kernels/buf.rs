//! Cache-line aligned, grow-only scratch buffers.

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A byte buffer whose start is 64-byte aligned; it only ever grows.
#[derive(Default)]
pub(crate) struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({})", self.len)
    }
}

impl AlignedBytes {
    /// Sets the length to `len` bytes (new bytes are zero; old contents are kept).
    pub fn resize(&mut self, len: usize) {
        let lines = len.div_ceil(64);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0; 64]));
        }
        self.len = len;
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `lines` holds at least `len` initialized bytes (`Line` is plain bytes with
        // no padding) and the pointer is valid for the lifetime of `&self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }

    /// The bytes as int8.
    pub fn as_i8(&self) -> &[i8] {
        // SAFETY: i8 and u8 have the same size, alignment and validity.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<i8>(), self.len) }
    }

    /// The bytes as int8, mutably.
    pub fn as_i8_mut(&mut self) -> &mut [i8] {
        // SAFETY: i8 and u8 have the same size, alignment and validity; unique access.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<i8>(), self.len) }
    }
}

/// A f32 buffer whose start is 64-byte aligned; it only ever grows.
#[derive(Default, Debug)]
pub(crate) struct AlignedF32 {
    bytes: AlignedBytes,
}

impl AlignedF32 {
    /// Sets the length to `len` floats (new values are zero).
    pub fn resize(&mut self, len: usize) {
        self.bytes.resize(len * 4);
    }

    /// The floats.
    pub fn as_slice(&self) -> &[f32] {
        let b = self.bytes.as_slice();
        // SAFETY: the storage is 64-byte aligned, holds `len·4` initialized bytes, and every
        // bit pattern is a valid f32.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4) }
    }

    /// The floats, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let b = self.bytes.as_mut_slice();
        // SAFETY: as in `as_slice`, with unique access.
        unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<f32>(), b.len() / 4) }
    }
}
