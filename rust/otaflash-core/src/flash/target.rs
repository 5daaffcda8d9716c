//! Target URIs: `mtd:/dev/mtdN`, `file:PATH`, and
//! `sim:PATH?kind=nor|nand&size=BYTES&erase=BYTES&page=BYTES[&bad=3,7]`
//! (created on first use, reopened with its own geometry after that).
//!
//! Extra `sim:` parameters: `subpage=` (NAND write unit, default page/4 for
//! 2 KiB+ pages), `oob=`, `failing=5,9` (blocks that fail with EIO when
//! erased or programmed, as if they went bad during this run),
//! `bitflips=P` (chance per page read of a flipped bit), `erase_us=`,
//! `program_us=`, `read_us=` (timing model), `realtime=1` (sleep for it),
//! `seed=`. Sizes take `0x` hex and `k`/`M`/`G` (binary) suffixes.

use std::path::PathBuf;
use std::time::Duration;

use super::{BlockDevice, FlashKind, Geometry, ImageFile, Mtd, SimFlash, SimOptions, Timing};
use crate::{Error, Result};

/// A parsed target URI.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetSpec {
    Mtd(PathBuf),
    File(PathBuf),
    Sim(SimSpec),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimSpec {
    pub path: PathBuf,
    pub kind: Option<FlashKind>,
    pub size: Option<u64>,
    pub erase: Option<u64>,
    pub page: Option<u64>,
    pub subpage: Option<u64>,
    pub oob: Option<u32>,
    pub bad: Vec<u64>,
    pub failing: Vec<u64>,
    pub bitflips: f64,
    pub timing: Option<Timing>,
    pub seed: u64,
}

impl TargetSpec {
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |reason: String| Error::Target {
            target: uri.to_string(),
            reason,
        };
        let Some((scheme, rest)) = uri.split_once(':') else {
            return Err(bad(
                "is not a target URI; use mtd:/dev/mtdN, sim:PATH?kind=...&size=... or file:PATH"
                    .into(),
            ));
        };
        match scheme {
            "mtd" | "file" if rest.is_empty() => Err(bad("has no path".into())),
            "mtd" => Ok(Self::Mtd(rest.into())),
            "file" => Ok(Self::File(rest.into())),
            "sim" => parse_sim(rest).map(Self::Sim).map_err(bad),
            other => Err(bad(format!(
                "unknown target kind {other:?}; use mtd:, sim: or file:"
            ))),
        }
    }

    /// Opens the device the URI names.
    pub fn open(&self) -> Result<Box<dyn BlockDevice + Send>> {
        Ok(match self {
            Self::Mtd(path) => Box::new(Mtd::open(path)?),
            Self::File(path) => Box::new(ImageFile::open(path)?),
            Self::Sim(spec) => Box::new(spec.open()?),
        })
    }
}

/// Opens a target URI.
pub fn open_target(uri: &str) -> Result<Box<dyn BlockDevice + Send>> {
    TargetSpec::parse(uri)?.open()
}

impl SimSpec {
    pub fn open(&self) -> Result<SimFlash> {
        let options = SimOptions {
            bad_blocks: self.bad.clone(),
            bitflip_probability: self.bitflips,
            timing: self.timing,
            seed: self.seed,
        };
        let name = format!("sim:{}", self.path.display());
        let mut sim = if self.path.exists() {
            let sim = SimFlash::open_file(&self.path, None, options)?;
            let g = sim.geometry();
            let mismatch = [
                (
                    "kind",
                    self.kind.map(|k| k.name().to_string()),
                    g.kind.name().to_string(),
                ),
                ("size", self.size.map(|v| v.to_string()), g.size.to_string()),
                (
                    "erase",
                    self.erase.map(|v| v.to_string()),
                    g.erase_size.to_string(),
                ),
                (
                    "page",
                    self.page.map(|v| v.to_string()),
                    g.page_size.to_string(),
                ),
                (
                    "subpage",
                    self.subpage.map(|v| v.to_string()),
                    g.write_size.to_string(),
                ),
            ]
            .into_iter()
            .find(|(_, asked, have)| asked.as_ref().is_some_and(|a| a != have));
            if let Some((field, asked, have)) = mismatch {
                return Err(Error::Target {
                    target: name,
                    reason: format!(
                        "exists with {field}={have}, not {}; remove the file or drop the parameter",
                        asked.unwrap_or_default()
                    ),
                });
            }
            sim
        } else {
            let geometry = self.geometry().map_err(|reason| Error::Target {
                target: name.clone(),
                reason,
            })?;
            SimFlash::open_file(&self.path, Some(geometry), options)?
        };
        for &block in &self.failing {
            sim.fail_block(block, 0);
        }
        Ok(sim)
    }

    /// The geometry of a new simulated flash, defaults filled in per kind.
    pub fn geometry(&self) -> std::result::Result<Geometry, String> {
        let kind = self
            .kind
            .ok_or("does not exist yet; say kind=nor or kind=nand (and size=) to create it")?;
        let size = self
            .size
            .ok_or("does not exist yet; say size=BYTES to create it")?;
        let (erase, page) = match kind {
            FlashKind::Nand => (self.erase.unwrap_or(128 << 10), self.page.unwrap_or(2048)),
            _ => (self.erase.unwrap_or(64 << 10), self.page.unwrap_or(256)),
        };
        let write = match kind {
            FlashKind::Nand => self
                .subpage
                .unwrap_or(if page >= 2048 { page / 4 } else { page }),
            _ => self.subpage.unwrap_or(1),
        };
        let oob = self.oob.unwrap_or(if kind == FlashKind::Nand {
            (page / 32) as u32
        } else {
            0
        });
        let geometry = Geometry {
            kind,
            size,
            erase_size: erase,
            write_size: write,
            page_size: page,
            oob_size: oob,
        };
        geometry.validate().map_err(|e| e.to_string())?;
        Ok(geometry)
    }
}

fn parse_sim(rest: &str) -> std::result::Result<SimSpec, String> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return Err("has no path; use sim:PATH?kind=nor&size=1M".into());
    }
    let mut spec = SimSpec {
        path: path.into(),
        ..Default::default()
    };
    let mut timing = Timing::default();
    let mut timed = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("parameter {pair:?} has no value (use key=value)"))?;
        let number = || parse_size(value).ok_or_else(|| format!("{key}={value} is not a number"));
        let micros = || number().map(Duration::from_micros);
        match key {
            "kind" => {
                spec.kind = Some(match value {
                    "nor" => FlashKind::Nor,
                    "nand" => FlashKind::Nand,
                    _ => return Err(format!("kind={value}: use kind=nor or kind=nand")),
                });
            }
            "size" => spec.size = Some(number()?),
            "erase" => spec.erase = Some(number()?),
            "page" => spec.page = Some(number()?),
            "subpage" => spec.subpage = Some(number()?),
            "oob" => {
                spec.oob = Some(
                    u32::try_from(number()?).map_err(|_| format!("oob={value} is too large"))?,
                );
            }
            "bad" => spec.bad = parse_list(value)?,
            "failing" => spec.failing = parse_list(value)?,
            "bitflips" => {
                spec.bitflips = value
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| format!("bitflips={value}: give a probability from 0 to 1"))?;
            }
            "erase_us" => (timing.erase_block, timed) = (micros()?, true),
            "program_us" => (timing.program_page, timed) = (micros()?, true),
            "read_us" => (timing.read_page, timed) = (micros()?, true),
            "realtime" => timing.realtime = matches!(value, "1" | "true" | "yes"),
            "seed" => spec.seed = number()?,
            other => {
                return Err(format!(
                    "unknown parameter {other:?}; known: kind, size, erase, page, subpage, oob, bad, failing, bitflips, erase_us, program_us, read_us, realtime, seed"
                ));
            }
        }
    }
    if timed || timing.realtime {
        spec.timing = Some(timing);
    }
    Ok(spec)
}

fn parse_list(value: &str) -> std::result::Result<Vec<u64>, String> {
    value
        .split(',')
        .filter(|v| !v.is_empty())
        .map(|v| parse_size(v).ok_or_else(|| format!("{v:?} in {value:?} is not a block number")))
        .collect()
}

/// `4096`, `0x1000`, `4k`, `4K`, `4KiB`, `1M`, `2G`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    let scale: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(
            TargetSpec::parse("mtd:/dev/mtd3").unwrap(),
            TargetSpec::Mtd("/dev/mtd3".into())
        );
        assert_eq!(
            TargetSpec::parse("file:out.bin").unwrap(),
            TargetSpec::File("out.bin".into())
        );
        let TargetSpec::Sim(spec) =
            TargetSpec::parse("sim:/tmp/f.sim?kind=nand&size=128M&erase=131072&page=2048&bad=3,7")
                .unwrap()
        else {
            panic!("not sim")
        };
        assert_eq!(spec.kind, Some(FlashKind::Nand));
        assert_eq!(spec.size, Some(128 << 20));
        assert_eq!(spec.bad, vec![3, 7]);
        let g = spec.geometry().unwrap();
        assert_eq!(
            (g.erase_size, g.page_size, g.write_size, g.oob_size),
            (131072, 2048, 512, 64)
        );
        for (uri, needle) in [
            ("/dev/mtd0", "not a target URI"),
            ("usb:1", "unknown target kind"),
            ("sim:/x?kind=emmc", "kind=nor or kind=nand"),
            ("sim:/x?size=abc", "not a number"),
            ("sim:/x?colour=red", "unknown parameter"),
            ("mtd:", "no path"),
        ] {
            let e = TargetSpec::parse(uri).unwrap_err().to_string();
            assert!(e.contains(needle), "{uri}: {e}");
        }
        assert_eq!(parse_size("0x10"), Some(16));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1x"), None);
    }
}
