//! The otaflash patch format, version 3 (and the version 2 it extends): constants, the header, the frame
//! header and the varints of the block payload. `docs/patch-format.md` is the
//! specification; this module is its reference implementation.

use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

pub const MAGIC: &[u8; 4] = b"OTAP";
/// How version-1 patches (otaflash before the compact header) began.
const MAGIC_V1: &[u8; 8] = b"OTAPATCH";
pub const BSDIFF_MAGIC: &[u8; 8] = b"BSDIFF40";
/// The newest version. Patches are made in the oldest version that can
/// state them, which older appliers read too: 3 without a reference map
/// (section 3.2), 5 with an x86 one, 6 with others (Thumb-2). 2 is read
/// (it lacks the bitmap difference mode, and numbers its run modes one
/// lower), and 4 (its reference maps move relative references only).
pub const VERSION: u8 = 6;
/// The version of patches without a reference map.
pub const VERSION_WITHOUT_REFERENCES: u8 = 3;
const OLDEST_VERSION: u8 = 2;
/// Bytes that tell a patch's format and, for ours, its header length.
pub const PREFIX_LEN: usize = 8;
/// The fixed part of a header: magic, version, length, kind/flags, block
/// log, window log.
const FIXED_LEN: usize = 9;
const HASH_LEN: usize = 32;
const CRC_LEN: usize = 4;
/// Shortest header: four one-byte varints, two digests, the CRC.
pub const MIN_HEADER_LEN: usize = FIXED_LEN + 4 + 2 * HASH_LEN + CRC_LEN;
/// Longest header: seven ten-byte varints and the in-place body digest.
pub const MAX_HEADER_LEN: usize = FIXED_LEN + 7 * 10 + 3 * HASH_LEN + CRC_LEN;
/// Longest frame header: four ten-byte varints and the CRC.
pub const MAX_FRAME_HEADER_LEN: usize = 4 * 10 + CRC_LEN;

/// Output block limits: a block is the applier's output buffer, a power of two.
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;
/// zstd window limits (log2 bytes) a patch may declare.
pub const MIN_WINDOW_LOG: u8 = 10;
pub const MAX_WINDOW_LOG: u8 = 27;
/// A block of `n` output bytes holds at most `n / RECORD_DENSITY + 1` records,
/// so the applier's record table is bounded by the block size.
pub const RECORD_DENSITY: u32 = 32;
/// Sizes above this are refused as absurd (no image is 1 TiB).
pub const MAX_IMAGE_SIZE: u64 = 1 << 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// New image written sequentially to another place (A/B slots, a file).
    Sequential,
    /// New image overwrites the old one in the same slot, resumable by steps.
    InPlace,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Self::Sequential => 1,
            Self::InPlace => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Sequential),
            2 => Some(Self::InPlace),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sequential => "sequential",
            Self::InPlace => "in-place",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    /// Raw LZMA2 (no xz container): the smallest patches, decoded at about
    /// a tenth of zstd's speed.
    Lzma2,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Zstd => 1,
            Self::Lzma2 => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::None),
            1 => Some(Self::Zstd),
            2 => Some(Self::Lzma2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
            Self::Lzma2 => "lzma2",
        }
    }
}

/// The header at the start of every patch (81 to 169 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The format version (VERSION when made; OLDEST_VERSION is read too).
    pub version: u8,
    pub kind: Kind,
    pub compression: Compression,
    /// Output bytes per block (in-place: the flash erase block), a power of two.
    pub block_size: u32,
    /// log2 of the largest window (zstd) or dictionary (LZMA2) the body uses.
    pub window_log: u8,
    pub frame_count: u32,
    pub old_size: u64,
    pub new_size: u64,
    /// Bytes after the header.
    pub body_size: u64,
    pub old_sha256: [u8; 32],
    pub new_sha256: [u8; 32],
    /// In-place only: bytes the old image is moved up before patching (a
    /// multiple of `block_size`), the slot size the patch was made for, and
    /// the body's SHA-256 (checked whole before the first write).
    pub shift: u64,
    pub slot_size: u64,
    pub body_sha256: Option<[u8; 32]>,
    /// Each block says how its differences are stored: all of them, or only
    /// the runs of non-zero bytes (section 4 of docs/patch-format.md).
    pub sparse_diffs: bool,
    /// Literal bytes hold x86 CALL/JMP targets as absolute addresses
    /// (section 4.1 of docs/patch-format.md; `branches::x86_decode`).
    pub x86_branches: bool,
    /// LZMA2 only: each frame is three streams, of the blocks' records,
    /// differences and literals, interleaved block by block (section 3.1).
    pub split_streams: bool,
    /// A block's records are stored field by field (all copies, all extras,
    /// then all offset changes) rather than record by record (section 4).
    pub record_columns: bool,
    /// Version 4: pages of the reference map at the start of the body
    /// (section 3.2); 0 without one.
    pub reference_pages: u32,
}

/// Byte 6 of the header: kind in bits 0-1, compression in bits 2-3, then
/// the flags: blocks carry a difference encoding; literals hold x86 branch
/// targets absolute; LZMA2 frames are three streams; records are columns.
const FLAG_SPARSE_DIFFS: u8 = 1 << 4;
const FLAG_X86_BRANCHES: u8 = 1 << 5;
const FLAG_SPLIT_STREAMS: u8 = 1 << 6;
const FLAG_RECORD_COLUMNS: u8 = 1 << 7;

/// The dictionaries of a split LZMA2 frame's streams (records, differences,
/// literals) for window log `w`: 1/64, 1/8 and 7/8 of 2^w, together just
/// over the one stream's 2^w. Literals need the long memory (new code),
/// differences less, records (few, incompressible numbers) almost none.
pub fn split_dictionaries(window_log: u8) -> [u32; 3] {
    let w = 1u32 << window_log;
    [w / 64, w / 8, w / 8 * 7].map(|d| d.max(LZMA2_MIN_DICTIONARY))
}

/// liblzma's smallest dictionary.
pub const LZMA2_MIN_DICTIONARY: u32 = 4096;

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::PatchCorrupt(what.into())
}

/// Reads the fields of a header or frame header in order; every read is
/// bounds-checked, so a short or damaged input is an error, never a panic.
struct Fields<'a> {
    b: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64> {
        match get_varint(&self.b[self.at..])? {
            Some((v, n)) => {
                self.at += n;
                Ok(v)
            }
            None => Err(corrupt(format!("its {} is truncated", self.what))),
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let part = self
            .b
            .get(self.at..self.at + N)
            .ok_or_else(|| corrupt(format!("its {} is truncated", self.what)))?;
        self.at += N;
        let mut a = [0u8; N];
        a.copy_from_slice(part);
        Ok(a)
    }
}

/// The length of the header a patch starting with `prefix` (at least
/// [`PREFIX_LEN`] bytes) has; refuses foreign files and other versions.
pub fn header_len(prefix: &[u8]) -> Result<usize> {
    if prefix.len() < PREFIX_LEN {
        return Err(corrupt(format!(
            "it is truncated: it has {} bytes, shorter than any header",
            prefix.len()
        )));
    }
    if prefix.starts_with(MAGIC_V1) {
        return Err(Error::PatchUnsupported(format!(
            "patch format version 1 (an earlier otaflash made it); this otaflash reads \
             versions {OLDEST_VERSION} to {VERSION}: make the patch again with `otaflash diff`"
        )));
    }
    if &prefix[..4] != MAGIC {
        return Err(Error::PatchForeign(describe_magic(prefix)));
    }
    if !(OLDEST_VERSION..=VERSION).contains(&prefix[4]) {
        return Err(Error::PatchUnsupported(format!(
            "patch format version {}; this otaflash reads versions {OLDEST_VERSION} to \
             {VERSION}",
            prefix[4]
        )));
    }
    let len = usize::from(prefix[5]);
    if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&len) {
        return Err(corrupt(format!("its header length {len} is out of range")));
    }
    Ok(len)
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MAX_HEADER_LEN);
        b.extend_from_slice(MAGIC);
        b.push(self.version);
        b.push(0); // length, set below
        let mut kind_flags = self.kind.code() | self.compression.code() << 2;
        if self.sparse_diffs {
            kind_flags |= FLAG_SPARSE_DIFFS;
        }
        if self.x86_branches {
            kind_flags |= FLAG_X86_BRANCHES;
        }
        if self.split_streams {
            kind_flags |= FLAG_SPLIT_STREAMS;
        }
        if self.record_columns {
            kind_flags |= FLAG_RECORD_COLUMNS;
        }
        b.push(kind_flags);
        b.push(self.block_size.trailing_zeros() as u8);
        b.push(self.window_log);
        put_varint(&mut b, u64::from(self.frame_count));
        put_varint(&mut b, self.old_size);
        put_varint(&mut b, self.new_size);
        put_varint(&mut b, self.body_size);
        if self.version >= 4 {
            put_varint(&mut b, u64::from(self.reference_pages));
        }
        if self.kind == Kind::InPlace {
            let bs = u64::from(self.block_size.max(1));
            put_varint(&mut b, self.shift / bs);
            put_varint(&mut b, self.slot_size.div_ceil(bs));
            b.extend_from_slice(&self.body_sha256.unwrap_or_default());
        }
        b.extend_from_slice(&self.old_sha256);
        b.extend_from_slice(&self.new_sha256);
        b[5] = (b.len() + CRC_LEN) as u8;
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Bytes [`Header::encode`] makes.
    pub fn encoded_len(&self) -> usize {
        self.encode().len()
    }

    /// Parses and validates a header at the start of `b`; every field is
    /// checked before use.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let len = header_len(b)?;
        let b = b.get(..len).ok_or_else(|| {
            corrupt(format!(
                "it is truncated: its header needs {len} bytes, got {}",
                b.len()
            ))
        })?;
        let crc = le_u32(b, len - CRC_LEN);
        if crc32fast::hash(&b[..len - CRC_LEN]) != crc {
            return Err(corrupt("its header checksum does not match (bit error?)"));
        }
        let kind = Kind::from_code(b[6] & 3)
            .ok_or_else(|| Error::PatchUnsupported(format!("patch kind {}", b[6] & 3)))?;
        let method = (b[6] >> 2) & 3;
        let compression = Compression::from_code(method)
            .ok_or_else(|| Error::PatchUnsupported(format!("compression method {method}")))?;
        let split_streams = b[6] & FLAG_SPLIT_STREAMS != 0;
        if split_streams && compression != Compression::Lzma2 {
            return Err(corrupt(format!(
                "it says its {} frames are split in streams, which only LZMA2 frames are",
                compression.name()
            )));
        }
        let block_log = b[7];
        if !(MIN_BLOCK_SIZE.trailing_zeros()..=MAX_BLOCK_SIZE.trailing_zeros())
            .contains(&u32::from(block_log))
        {
            return Err(corrupt(format!("block size 2^{block_log} is out of range")));
        }
        let block_size = 1u32 << block_log;
        let window_log = b[8];
        if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&window_log) {
            return Err(corrupt(format!("window log {window_log} is out of range")));
        }
        let mut f = Fields {
            b: &b[..len - CRC_LEN],
            at: FIXED_LEN,
            what: "header",
        };
        let frame_count =
            u32::try_from(f.varint()?).map_err(|_| corrupt("its frame count is absurd"))?;
        let old_size = f.varint()?;
        let new_size = f.varint()?;
        let body_size = f.varint()?;
        let reference_pages = if b[4] >= 4 { f.varint()? } else { 0 };
        if reference_pages > super::references::MAX_PAGES
            || (reference_pages > 0 && kind == Kind::InPlace)
        {
            return Err(corrupt(format!(
                "its reference map of {reference_pages} pages is absurd"
            )));
        }
        for (name, size) in [("old", old_size), ("new", new_size), ("body", body_size)] {
            if size > MAX_IMAGE_SIZE {
                return Err(corrupt(format!("absurd {name} size {size}")));
            }
        }
        let (shift, slot_size, body_sha256) = if kind == Kind::InPlace {
            let bs = u64::from(block_size);
            let blocks = MAX_IMAGE_SIZE / bs;
            let (shift_blocks, slot_blocks) = (f.varint()?, f.varint()?);
            if shift_blocks > blocks || slot_blocks > blocks {
                return Err(corrupt("its in-place geometry is absurd"));
            }
            (shift_blocks * bs, slot_blocks * bs, Some(f.bytes()?))
        } else {
            (0, 0, None)
        };
        let old_sha256 = f.bytes()?;
        let new_sha256 = f.bytes()?;
        if f.at != len - CRC_LEN {
            return Err(corrupt(format!(
                "its header length {len} does not match its fields"
            )));
        }
        let header = Self {
            version: b[4],
            kind,
            compression,
            block_size,
            window_log,
            frame_count,
            old_size,
            new_size,
            body_size,
            old_sha256,
            new_sha256,
            shift,
            slot_size,
            body_sha256,
            sparse_diffs: b[6] & FLAG_SPARSE_DIFFS != 0,
            x86_branches: b[6] & FLAG_X86_BRANCHES != 0,
            split_streams,
            record_columns: b[6] & FLAG_RECORD_COLUMNS != 0,
            reference_pages: reference_pages as u32,
        };
        header.check_geometry()?;
        Ok(header)
    }

    fn check_geometry(&self) -> Result<()> {
        let blocks = self.new_size.div_ceil(u64::from(self.block_size));
        if u64::from(self.frame_count) > blocks || (blocks > 0 && self.frame_count == 0) {
            return Err(corrupt(format!(
                "{} frames cannot hold {} blocks",
                self.frame_count, blocks
            )));
        }
        match self.kind {
            Kind::InPlace
                if self.slot_size < self.new_size
                    || self.slot_size < self.shift.saturating_add(self.old_size) =>
            {
                Err(corrupt(format!(
                    "in-place slot of {} bytes cannot hold the images (old {}, new {}, shift {})",
                    self.slot_size, self.old_size, self.new_size, self.shift
                )))
            }
            _ => Ok(()),
        }
    }

    /// Identifies the update: SHA-256 of the encoded header (which holds the
    /// old and new digests and, in place, the body's). In-place progress is
    /// recorded under it.
    pub fn patch_id(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Largest raw (decompressed) payload a frame of `out_len` bytes may declare.
    pub fn max_raw_len(&self, out_len: u64) -> u64 {
        let blocks = out_len.div_ceil(u64::from(self.block_size)).max(1);
        // Data bytes, plus per block a record count and at most
        // (block/RECORD_DENSITY + 1) records of three 10-byte varints; sparse:
        // a mode and as many runs of two varints (more than a bitmap's eighth
        // of the block).
        let entries = out_len / u64::from(RECORD_DENSITY) + blocks;
        let sparse = if self.sparse_diffs {
            blocks * 10 + entries * 20
        } else {
            0
        };
        out_len + blocks * 10 + entries * 30 + sparse
    }
}

/// Names what a foreign file looks like, for the error message.
pub fn describe_magic(b: &[u8]) -> String {
    let head = &b[..b.len().min(8)];
    if head.starts_with(b"\x28\xb5\x2f\xfd") {
        "it is a zstd file, not an otaflash patch (made by `zstd --patch-from`?)".into()
    } else if head.starts_with(b"\xd6\xc3\xc4") {
        "it is a VCDIFF (xdelta3) patch; otaflash applies those as a new image, not in place".into()
    } else if head.starts_with(b"HDIFF") {
        "it is an HDiffPatch patch, which otaflash does not apply".into()
    } else if head.starts_with(b"ENDSLEY/BSDIFF43") {
        "it is an ENDSLEY/BSDIFF43 patch; otaflash applies BSDIFF40 and its own format".into()
    } else {
        let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
        format!("it does not start with an otaflash or BSDIFF40 magic (starts with {hex})")
    }
}

/// The header in front of every compressed frame: four varints and a CRC-32
/// that covers them and the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Output bytes the frame produces.
    pub out_len: u32,
    /// Bytes of the (compressed) payload that follows.
    pub comp_len: u32,
    /// Bytes of the payload once decompressed.
    pub raw_len: u32,
    /// Position in the old image at the start of the frame.
    pub old_pos: u64,
}

impl FrameHeader {
    fn fields(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MAX_FRAME_HEADER_LEN);
        for v in [self.out_len, self.comp_len, self.raw_len] {
            put_varint(&mut b, u64::from(v));
        }
        put_varint(&mut b, self.old_pos);
        b
    }

    /// The frame header for `payload`, CRC included.
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut b = self.fields();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&b);
        crc.update(payload);
        b.extend_from_slice(&crc.finalize().to_le_bytes());
        b
    }

    /// Starts the frame's CRC-32: it covers these fields, then the payload.
    pub fn crc_start(&self) -> crc32fast::Hasher {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.fields());
        crc
    }

    /// Parses frame `index` from the start of `b` and checks it against what
    /// is left to produce: `Ok(None)` while `b` ends inside it, else the
    /// header, its stored CRC and its length. The CRC is checked when the
    /// payload has been read ([`FrameHeader::crc_start`]).
    pub fn decode(
        b: &[u8],
        index: u32,
        header: &Header,
        out_left: u64,
    ) -> Result<Option<(Self, u32, usize)>> {
        let mut values = [0u64; 4];
        let mut at = 0;
        for v in &mut values {
            match get_varint(&b[at..])? {
                Some((x, n)) => {
                    *v = x;
                    at += n;
                }
                None if b.len() - at >= 10 => {
                    return Err(corrupt(format!("frame {index} header is damaged")));
                }
                None => return Ok(None),
            }
        }
        let Some(crc) = b.get(at..at + CRC_LEN) else {
            return Ok(None);
        };
        let crc = le_u32(crc, 0);
        let [out_len, comp_len, raw_len, old_pos] = values;
        let damaged = || corrupt(format!("frame {index} header is damaged"));
        let frame = Self {
            out_len: u32::try_from(out_len).map_err(|_| damaged())?,
            comp_len: u32::try_from(comp_len).map_err(|_| damaged())?,
            raw_len: u32::try_from(raw_len).map_err(|_| damaged())?,
            old_pos,
        };
        frame.check(index, header, out_left)?;
        Ok(Some((frame, crc, at + CRC_LEN)))
    }

    fn check(&self, index: u32, header: &Header, out_left: u64) -> Result<()> {
        let out_len = u64::from(self.out_len);
        if out_len == 0 || out_len > out_left || self.comp_len == 0 {
            return Err(corrupt(format!(
                "frame {index} declares {out_len} output bytes, {out_left} remain to be made"
            )));
        }
        if out_len % u64::from(header.block_size) != 0 && out_len != out_left {
            return Err(corrupt(format!(
                "frame {index} ends inside a block ({out_len} bytes)"
            )));
        }
        if u64::from(self.raw_len) > header.max_raw_len(out_len) {
            return Err(corrupt(format!(
                "frame {index} declares {} payload bytes for {out_len} output bytes",
                self.raw_len
            )));
        }
        if header.compression == Compression::None && self.comp_len != self.raw_len {
            return Err(corrupt(format!("frame {index} sizes disagree")));
        }
        // zstd never expands beyond raw + raw/128 + a small constant.
        if u64::from(self.comp_len) > u64::from(self.raw_len) + u64::from(self.raw_len) / 128 + 1024
        {
            return Err(corrupt(format!("frame {index} payload size is absurd")));
        }
        if self.old_pos > header.old_size {
            return Err(corrupt(format!(
                "frame {index} starts at old offset {} beyond the old image",
                self.old_pos
            )));
        }
        Ok(())
    }
}

/// LEB128 unsigned varint.
/// How a block of a sparse_diffs patch stores its differences: its mode
/// varint (docs/patch-format.md section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffMode {
    /// Every difference byte follows.
    Whole,
    /// A bitmap of which differences are non-zero, then those bytes
    /// (version 3): dense small changes, as in recompiled MCU code.
    Bitmap,
    /// This many runs of non-zero bytes, then their bytes.
    Runs(u64),
}

impl DiffMode {
    pub fn from_value(version: u8, value: u64) -> Self {
        match (value, version >= 3) {
            (0, _) => Self::Whole,
            (1, true) => Self::Bitmap,
            (n, true) => Self::Runs(n - 2),
            (n, false) => Self::Runs(n - 1),
        }
    }

    /// The mode's value in patches of the current version.
    pub fn value(self) -> u64 {
        match self {
            Self::Whole => 0,
            Self::Bitmap => 1,
            Self::Runs(n) => n + 2,
        }
    }
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_signed(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Reads a varint from `b`: `Ok(None)` when `b` ends inside it.
pub fn get_varint(b: &[u8]) -> Result<Option<(u64, usize)>> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        let part = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return Err(corrupt("a number in the patch overflows 64 bits"));
        }
        v |= part << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    if b.len() >= 10 {
        return Err(corrupt("a number in the patch overflows 64 bits"));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: VERSION_WITHOUT_REFERENCES,
            kind: Kind::Sequential,
            compression: Compression::Zstd,
            block_size: 4096,
            window_log: 20,
            frame_count: 1,
            old_size: 100,
            new_size: 200,
            body_size: 50,
            old_sha256: [1; 32],
            new_sha256: [2; 32],
            shift: 0,
            slot_size: 0,
            body_sha256: None,
            sparse_diffs: false,
            x86_branches: false,
            split_streams: false,
            record_columns: false,
            reference_pages: 0,
        }
    }

    fn mapped_sample() -> Header {
        Header {
            version: VERSION,
            reference_pages: 1000,
            x86_branches: true,
            ..sample()
        }
    }

    fn split_sample() -> Header {
        Header {
            compression: Compression::Lzma2,
            split_streams: true,
            ..sample()
        }
    }

    fn in_place_sample() -> Header {
        Header {
            kind: Kind::InPlace,
            compression: Compression::Lzma2,
            shift: 8192,
            slot_size: 1 << 20,
            body_sha256: Some([3; 32]),
            sparse_diffs: true,
            x86_branches: true,
            record_columns: true,
            ..sample()
        }
    }

    #[test]
    fn header_round_trips_and_rejects_every_single_bit_flip() {
        for h in [sample(), in_place_sample(), split_sample(), mapped_sample()] {
            let bytes = h.encode();
            assert_eq!(bytes.len(), h.encoded_len());
            assert_eq!(header_len(&bytes).unwrap(), bytes.len());
            assert_eq!(Header::decode(&bytes).unwrap(), h);
            for bit in 0..bytes.len() * 8 {
                let mut b = bytes.clone();
                b[bit / 8] ^= 1 << (bit % 8);
                assert!(Header::decode(&b).is_err(), "bit {bit}");
            }
            for cut in 0..bytes.len() {
                assert!(Header::decode(&bytes[..cut]).is_err(), "cut {cut}");
            }
        }
        // A sequential patch's header: 81 bytes plus its varints.
        assert_eq!(sample().encoded_len(), MIN_HEADER_LEN + 1);
        // Version 4 adds the map's page count; in place, there is none.
        assert_eq!(mapped_sample().encoded_len(), MIN_HEADER_LEN + 3);
        let absurd = Header {
            reference_pages: (super::super::references::MAX_PAGES + 1) as u32,
            ..mapped_sample()
        };
        assert!(Header::decode(&absurd.encode()).is_err());
        let in_place = Header {
            version: VERSION,
            reference_pages: 1,
            ..in_place_sample()
        };
        let err = Header::decode(&in_place.encode()).unwrap_err().to_string();
        assert!(err.contains("reference map"), "{err}");
    }

    #[test]
    fn only_lzma2_frames_split_in_streams() {
        let zstd = Header {
            compression: Compression::Zstd,
            ..split_sample()
        };
        let err = Header::decode(&zstd.encode()).unwrap_err().to_string();
        assert!(err.contains("only LZMA2"), "{err}");
        assert_eq!(split_dictionaries(21), [32 << 10, 256 << 10, 1792 << 10]);
        assert_eq!(split_dictionaries(10), [4096, 4096, 4096]);
    }

    #[test]
    fn version_one_patches_are_named() {
        let mut v1 = b"OTAPATCH".to_vec();
        v1.extend_from_slice(&[1, 0, 1, 1]);
        let err = Header::decode(&v1).unwrap_err().to_string();
        assert!(err.contains("version 1"), "{err}");
        let err = Header::decode(b"\x28\xb5\x2f\xfd0000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("zstd"), "{err}");
    }

    #[test]
    fn versions_two_to_six_are_read_and_number_their_modes() {
        let v2 = Header {
            version: 2,
            sparse_diffs: true,
            ..sample()
        };
        assert_eq!(Header::decode(&v2.encode()).unwrap(), v2);
        let v7 = Header {
            version: 7,
            ..sample()
        };
        let err = Header::decode(&v7.encode()).unwrap_err().to_string();
        assert!(err.contains("version 7") && err.contains("2 to 6"), "{err}");
        for (version, value, mode) in [
            (2, 0, DiffMode::Whole),
            (2, 1, DiffMode::Runs(0)),
            (2, 5, DiffMode::Runs(4)),
            (3, 0, DiffMode::Whole),
            (3, 1, DiffMode::Bitmap),
            (3, 2, DiffMode::Runs(0)),
            (3, 6, DiffMode::Runs(4)),
        ] {
            assert_eq!(DiffMode::from_value(version, value), mode);
            if version >= 3 {
                assert_eq!(mode.value(), value);
            }
        }
    }

    #[test]
    fn frame_header_round_trips_and_its_crc_covers_it() {
        let h = sample();
        let fh = FrameHeader {
            out_len: 200,
            comp_len: 3,
            raw_len: 300,
            old_pos: 7,
        };
        let payload = [9u8, 8, 7];
        let bytes = fh.encode(&payload);
        for cut in 0..bytes.len() {
            assert_eq!(
                FrameHeader::decode(&bytes[..cut], 0, &h, 200).unwrap(),
                None
            );
        }
        let (got, crc, len) = FrameHeader::decode(&bytes, 0, &h, 200).unwrap().unwrap();
        assert_eq!((got, len), (fh, bytes.len()));
        let mut check = got.crc_start();
        check.update(&payload);
        assert_eq!(check.finalize(), crc);
        // A flipped size either fails the checks or changes the CRC input.
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        if let Ok(Some((f, c, _))) = FrameHeader::decode(&bad, 0, &h, 200) {
            let mut check = f.crc_start();
            check.update(&payload);
            assert_ne!(check.finalize(), c);
        }
        assert!(FrameHeader::decode(&bytes, 0, &h, 100).is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(get_varint(&out).unwrap(), Some((v, out.len())));
            assert_eq!(get_varint(&out[..out.len() - 1]).unwrap(), None);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            put_signed(&mut out, v);
            let (u, _) = get_varint(&out).unwrap().unwrap();
            assert_eq!(unzigzag(u), v);
        }
        assert!(get_varint(&[0xff; 11]).is_err());
    }
}
