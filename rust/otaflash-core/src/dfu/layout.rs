//! The DfuSe memory layout an alt setting's name describes (ST AN3156), as
//! dfu-util parses it:
//!
//! ```text
//! @Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg
//! @NAME /0xADDRESS/COUNT*SIZE[ |B|K|M]TYPE[,...][/0xADDRESS/...]
//! ```
//!
//! TYPE is a letter `a`..`g` whose low three bits say readable (1),
//! erasable (2) and writable (4): `g` is all three.

use std::collections::BTreeSet;

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    pub page_size: u64,
    pub readable: bool,
    pub erasable: bool,
    pub writable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    pub name: String,
    pub segments: Vec<Segment>,
}

/// Pages to erase (start, size) before writing, in address order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErasePlan {
    pub pages: Vec<(u64, u64)>,
}

impl ErasePlan {
    pub fn bytes(&self) -> u64 {
        self.pages.iter().map(|&(_, size)| size).sum()
    }
}

fn take_number(text: &str, radix: u32) -> Option<(u64, &str)> {
    let digits = text
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(text.len());
    let value = u64::from_str_radix(text.get(..digits)?, radix).ok()?;
    Some((value, text.get(digits..)?))
}

impl MemoryLayout {
    pub fn parse(description: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "cannot read the DfuSe memory layout {description:?}: {why}"
            ))
        };
        let rest = description
            .strip_prefix('@')
            .ok_or_else(|| bad("it does not start with '@'"))?;
        let (name, mut rest) = rest
            .split_once('/')
            .ok_or_else(|| bad("no '/' after the name"))?;
        let mut segments = Vec::new();
        while !rest.is_empty() {
            let text = rest
                .strip_prefix("0x")
                .or_else(|| rest.strip_prefix("0X"))
                .ok_or_else(|| bad("an address must start with 0x"))?;
            let (mut address, text) = take_number(text, 16).ok_or_else(|| bad("bad address"))?;
            let mut text = text
                .strip_prefix('/')
                .ok_or_else(|| bad("no '/' after an address"))?;
            loop {
                let (count, after) =
                    take_number(text.trim_start(), 10).ok_or_else(|| bad("bad sector count"))?;
                let after = after
                    .strip_prefix('*')
                    .ok_or_else(|| bad("no '*' after a sector count"))?;
                let (size, after) = take_number(after, 10).ok_or_else(|| bad("bad sector size"))?;
                let mut chars = after.chars();
                let (scale, after) = match chars.next() {
                    Some('K') => (1 << 10, chars.as_str()),
                    Some('M') => (1 << 20, chars.as_str()),
                    Some(' ' | 'B') => (1, chars.as_str()),
                    // dfu-util reads a missing multiplier as the type letter.
                    _ => (1, after),
                };
                let end_of_type = after.find([',', '/']).unwrap_or(after.len());
                let kind = after[..end_of_type].trim();
                let bits = match kind.as_bytes().first() {
                    Some(&c @ b'a'..=b'g') => c & 7,
                    _ => return Err(bad(&format!("segment type {kind:?} is not a..g"))),
                };
                let page_size = size * scale;
                if page_size == 0 || count == 0 {
                    return Err(bad("a segment with no bytes"));
                }
                let end = count
                    .checked_mul(page_size)
                    .and_then(|len| address.checked_add(len))
                    .filter(|&end| end <= 1 << 32)
                    .ok_or_else(|| bad("a segment runs past 4 GiB"))?;
                segments.push(Segment {
                    start: address,
                    end,
                    page_size,
                    readable: bits & 1 != 0,
                    erasable: bits & 2 != 0,
                    writable: bits & 4 != 0,
                });
                address = end;
                let after = &after[end_of_type..];
                match after.strip_prefix(',') {
                    Some(next) => text = next,
                    None => {
                        rest = after.strip_prefix('/').unwrap_or(after);
                        break;
                    }
                }
            }
        }
        if segments.is_empty() {
            return Err(bad("it names no memory"));
        }
        Ok(Self {
            name: name.trim().to_string(),
            segments,
        })
    }

    pub fn segment_at(&self, address: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| s.start <= address && address < s.end)
    }

    pub fn start(&self) -> u64 {
        self.segments.iter().map(|s| s.start).min().unwrap_or(0)
    }

    /// Checks that every byte of `regions` (start, length) lands in
    /// writable memory, and lists the pages to erase first. Nothing is sent
    /// to a device before this passes.
    pub fn plan(&self, regions: &[(u64, u64)]) -> Result<ErasePlan> {
        let mut pages = BTreeSet::new();
        for &(start, len) in regions {
            let end = start
                .checked_add(len)
                .ok_or_else(|| Error::Geometry("a region runs past 2^64".into()))?;
            let mut at = start;
            while at < end {
                let segment = self.segment_at(at).ok_or_else(|| {
                    Error::Geometry(format!(
                        "the image ({len} bytes at {start:#010x}) does not fit {}: \
                         {at:#010x} is outside {}",
                        self.name,
                        self.describe()
                    ))
                })?;
                if !segment.writable {
                    return Err(Error::Geometry(format!(
                        "the image ({len} bytes at {start:#010x}) covers {at:#010x}, which {} \
                         marks read-only ({:#010x}-{:#010x})",
                        self.name,
                        segment.start,
                        segment.end - 1
                    )));
                }
                let page = at - (at - segment.start) % segment.page_size;
                if segment.erasable {
                    pages.insert((page, segment.page_size));
                }
                at = (page + segment.page_size).min(end);
            }
        }
        Ok(ErasePlan {
            pages: pages.into_iter().collect(),
        })
    }

    /// `0x08000000-0x0801ffff (128 KiB)` for each contiguous run.
    pub fn describe(&self) -> String {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for s in &self.segments {
            match runs.last_mut() {
                Some(last) if last.1 == s.start => last.1 = s.end,
                _ => runs.push((s.start, s.end)),
            }
        }
        runs.iter()
            .map(|&(a, b)| format!("{a:#010x}-{:#010x} ({} KiB)", b - 1, (b - a) / 1024))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_layouts_st_bootloaders_report() {
        let f1 = MemoryLayout::parse("@Internal Flash  /0x08000000/64*002Kg").unwrap();
        assert_eq!(f1.name, "Internal Flash");
        assert_eq!(f1.segments.len(), 1);
        assert_eq!(f1.segments[0].end, 0x0802_0000);
        assert_eq!(f1.segments[0].page_size, 2048);
        assert!(f1.segments[0].writable && f1.segments[0].erasable);

        let f4 =
            MemoryLayout::parse("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg").unwrap();
        let sizes: Vec<_> = f4.segments.iter().map(|s| (s.start, s.page_size)).collect();
        assert_eq!(
            sizes,
            [
                (0x0800_0000, 16384),
                (0x0801_0000, 65536),
                (0x0802_0000, 131_072)
            ]
        );
        assert_eq!(f4.segments[2].end, 0x0810_0000);

        let opt = MemoryLayout::parse("@Option Bytes  /0x1FFFC000/01*016 e").unwrap();
        assert_eq!(opt.segments[0].page_size, 16);
        assert!(opt.segments[0].readable && !opt.segments[0].erasable);

        let two = MemoryLayout::parse("@Flash/0x08000000/8*1Ka,56*1Kg/0x20000000/1*16Ke").unwrap();
        assert_eq!(two.segments.len(), 3);
        assert!(!two.segments[0].writable);
        assert_eq!(two.segments[2].start, 0x2000_0000);
        assert!(two.describe().contains("0x20000000-0x20003fff (16 KiB)"));
    }

    #[test]
    fn refuses_what_is_not_a_layout() {
        for bad in [
            "Internal",
            "@X",
            "@X/08000000/1*1Kg",
            "@X/0x0/1*1Kz",
            "@X/0x0/0*1Kg",
        ] {
            assert!(MemoryLayout::parse(bad).is_err(), "{bad}");
        }
        assert!(MemoryLayout::parse("@X/0xFFFFFFFF/2*1Kg").is_err());
    }

    #[test]
    fn plans_erases_over_mixed_sectors_and_refuses_what_does_not_fit() {
        let f4 =
            MemoryLayout::parse("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg").unwrap();
        let plan = f4.plan(&[(0x0800_3000, 0x1_0000)]).unwrap();
        assert_eq!(
            plan.pages,
            [
                (0x0800_0000, 16384),
                (0x0800_4000, 16384),
                (0x0800_8000, 16384),
                (0x0800_C000, 16384),
                (0x0801_0000, 65536)
            ]
        );
        let err = f4.plan(&[(0x080F_0000, 0x2_0000)]).unwrap_err().to_string();
        assert!(err.contains("does not fit Internal Flash"), "{err}");
        assert!(err.contains("0x08100000 is outside"), "{err}");
        let ro = MemoryLayout::parse("@Flash/0x08000000/8*1Ka,56*1Kg").unwrap();
        assert!(
            ro.plan(&[(0x0800_0000, 10)])
                .unwrap_err()
                .to_string()
                .contains("read-only")
        );
        assert_eq!(ro.plan(&[(0x0800_2000, 1)]).unwrap().bytes(), 1024);
        assert!(ro.plan(&[(0x0800_2000, 0)]).unwrap().pages.is_empty());
    }
}
