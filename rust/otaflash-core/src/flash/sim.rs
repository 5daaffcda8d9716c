//! A simulated NOR or NAND flash that behaves as the kernel's nandsim does
//! (not mtdram, which overwrites like RAM): erase sets 0xFF and must be
//! block-aligned, programming can only clear bits (new = old AND data), NAND
//! programs are write-unit aligned, bad blocks fail with EIO.
//!
//! Fault injection for the power-cut campaigns: every mutating flash
//! operation (one block erase, one page program, one bad-block mark) is
//! numbered; a [`PowerCut`] stops the device at operation N, optionally
//! tearing that operation (a half-erased block, a partly programmed page, a
//! page with a random subset of its bits cleared). Blocks can go bad during
//! a run, reads can suffer transient bit flips, and a timing model
//! accumulates (or sleeps) the time real flash would take.
//!
//! Memory-backed, or file-backed: a 4 KiB-aligned header (geometry and the
//! bad-block table) followed by the contents, so a `sim:` target survives
//! between runs.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BlockDevice, FlashKind, Geometry, failed, invalid};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"OTAFSIM\x01";
const HEADER_FIXED: u64 = 56;

/// How the operation hit by a power cut ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tear {
    /// It never reaches the flash.
    Clean,
    /// It stops part-way: an erase leaves a prefix of the block erased, a
    /// program a prefix of the page programmed.
    Prefix,
    /// It leaves a random subset of the bits it would change changed.
    RandomBits,
}

/// Cut power when operation `at_op` (counted from 0) starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerCut {
    pub at_op: u64,
    pub tear: Tear,
    /// Seeds where a prefix ends and which bits a torn operation changes.
    pub seed: u64,
}

/// Time per unit, as a datasheet gives it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub erase_block: Duration,
    pub program_page: Duration,
    pub read_page: Duration,
    /// Sleep for the modelled time instead of only adding it up.
    pub realtime: bool,
}

#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// Blocks marked bad in the bad-block table when the flash is created.
    pub bad_blocks: Vec<u64>,
    /// Chance per page read that one bit reads flipped (the stored data stays
    /// intact, as with a correctable error that ECC missed).
    pub bitflip_probability: f64,
    pub timing: Option<Timing>,
    pub seed: u64,
}

/// What the device has been asked to do, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub block_erases: u64,
    pub page_programs: u64,
    pub bytes_read: u64,
    pub bad_marks: u64,
    /// Modelled time of everything so far.
    pub elapsed: Duration,
}

#[derive(Debug)]
enum Store {
    Memory(Vec<u8>),
    File {
        file: File,
        path: PathBuf,
        data_at: u64,
    },
}

#[derive(Debug)]
pub struct SimFlash {
    name: String,
    geometry: Geometry,
    store: Store,
    bad: Vec<bool>,
    /// Blocks whose erase/program fail with EIO once `ops` reaches the value.
    failing: BTreeMap<u64, u64>,
    ops: u64,
    cut: Option<PowerCut>,
    powered: bool,
    bitflip_probability: f64,
    timing: Option<Timing>,
    rng: fastrand::Rng,
    stats: SimStats,
}

impl SimFlash {
    /// A flash in memory, erased (all 0xFF) except for what `options` says.
    pub fn new(geometry: Geometry, options: SimOptions) -> Result<Self> {
        geometry.validate()?;
        let size = usize::try_from(geometry.size)
            .map_err(|_| Error::Geometry("simulated flash too large for memory".into()))?;
        let mut sim = Self::with_store(
            "sim:memory".into(),
            geometry,
            Store::Memory(vec![0xFF; size]),
            &options,
        )?;
        for &block in &options.bad_blocks {
            sim.set_bad(block)?;
        }
        Ok(sim)
    }

    /// Opens the flash stored at `path`, or creates it (erased, with
    /// `options.bad_blocks` marked) with `geometry` when it does not exist.
    /// An existing file keeps its own geometry; asking for another is an error.
    pub fn open_file(
        path: impl AsRef<Path>,
        geometry: Option<Geometry>,
        options: SimOptions,
    ) -> Result<Self> {
        let path = path.as_ref();
        let name = format!("sim:{}", path.display());
        if path.exists() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| Error::io("open", path, e))?;
            let (stored, data_at, bad) = read_header(&file, path)?;
            if let Some(asked) = geometry
                && asked != stored
            {
                return Err(Error::Target {
                    target: name,
                    reason: format!(
                        "exists with another geometry ({}); remove the file or ask for the same one",
                        describe(&stored)
                    ),
                });
            }
            let store = Store::File {
                file,
                path: path.to_path_buf(),
                data_at,
            };
            let mut sim = Self::with_store(name, stored, store, &options)?;
            sim.bad = bad;
            return Ok(sim);
        }
        let geometry = geometry.ok_or_else(|| Error::Target {
            target: name.clone(),
            reason: "does not exist yet; give kind, size, erase and page to create it".into(),
        })?;
        geometry.validate()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        let data_at = header_len(&geometry);
        let mut header = vec![0u8; usize::try_from(data_at).unwrap_or(4096)];
        write_header(&mut header, &geometry, data_at);
        file.write_all_at(&header, 0)
            .map_err(|e| Error::io("write", path, e))?;
        // Erased flash reads 0xFF: write it out rather than leave a sparse
        // hole of zeros.
        let chunk = vec![0xFFu8; 1 << 20];
        let mut at = 0u64;
        while at < geometry.size {
            let n = (geometry.size - at).min(chunk.len() as u64) as usize;
            file.write_all_at(&chunk[..n], data_at + at)
                .map_err(|e| Error::io("write", path, e))?;
            at += n as u64;
        }
        let store = Store::File {
            file,
            path: path.to_path_buf(),
            data_at,
        };
        let mut sim = Self::with_store(name, geometry, store, &options)?;
        for &block in &options.bad_blocks {
            sim.set_bad(block)?;
        }
        Ok(sim)
    }

    fn with_store(
        name: String,
        geometry: Geometry,
        store: Store,
        options: &SimOptions,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&options.bitflip_probability) {
            return Err(Error::InvalidArgument(format!(
                "bit-flip probability {} is not between 0 and 1",
                options.bitflip_probability
            )));
        }
        let blocks = usize::try_from(geometry.blocks()).unwrap_or(usize::MAX);
        Ok(Self {
            name,
            geometry,
            store,
            bad: vec![false; blocks],
            failing: BTreeMap::new(),
            ops: 0,
            cut: None,
            powered: true,
            bitflip_probability: options.bitflip_probability,
            timing: options.timing,
            rng: fastrand::Rng::with_seed(options.seed),
            stats: SimStats::default(),
        })
    }

    /// Renames the device in messages.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Mutating operations so far (the numbering power cuts use).
    pub fn operations(&self) -> u64 {
        self.ops
    }

    pub fn stats(&self) -> SimStats {
        self.stats
    }

    pub fn set_timing(&mut self, timing: Option<Timing>) {
        self.timing = timing;
    }

    pub fn set_bitflip_probability(&mut self, probability: f64) {
        self.bitflip_probability = probability.clamp(0.0, 1.0);
    }

    /// Arms a power cut (replacing any armed one).
    pub fn arm_power_cut(&mut self, cut: PowerCut) {
        self.cut = Some(cut);
    }

    /// Power comes back: the device works again and no cut is armed.
    pub fn power_on(&mut self) {
        self.cut = None;
        self.powered = true;
    }

    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// From operation `after_op` on, erasing or programming `block` fails
    /// with EIO: a block that goes bad during a run.
    pub fn fail_block(&mut self, block: u64, after_op: u64) {
        self.failing.insert(block, after_op);
    }

    /// The blocks marked bad in the bad-block table.
    pub fn bad_blocks(&self) -> Vec<u64> {
        (0u64..)
            .zip(&self.bad)
            .filter_map(|(i, &bad)| bad.then_some(i))
            .collect()
    }

    /// The whole contents (tests and snapshots).
    pub fn contents(&mut self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(self.geometry.size).unwrap_or(0)];
        self.load(0, &mut buf)?;
        Ok(buf)
    }

    /// Copies contents and bad-block table from `other` (same geometry) and
    /// resets counters: restoring a snapshot between campaign runs.
    pub fn restore_from(&mut self, other: &Self) -> Result<()> {
        if other.geometry != self.geometry {
            return Err(Error::Geometry(
                "restore from a flash of another geometry".into(),
            ));
        }
        match (&mut self.store, &other.store) {
            (Store::Memory(mine), Store::Memory(theirs)) => mine.copy_from_slice(theirs),
            _ => return Err(Error::InvalidArgument("snapshots are memory-only".into())),
        }
        self.bad.clone_from(&other.bad);
        self.failing.clone_from(&other.failing);
        self.ops = 0;
        self.cut = None;
        self.powered = true;
        self.stats = SimStats::default();
        Ok(())
    }

    /// A memory copy of this flash (contents, bad blocks, options).
    pub fn snapshot(&mut self) -> Result<Self> {
        let contents = self.contents()?;
        Ok(Self {
            name: self.name.clone(),
            geometry: self.geometry,
            store: Store::Memory(contents),
            bad: self.bad.clone(),
            failing: self.failing.clone(),
            ops: 0,
            cut: None,
            powered: true,
            bitflip_probability: self.bitflip_probability,
            timing: self.timing,
            rng: self.rng.clone(),
            stats: SimStats::default(),
        })
    }

    fn set_bad(&mut self, block: u64) -> Result<()> {
        let index = usize::try_from(block).ok().filter(|&i| i < self.bad.len());
        let Some(index) = index else {
            return Err(Error::Geometry(format!(
                "bad block {block} is past the last block ({})",
                self.geometry.blocks().saturating_sub(1)
            )));
        };
        self.bad[index] = true;
        if let Store::File { file, path, .. } = &self.store {
            let byte_at = HEADER_FIXED + block / 8;
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, byte_at)
                .map_err(|e| Error::io("read", path.as_path(), e))?;
            byte[0] |= 1 << (block % 8);
            file.write_all_at(&byte, byte_at)
                .map_err(|e| Error::io("write", path.as_path(), e))?;
        }
        Ok(())
    }

    fn block_is_bad(&self, block: u64) -> bool {
        usize::try_from(block)
            .ok()
            .and_then(|i| self.bad.get(i).copied())
            .unwrap_or(false)
    }

    fn block_fails(&self, block: u64) -> bool {
        self.failing
            .get(&block)
            .is_some_and(|&from| self.ops > from)
    }

    /// Counts one mutating operation; `Err` when power is (or now goes) off.
    /// `Ok(Some(tear))` means this operation is the one the cut tears.
    fn begin_op(&mut self) -> Result<Option<(Tear, u64)>> {
        if !self.powered {
            return Err(self.power_cut_error());
        }
        let index = self.ops;
        self.ops += 1;
        match self.cut {
            Some(cut) if cut.at_op == index => {
                self.powered = false;
                Ok(Some((cut.tear, cut.seed)))
            }
            _ => Ok(None),
        }
    }

    fn power_cut_error(&self) -> Error {
        Error::PowerCut {
            device: self.name.clone(),
            operation: self.ops.saturating_sub(1),
        }
    }

    fn spend(&mut self, unit: fn(&Timing) -> Duration, count: u64) {
        if let Some(timing) = self.timing {
            let time = unit(&timing) * u32::try_from(count).unwrap_or(u32::MAX);
            self.stats.elapsed += time;
            if timing.realtime && !time.is_zero() {
                std::thread::sleep(time);
            }
        }
    }

    fn load(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &self.store {
            Store::Memory(data) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let src = data
                    .get(start..start.saturating_add(buf.len()))
                    .ok_or_else(|| invalid(&self.name, "read", offset, buf.len() as u64))?;
                buf.copy_from_slice(src);
                Ok(())
            }
            Store::File {
                file,
                path,
                data_at,
            } => file
                .read_exact_at(buf, data_at + offset)
                .map_err(|e| Error::io("read", path.as_path(), e)),
        }
    }

    fn store(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match &mut self.store {
            Store::Memory(mem) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let dst = mem
                    .get_mut(start..start.saturating_add(data.len()))
                    .ok_or_else(|| invalid(&self.name, "write", offset, data.len() as u64))?;
                dst.copy_from_slice(data);
                Ok(())
            }
            Store::File {
                file,
                path,
                data_at,
            } => file
                .write_all_at(data, *data_at + offset)
                .map_err(|e| Error::io("write", path.as_path(), e)),
        }
    }

    fn in_range(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.geometry.size)
    }

    fn erase_block(&mut self, offset: u64) -> Result<()> {
        let block = offset / self.geometry.erase_size;
        let torn = self.begin_op()?;
        let len = self.geometry.erase_size;
        if self.block_is_bad(block) || self.block_fails(block) {
            if torn.is_some() {
                return Err(self.power_cut_error());
            }
            return Err(failed(&self.name, "erase", offset, len));
        }
        self.stats.block_erases += 1;
        self.spend(|t| t.erase_block, 1);
        if torn.is_none()
            && let Store::Memory(mem) = &mut self.store
        {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            if let Some(cells) = mem.get_mut(start..start.saturating_add(len as usize)) {
                cells.fill(0xFF);
                return Ok(());
            }
        }
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        match torn {
            None => data.fill(0xFF),
            Some((tear, seed)) => {
                self.load(offset, &mut data)?;
                let mut rng = fastrand::Rng::with_seed(seed);
                match tear {
                    Tear::Clean => {}
                    Tear::Prefix => {
                        let cut = rng.usize(1..data.len().max(2));
                        data.iter_mut().take(cut).for_each(|b| *b = 0xFF);
                    }
                    Tear::RandomBits => data.iter_mut().for_each(|b| *b |= rng.u8(..)),
                }
                self.store(offset, &data)?;
                return Err(self.power_cut_error());
            }
        }
        self.store(offset, &data)
    }

    fn program_page(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let block = offset / self.geometry.erase_size;
        let torn = self.begin_op()?;
        if self.block_is_bad(block) || self.block_fails(block) {
            if torn.is_some() {
                return Err(self.power_cut_error());
            }
            return Err(failed(&self.name, "write", offset, data.len() as u64));
        }
        self.stats.page_programs += 1;
        self.spend(|t| t.program_page, 1);
        if torn.is_none()
            && let Store::Memory(mem) = &mut self.store
        {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            if let Some(cells) = mem.get_mut(start..start.saturating_add(data.len())) {
                cells.iter_mut().zip(data).for_each(|(c, d)| *c &= d);
                return Ok(());
            }
        }
        let mut cells = vec![0u8; data.len()];
        self.load(offset, &mut cells)?;
        match torn {
            None => cells.iter_mut().zip(data).for_each(|(c, d)| *c &= d),
            Some((tear, seed)) => {
                let mut rng = fastrand::Rng::with_seed(seed);
                match tear {
                    Tear::Clean => {}
                    Tear::Prefix => {
                        let cut = rng.usize(0..data.len().max(1));
                        cells
                            .iter_mut()
                            .zip(data)
                            .take(cut)
                            .for_each(|(c, d)| *c &= d);
                    }
                    Tear::RandomBits => cells
                        .iter_mut()
                        .zip(data)
                        .for_each(|(c, d)| *c &= !(!*d & rng.u8(..))),
                }
                self.store(offset, &cells)?;
                return Err(self.power_cut_error());
            }
        }
        self.store(offset, &cells)
    }
}

impl BlockDevice for SimFlash {
    fn name(&self) -> &str {
        &self.name
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !self.powered {
            return Err(self.power_cut_error());
        }
        if !self.in_range(offset, buf.len() as u64) {
            return Err(invalid(&self.name, "read", offset, buf.len() as u64));
        }
        self.load(offset, buf)?;
        self.stats.bytes_read += buf.len() as u64;
        let pages = (buf.len() as u64).div_ceil(self.geometry.page_size);
        self.spend(|t| t.read_page, pages);
        if self.bitflip_probability > 0.0 && !buf.is_empty() {
            for _ in 0..pages {
                if self.rng.f64() < self.bitflip_probability {
                    let at = self.rng.usize(..buf.len());
                    buf[at] ^= 1 << self.rng.u8(0..8);
                }
            }
        }
        Ok(())
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        let size = self.geometry.erase_size;
        if !offset.is_multiple_of(size) || !len.is_multiple_of(size) || !self.in_range(offset, len)
        {
            return Err(invalid(&self.name, "erase", offset, len));
        }
        let mut at = offset;
        while at < offset + len {
            self.erase_block(at)?;
            at += size;
        }
        Ok(())
    }

    fn program(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        let unit = self.geometry.write_size;
        if !offset.is_multiple_of(unit) || !len.is_multiple_of(unit) || !self.in_range(offset, len)
        {
            return Err(invalid(&self.name, "write", offset, len));
        }
        if self.geometry.kind == FlashKind::Ram {
            // mtdram: a plain overwrite, one operation.
            self.begin_op()?
                .map_or(Ok(()), |_| Err(self.power_cut_error()))?;
            return self.store(offset, data);
        }
        // One operation per page (or part of a page) touched.
        let page = self.geometry.page_size;
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let room = (page - at % page).min(rest.len() as u64) as usize;
            let (chunk, tail) = rest.split_at(room);
            self.program_page(at, chunk)?;
            at += room as u64;
            rest = tail;
        }
        Ok(())
    }

    fn is_bad(&mut self, offset: u64) -> Result<bool> {
        if !self.powered {
            return Err(self.power_cut_error());
        }
        if !self.in_range(offset, 1) {
            return Err(invalid(&self.name, "check bad block", offset, 0));
        }
        Ok(self.block_is_bad(offset / self.geometry.erase_size))
    }

    fn mark_bad(&mut self, offset: u64) -> Result<()> {
        if !self.in_range(offset, 1) {
            return Err(invalid(&self.name, "mark bad block", offset, 0));
        }
        if self.begin_op()?.is_some() {
            return Err(self.power_cut_error());
        }
        self.stats.bad_marks += 1;
        self.set_bad(offset / self.geometry.erase_size)
    }

    fn sync(&mut self) -> Result<()> {
        if let Store::File { file, path, .. } = &self.store {
            file.sync_data()
                .map_err(|e| Error::io("sync", path.as_path(), e))?;
        }
        Ok(())
    }
}

fn describe(g: &Geometry) -> String {
    format!(
        "kind={} size={} erase={} page={} subpage={}",
        g.kind, g.size, g.erase_size, g.page_size, g.write_size
    )
}

fn header_len(geometry: &Geometry) -> u64 {
    (HEADER_FIXED + geometry.blocks().div_ceil(8)).next_multiple_of(4096)
}

fn write_header(buf: &mut [u8], g: &Geometry, data_at: u64) {
    let kind: u8 = match g.kind {
        FlashKind::Nor => 0,
        FlashKind::Nand => 1,
        FlashKind::Ram => 2,
        FlashKind::Image => 3,
    };
    let mut fields = Vec::with_capacity(HEADER_FIXED as usize);
    fields.extend_from_slice(MAGIC);
    fields.extend_from_slice(&[kind, 0, 0, 0]);
    fields.extend_from_slice(&g.oob_size.to_le_bytes());
    for value in [g.size, g.erase_size, g.write_size, g.page_size, data_at] {
        fields.extend_from_slice(&value.to_le_bytes());
    }
    for (dst, src) in buf.iter_mut().zip(&fields) {
        *dst = *src;
    }
}

fn read_header(file: &File, path: &Path) -> Result<(Geometry, u64, Vec<bool>)> {
    let not_sim = |why: &str| Error::Target {
        target: format!("sim:{}", path.display()),
        reason: format!("is not a simulated flash made by otaflash ({why})"),
    };
    let mut fixed = [0u8; HEADER_FIXED as usize];
    file.read_exact_at(&mut fixed, 0)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => not_sim("too short"),
            _ => Error::io("read", path, e),
        })?;
    if &fixed[..8] != MAGIC {
        return Err(not_sim("no header"));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&fixed[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let kind = match fixed[8] {
        0 => FlashKind::Nor,
        1 => FlashKind::Nand,
        2 => FlashKind::Ram,
        3 => FlashKind::Image,
        _ => return Err(not_sim("unknown kind")),
    };
    let mut oob = [0u8; 4];
    oob.copy_from_slice(&fixed[12..16]);
    let geometry = Geometry {
        kind,
        oob_size: u32::from_le_bytes(oob),
        size: u64_at(16),
        erase_size: u64_at(24),
        write_size: u64_at(32),
        page_size: u64_at(40),
    };
    geometry.validate().map_err(|_| not_sim("bad geometry"))?;
    let data_at = u64_at(48);
    if data_at != header_len(&geometry) {
        return Err(not_sim("bad header length"));
    }
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    if file_len != data_at + geometry.size {
        return Err(not_sim("size does not match its header"));
    }
    let mut bitmap = vec![0u8; usize::try_from(geometry.blocks().div_ceil(8)).unwrap_or(0)];
    file.read_exact_at(&mut bitmap, HEADER_FIXED)
        .map_err(|e| Error::io("read", path, e))?;
    let bad = (0..geometry.blocks())
        .map(|b| bitmap[(b / 8) as usize] & (1 << (b % 8)) != 0)
        .collect();
    Ok((geometry, data_at, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn nand() -> Geometry {
        Geometry {
            kind: FlashKind::Nand,
            size: 16 * 128 * 1024,
            erase_size: 128 * 1024,
            write_size: 512,
            page_size: 2048,
            oob_size: 64,
        }
    }

    fn nor() -> Geometry {
        Geometry {
            kind: FlashKind::Nor,
            size: 8 * 65536,
            erase_size: 65536,
            write_size: 1,
            page_size: 256,
            oob_size: 0,
        }
    }

    fn errno(e: &Error) -> Option<i32> {
        e.raw_os_error()
    }

    #[test]
    fn behaves_like_nandsim() {
        let mut f = SimFlash::new(
            nand(),
            SimOptions {
                bad_blocks: vec![3, 7],
                ..Default::default()
            },
        )
        .unwrap();
        // Observed in the qemu guest: 100 B @0 and 2048 B @1 are EINVAL, @512 fine.
        assert_eq!(errno(&f.program(0, &[0; 100]).unwrap_err()), Some(22));
        assert_eq!(errno(&f.program(1, &[0; 2048]).unwrap_err()), Some(22));
        f.program(512, &[0x0F; 2048]).unwrap();
        // Rewriting without erase ANDs.
        f.program(512, &[0xF0; 512]).unwrap();
        let mut buf = [0u8; 4];
        f.read(512, &mut buf).unwrap();
        assert_eq!(buf, [0; 4]);
        // Erase must be block-aligned, sets 0xFF, bad blocks give EIO.
        assert_eq!(errno(&f.erase(512, 128 * 1024).unwrap_err()), Some(22));
        f.erase(0, 128 * 1024).unwrap();
        f.read(512, &mut buf).unwrap();
        assert_eq!(buf, [0xFF; 4]);
        assert_eq!(
            errno(&f.erase(3 * 128 * 1024, 128 * 1024).unwrap_err()),
            Some(5)
        );
        assert!(f.is_bad(7 * 128 * 1024 + 5).unwrap());
        assert!(!f.is_bad(0).unwrap());
        f.mark_bad(128 * 1024).unwrap();
        assert_eq!(f.bad_blocks(), vec![1, 3, 7]);
    }

    #[test]
    fn nor_programs_bytes_and_only_clears_bits() {
        let mut f = SimFlash::new(nor(), SimOptions::default()).unwrap();
        f.program(3, &[0x0F]).unwrap();
        f.program(3, &[0xF3]).unwrap();
        let mut b = [0u8; 1];
        f.read(3, &mut b).unwrap();
        assert_eq!(b, [0x03]);
        // 600 bytes from 200 touch pages 0, 1, 2, 3: four operations.
        let before = f.operations();
        f.program(200, &[0u8; 600]).unwrap();
        assert_eq!(f.operations() - before, 4);
    }

    #[test]
    fn power_cut_stops_at_the_numbered_operation_and_tears_it() {
        let mut f = SimFlash::new(nor(), SimOptions::default()).unwrap();
        f.program(0, &[0u8; 1024]).unwrap(); // ops 0..4
        f.arm_power_cut(PowerCut {
            at_op: 5,
            tear: Tear::Prefix,
            seed: 7,
        });
        f.erase(0, 65536).unwrap(); // op 4
        f.program(0, &[0u8; 256]).unwrap_err(); // op 5: torn
        assert!(matches!(
            f.program(256, &[0u8; 256]).unwrap_err(),
            Error::PowerCut { .. }
        ));
        f.power_on();
        let mut page = vec![0u8; 256];
        f.read(0, &mut page).unwrap();
        let programmed = page.iter().take_while(|&&b| b == 0).count();
        assert!(programmed < 256 && page[programmed..].iter().all(|&b| b == 0xFF));

        // A torn erase leaves some old bits, never a clean block.
        f.program(0, &[0u8; 65536]).unwrap();
        let at = f.operations();
        f.arm_power_cut(PowerCut {
            at_op: at,
            tear: Tear::RandomBits,
            seed: 1,
        });
        f.erase(0, 65536).unwrap_err();
        f.power_on();
        let mut block = vec![0u8; 65536];
        f.read(0, &mut block).unwrap();
        assert!(block.iter().any(|&b| b != 0xFF) && block.iter().any(|&b| b != 0));
    }

    #[test]
    fn blocks_go_bad_during_a_run() {
        let mut f = SimFlash::new(nand(), SimOptions::default()).unwrap();
        f.fail_block(2, 3);
        let at = 2 * 128 * 1024;
        f.erase(at, 128 * 1024).unwrap(); // op 0
        f.program(at, &[0u8; 2048]).unwrap(); // op 1
        f.program(at + 2048, &[0u8; 2048]).unwrap(); // op 2
        let e = f.program(at + 4096, &[0u8; 2048]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5), "{e}");
        assert!(e.to_string().contains("EIO"), "{e}");
    }

    #[test]
    fn file_backed_flash_keeps_contents_geometry_and_bad_blocks() {
        let path = std::env::temp_dir().join(format!("otaflash-sim-{}.sim", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let options = SimOptions {
            bad_blocks: vec![5],
            ..Default::default()
        };
        {
            let mut f = SimFlash::open_file(&path, Some(nand()), options.clone()).unwrap();
            f.program(4096, &[0x12; 512]).unwrap();
            f.mark_bad(9 * 128 * 1024).unwrap();
        }
        let mut f = SimFlash::open_file(&path, None, SimOptions::default()).unwrap();
        assert_eq!(f.geometry(), nand());
        assert_eq!(f.bad_blocks(), vec![5, 9]);
        let mut b = [0u8; 2];
        f.read(4096 + 510, &mut b).unwrap();
        assert_eq!(b, [0x12, 0x12]);
        let other = Geometry {
            size: nand().size * 2,
            ..nand()
        };
        let e = SimFlash::open_file(&path, Some(other), SimOptions::default()).unwrap_err();
        assert!(e.to_string().contains("another geometry"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn timing_model_adds_up() {
        let mut f = SimFlash::new(nor(), SimOptions::default()).unwrap();
        f.set_timing(Some(Timing {
            erase_block: Duration::from_millis(150),
            program_page: Duration::from_micros(500),
            ..Default::default()
        }));
        f.erase(0, 65536).unwrap();
        f.program(0, &[0u8; 65536]).unwrap();
        assert_eq!(f.stats().elapsed, Duration::from_millis(150 + 128));
    }
}
