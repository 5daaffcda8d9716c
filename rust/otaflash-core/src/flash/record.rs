//! The on-flash state record of the update layouts.
//!
//! The record lives in the first erase blocks of the device (2 on NOR, 4 on
//! NAND so two can go bad). Each write appends a new record, with the next
//! sequence number and a CRC-32, to a blank slot of the block that does NOT
//! hold the newest valid record; that block is erased only when it is full.
//! So the previous record always survives intact while the next one is
//! written: a torn write (a prefix programmed, random bits cleared, a torn
//! erase) fails its CRC and the reader falls back to the newest valid copy.

use super::ab::AbState;
use super::single::SingleState;
use super::{BlockDevice, FlashKind, Geometry, Region, good_blocks, is_media_failure};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"OTAFLREC";
const VERSION: u8 = 1;
const HEADER: usize = 8 + 1 + 1 + 2 + 8;
/// Records are padded to this (or the write unit, if larger).
const MIN_SLOT: u64 = 512;

/// An image a slot holds or will hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageInfo {
    pub size: u64,
    pub sha256: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    Ab,
    Single,
}

impl LayoutKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ab => "ab",
            Self::Single => "inplace",
        }
    }
}

/// What a state record holds: the layout and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    Ab(AbState),
    Single(SingleState),
}

impl Layout {
    pub fn kind(&self) -> LayoutKind {
        match self {
            Self::Ab(_) => LayoutKind::Ab,
            Self::Single(_) => LayoutKind::Single,
        }
    }

    /// What a restarted hook must do next.
    pub fn next_action(&self) -> NextAction {
        match self {
            Self::Ab(state) => state.next_action(),
            Self::Single(state) => state.next_action(),
        }
    }
}

/// What a restarted hook must do, read from the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextAction {
    /// Nothing pending: boot `slot`.
    Boot { slot: u8 },
    /// An A/B install into `slot` was interrupted: write `image` again
    /// (unchanged blocks are skipped), verify, switch.
    ResumeInstall { slot: u8, image: ImageInfo },
    /// A new image waits in `slot` for its trial boot (`tries` left).
    BootTrial { slot: u8, tries: u8 },
    /// The trial of `from` ran out of tries unconfirmed: go back to `to`.
    RollBack { from: u8, to: u8 },
    /// An in-place update was interrupted after `completed` steps: run it
    /// again from there.
    ResumeInPlace {
        update_id: [u8; 32],
        image: ImageInfo,
        completed: u64,
    },
}

impl NextAction {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Boot { .. } => "boot",
            Self::ResumeInstall { .. } => "resume",
            Self::BootTrial { .. } => "trial",
            Self::RollBack { .. } => "rollback",
            Self::ResumeInPlace { .. } => "resume",
        }
    }
}

/// Erase blocks at the start of the device that hold the records.
pub(crate) fn record_blocks(geometry: &Geometry) -> u64 {
    if geometry.kind.has_bad_blocks() { 4 } else { 2 }
}

pub(crate) fn record_region(geometry: &Geometry) -> Region {
    Region::new(0, record_blocks(geometry) * geometry.erase_size)
}

/// Reads and writes the records in one region of one device. It remembers
/// where records are after the first scan (a write needs to know), and
/// forgets on any error so the next write scans the flash again.
#[derive(Clone, Debug)]
pub struct RecordStore {
    region: Region,
    slot_len: usize,
    cache: Option<Positions>,
}

/// Where the newest valid record is, and what it says.
struct Scan {
    newest: Option<(u64, u64, Layout)>,
    /// Per good block: (offset, index of the first slot after the last used one).
    blocks: Vec<(u64, usize)>,
}

#[derive(Clone, Debug)]
struct Positions {
    /// Sequence number and block of the newest valid record.
    newest: Option<(u64, u64)>,
    blocks: Vec<(u64, usize)>,
}

impl RecordStore {
    /// The store of a device's layout (the first erase blocks).
    pub fn for_device(geometry: &Geometry) -> Result<Self> {
        if !geometry.kind.needs_erase() && geometry.kind != FlashKind::Image {
            // RAM-like devices overwrite; the scheme works there too.
        }
        let region = record_region(geometry);
        if region.len * 2 > geometry.size {
            return Err(Error::Geometry(format!(
                "a {}-byte device is too small for an update layout ({} bytes of state records)",
                geometry.size, region.len
            )));
        }
        let slot_len = MIN_SLOT.max(geometry.write_size).min(geometry.erase_size);
        Ok(Self {
            region,
            slot_len: usize::try_from(slot_len).unwrap_or(512),
            cache: None,
        })
    }

    pub fn region(&self) -> Region {
        self.region
    }

    /// The newest valid record: its sequence number and contents.
    pub fn read<D: BlockDevice + ?Sized>(
        &mut self,
        device: &mut D,
    ) -> Result<Option<(u64, Layout)>> {
        let scan = self.scan(device)?;
        self.cache = Some(Positions {
            newest: scan.newest.as_ref().map(|(seq, block, _)| (*seq, *block)),
            blocks: scan.blocks,
        });
        Ok(scan.newest.map(|(seq, _, layout)| (seq, layout)))
    }

    fn scan<D: BlockDevice + ?Sized>(&self, device: &mut D) -> Result<Scan> {
        let erase = device.geometry().erase_size;
        let block_len = usize::try_from(erase).unwrap_or(0);
        let mut buf = vec![0u8; block_len];
        let mut scan = Scan {
            newest: None,
            blocks: Vec::new(),
        };
        for block in good_blocks(device, self.region)? {
            device.read(block, &mut buf)?;
            let mut next_free = 0;
            for (index, slot) in buf.chunks(self.slot_len).enumerate() {
                if slot.iter().all(|&b| b == 0xFF) {
                    continue;
                }
                next_free = index + 1;
                let mut parsed = decode(slot);
                if parsed.is_none() {
                    // Read again: a bit flip on the read path is not a torn record.
                    let mut again = vec![0u8; slot.len()];
                    device.read(block + (index * self.slot_len) as u64, &mut again)?;
                    parsed = decode(&again);
                }
                if let Some((seq, layout)) = parsed
                    && scan.newest.as_ref().is_none_or(|(best, _, _)| seq > *best)
                {
                    scan.newest = Some((seq, block, layout));
                }
            }
            scan.blocks.push((block, next_free));
        }
        Ok(scan)
    }

    /// Writes `layout` as the next record; returns its sequence number.
    pub fn write<D: BlockDevice + ?Sized>(
        &mut self,
        device: &mut D,
        layout: &Layout,
    ) -> Result<u64> {
        let positions = match self.cache.take() {
            Some(positions) => positions,
            None => {
                let scan = self.scan(device)?;
                Positions {
                    newest: scan.newest.map(|(seq, block, _)| (seq, block)),
                    blocks: scan.blocks,
                }
            }
        };
        let (seq, newest_block) = match positions.newest {
            Some((seq, block)) => (seq + 1, Some(block)),
            None => (1, None),
        };
        let mut record = encode(seq, layout)?;
        record.resize(self.slot_len, 0xFF);
        let geometry = device.geometry();
        let slots_per_block = usize::try_from(geometry.erase_size).unwrap_or(0) / self.slot_len;
        let mut blocks = positions.blocks;
        // Never touch the block with the newest record; use the first other one.
        while let Some(index) = blocks.iter().position(|(b, _)| Some(*b) != newest_block) {
            let (block, next_free) = blocks[index];
            match self.write_into(device, block, next_free, slots_per_block, &record) {
                Ok(used) => {
                    blocks[index].1 = used + 1;
                    self.cache = Some(Positions {
                        newest: Some((seq, block)),
                        blocks,
                    });
                    return Ok(seq);
                }
                Err(error) if geometry.kind.has_bad_blocks() && is_media_failure(&error) => {
                    device.mark_bad(block)?;
                    blocks.remove(index);
                }
                Err(error) => return Err(error),
            }
        }
        Err(Error::Slot(format!(
            "{}: no good block left for the update state record in {:#x}..{:#x}",
            device.name(),
            self.region.start,
            self.region.end()
        )))
    }

    fn write_into<D: BlockDevice + ?Sized>(
        &self,
        device: &mut D,
        block: u64,
        next_free: usize,
        slots_per_block: usize,
        record: &[u8],
    ) -> Result<usize> {
        let geometry = device.geometry();
        let mut slot = next_free;
        let mut readback = vec![0u8; record.len()];
        for _ in 0..3 {
            if slot >= slots_per_block {
                device.erase(block, geometry.erase_size)?;
                slot = 0;
            }
            let at = block + (slot * self.slot_len) as u64;
            device.program(at, record)?;
            device.read(at, &mut readback)?;
            if readback == record || {
                device.read(at, &mut readback)?;
                readback == record
            } {
                return Ok(slot);
            }
            slot += 1;
        }
        Err(Error::Verify {
            subject: format!("{} state record at {block:#x}", device.name()),
            what: "read-back".into(),
            expected: "the record written".into(),
            actual: "different bytes, three times".into(),
        })
    }
}

/// Reads the layout state of a device, if it has one.
pub fn inspect<D: BlockDevice + ?Sized>(device: &mut D) -> Result<Option<Layout>> {
    let geometry = device.geometry();
    if geometry.kind == FlashKind::Image {
        return Ok(None);
    }
    let Ok(mut store) = RecordStore::for_device(&geometry) else {
        return Ok(None);
    };
    Ok(store.read(device)?.map(|(_, layout)| layout))
}

fn encode(seq: u64, layout: &Layout) -> Result<Vec<u8>> {
    let mut payload = Enc::default();
    let kind = match layout {
        Layout::Ab(state) => {
            state.encode(&mut payload);
            1u8
        }
        Layout::Single(state) => {
            state.encode(&mut payload);
            2u8
        }
    };
    let len = u16::try_from(payload.0.len())
        .map_err(|_| Error::Slot("update state record too large".into()))?;
    let mut out = Vec::with_capacity(HEADER + payload.0.len() + 4);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&payload.0);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    if out.len() > MIN_SLOT as usize {
        return Err(Error::Slot(format!(
            "update state record of {} bytes exceeds {MIN_SLOT}",
            out.len()
        )));
    }
    Ok(out)
}

fn decode(slot: &[u8]) -> Option<(u64, Layout)> {
    let mut d = Dec(slot);
    if d.take(8)? != MAGIC || d.u8()? != VERSION {
        return None;
    }
    let kind = d.u8()?;
    let len = usize::from(d.u16()?);
    let seq = d.u64()?;
    let payload = d.take(len)?;
    let crc = d.u32()?;
    if crc32fast::hash(slot.get(..HEADER + len)?) != crc {
        return None;
    }
    let mut p = Dec(payload);
    let layout = match kind {
        1 => Layout::Ab(AbState::decode(&mut p)?),
        2 => Layout::Single(SingleState::decode(&mut p)?),
        _ => return None,
    };
    Some((seq, layout))
}

/// Little-endian field writer for record payloads.
#[derive(Default)]
pub(crate) struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    pub fn region(&mut self, r: Region) {
        self.u64(r.start);
        self.u64(r.len);
    }
    pub fn image(&mut self, image: Option<ImageInfo>) {
        match image {
            None => self.u8(0),
            Some(info) => {
                self.u8(1);
                self.u64(info.size);
                self.bytes(&info.sha256);
            }
        }
    }
}

/// The matching reader; every getter is bounds-checked (`None` past the end).
pub(crate) struct Dec<'a>(pub &'a [u8]);

impl<'a> Dec<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    pub fn hash(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
    pub fn region(&mut self) -> Option<Region> {
        Some(Region::new(self.u64()?, self.u64()?))
    }
    pub fn image(&mut self) -> Option<Option<ImageInfo>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(ImageInfo {
                size: self.u64()?,
                sha256: self.hash()?,
            })),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PowerCut, SimFlash, SimOptions, Tear};
    use super::*;
    use crate::flash::ab::AbPhase;

    fn nor() -> Geometry {
        Geometry {
            kind: FlashKind::Nor,
            size: 16 * 4096,
            erase_size: 4096,
            write_size: 1,
            page_size: 256,
            oob_size: 0,
        }
    }

    fn state(active: u8) -> Layout {
        Layout::Ab(AbState {
            slots: [Region::new(8192, 4096), Region::new(12288, 4096)],
            active,
            phase: AbPhase::Idle,
            images: [None, None],
        })
    }

    #[test]
    fn newest_record_wins_and_blocks_alternate() {
        let mut f = SimFlash::new(nor(), SimOptions::default()).unwrap();
        let mut store = RecordStore::for_device(&nor()).unwrap();
        assert!(store.read(&mut f).unwrap().is_none());
        for i in 0..40u8 {
            let seq = store.write(&mut f, &state(i % 2)).unwrap();
            assert_eq!(seq, u64::from(i) + 1);
            assert_eq!(store.read(&mut f).unwrap(), Some((seq, state(i % 2))));
        }
    }

    #[test]
    fn a_torn_record_write_leaves_the_previous_one() {
        for tear in [Tear::Clean, Tear::Prefix, Tear::RandomBits] {
            for n in 0..40u64 {
                // A store belongs to one device (it remembers record positions).
                let mut store = RecordStore::for_device(&nor()).unwrap();
                let mut f = SimFlash::new(nor(), SimOptions::default()).unwrap();
                for i in 0..9 {
                    store.write(&mut f, &state(i % 2)).unwrap();
                }
                let before = store.read(&mut f).unwrap();
                let at = f.operations();
                // Cut somewhere in the next write's operations (erase or programs).
                f.arm_power_cut(PowerCut {
                    at_op: at + n % 3,
                    tear,
                    seed: n,
                });
                let outcome = store.write(&mut f, &state(1));
                f.power_on();
                let after = store.read(&mut f).unwrap();
                match outcome {
                    Ok(_) => assert_eq!(after.map(|a| a.0), Some(10)),
                    Err(_) => assert!(after == before || after.as_ref().map(|a| a.0) == Some(10)),
                }
            }
        }
    }
}
