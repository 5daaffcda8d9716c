//! The DFU suffix (DFU 1.1 appendix B) and the vendor prefixes dfu-util
//! knows, read from and written to firmware files.
//!
//! The suffix is the file's last 16 bytes, all little-endian: bcdDevice,
//! idProduct, idVendor, bcdDFU, the signature `"UFD"`, bLength (16) and
//! dwCRC: a CRC-32 (poly 0xEDB88320, init 0xFFFFFFFF) over every byte before
//! it, *without* the final XOR. 0xFFFF in an ID field matches any device.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use crate::io::{FileSource, ReadAt};
use crate::{Error, Result};

pub const SUFFIX_LEN: u64 = 16;
/// bcdDFU of a plain DFU 1.0/1.1 file.
pub const BCD_DFU: u16 = 0x0100;
/// bcdDFU of a DfuSe file (ST's extensions).
pub const BCD_DFUSE: u16 = 0x011A;
/// An ID field that matches any device.
pub const ANY_ID: u16 = 0xFFFF;

/// The CRC of a DFU suffix over `data`: CRC-32 without the final XOR.
pub fn dfu_crc(data: &[u8]) -> u32 {
    !crc32fast::hash(data)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suffix {
    pub bcd_device: u16,
    pub id_product: u16,
    pub id_vendor: u16,
    pub bcd_dfu: u16,
    /// bLength: 16 unless a vendor extended the suffix.
    pub length: u8,
    pub crc: u32,
}

impl Suffix {
    /// The 16 bytes for a file whose preceding bytes hash (CRC-32 state,
    /// not finalised) to `crc_of_contents`.
    pub fn encode(
        id_vendor: u16,
        id_product: u16,
        bcd_device: u16,
        bcd_dfu: u16,
        mut crc_of_contents: crc32fast::Hasher,
    ) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..2].copy_from_slice(&bcd_device.to_le_bytes());
        out[2..4].copy_from_slice(&id_product.to_le_bytes());
        out[4..6].copy_from_slice(&id_vendor.to_le_bytes());
        out[6..8].copy_from_slice(&bcd_dfu.to_le_bytes());
        out[8..11].copy_from_slice(b"UFD");
        out[11] = 16;
        crc_of_contents.update(&out[..12]);
        let crc = !crc_of_contents.finalize();
        out[12..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Whether a device with `vid:pid` may take this file (0xFFFF matches any).
    pub fn matches(&self, vid: u16, pid: u16) -> bool {
        (self.id_vendor == ANY_ID || self.id_vendor == vid)
            && (self.id_product == ANY_ID || self.id_product == pid)
    }
}

/// A vendor prefix before the payload. dfu-util passes prefixes on to the
/// device as part of the payload, and so do we; they are only reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    None,
    /// TI Stellaris (`dfu-prefix -s ADDRESS`): 8 bytes, load address and length.
    Stellaris {
        address: u32,
        payload_len: u32,
    },
    /// NXP LPC (`dfu-prefix -L`): 16 bytes.
    Lpc,
    /// ST DfuSe: the file is a [`super::DfuseFile`].
    Dfuse,
}

impl Prefix {
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Stellaris { .. } => "stellaris",
            Self::Lpc => "lpc",
            Self::Dfuse => "dfuse",
        }
    }

    fn detect(head: &[u8], payload_len: u64) -> Self {
        if head.starts_with(b"DfuSe") {
            return Self::Dfuse;
        }
        // Stellaris: 0x01 (DFU_PROG), 0x00, address/1024 (u16), payload length (u32).
        if let [0x01, 0x00, a0, a1, l0, l1, l2, l3, ..] = *head {
            let len = u32::from_le_bytes([l0, l1, l2, l3]);
            if u64::from(len) + 8 == payload_len {
                let address = u32::from(u16::from_le_bytes([a0, a1])) * 1024;
                return Self::Stellaris {
                    address,
                    payload_len: len,
                };
            }
        }
        // LPC: 0x1A 0x3F, then zeros and 0xFFFFFFFF at 12..16.
        if head.len() >= 16 && head[0] == 0x1A && head[1] == 0x3F && head[12..16] == [0xFF; 4] {
            return Self::Lpc;
        }
        Self::None
    }
}

/// What a firmware file holds: its payload (what goes to the device, a
/// prefix included, the suffix not), and its suffix and prefix if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DfuFile {
    /// Bytes in the file.
    pub size: u64,
    /// Bytes sent to the device: the file without its suffix.
    pub payload_len: u64,
    pub suffix: Option<Suffix>,
    pub prefix: Prefix,
}

impl DfuFile {
    /// Reads a file's suffix (checking its CRC over the whole file) and
    /// prefix. A file without the `UFD` signature is a raw image.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut source = FileSource::open(path)?;
        Self::inspect(&mut source, &path.display().to_string())
    }

    pub fn inspect(source: &mut dyn ReadAt, name: &str) -> Result<Self> {
        let size = source.size();
        let bad = |reason: String| Error::DfuFile {
            file: name.to_string(),
            reason,
        };
        let mut suffix = None;
        let mut payload_len = size;
        if size >= SUFFIX_LEN {
            let mut raw = [0u8; 16];
            source.read_exact_at(size - SUFFIX_LEN, &mut raw)?;
            if &raw[8..11] == b"UFD" {
                let u16_at = |i: usize| u16::from_le_bytes([raw[i], raw[i + 1]]);
                let length = raw[11];
                // dfu-util reads a short bLength as 16, and so do we.
                let suffix_len = u64::from(length).max(SUFFIX_LEN);
                if suffix_len > size {
                    return Err(bad(format!(
                        "its DFU suffix claims {suffix_len} bytes but the file has {size}"
                    )));
                }
                let crc = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
                let actual = crc_of(source, size - 4)?;
                if actual != crc {
                    return Err(bad(format!(
                        "its DFU suffix CRC is {crc:#010x} but the file's bytes give \
                         {actual:#010x}: the file is corrupt or was edited after the \
                         suffix was added"
                    )));
                }
                suffix = Some(Suffix {
                    bcd_device: u16_at(0),
                    id_product: u16_at(2),
                    id_vendor: u16_at(4),
                    bcd_dfu: u16_at(6),
                    length,
                    crc,
                });
                payload_len = size - suffix_len;
            }
        }
        let mut head = [0u8; 16];
        let n = head
            .len()
            .min(usize::try_from(payload_len).unwrap_or(usize::MAX));
        source.read_exact_at(0, &mut head[..n])?;
        let prefix = Prefix::detect(&head[..n], payload_len);
        Ok(Self {
            size,
            payload_len,
            suffix,
            prefix,
        })
    }
}

/// CRC (DFU flavour) of the first `len` bytes of `source`.
fn crc_of(source: &mut dyn ReadAt, len: u64) -> Result<u32> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < len {
        let n = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
        source.read_exact_at(at, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(!hasher.finalize())
}

/// Appends a DFU suffix to `path`, as `dfu-suffix -a -v VID -p PID -d DEVICE`
/// does; refuses a file that already has one.
pub fn add_suffix(
    path: impl AsRef<Path>,
    id_vendor: u16,
    id_product: u16,
    bcd_device: u16,
    bcd_dfu: u16,
) -> Result<Suffix> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let mut source = FileSource::open(path)?;
    let size = source.size();
    if size >= SUFFIX_LEN {
        let mut raw = [0u8; 16];
        source.read_exact_at(size - SUFFIX_LEN, &mut raw)?;
        if &raw[8..11] == b"UFD" {
            return Err(Error::DfuFile {
                file: name,
                reason: "already has a DFU suffix".into(),
            });
        }
    }
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < size {
        let n = usize::try_from((size - at).min(buf.len() as u64)).unwrap_or(buf.len());
        source.read_exact_at(at, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    let bytes = Suffix::encode(id_vendor, id_product, bcd_device, bcd_dfu, hasher);
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write", path, e))?;
    Ok(Suffix {
        bcd_device,
        id_product,
        id_vendor,
        bcd_dfu,
        length: 16,
        crc: u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dfu-suffix -v 0483 -p df11 -d 0200 -a` on the 32 bytes `A..Z012345`
    /// (observed with dfu-util 0.11).
    const DFU_SUFFIX_OUTPUT: [u8; 16] = [
        0x00, 0x02, 0x11, 0xdf, 0x83, 0x04, 0x00, 0x01, 0x55, 0x46, 0x44, 0x10, 0x1a, 0xd0, 0xba,
        0xa4,
    ];

    #[test]
    fn encodes_exactly_what_dfu_suffix_writes() {
        let payload = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(payload);
        let suffix = Suffix::encode(0x0483, 0xdf11, 0x0200, BCD_DFU, hasher);
        assert_eq!(suffix, DFU_SUFFIX_OUTPUT);
        let mut file = payload.to_vec();
        file.extend_from_slice(&suffix);
        assert_eq!(dfu_crc(&file[..file.len() - 4]), 0xa4ba_d01a);
        let parsed = DfuFile::inspect(&mut file.as_slice(), "fw.dfu").unwrap();
        assert_eq!(parsed.payload_len, 32);
        let s = parsed.suffix.unwrap();
        assert_eq!(
            (s.id_vendor, s.id_product, s.bcd_device),
            (0x0483, 0xdf11, 0x0200)
        );
        assert!(s.matches(0x0483, 0xdf11));
        assert!(!s.matches(0x0483, 0xdf12));
        assert_eq!(parsed.prefix, Prefix::None);
    }

    #[test]
    fn a_wrong_crc_is_refused_with_both_values() {
        let mut file = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345".to_vec();
        file.extend_from_slice(&DFU_SUFFIX_OUTPUT);
        file[3] ^= 1;
        let err = DfuFile::inspect(&mut file.as_slice(), "fw.dfu").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("CRC is 0xa4bad01a"), "{text}");
        assert!(text.starts_with("fw.dfu:"), "{text}");
    }

    #[test]
    fn files_without_the_signature_are_raw_and_wildcards_match() {
        let raw = vec![0x55u8; 100];
        let parsed = DfuFile::inspect(&mut raw.as_slice(), "raw.bin").unwrap();
        assert_eq!((parsed.suffix, parsed.payload_len), (None, 100));
        let tiny = vec![1u8; 3];
        assert_eq!(
            DfuFile::inspect(&mut tiny.as_slice(), "t")
                .unwrap()
                .payload_len,
            3
        );
        let any = Suffix {
            bcd_device: ANY_ID,
            id_product: ANY_ID,
            id_vendor: ANY_ID,
            bcd_dfu: BCD_DFU,
            length: 16,
            crc: 0,
        };
        assert!(any.matches(0x1234, 0x5678));
    }

    #[test]
    fn detects_the_prefixes_dfu_prefix_writes() {
        // `dfu-prefix -s 0x2000 -a` on 32 bytes: 01 00 08 00 20 00 00 00.
        let mut stellaris = vec![0x01, 0x00, 0x08, 0x00, 0x20, 0x00, 0x00, 0x00];
        stellaris.extend_from_slice(&[0x41; 32]);
        let parsed = DfuFile::inspect(&mut stellaris.as_slice(), "s").unwrap();
        assert_eq!(
            parsed.prefix,
            Prefix::Stellaris {
                address: 0x2000,
                payload_len: 32
            }
        );
        let mut lpc = vec![
            0x1a, 0x3f, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ];
        lpc.extend_from_slice(&[0x41; 32]);
        assert_eq!(
            DfuFile::inspect(&mut lpc.as_slice(), "l").unwrap().prefix,
            Prefix::Lpc
        );
    }
}
