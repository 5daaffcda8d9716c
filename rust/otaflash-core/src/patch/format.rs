//! The otaflash patch format, version 1: constants, the header, the frame
//! header and the varints of the block payload. `docs/patch-format.md` is the
//! specification; this module is its reference implementation.

use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"OTAPATCH";
pub const BSDIFF_MAGIC: &[u8; 8] = b"BSDIFF40";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 160;
pub const FRAME_HEADER_LEN: usize = 32;
pub const FRAME_MAGIC: &[u8; 4] = b"OTFR";

/// Output block limits: a block is the applier's output buffer.
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

/// The fixed 160-byte header at the start of every patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub compression: Compression,
    /// Output bytes per block (in-place: the flash erase block).
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
    pub body_sha256: [u8; 32],
    /// In-place only: bytes the old image is moved up before patching (a
    /// multiple of `block_size`), and the slot size the patch was made for.
    pub shift: u64,
    pub slot_size: u64,
    /// Each block says how its differences are stored: all of them, or only
    /// the runs of non-zero bytes (section 4 of docs/patch-format.md).
    pub sparse_diffs: bool,
    /// Literal bytes hold x86 CALL/JMP targets as absolute addresses
    /// (section 5 of docs/patch-format.md; `branches::x86_decode`).
    pub x86_branches: bool,
}

/// Header flag (byte 17) bits: blocks carry a difference encoding; literals
/// hold x86 branch targets absolute.
const FLAG_SPARSE_DIFFS: u8 = 1;
const FLAG_X86_BRANCHES: u8 = 2;

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

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

fn hash32(b: &[u8], at: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::PatchCorrupt(what.into())
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10] = self.kind.code();
        b[11] = self.compression.code();
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16] = self.window_log;
        b[17] = if self.sparse_diffs {
            FLAG_SPARSE_DIFFS
        } else {
            0
        } | if self.x86_branches {
            FLAG_X86_BRANCHES
        } else {
            0
        };
        b[20..24].copy_from_slice(&self.frame_count.to_le_bytes());
        b[24..32].copy_from_slice(&self.old_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.new_size.to_le_bytes());
        b[40..48].copy_from_slice(&self.body_size.to_le_bytes());
        b[48..80].copy_from_slice(&self.old_sha256);
        b[80..112].copy_from_slice(&self.new_sha256);
        b[112..144].copy_from_slice(&self.body_sha256);
        // 144..156: in-place geometry, stored in units of the block size.
        let shift_blocks = self.shift / u64::from(self.block_size.max(1));
        let slot_blocks = self.slot_size.div_ceil(u64::from(self.block_size.max(1)));
        b[144..148].copy_from_slice(&(shift_blocks as u32).to_le_bytes());
        b[148..152].copy_from_slice(&(slot_blocks as u32).to_le_bytes());
        let crc = crc32fast::hash(&b[..HEADER_LEN - 4]);
        b[HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates a header; every field is checked before use.
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() < HEADER_LEN {
            return Err(corrupt(format!(
                "it is truncated: its header needs {HEADER_LEN} bytes, got {}",
                b.len()
            )));
        }
        let b = &b[..HEADER_LEN];
        if &b[0..8] != MAGIC {
            return Err(Error::PatchForeign(describe_magic(b)));
        }
        let version = le_u16(b, 8);
        if version != VERSION {
            return Err(Error::PatchUnsupported(format!(
                "patch format version {version}; this otaflash reads version {VERSION}"
            )));
        }
        let crc = le_u32(b, HEADER_LEN - 4);
        if crc32fast::hash(&b[..HEADER_LEN - 4]) != crc {
            return Err(corrupt("its header checksum does not match (bit error?)"));
        }
        let kind = Kind::from_code(b[10])
            .ok_or_else(|| Error::PatchUnsupported(format!("patch kind {}", b[10])))?;
        let compression = Compression::from_code(b[11])
            .ok_or_else(|| Error::PatchUnsupported(format!("compression method {}", b[11])))?;
        let block_size = le_u32(b, 12);
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(corrupt(format!("block size {block_size} is out of range")));
        }
        let window_log = b[16];
        if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&window_log) {
            return Err(corrupt(format!("window log {window_log} is out of range")));
        }
        if b[17] & !(FLAG_SPARSE_DIFFS | FLAG_X86_BRANCHES) != 0
            || b[18..20] != [0, 0]
            || b[152..156] != [0, 0, 0, 0]
        {
            return Err(Error::PatchUnsupported(
                "reserved header fields are set".into(),
            ));
        }
        let frame_count = le_u32(b, 20);
        let old_size = le_u64(b, 24);
        let new_size = le_u64(b, 32);
        let body_size = le_u64(b, 40);
        for (name, size) in [("old", old_size), ("new", new_size), ("body", body_size)] {
            if size > MAX_IMAGE_SIZE {
                return Err(corrupt(format!("absurd {name} size {size}")));
            }
        }
        let bs = u64::from(block_size);
        let shift = u64::from(le_u32(b, 144)) * bs;
        let slot_size = u64::from(le_u32(b, 148)) * bs;
        let header = Self {
            kind,
            compression,
            block_size,
            window_log,
            frame_count,
            old_size,
            new_size,
            body_size,
            old_sha256: hash32(b, 48),
            new_sha256: hash32(b, 80),
            body_sha256: hash32(b, 112),
            shift,
            slot_size,
            sparse_diffs: b[17] & FLAG_SPARSE_DIFFS != 0,
            x86_branches: b[17] & FLAG_X86_BRANCHES != 0,
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
            Kind::Sequential if self.shift != 0 || self.slot_size != 0 => {
                Err(corrupt("a sequential patch carries in-place geometry"))
            }
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
    /// old, new and body digests). In-place progress is recorded under it.
    pub fn patch_id(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Largest raw (decompressed) payload a frame of `out_len` bytes may declare.
    pub fn max_raw_len(&self, out_len: u64) -> u64 {
        let blocks = out_len.div_ceil(u64::from(self.block_size)).max(1);
        // Data bytes, plus per block a record count and at most
        // (block/RECORD_DENSITY + 1) records of three 10-byte varints; sparse:
        // a run count and as many runs of two varints.
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
        "it is a VCDIFF (xdelta3) patch, which otaflash does not apply".into()
    } else if head.starts_with(b"HDIFF") {
        "it is an HDiffPatch patch, which otaflash does not apply".into()
    } else if head.starts_with(b"ENDSLEY/BSDIFF43") {
        "it is an ENDSLEY/BSDIFF43 patch; otaflash applies BSDIFF40 and its own format".into()
    } else {
        let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
        format!("it does not start with an otaflash or BSDIFF40 magic (starts with {hex})")
    }
}

/// The 32-byte header in front of every compressed frame.
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
    /// CRC-32 of the compressed payload.
    pub payload_crc: u32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0..4].copy_from_slice(FRAME_MAGIC);
        b[4..8].copy_from_slice(&self.out_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.comp_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.raw_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.old_pos.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses frame `index` and checks it against what is left to produce.
    pub fn decode(b: &[u8], index: u32, header: &Header, out_left: u64) -> Result<Self> {
        let b = b
            .get(..FRAME_HEADER_LEN)
            .ok_or_else(|| corrupt(format!("frame {index} header is truncated")))?;
        if &b[0..4] != FRAME_MAGIC || crc32fast::hash(&b[..28]) != le_u32(b, 28) {
            return Err(corrupt(format!("frame {index} header is damaged")));
        }
        let frame = Self {
            out_len: le_u32(b, 4),
            comp_len: le_u32(b, 8),
            raw_len: le_u32(b, 12),
            old_pos: le_u64(b, 16),
            payload_crc: le_u32(b, 24),
        };
        let out_len = u64::from(frame.out_len);
        if out_len == 0 || out_len > out_left || frame.comp_len == 0 {
            return Err(corrupt(format!(
                "frame {index} declares {out_len} output bytes, {out_left} remain to be made"
            )));
        }
        if out_len % u64::from(header.block_size) != 0 && out_len != out_left {
            return Err(corrupt(format!(
                "frame {index} ends inside a block ({out_len} bytes)"
            )));
        }
        if u64::from(frame.raw_len) > header.max_raw_len(out_len) {
            return Err(corrupt(format!(
                "frame {index} declares {} payload bytes for {out_len} output bytes",
                frame.raw_len
            )));
        }
        if header.compression == Compression::None && frame.comp_len != frame.raw_len {
            return Err(corrupt(format!("frame {index} sizes disagree")));
        }
        // zstd never expands beyond raw + raw/128 + a small constant.
        if u64::from(frame.comp_len)
            > u64::from(frame.raw_len) + u64::from(frame.raw_len) / 128 + 1024
        {
            return Err(corrupt(format!("frame {index} payload size is absurd")));
        }
        Ok(frame)
    }
}

/// LEB128 unsigned varint.
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
            body_sha256: [3; 32],
            shift: 0,
            slot_size: 0,
            sparse_diffs: false,
            x86_branches: false,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_every_single_bit_flip() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes).unwrap(), h);
        for bit in 0..HEADER_LEN * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Header::decode(&b).is_err(), "bit {bit}");
        }
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
