//! GGUF files: header, metadata and tensor directory, read with hard bounds.
//!
//! Written here rather than taken from candle because a model file is untrusted input: every
//! count, length, shape and offset is checked against the bytes actually present before
//! anything is allocated, so a truncated, corrupted or hostile file gives an error naming the
//! problem instead of a panic, an out-of-bounds read or an unbounded allocation (fuzzed in
//! `fuzz/fuzz_targets/gguf.rs`). Tensor data is memory-mapped and never copied.

// Sizes, counts and offsets come from the file: no cast may silently cut one.
#![deny(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
/// Longest string accepted (keys, token strings, chat templates).
const MAX_STRING: u64 = 16 << 20;
/// Most dimensions a tensor may have.
const MAX_DIMS: u32 = 4;
/// Default tensor data alignment.
const DEFAULT_ALIGNMENT: u64 = 32;

/// Why a GGUF file was refused.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a GGUF file.
    #[error("not a GGUF file (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// A GGUF version this reader does not know.
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// The file ends before what its header announces.
    #[error("truncated GGUF: {0}")]
    Truncated(String),
    /// Structurally invalid content.
    #[error("invalid GGUF: {0}")]
    Invalid(String),
    /// A tensor type this build cannot run.
    #[error("tensor {tensor}: quantization type {ty} is not supported")]
    Unsupported {
        /// Tensor name.
        tensor: String,
        /// GGML type name or id.
        ty: String,
    },
}

/// GGML tensor types (the `type` field of a tensor info).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, 32-element blocks with a scale.
    Q4_0,
    /// 4-bit, 32-element blocks with scale and minimum.
    Q4_1,
    /// 5-bit, 32-element blocks with a scale.
    Q5_0,
    /// 5-bit, 32-element blocks with scale and minimum.
    Q5_1,
    /// 8-bit, 32-element blocks with a scale.
    Q8_0,
    /// 8-bit, 32-element blocks with scale and sum.
    Q8_1,
    /// 2-bit K-quant (256-element super-blocks).
    Q2K,
    /// 3-bit K-quant.
    Q3K,
    /// 4-bit K-quant.
    Q4K,
    /// 5-bit K-quant.
    Q5K,
    /// 6-bit K-quant.
    Q6K,
    /// 8-bit K-quant.
    Q8K,
}

impl GgmlType {
    /// Maps a GGUF type id; unknown or unsupported ids give `None`.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// Name of a type id as llama.cpp prints it (for error messages).
    pub fn id_name(id: u32) -> String {
        let known = [
            (16, "IQ2_XXS"),
            (17, "IQ2_XS"),
            (18, "IQ3_XXS"),
            (19, "IQ1_S"),
            (20, "IQ4_NL"),
            (21, "IQ3_S"),
            (22, "IQ2_S"),
            (23, "IQ4_XS"),
            (24, "I8"),
            (25, "I16"),
            (26, "I32"),
            (27, "I64"),
            (28, "F64"),
            (29, "IQ1_M"),
            (34, "TQ1_0"),
            (35, "TQ2_0"),
            (39, "MXFP4"),
        ];
        match GgmlType::from_id(id) {
            Some(t) => format!("{t:?}"),
            None => known
                .iter()
                .find(|(i, _)| *i == id)
                .map_or(format!("#{id}"), |(_, n)| (*n).to_string()),
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => 32,
            GgmlType::Q8_0 | GgmlType::Q8_1 => 32,
            _ => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Q8K => 292,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string (invalid UTF-8 is replaced).
    String(String),
    /// Array of values.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer (accepts non-negative signed values).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    /// As a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::U64(v) => Some(*v as f64),
            Value::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// As a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor of the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost first (GGML order: `[cols, rows]` for a matrix).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Absolute offset of its data in the file.
    pub offset: u64,
    /// Size of its data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed header: metadata and tensor directory (no tensor data).
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// Where tensor data starts.
    pub data_offset: u64,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated(format!(
                "{what} needs {n} bytes at offset {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        // At most `remaining()`, which came from a usize.
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING {
            return Err(GgufError::Invalid(format!("{what}: string of {len} bytes")));
        }
        let b = self.take(len, what)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    /// A value of type `ty`; `depth` limits nested arrays.
    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U64(self.take(1, what)?[0] as u64),
            1 => Value::I64(self.take(1, what)?[0] as i8 as i64),
            2 => {
                let b = self.take(2, what)?;
                Value::U64(u16::from_le_bytes([b[0], b[1]]) as u64)
            }
            3 => {
                let b = self.take(2, what)?;
                Value::I64(i16::from_le_bytes([b[0], b[1]]) as i64)
            }
            4 => Value::U64(self.u32(what)? as u64),
            5 => Value::I64(self.u32(what)? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32(what)?) as f64),
            7 => Value::Bool(self.take(1, what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Invalid(format!(
                        "{what}: arrays nested too deeply"
                    )));
                }
                let elem = self.u32(what)?;
                let count = self.u64(what)?;
                // Every element takes at least one byte: a count beyond the bytes left is a lie.
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    _ => {
                        return Err(GgufError::Invalid(format!(
                            "{what}: unknown array type {elem}"
                        )));
                    }
                };
                if count.saturating_mul(min) > self.remaining() {
                    return Err(GgufError::Truncated(format!(
                        "{what}: array of {count} elements does not fit in the file"
                    )));
                }
                let mut items = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
                for _ in 0..count {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            other => {
                return Err(GgufError::Invalid(format!(
                    "{what}: unknown value type {other}"
                )));
            }
        })
    }
}

impl Header {
    /// Parses the header of a GGUF image (`file_len` is the whole file's size; `buf` may be the
    /// whole file or just enough of its beginning).
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header, GgufError> {
        let mut r = Reader { buf, pos: 0 };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            let mut m = [0u8; 4];
            m.copy_from_slice(magic);
            return Err(GgufError::BadMagic(m));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // A key-value pair takes at least 8 + 4 + 1 bytes, a tensor info at least 8 + 4 + 8 + 4 + 8.
        if n_kv.saturating_mul(13) > r.remaining() {
            return Err(GgufError::Invalid(format!(
                "{n_kv} metadata entries cannot fit in the file"
            )));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}"))?;
            let ty = r.u32(&format!("type of {key}"))?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        if n_tensors.saturating_mul(32) > r.remaining() {
            return Err(GgufError::Invalid(format!(
                "{n_tensors} tensors cannot fit in the file"
            )));
        }
        let mut infos = Vec::with_capacity(usize::try_from(n_tensors).unwrap_or(0));
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor {i} name"))?;
            let n_dims = r.u32(&format!("{name} dimension count"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Invalid(format!("{name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&format!("{name} shape"))?);
            }
            let ty_id = r.u32(&format!("{name} type"))?;
            let offset = r.u64(&format!("{name} offset"))?;
            infos.push((name, dims, ty_id, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two() && *a <= 1 << 16)
                .ok_or_else(|| GgufError::Invalid(format!("general.alignment {v:?}")))?,
            None => DEFAULT_ALIGNMENT,
        };
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, ty_id, rel) in infos {
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::Unsupported {
                tensor: name.clone(),
                ty: GgmlType::id_name(ty_id),
            })?;
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, d| acc.checked_mul(*d))
                .filter(|e| *e > 0)
                .ok_or_else(|| GgufError::Invalid(format!("{name}: shape {dims:?}")))?;
            if dims
                .first()
                .is_some_and(|inner| inner % ty.block_elems() != 0)
            {
                return Err(GgufError::Invalid(format!(
                    "{name}: row length {} is not a multiple of the {ty:?} block ({})",
                    dims[0],
                    ty.block_elems()
                )));
            }
            let size = (elements / ty.block_elems())
                .checked_mul(ty.block_bytes())
                .ok_or_else(|| GgufError::Invalid(format!("{name}: size overflows")))?;
            if rel % alignment != 0 {
                return Err(GgufError::Invalid(format!(
                    "{name}: offset {rel} is not aligned"
                )));
            }
            let offset = data_offset
                .checked_add(rel)
                .ok_or_else(|| GgufError::Invalid(format!("{name}: offset overflows")))?;
            if offset.checked_add(size).is_none_or(|end| end > file_len) {
                return Err(GgufError::Truncated(format!(
                    "{name}: data at {offset}..{} lies past the end of the file ({file_len} bytes)",
                    offset.saturating_add(size)
                )));
            }
            if tensors.contains_key(&name) {
                return Err(GgufError::Invalid(format!("tensor {name} appears twice")));
            }
            tensors.insert(
                name.clone(),
                TensorInfo {
                    name,
                    dims,
                    ty,
                    offset,
                    size,
                },
            );
        }
        Ok(Header {
            version,
            metadata,
            tensors,
            data_offset,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned metadata value.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| {
            GgufError::Invalid(format!("metadata {key} is missing or not an integer"))
        })
    }

    /// A required float metadata value.
    pub fn f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| GgufError::Invalid(format!("metadata {key} is missing or not a number")))
    }

    /// A required string metadata value.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| GgufError::Invalid(format!("metadata {key} is missing or not a string")))
    }
}

/// A GGUF file, memory-mapped read-only.
pub struct GgufFile {
    map: memmap2::Mmap,
    /// Its header.
    pub header: Header,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("bytes", &self.map.len())
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is read-only and private to this process. Model files live on the
        // read-only model store (or a file the operator registered); truncating or rewriting
        // one while it is in use is outside what Cairn supports, and every access below is
        // bounds-checked against the length captured at open time.
        let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
        let header = Header::parse(&map, map.len() as u64)?;
        Ok(GgufFile { map, header })
    }

    /// The raw bytes of a tensor (bounds were checked when the header was parsed).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = usize::try_from(t.offset)
            .and_then(|a| Ok(a..usize::try_from(t.offset.saturating_add(t.size))?));
        range.ok().and_then(|r| self.map.get(r)).unwrap_or_default()
    }

    /// Bytes `offset..offset + len` of the file (empty if out of range).
    pub fn raw(&self, offset: usize, len: usize) -> &[u8] {
        self.map
            .get(offset..offset.saturating_add(len))
            .unwrap_or_default()
    }

    /// Drops the pages wholly inside `offset..offset + len` from this process's resident set
    /// (a model whose weights were copied elsewhere at load no longer reads them; the page
    /// cache keeps them, and a later read maps them back in).
    pub fn release(&self, offset: usize, len: usize) {
        const PAGE: usize = 4096;
        let start = offset.div_ceil(PAGE) * PAGE;
        let end = (offset.saturating_add(len).min(self.map.len()) / PAGE) * PAGE;
        if end > start {
            // SAFETY: the mapping is a private, read-only map of a file this process never
            // writes through it, so MADV_DONTNEED only drops resident pages: a later access
            // faults the same bytes back in from the file, and slices into the map stay valid.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }

    /// A tensor by name, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.header
            .tensors
            .get(name)
            .ok_or_else(|| GgufError::Invalid(format!("tensor {name} is missing")))
    }
}

/// Builds GGUF files in memory (tests and fuzz seeds).
pub mod write {
    /// A metadata value to write.
    pub enum W<'a> {
        /// u32.
        U32(u32),
        /// f32.
        F32(f32),
        /// bool.
        Bool(bool),
        /// string.
        Str(&'a str),
        /// array of strings.
        Strs(&'a [&'a str]),
        /// array of i32.
        I32s(&'a [i32]),
    }

    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }

    /// A GGUF v3 image with these metadata and tensors (name, dims, type id, data).
    pub fn gguf(meta: &[(&str, W<'_>)], tensors: &[(&str, &[u64], u32, &[u8])]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        for (k, v) in meta {
            s(&mut out, k);
            match v {
                W::U32(x) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                W::F32(x) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                W::Bool(x) => {
                    out.extend_from_slice(&7u32.to_le_bytes());
                    out.push(*x as u8);
                }
                W::Str(x) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    s(&mut out, x);
                }
                W::Strs(xs) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                    for x in *xs {
                        s(&mut out, x);
                    }
                }
                W::I32s(xs) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                    for x in *xs {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in tensors {
            s(&mut out, name);
            out.extend_from_slice(
                &u32::try_from(dims.len())
                    .expect("a test tensor has few dimensions")
                    .to_le_bytes(),
            );
            for d in *dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for (_, _, _, data) in tensors {
            out.extend_from_slice(data);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::write::{W, gguf};
    use super::*;

    fn sample() -> Vec<u8> {
        gguf(
            &[
                ("general.architecture", W::Str("llama")),
                ("llama.block_count", W::U32(2)),
                ("llama.rope.freq_base", W::F32(10000.0)),
                ("tokenizer.ggml.add_bos_token", W::Bool(false)),
                ("tokenizer.ggml.tokens", W::Strs(&["a", "b", "ab"])),
                ("tokenizer.ggml.token_type", W::I32s(&[1, 1, 1])),
            ],
            &[
                ("w", &[32, 2], 8, &[0u8; 68]),
                ("norm", &[4], 0, &[0u8; 16]),
            ],
        )
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let b = sample();
        let h = Header::parse(&b, b.len() as u64).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.str("general.architecture").unwrap(), "llama");
        assert_eq!(h.u64("llama.block_count").unwrap(), 2);
        assert_eq!(h.f64("llama.rope.freq_base").unwrap(), 10000.0);
        assert_eq!(
            h.get("tokenizer.ggml.tokens")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            3
        );
        let w = &h.tensors["w"];
        assert_eq!((w.ty, w.size, w.elements()), (GgmlType::Q8_0, 68, 64));
        assert_eq!(w.offset % 32, 0);
        assert_eq!(h.tensors["norm"].size, 16);
    }

    #[test]
    fn hostile_files_get_clear_errors() {
        let b = sample();
        let e = |bytes: &[u8]| {
            Header::parse(bytes, bytes.len() as u64)
                .unwrap_err()
                .to_string()
        };
        assert!(e(b"GGML\x03\0\0\0").contains("bad magic"));
        let mut v = b.clone();
        v[4] = 9;
        assert!(e(&v).contains("version 9"));
        // Absurd tensor count.
        let mut v = b.clone();
        v[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(e(&v).contains("cannot fit"), "{}", e(&v));
        // Truncated anywhere: never a panic.
        for cut in 0..b.len() {
            let _ = Header::parse(&b[..cut], cut as u64);
        }
        // Data past the end of the file.
        let short = &b[..b.len() - 40];
        assert!(e(short).contains("past the end"), "{}", e(short));
        // Unsupported quantization names the type.
        let bad = gguf(&[], &[("x", &[32], 20, &[0u8; 18])]);
        assert!(e(&bad).contains("IQ4_NL"), "{}", e(&bad));
        // A row that is not a whole number of blocks.
        let bad = gguf(&[], &[("x", &[33], 2, &[0u8; 36])]);
        assert!(e(&bad).contains("multiple"), "{}", e(&bad));
        // Shapes that overflow.
        let bad = gguf(&[], &[("x", &[u64::MAX, 4], 0, &[0u8; 4])]);
        assert!(e(&bad).contains("shape"), "{}", e(&bad));
    }

    proptest::proptest! {
        #[test]
        fn random_corruption_never_panics(flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8)) {
            let mut b = sample();
            for (at, v) in flips {
                let n = b.len();
                b[at % n] = v;
            }
            let _ = Header::parse(&b, b.len() as u64);
        }
    }
}
