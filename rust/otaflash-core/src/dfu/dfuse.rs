//! ST DfuSe `.dfu` files (UM0391): a prefix, one image per target (alt
//! setting), each a list of elements (address, bytes), then a DFU suffix
//! with bcdDFU 0x011A. All integers are little-endian.
//!
//! ```text
//! "DfuSe" bVersion=1 DFUImageSize:u32 bTargets:u8                (11 bytes)
//! per target: "Target" bAlternateSetting:u8 bTargetNamed:u32
//!             szTargetName[255] dwTargetSize:u32 dwNbElements:u32 (274 bytes)
//! per element: dwElementAddress:u32 dwElementSize:u32 data
//! ```
//!
//! Parsing records where each element's bytes are in the file, it never
//! loads them, and every count and size is checked against the bytes that
//! are really there before it is used.

use std::path::Path;

use super::suffix::{BCD_DFUSE, DfuFile, Prefix, Suffix};
use crate::io::{FileSource, ReadAt};
use crate::{Error, Result};

const PREFIX_LEN: u64 = 11;
const TARGET_PREFIX_LEN: u64 = 274;
const ELEMENT_HEADER_LEN: u64 = 8;
const NAME_LEN: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DfuseElement {
    pub address: u32,
    /// Where the element's bytes start in the file.
    pub file_offset: u64,
    pub size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DfuseTarget {
    pub alt: u8,
    pub name: Option<String>,
    pub elements: Vec<DfuseElement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DfuseFile {
    pub targets: Vec<DfuseTarget>,
    pub suffix: Suffix,
}

fn le32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes.get(..4).unwrap_or(&[0; 4]));
    u32::from_le_bytes(word)
}

impl DfuseFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut source = FileSource::open(path)?;
        Self::parse(&mut source, &path.display().to_string())
    }

    pub fn parse(source: &mut dyn ReadAt, name: &str) -> Result<Self> {
        let bad = |reason: String| Error::DfuFile {
            file: name.to_string(),
            reason,
        };
        let file = DfuFile::inspect(source, name)?;
        if file.prefix != Prefix::Dfuse {
            return Err(bad("is not a DfuSe file (no \"DfuSe\" prefix)".into()));
        }
        let suffix = file
            .suffix
            .ok_or_else(|| bad("is a DfuSe file without a DFU suffix".into()))?;
        let end = file.payload_len;
        if end < PREFIX_LEN {
            return Err(bad("is too short for a DfuSe prefix".into()));
        }
        let mut prefix = [0u8; PREFIX_LEN as usize];
        source.read_exact_at(0, &mut prefix)?;
        if prefix[5] != 1 {
            return Err(bad(format!(
                "has DfuSe format version {}, only version 1 exists",
                prefix[5]
            )));
        }
        let image_size = u64::from(le32(&prefix[6..10]));
        if image_size != end {
            return Err(bad(format!(
                "says its DfuSe image has {image_size} bytes but {end} are there before the \
                 suffix: the file is truncated or corrupt"
            )));
        }
        let count = prefix[10];
        let mut targets = Vec::with_capacity(usize::from(count));
        let mut at = PREFIX_LEN;
        for index in 0..count {
            if end - at < TARGET_PREFIX_LEN {
                return Err(bad(format!("target {index} is cut short")));
            }
            let mut head = [0u8; TARGET_PREFIX_LEN as usize];
            source.read_exact_at(at, &mut head)?;
            if &head[..6] != b"Target" {
                return Err(bad(format!(
                    "target {index} at byte {at} lacks its \"Target\" signature"
                )));
            }
            let alt = head[6];
            let named = le32(&head[7..11]) != 0;
            let raw_name = &head[11..11 + NAME_LEN];
            let name_len = raw_name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
            let name = named.then(|| String::from_utf8_lossy(&raw_name[..name_len]).into_owned());
            let target_size = u64::from(le32(&head[266..270]));
            let element_count = le32(&head[270..274]);
            at += TARGET_PREFIX_LEN;
            if target_size > end - at {
                return Err(bad(format!(
                    "target {index} claims {target_size} bytes, only {} are left",
                    end - at
                )));
            }
            let target_end = at + target_size;
            let mut elements = Vec::new();
            for e in 0..element_count {
                if target_end - at < ELEMENT_HEADER_LEN {
                    return Err(bad(format!("element {e} of target {index} is cut short")));
                }
                let mut header = [0u8; 8];
                source.read_exact_at(at, &mut header)?;
                let address = le32(&header[..4]);
                let size = le32(&header[4..]);
                at += ELEMENT_HEADER_LEN;
                if u64::from(size) > target_end - at {
                    return Err(bad(format!(
                        "element {e} of target {index} claims {size} bytes, only {} are left",
                        target_end - at
                    )));
                }
                if u64::from(address) + u64::from(size) > 1 << 32 {
                    return Err(bad(format!(
                        "element {e} of target {index} runs past the 4 GiB address space"
                    )));
                }
                elements.push(DfuseElement {
                    address,
                    file_offset: at,
                    size,
                });
                at += u64::from(size);
            }
            if at != target_end {
                return Err(bad(format!(
                    "target {index} has {} bytes its elements do not account for",
                    target_end - at
                )));
            }
            targets.push(DfuseTarget {
                alt,
                name,
                elements,
            });
        }
        if at != end {
            return Err(bad(format!("has {} bytes after its last target", end - at)));
        }
        Ok(Self { targets, suffix })
    }
}

/// One target to write into a DfuSe file.
#[derive(Clone, Debug)]
pub struct TargetImage<'a> {
    pub alt: u8,
    pub name: Option<&'a str>,
    pub elements: Vec<(u32, &'a [u8])>,
}

/// The bytes of a DfuSe file holding `targets`, suffix included
/// (bcdDFU 0x011A), as ST's DfuSe tools and `dfu-util` read them.
pub fn build(
    targets: &[TargetImage<'_>],
    id_vendor: u16,
    id_product: u16,
    bcd_device: u16,
) -> Result<Vec<u8>> {
    let invalid = |text: String| Error::InvalidArgument(text);
    let count = u8::try_from(targets.len())
        .map_err(|_| invalid(format!("{} targets; a DfuSe file holds 255", targets.len())))?;
    let mut out = Vec::new();
    out.extend_from_slice(b"DfuSe\x01\0\0\0\0");
    out.push(count);
    for target in targets {
        let mut size: u64 = 0;
        for (address, data) in &target.elements {
            if u64::from(*address) + data.len() as u64 > 1 << 32 {
                return Err(invalid(format!(
                    "element at {address:#x} of {} bytes runs past 4 GiB",
                    data.len()
                )));
            }
            size += ELEMENT_HEADER_LEN + data.len() as u64;
        }
        let size = u32::try_from(size)
            .map_err(|_| invalid(format!("target {} is over 4 GiB", target.alt)))?;
        out.extend_from_slice(b"Target");
        out.push(target.alt);
        let mut name = [0u8; NAME_LEN];
        if let Some(text) = target.name {
            let bytes = text.as_bytes();
            if bytes.len() >= NAME_LEN {
                return Err(invalid(format!(
                    "target name {text:?} is longer than 254 bytes"
                )));
            }
            name[..bytes.len()].copy_from_slice(bytes);
        }
        out.extend_from_slice(&u32::from(target.name.is_some()).to_le_bytes());
        out.extend_from_slice(&name);
        out.extend_from_slice(&size.to_le_bytes());
        let elements = u32::try_from(target.elements.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&elements.to_le_bytes());
        for (address, data) in &target.elements {
            out.extend_from_slice(&address.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
    }
    let image_size =
        u32::try_from(out.len()).map_err(|_| invalid("the DfuSe image is over 4 GiB".into()))?;
    out[6..10].copy_from_slice(&image_size.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out);
    let suffix = Suffix::encode(id_vendor, id_product, bcd_device, BCD_DFUSE, hasher);
    out.extend_from_slice(&suffix);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let a = vec![0xA5u8; 3000];
        let b = b"second element".to_vec();
        let c = vec![0x11u8; 16];
        build(
            &[
                TargetImage {
                    alt: 0,
                    name: Some("ST..."),
                    elements: vec![(0x0800_0000, &a), (0x0800_4000, &b)],
                },
                TargetImage {
                    alt: 1,
                    name: None,
                    elements: vec![(0x1FFF_C000, &c)],
                },
            ],
            0x0483,
            0xdf11,
            0x2200,
        )
        .unwrap()
    }

    #[test]
    fn round_trips_targets_and_elements() {
        let bytes = sample();
        let file = DfuseFile::parse(&mut bytes.as_slice(), "x.dfu").unwrap();
        assert_eq!(file.suffix.bcd_dfu, BCD_DFUSE);
        assert_eq!(file.suffix.id_vendor, 0x0483);
        assert_eq!(file.targets.len(), 2);
        assert_eq!(file.targets[0].name.as_deref(), Some("ST..."));
        assert_eq!(file.targets[1].name, None);
        let e = &file.targets[0].elements[1];
        assert_eq!((e.address, e.size), (0x0800_4000, 14));
        let at = usize::try_from(e.file_offset).unwrap();
        assert_eq!(&bytes[at..at + 14], b"second element");
        assert_eq!(file.targets[1].elements[0].address, 0x1FFF_C000);
    }

    #[test]
    fn every_corruption_is_refused_with_a_reason() {
        let good = sample();
        let reparse = |mut bytes: Vec<u8>| {
            // Keep the suffix CRC right so the structure checks are reached.
            let n = bytes.len() - 16;
            bytes.truncate(n);
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&bytes);
            bytes.extend_from_slice(&Suffix::encode(0x0483, 0xdf11, 0, BCD_DFUSE, hasher));
            DfuseFile::parse(&mut bytes.as_slice(), "x.dfu")
                .unwrap_err()
                .to_string()
        };
        let mut size = good.clone();
        size[6] ^= 1;
        assert!(reparse(size).contains("truncated or corrupt"));
        let mut element = good.clone();
        let first_element = (PREFIX_LEN + TARGET_PREFIX_LEN + 4) as usize;
        element[first_element..first_element + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(reparse(element).contains("claims"));
        let mut signature = good.clone();
        signature[PREFIX_LEN as usize] = b'X';
        assert!(reparse(signature).contains("signature"));
        let mut version = good.clone();
        version[5] = 2;
        assert!(reparse(version).contains("version 2"));
        let mut count = good;
        count[10] = 3;
        assert!(reparse(count).contains("cut short"));
    }
}
