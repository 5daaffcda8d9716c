//! Makes otaflash patches (hosts only: diffing needs the whole old and new
//! images in memory, plus a suffix array of the old one).
//!
//! Matching is bsdiff's: a suffix array of the old image (libsais) finds the
//! longest exact match at each new position, and each match is extended
//! forwards and backwards approximately, so code that moved and had its
//! addresses changed becomes one copy plus a sparse, highly compressible
//! difference. The records are then cut into the format's blocks, laid out
//! per block as (records, differences, literals) so each kind of byte sits
//! with its kind, and each frame is zstd-compressed in parallel.
//!
//! Memory: old + new + 4 bytes per old byte (suffix array) + the patch + the
//! frames being compressed (about 2 × frame size per thread at zstd level 19).

mod matcher;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use liblzma::stream::{Action, Filters, LzmaOptions, PRESET_EXTREME, Status, Stream};
use otaflash_core::patch::branches;
use otaflash_core::patch::format::{
    self, Compression, DiffMode, FrameHeader, Header, Kind, RECORD_DENSITY,
};
use otaflash_core::patch::references::{self, ReferenceMap, Rules};
use otaflash_core::progress::{NoProgress, Operation, Progress, ProgressEvent};
use otaflash_core::{Error, Result};
use sha2::{Digest as _, Sha256};

pub use matcher::Record;

#[derive(Clone, Debug)]
pub struct DiffOptions {
    pub kind: Kind,
    pub compression: Compression,
    /// zstd level (1..=22); LZMA2: the xz preset (0..=9, always "extreme").
    pub level: i32,
    /// log2 of the zstd window: the applier holds this many bytes.
    pub window_log: u8,
    /// Output block size; in-place: the slot's erase block. Sequential
    /// patches default to [`default_block_size`].
    pub block_size: u32,
    /// Output bytes per frame (the resume unit), a multiple of `block_size`.
    pub frame_size: u64,
    /// Worker threads (matching, compression); 0 = all cores.
    pub threads: usize,
    /// In-place only: the slot's size (default: the larger image plus
    /// one block, rounded up to blocks, plus the growth of the image).
    pub slot_size: Option<u64>,
    /// Store each block's differences sparsely: small images as runs or a
    /// bitmap of the non-zero bytes, large ones without their long zero runs
    /// (`None` and `Some(true)`); `Some(false)`: every byte.
    pub sparse_diffs: Option<bool>,
    /// Store x86 CALL/JMP targets in literals as absolute addresses;
    /// `None`: chosen by trying (small images) or on samples (large ones).
    pub x86_branches: Option<bool>,
    /// LZMA2: compress each frame's records, differences and literals as
    /// three streams (docs/patch-format.md section 3.1); `None`: large
    /// images of the sequential kind do (ruff -0.95 %, libcrypto3 -0.47 %);
    /// small ones and in-place patches, whose frames hold few blocks, lose
    /// more to the three streams' ends than they gain.
    pub split_streams: Option<bool>,
    /// Store each block's records field by field (docs/patch-format.md
    /// section 4; ruff's records stream -5 %). Off only for appliers older
    /// than record columns.
    pub record_columns: bool,
    /// Carry a reference map (docs/patch-format.md section 3.2) so the
    /// applier predicts references in copied code: x86-64 ones in images
    /// that look like x86 code, else Thumb-2 ones (Cortex-M firmware).
    /// `None`: large sequential x86 images do (ruff −15 %), and small
    /// sequential others try with and without (nrf52 −45 %).
    pub references: Option<bool>,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self {
            kind: Kind::Sequential,
            compression: Compression::Zstd,
            level: 19,
            window_log: 21,
            block_size: default_block_size(Compression::Zstd),
            frame_size: 4 << 20,
            threads: 0,
            slot_size: None,
            sparse_diffs: None,
            x86_branches: None,
            split_streams: None,
            record_columns: true,
            references: None,
        }
    }
}

impl DiffOptions {
    /// Defaults with `compression` at its strongest level.
    pub fn with_compression(compression: Compression) -> Self {
        Self {
            compression,
            level: default_level(compression),
            block_size: default_block_size(compression),
            ..Self::default()
        }
    }

    /// Defaults for an in-place patch on a slot with `block_size` erase blocks.
    pub fn in_place(block_size: u32, slot_size: Option<u64>) -> Self {
        Self {
            kind: Kind::InPlace,
            block_size,
            frame_size: u64::from(block_size)
                .max(1 << 20)
                .div_ceil(u64::from(block_size).max(1))
                * u64::from(block_size),
            slot_size,
            ..Self::default()
        }
    }

    fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !(format::MIN_BLOCK_SIZE..=format::MAX_BLOCK_SIZE).contains(&self.block_size) {
            return bad(format!(
                "block size {} is outside {}..={}",
                self.block_size,
                format::MIN_BLOCK_SIZE,
                format::MAX_BLOCK_SIZE
            ));
        }
        if !self.block_size.is_power_of_two() {
            return bad(format!(
                "block size {} is not a power of two (flash erase blocks are)",
                self.block_size
            ));
        }
        if !(format::MIN_WINDOW_LOG..=format::MAX_WINDOW_LOG).contains(&self.window_log) {
            return bad(format!("window log {} is outside 10..=27", self.window_log));
        }
        match self.compression {
            Compression::Zstd if !(1..=22).contains(&self.level) => {
                return bad(format!("zstd level {} is outside 1..=22", self.level));
            }
            Compression::Lzma2 if !(0..=9).contains(&self.level) => {
                return bad(format!("LZMA2 preset {} is outside 0..=9", self.level));
            }
            _ => {}
        }
        if self.split_streams == Some(true) && self.compression != Compression::Lzma2 {
            return bad("only LZMA2 frames can be split in streams".into());
        }
        if self.frame_size < u64::from(self.block_size) || self.frame_size > (1 << 30) {
            return bad("frame size must be at least one block and at most 1 GiB".into());
        }
        Ok(())
    }
}

/// Progress of work on worker threads: they add to `done` and poll `stop`;
/// the calling thread reports every 100 ms, and a report that fails (Ctrl-C,
/// a cancel) raises `stop`.
pub(crate) struct Monitor {
    pub(crate) done: AtomicU64,
    pub(crate) stop: AtomicBool,
    total: u64,
}

impl Monitor {
    pub(crate) fn new(total: u64) -> Self {
        Self {
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            total,
        }
    }

    /// Reports until `finished` reaches `workers` (each worker unparks the
    /// watching thread when it finishes, so the last one ends the wait at
    /// once: a fixed nap added up to 20 ms per pass).
    pub(crate) fn watch(
        &self,
        finished: &AtomicUsize,
        workers: usize,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let mut result = Ok(());
        let mut nap = Duration::from_micros(100);
        while finished.load(Ordering::Acquire) < workers {
            std::thread::park_timeout(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
            if result.is_ok() {
                let done = self
                    .done
                    .load(Ordering::Relaxed)
                    .min(self.total.saturating_sub(1));
                let event = ProgressEvent {
                    operation: Operation::Patch,
                    done,
                    total: Some(self.total),
                };
                if let Err(e) = progress.report(event) {
                    self.stop.store(true, Ordering::Relaxed);
                    result = Err(e);
                }
            }
        }
        result
    }
}

/// The in-place geometry: (shift, slot size).
fn in_place_geometry(old: usize, new: usize, opts: &DiffOptions) -> Result<(u64, u64)> {
    let bs = u64::from(opts.block_size);
    let (old, new) = (old as u64, new as u64);
    let slot = match opts.slot_size {
        Some(s) => s.div_ceil(bs) * bs,
        None => (old.max(new) + 2 * bs).div_ceil(bs) * bs,
    };
    if slot < new {
        return Err(Error::InvalidArgument(format!(
            "the new image ({new} bytes) does not fit the {slot}-byte slot"
        )));
    }
    // Move the old image as high as the slot allows: more room above each
    // new block means more old bytes stay readable.
    let shift = (slot.saturating_sub(old) / bs) * bs;
    Ok((shift, slot))
}

/// Makes a patch turning `old` into `new`.
pub fn diff(old: &[u8], new: &[u8], opts: &DiffOptions) -> Result<Vec<u8>> {
    diff_with(old, new, opts, &mut NoProgress)
}

pub fn diff_with(
    old: &[u8],
    new: &[u8],
    opts: &DiffOptions,
    progress: &mut dyn Progress,
) -> Result<Vec<u8>> {
    opts.check()?;
    if old.len() as u64 > format::MAX_IMAGE_SIZE
        || new.len() > i32::MAX as usize
        || old.len() > i32::MAX as usize
    {
        return Err(Error::InvalidArgument(
            "images above 2 GiB are not supported".into(),
        ));
    }
    let threads = opts.threads();
    let (shift, slot_size) = match opts.kind {
        Kind::Sequential => (0, 0),
        Kind::InPlace => in_place_geometry(old.len(), new.len(), opts)?,
    };
    let sa = matcher::suffix_array(old, threads)?;
    let small = new.len() < SMALL_IMAGE;
    // Small images (MCU firmware) are cheap to diff: try several match
    // thresholds and keep the smallest patch. Large ones choose the
    // threshold and the x86 literal transform from samples of the image.
    let (large_threshold, large_x86) = if small {
        (LARGE_THRESHOLDS[0], false)
    } else {
        pick_matching(&sa, old, new, opts, threads)?
    };
    let large = [large_threshold];
    let thresholds: &[usize] = if small { &SMALL_THRESHOLDS } else { &large };
    let diffs = match opts.sparse_diffs {
        Some(false) => Diffs::Whole,
        _ if small => Diffs::Smallest,
        _ => Diffs::SkipZeros,
    };
    let x86 = opts.x86_branches.unwrap_or(large_x86);
    let split = opts.compression == Compression::Lzma2
        && opts
            .split_streams
            .unwrap_or(!small && opts.kind == Kind::Sequential);
    let maps = map_candidates(old, new, opts, small)?;
    let opts = &DiffOptions {
        split_streams: Some(split),
        ..opts.clone()
    };
    // Small images try the x86 transform on the best candidate afterwards
    // (if they look like x86 code at all).
    let try_x86 = small && opts.x86_branches.is_none() && looks_like_x86(new);
    // Progress counts new bytes matched, then new bytes compressed, per pass.
    let lc_for = |x86: bool| frame_lc(x86, small);
    // Matching and compressing per threshold, then the map trial.
    let map_trial = maps.plain && !maps.rules.is_empty();
    let passes = (thresholds.len() * 2 + usize::from(map_trial) + usize::from(try_x86)) as u64;
    let monitor = Monitor::new(new.len() as u64 * (passes + 1) + 1);
    // With several candidates, rank them by a fast zstd level and compress
    // only the winner at the requested level.
    let rerank = thresholds.len() > 1;
    let effort = if rerank { Effort::Rank } else { Effort::Final };
    // Every candidate's frames first, then all their frames compressed in
    // one pass: a small image's candidates (one frame each) run in parallel.
    let mut records_by_threshold =
        matcher::find_records(&sa, old, new, threads, thresholds, &monitor, progress)?;
    if opts.kind == Kind::InPlace {
        for records in &mut records_by_threshold {
            *records = matcher::restrict_in_place(records, opts.block_size, shift);
        }
    }
    // Each threshold's frames on a thread of their own (a small image's
    // take milliseconds each).
    let built = parallel_quietly(records_by_threshold.len(), threads, |t| {
        let records = &records_by_threshold[t];
        let map = match maps.plain {
            true => None,
            false => best_map(old, new, records, &maps.rules, 1)?,
        };
        let frames = build_frames(old, new, records, opts, diffs, x86, map.as_ref())?;
        Ok((t, map, frames))
    })?;
    let all_frames: Vec<&Frame> = built.iter().flat_map(|(_, _, f)| f).collect();
    let mut payloads = compress_frames(
        &all_frames,
        opts,
        effort,
        lc_for(x86),
        threads,
        &monitor,
        progress,
    )?
    .into_iter();
    let mut best: Option<Candidate> = None;
    // The records of the best candidate, for the x86 trial.
    let mut best_records = 0;
    for (records, map, frames) in built {
        let compressed = payloads.by_ref().take(frames.len()).collect();
        let candidate = Candidate::new(frames, compressed, x86, map, opts)?;
        if candidate.replaces(&mut best) {
            best_records = records;
        }
    }
    // One more candidate from the best threshold's records.
    let records = &records_by_threshold[best_records];
    let mut trial = |x86: bool, map: Option<ReferenceMap>| -> Result<Candidate> {
        let frames = build_frames(old, new, records, opts, diffs, x86, map.as_ref())?;
        let compressed = compress_frames(
            &frames.iter().collect::<Vec<_>>(),
            opts,
            effort,
            lc_for(x86),
            threads,
            &monitor,
            progress,
        )?;
        Candidate::new(frames, compressed, x86, map, opts)
    };
    if map_trial {
        // The map that leaves the fewest differences, against no map.
        trial(x86, best_map(old, new, records, &maps.rules, threads)?)?.replaces(&mut best);
    }
    if try_x86 {
        let map = best.as_ref().and_then(|b| b.map.clone());
        trial(true, map)?.replaces(&mut best);
    }
    if rerank && let Some(b) = best.as_mut() {
        // The winner at the requested level.
        let frames: Vec<&Frame> = b.frames.iter().collect();
        b.compressed = compress_frames(
            &frames,
            opts,
            Effort::Final,
            lc_for(b.x86),
            threads,
            &monitor,
            progress,
        )?;
    }
    let Candidate {
        frames,
        compressed,
        x86: x86_branches,
        map,
        map_section,
    } = best.unwrap_or_default();
    progress.report(ProgressEvent {
        operation: Operation::Patch,
        done: monitor.total,
        total: Some(monitor.total),
    })?;

    let mut body = map_section;
    for (frame, payload) in frames.iter().zip(&compressed) {
        let fh = FrameHeader {
            out_len: frame.out_len,
            comp_len: payload.len() as u32,
            raw_len: frame.raw.len() as u32,
            old_pos: frame.old_pos,
        };
        body.extend_from_slice(&fh.encode(payload));
        body.extend_from_slice(payload);
    }
    let header = Header {
        version: map
            .as_ref()
            .map_or(format::VERSION_WITHOUT_REFERENCES, |m| m.rules().version()),
        kind: opts.kind,
        compression: opts.compression,
        block_size: opts.block_size,
        window_log: opts.window_log,
        frame_count: frames.len() as u32,
        old_size: old.len() as u64,
        new_size: new.len() as u64,
        body_size: body.len() as u64,
        old_sha256: Sha256::digest(old).into(),
        new_sha256: Sha256::digest(new).into(),
        shift,
        slot_size,
        body_sha256: (opts.kind == Kind::InPlace).then(|| Sha256::digest(&body).into()),
        sparse_diffs: diffs != Diffs::Whole,
        x86_branches,
        split_streams: split,
        record_columns: opts.record_columns,
        reference_pages: map.as_ref().map_or(0, |m| m.pages() as u32),
    };
    let mut patch = header.encode();
    patch.extend_from_slice(&body);
    Ok(patch)
}

/// The strongest level of each codec (zstd 19: above it zstd's window would
/// outgrow `window_log`'s budget for no gain on these streams).
pub fn default_level(compression: Compression) -> i32 {
    match compression {
        Compression::Lzma2 => 9,
        Compression::None | Compression::Zstd => 19,
    }
}

/// The output block of sequential patches: 256 KiB leaves room under the
/// applier's 4 MiB for the thread that hashes the new image and for a
/// reference map (zstd: ruff applies 6-13 % faster than with 512 KiB, for
/// +0.46 % of patch; shellcheck +0.22 %).
pub fn default_block_size(_compression: Compression) -> u32 {
    256 << 10
}

/// The match thresholds small images try: lower ones suit MCU firmware,
/// whose moved pieces are short (greatfet: 3 -0.6 % against 4, 8 +10 %).
const SMALL_THRESHOLDS: [usize; 2] = [3, 4];

/// The match thresholds large images choose from (see `matcher::scan_range`).
/// Which is best is a property of the whole image, and a strong one: 16
/// suits most executables (ruff: 64 would cost 16 %), 64 suits code where
/// small edits are spread everywhere, as GHC's output (shellcheck: -16 %).
const LARGE_THRESHOLDS: [usize; 2] = [16, 64];

/// Samples of the new image the threshold is chosen on, and their length
/// bounds (at most 1 MiB in all: ~5 % of the matching time on large images).
const THRESHOLD_SAMPLES: usize = 8;
const SAMPLE_LEN: (usize, usize) = (32 << 10, 128 << 10);

/// The match threshold and x86 literal transform for a large image: the
/// pair whose patch of evenly spaced samples of `new` is smallest under a
/// fast zstd level.
fn pick_matching(
    sa: &[i32],
    old: &[u8],
    new: &[u8],
    opts: &DiffOptions,
    threads: usize,
) -> Result<(usize, bool)> {
    let len = (new.len() / (8 * THRESHOLD_SAMPLES)).clamp(SAMPLE_LEN.0, SAMPLE_LEN.1);
    let stride = new.len() / THRESHOLD_SAMPLES;
    let ranking = DiffOptions {
        kind: Kind::Sequential,
        compression: Compression::Zstd,
        level: 3,
        ..opts.clone()
    };
    let transforms: &[bool] = match opts.x86_branches {
        Some(true) => &[true],
        Some(false) => &[false],
        None if looks_like_x86(new) => &[false, true],
        None => &[false],
    };
    let jobs: Vec<(usize, usize)> = (0..LARGE_THRESHOLDS.len())
        .flat_map(|t| (0..THRESHOLD_SAMPLES).map(move |s| (t, s * stride)))
        .collect();
    let sample_size = |records: &[Record], sample: &[u8], x86: bool| -> Result<u64> {
        build_frames(old, sample, records, &ranking, Diffs::SkipZeros, x86, None)?
            .iter()
            .map(|f| {
                compress_one(f, &ranking, Effort::Final, LC_DIFFERENCES).map(|c| c.len() as u64)
            })
            .sum()
    };
    // Per job, the sample's size without and with the transform.
    let monitor = Monitor::new(1);
    let per_job = parallel_map(
        jobs.len(),
        threads,
        &monitor,
        &mut NoProgress,
        |j| -> Result<[u64; 2]> {
            let (t, start) = jobs[j];
            let end = start + len;
            let records = matcher::scan_range(
                sa,
                old,
                &new[..end],
                start,
                end,
                LARGE_THRESHOLDS[t],
                &monitor,
            );
            let mut sizes = [0; 2];
            for &x86 in transforms {
                sizes[usize::from(x86)] = sample_size(&records, &new[start..end], x86)?;
            }
            Ok(sizes)
        },
    )?;
    // sizes[t][x]: threshold t, transform x.
    let mut sizes = vec![[0u64; 2]; LARGE_THRESHOLDS.len()];
    for (&(t, _), job) in jobs.iter().zip(&per_job) {
        sizes[t][0] += job[0];
        sizes[t][1] += job[1];
    }
    let best = (0..LARGE_THRESHOLDS.len())
        .flat_map(|t| transforms.iter().map(move |&x| (t, x)))
        .min_by_key(|&(t, x)| sizes[t][usize::from(x)]);
    Ok(best.map_or((LARGE_THRESHOLDS[0], false), |(t, x)| {
        (LARGE_THRESHOLDS[t], x)
    }))
}

/// Whether `image` may be x86 code, worth trying the branch transform on:
/// the transform converts E8 (CALL rel32) operands within ±16 MiB (top byte
/// 0x00 or 0xFF), which most E8 bytes in x86 code have and 1 in 128 of
/// random ones (ARM firmware: greatfet 2.5 %, nrf52 5 %; x86-64:
/// shellcheck 27 %, libcrypto3 and ruff 85 %).
fn looks_like_x86(image: &[u8]) -> bool {
    let (mut calls, mut near) = (0u64, 0u64);
    for at in memchr::memchr_iter(0xE8, image) {
        let Some(&top) = image.get(at + 4) else {
            break;
        };
        calls += 1;
        near += u64::from(top == 0x00 || top == 0xFF);
    }
    calls < X86_MIN_CALLS || near * 8 >= calls
}

/// Fewer E8 bytes than this say nothing either way: try the transform.
const X86_MIN_CALLS: u64 = 64;

/// LZMA2 literal context bits for difference bytes, which depend little on
/// the byte before.
const LC_DIFFERENCES: u32 = 1;

/// LZMA2 literal context bits for a frame's stream (a split frame's
/// literals): x86 code literals depend on the byte before (4: -0.4 % on
/// shellcheck and ruff); a small firmware image's one stream, mostly
/// literals of Thumb code and records once its references are predicted,
/// packs best with none (nrf52 -4 %, greatfet -0.5 % against 1). Trying
/// both per frame cost greatfet's LZMA2 diff 10 % of its time: a second
/// encoder beside the first, for nothing once its map made 0 the better.
fn frame_lc(x86: bool, small: bool) -> u32 {
    match (x86, small) {
        (true, _) => 4,
        (false, true) => 0,
        (false, false) => LC_DIFFERENCES,
    }
}
/// A split frame's records stream: varints, whose next byte the previous
/// one's continuation bit predicts (ruff -0.27 % against 0).
const LC_RECORDS: u32 = 1;

/// The zstd level candidates are ranked with, whatever the codec: the
/// candidates differ by far more than the codecs' orderings do, and it takes
/// a millisecond where xz's preset 4 took 25 (greatfet's 120 KB frame).
const RANKING_LEVEL: i32 = 3;

/// LZMA2's `nice_len` for streams under `SMALL_IMAGE`: as small and a third
/// faster than xz -9e's 273 there (greatfet 16,673 B against 16,687 B),
/// while large images' difference streams need the long matches
/// (libcrypto3: 128 +3.9 %).
const SMALL_NICE_LEN: u32 = 128;

/// How hard a compression tries: enough to rank candidates, or the
/// requested level for the patch itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effort {
    Rank,
    Final,
}

/// Below this many new bytes, several match thresholds are tried.
const SMALL_IMAGE: usize = 2 << 20;

/// A patch body being considered: its frames, their compressed payloads
/// and the layout they were built with, its reference map and the map's
/// section as stored.
#[derive(Default)]
struct Candidate {
    frames: Vec<Frame>,
    compressed: Vec<Vec<u8>>,
    x86: bool,
    map: Option<ReferenceMap>,
    map_section: Vec<u8>,
}

impl Candidate {
    fn new(
        frames: Vec<Frame>,
        compressed: Vec<Vec<u8>>,
        x86: bool,
        map: Option<ReferenceMap>,
        opts: &DiffOptions,
    ) -> Result<Self> {
        let mut map_section = Vec::new();
        if let Some(map) = &map {
            put_reference_map(&mut map_section, map, opts)?;
        }
        Ok(Self {
            frames,
            compressed,
            x86,
            map,
            map_section,
        })
    }

    fn size(&self) -> usize {
        self.map_section.len() + self.compressed.iter().map(Vec::len).sum::<usize>()
    }

    /// Becomes `best` if there is none yet or it is smaller; says whether it did.
    fn replaces(self, best: &mut Option<Candidate>) -> bool {
        let smaller = best.as_ref().is_none_or(|b| self.size() < b.size());
        if smaller {
            *best = Some(self);
        }
        smaller
    }
}

struct Frame {
    out_len: u32,
    old_pos: u64,
    raw: Vec<u8>,
    /// Per block, where its records, differences and literals end in `raw`.
    sections: Vec<[usize; 3]>,
}

/// One record cut to a block: copy `copy` bytes at `old`, then `extra` literals.
#[derive(Clone, Copy, Debug)]
struct Piece {
    new: u64,
    copy: u64,
    extra: u64,
    old: u64,
}

/// Cuts records at block boundaries.
fn pieces_per_block(records: &[Record], new_len: u64, block: u64) -> Vec<Vec<Piece>> {
    let blocks = new_len.div_ceil(block) as usize;
    let mut out: Vec<Vec<Piece>> = vec![Vec::new(); blocks];
    let mut at = 0u64;
    for r in records {
        let (mut copy, mut extra, mut old) = (r.copy, r.extra, r.old);
        while copy + extra > 0 {
            let b = (at / block) as usize;
            let room = (b as u64 + 1) * block - at;
            let c = copy.min(room);
            let e = extra.min(room - c);
            if let Some(list) = out.get_mut(b) {
                list.push(Piece {
                    new: at,
                    copy: c,
                    extra: e,
                    old,
                });
            }
            at += c + e;
            old += c;
            copy -= c;
            extra -= e;
        }
    }
    out
}

/// Keeps a block within the format's record limit by turning the copies with
/// the least value into literals.
fn limit_records(pieces: &mut Vec<Piece>, block_len: u64) {
    let max = (block_len / u64::from(RECORD_DENSITY) + 1) as usize;
    while pieces.len() > max {
        // Merge the piece with the shortest copy into its predecessor.
        let (i, _) = pieces
            .iter()
            .enumerate()
            .skip(1)
            .min_by_key(|(_, p)| p.copy)
            .unwrap_or((1, &pieces[1]));
        let p = pieces.remove(i);
        if let Some(prev) = pieces.get_mut(i - 1) {
            prev.extra += p.copy + p.extra;
        }
    }
}

fn build_frames(
    old: &[u8],
    new: &[u8],
    records: &[Record],
    opts: &DiffOptions,
    diffs: Diffs,
    x86: bool,
    map: Option<&ReferenceMap>,
) -> Result<Vec<Frame>> {
    let bs = u64::from(opts.block_size);
    let mut blocks = pieces_per_block(records, new.len() as u64, bs);
    // As many frames as frame_size needs, of equal size: frames compress in
    // parallel, and a short last one leaves a core idle (libcrypto3: 4 MiB +
    // 0.5 MiB took as long as the 4 MiB frame alone).
    let most = (opts.frame_size / bs).max(1) as usize;
    let per_frame = blocks
        .len()
        .div_ceil(blocks.len().div_ceil(most).max(1))
        .max(1);
    for (i, pieces) in blocks.iter_mut().enumerate() {
        let len = (new.len() as u64 - i as u64 * bs).min(bs);
        limit_records(pieces, len);
    }
    let mut frames = Vec::new();
    for group in blocks.chunks(per_frame) {
        let first_old = group
            .iter()
            .flatten()
            .find(|p| p.copy > 0)
            .map_or(0, |p| p.old);
        let mut raw = Vec::new();
        let mut old_pos = first_old;
        let mut out_len = 0u64;
        let flat: Vec<&Piece> = group.iter().flatten().collect();
        let mut idx = 0;
        let mut sections = Vec::with_capacity(group.len());
        for pieces in group {
            format::put_varint(&mut raw, pieces.len() as u64);
            let mut seeks = Vec::with_capacity(pieces.len());
            for p in pieces {
                idx += 1;
                let pos = if p.copy > 0 { p.old } else { old_pos };
                // Where the next copying piece starts (seeks chain across blocks).
                let next = flat[idx..]
                    .iter()
                    .find(|q| q.copy > 0)
                    .map_or(pos + p.copy, |q| q.old);
                seeks.push(next as i64 - (pos + p.copy) as i64);
                old_pos = next;
            }
            if opts.record_columns {
                // The third column is the change of offset: seek - extra.
                for p in pieces {
                    format::put_varint(&mut raw, p.copy);
                }
                for p in pieces {
                    format::put_varint(&mut raw, p.extra);
                }
                for (p, &seek) in pieces.iter().zip(&seeks) {
                    format::put_signed(&mut raw, seek - p.extra as i64);
                }
            } else {
                for (p, &seek) in pieces.iter().zip(&seeks) {
                    format::put_varint(&mut raw, p.copy);
                    format::put_varint(&mut raw, p.extra);
                    format::put_signed(&mut raw, seek);
                }
            }
            let mut differences = Vec::new();
            let mut predicted = Vec::new();
            for p in pieces {
                let (n, o) = (p.new as usize, p.old as usize);
                let c = p.copy as usize;
                if c == 0 {
                    continue;
                }
                let base = match map {
                    Some(map) => {
                        predicted.clear();
                        predicted.extend_from_slice(&old[o..o + c]);
                        map.predict(&mut predicted, p.old, p.new);
                        &predicted[..]
                    }
                    None => &old[o..o + c],
                };
                differences.extend(
                    new[n..n + c]
                        .iter()
                        .zip(base)
                        .map(|(a, b)| a.wrapping_sub(*b)),
                );
            }
            let block_len: u64 = pieces.iter().map(|p| p.copy + p.extra).sum();
            let records_end = raw.len();
            match diffs {
                Diffs::Whole => raw.extend_from_slice(&differences),
                Diffs::Smallest => put_smallest(&mut raw, &differences, block_len),
                Diffs::SkipZeros => put_skipping_zeros(&mut raw, &differences, block_len),
            }
            let diffs_end = raw.len();
            for p in pieces {
                let start = (p.new + p.copy) as usize;
                let at = raw.len();
                raw.extend_from_slice(&new[start..start + p.extra as usize]);
                if x86 {
                    branches::x86_encode(&mut raw[at..], start as u64);
                }
            }
            out_len += pieces.iter().map(|p| p.copy + p.extra).sum::<u64>();
            sections.push([records_end, diffs_end, raw.len()]);
        }
        frames.push(Frame {
            out_len: out_len as u32,
            old_pos: first_old,
            raw,
            sections,
        });
    }
    Ok(frames)
}

/// The reference map of a patch (docs/patch-format.md section 3.2): per
/// page of the old image, the move most of the references found in the
/// copies and aimed into that page made. Pages no reference aims into keep
/// the previous page's move (free to store); the map ends at the last page
/// aimed into.
fn reference_map(old: &[u8], new: &[u8], records: &[Record], rules: Rules) -> ReferenceMap {
    let page_log = ReferenceMap::page_log_for(old.len() as u64);
    // (page, move) of every reference aimed into the old image.
    let mut votes: Vec<(u32, u32)> = Vec::new();
    let mut at = 0u64;
    for r in records {
        let (o, n, c) = (r.old as usize, at as usize, r.copy as usize);
        at += r.copy + r.extra;
        let code = &old[o..o + c];
        let mut scan = references::FieldScan::new(rules, r.old);
        while let Some(field) = scan.next(code) {
            let target = references::old_target(code, field, r.old, rules);
            if !(0..old.len() as i64).contains(&target) {
                continue;
            }
            let mut value = [0u8; 4];
            value.copy_from_slice(&new[n + field.at..n + field.end]);
            let value = u32::from_le_bytes(value);
            let new_end = (n + field.end) as u64;
            let Some(moved) = references::seen_move(field, value, new_end, target, rules) else {
                continue;
            };
            votes.push(((target >> page_log) as u32, moved));
        }
    }
    votes.sort_unstable();
    let pages = votes.last().map_or(1, |v| v.0 as usize + 1);
    let mut moves = vec![0u32; pages];
    let mut counts = vec![0usize; pages];
    for group in votes.chunk_by(|a, b| a == b) {
        let (page, moved) = (group[0].0 as usize, group[0].1);
        if group.len() > counts[page] {
            counts[page] = group.len();
            moves[page] = moved;
        }
    }
    for p in 1..pages {
        if counts[p] == 0 {
            moves[p] = moves[p - 1];
        }
    }
    ReferenceMap::new(page_log, moves, old.len() as u64, rules)
}

/// The reference maps a patch may carry: whether it may carry none, and
/// the rules to choose from.
struct MapChoice {
    plain: bool,
    rules: Vec<Rules>,
}

/// The reference maps to try, per the options and what the images look
/// like: x86 rules for x86 code, else Thumb-2 ones, without and with
/// absolute addresses from each address the old image may be loaded at.
fn map_candidates(old: &[u8], new: &[u8], opts: &DiffOptions, small: bool) -> Result<MapChoice> {
    let none = MapChoice {
        plain: true,
        rules: Vec::new(),
    };
    if opts.kind == Kind::InPlace {
        return match opts.references {
            Some(true) => Err(Error::InvalidArgument(
                "in-place patches carry no reference map".into(),
            )),
            _ => Ok(none),
        };
    }
    let x86 = match elf_machine(new) {
        Some(machine) => machine == EM_X86_64,
        None => looks_like_x86(new),
    };
    let rules = if x86 {
        vec![Rules {
            x86: true,
            thumb: false,
            absolute: absolute_addresses(old, new),
        }]
    } else {
        let thumb = |absolute| Rules {
            x86: false,
            thumb: true,
            absolute,
        };
        let loaded_at = cortex_m_addresses(old, new).into_iter();
        std::iter::once(thumb(None))
            .chain(
                loaded_at
                    .filter_map(|a| references::Absolute::new(a, old.len() as u64))
                    .map(|a| thumb(Some(a))),
            )
            .collect()
    };
    Ok(match opts.references {
        Some(false) => none,
        Some(true) => MapChoice {
            plain: false,
            rules,
        },
        None if x86 && !small => MapChoice {
            plain: false,
            rules,
        },
        None if !x86 && small => MapChoice { plain: true, rules },
        None => none,
    })
}

/// Of maps by `rules`, the one whose predictions leave the fewest copied
/// bytes different from the new image (counting is a fraction of the cost
/// of building and compressing each: greatfet's diff 48 → 36 ms).
fn best_map(
    old: &[u8],
    new: &[u8],
    records: &[Record],
    rules: &[Rules],
    threads: usize,
) -> Result<Option<ReferenceMap>> {
    if let [only] = rules {
        return Ok(Some(reference_map(old, new, records, *only)));
    }
    let differing = |map: &ReferenceMap| {
        let mut predicted = Vec::new();
        let mut at = 0;
        let mut count = 0;
        for r in records {
            let (o, c) = (r.old as usize, r.copy as usize);
            predicted.clear();
            predicted.extend_from_slice(&old[o..o + c]);
            map.predict(&mut predicted, r.old, at);
            count += predicted
                .iter()
                .zip(&new[at as usize..])
                .filter(|(p, n)| p != n)
                .count();
            at += r.copy + r.extra;
        }
        count
    };
    // The candidates are scored in parallel; of equal scores the first wins.
    let scored = parallel_quietly(rules.len(), threads, |i| {
        let map = reference_map(old, new, records, rules[i]);
        Ok((differing(&map), map))
    })?;
    Ok(scored
        .into_iter()
        .min_by_key(|(count, _)| *count)
        .map(|(_, map)| map))
}

/// Where a Cortex-M image whose vector table begins both images may be
/// loaded: its reset handler's address (word 1, odd: Thumb code) rounded
/// down to 4 KiB and to 64 KiB, and 0. None without such a table.
fn cortex_m_addresses(old: &[u8], new: &[u8]) -> Vec<u64> {
    let reset = |image: &[u8]| Some(u32::from_le_bytes(image.get(4..8)?.try_into().ok()?));
    let (Some(reset), Some(new_reset)) = (reset(old), reset(new)) else {
        return Vec::new();
    };
    if reset & 1 == 0 || new_reset & 1 == 0 {
        return Vec::new();
    }
    let mut addresses = vec![0, u64::from(reset & !0xFFFF), u64::from(reset & !0xFFF)];
    addresses.dedup();
    addresses
}

/// Absolute references to look for: in a position-dependent x86-64 ELF
/// executable (ET_EXEC, as statically linked programs often are), both
/// images loaded at the same address, the address of file offset 0 (its
/// first PT_LOAD's address less its offset). None otherwise: in
/// position-independent code 32-bit values that look like addresses are
/// mostly not.
fn absolute_addresses(old: &[u8], new: &[u8]) -> Option<references::Absolute> {
    let first = elf_exec_base(old).filter(|&f| f != 0)?;
    if elf_exec_base(new)? != first {
        return None;
    }
    references::Absolute::new(first, old.len() as u64)
}

/// ELF's machine number of x86-64.
const EM_X86_64: u16 = 62;

/// The machine a little-endian ELF image is for; None for other images.
fn elf_machine(image: &[u8]) -> Option<u16> {
    if image.get(..4)? != b"\x7fELF" || image.get(5) != Some(&1) {
        return None;
    }
    Some(u16::from_le_bytes(image.get(18..20)?.try_into().ok()?))
}

/// The address of file offset 0 of a little-endian x86-64 ET_EXEC ELF.
fn elf_exec_base(image: &[u8]) -> Option<u64> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(image.get(at..at + 8)?.try_into().ok()?));
    // ELFCLASS64, ET_EXEC.
    if elf_machine(image)? != EM_X86_64 || image.get(4) != Some(&2) || u16_at(16)? != 2 {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(32)?, u16_at(54)?, u16_at(56)?);
    (0..u64::from(phnum)).find_map(|i| {
        let ph = usize::try_from(phoff + i * u64::from(phentsize)).ok()?;
        // PT_LOAD: p_offset at 8, p_vaddr at 16.
        (u32_at(ph)? == 1).then(|| u64_at(ph + 16)?.checked_sub(u64_at(ph + 8)?))?
    })
}

/// Writes the reference map section: page_log, payload length, the moves
/// compressed like a frame (split LZMA2: one stream, the records stream's
/// dictionary), CRC-32 of it all.
fn put_reference_map(body: &mut Vec<u8>, map: &ReferenceMap, opts: &DiffOptions) -> Result<()> {
    let moves = map.encode_moves();
    let payload = match opts.compression {
        Compression::None => moves,
        Compression::Zstd => compress_zstd(&moves, opts.level, opts.window_log)?,
        Compression::Lzma2 => {
            let dict = if opts.split_streams == Some(true) {
                format::split_dictionaries(opts.window_log)[0]
            } else {
                1 << opts.window_log
            };
            // As for frames: no bigger than the moves (a small image's map
            // is a few KB, and a 2 MiB match finder took milliseconds to
            // set up), which decode with the full dictionary all the same.
            let fits = (moves.len() as u64)
                .next_power_of_two()
                .min(u64::from(dict));
            let mut stream = lzma2_encoder(fits as u32, opts, 0, None)?;
            let mut out = Vec::new();
            lzma2_encode(&mut stream, &moves, &mut out, Action::Finish)?;
            out
        }
    };
    let start = body.len();
    let rules = map.rules();
    body.push(map.page_log());
    if rules.version() >= 6 {
        body.push(rules.byte());
    }
    format::put_varint(body, u64::from(rules.first()));
    format::put_varint(body, payload.len() as u64);
    body.extend_from_slice(&payload);
    let crc = crc32fast::hash(&body[start..]);
    body.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// How a patch's blocks store their differences (the copies' bytes minus
/// the old bytes they copy). Runs or a bitmap of the non-zero ones pay off
/// when the copies change little or in scattered bytes (MCU firmware: nrf52
/// -20 %, greatfet -1 % and LZMA2 five times faster) but cost up to 8 % on
/// recompiled x86 code (libcrypto3), whose differences repeat in patterns
/// that only the whole bytes keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Diffs {
    /// All of them (no sparse_diffs).
    Whole,
    /// Per block, whichever of whole, runs or the bitmap a fast zstd pass
    /// finds smallest (small images).
    Smallest,
    /// Per block, the stretches between zero runs of `ZERO_GAP` bytes or more
    /// (large images: the whole bytes' patterns minus long zero runs, which
    /// cost the compressors time: libcrypto3's LZMA2 diff -9 % time, -0.3 %).
    SkipZeros,
}

/// The shortest zero run `Diffs::SkipZeros` leaves out: shorter gaps keep
/// their zeros (libcrypto3 LZMA2: 128 +0.8 %, 64 +5.6 %).
const ZERO_GAP: usize = 256;

/// A block's differences in whichever mode a fast zstd pass finds smallest.
fn put_smallest(raw: &mut Vec<u8>, diffs: &[u8], block_len: u64) {
    let mut modes = vec![whole_diffs(diffs), bitmap_diffs(diffs)];
    modes.extend(run_diffs(diffs, block_len, 1));
    let estimate = |m: &Vec<u8>| zstd::bulk::compress(m, 1).map_or(m.len(), |c| c.len());
    if let Some(best) = modes.iter().min_by_key(|m| estimate(m)) {
        raw.extend_from_slice(best);
    }
}

/// A block's differences as the stretches between zero runs of at least
/// `ZERO_GAP` bytes, or longer ones when there would be more stretches than
/// a block may have.
fn put_skipping_zeros(raw: &mut Vec<u8>, diffs: &[u8], block_len: u64) {
    let mut gap = ZERO_GAP;
    loop {
        // Terminates: a gap longer than the block leaves one stretch.
        if let Some(runs) = run_diffs(diffs, block_len, gap) {
            raw.extend_from_slice(&runs);
            return;
        }
        gap *= 2;
    }
}

fn whole_diffs(diffs: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(diffs.len() + 1);
    format::put_varint(&mut out, DiffMode::Whole.value());
    out.extend_from_slice(diffs);
    out
}

/// Bit i % 8 of byte i / 8 says whether difference i is non-zero; the
/// non-zero ones follow.
fn bitmap_diffs(diffs: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(diffs.len() / 4 + 1);
    format::put_varint(&mut out, DiffMode::Bitmap.value());
    out.extend(diffs.chunks(8).map(|eight| {
        eight
            .iter()
            .enumerate()
            .fold(0u8, |map, (i, &d)| map | u8::from(d != 0) << i)
    }));
    out.extend(diffs.iter().copied().filter(|&d| d != 0));
    out
}

/// Stretches of the differences between zero runs of at least `min_gap`
/// bytes (1: the exact non-zero runs), each as (zeros skipped, length), then
/// the stretches' bytes; None when there are more than the format allows a
/// block.
fn run_diffs(diffs: &[u8], block_len: u64, min_gap: usize) -> Option<Vec<u8>> {
    let max = block_len / u64::from(RECORD_DENSITY) + 1;
    let skip = |from: usize, zero: bool| {
        diffs[from..]
            .iter()
            .position(|&d| (d == 0) != zero)
            .map_or(diffs.len(), |n| from + n)
    };
    let (mut runs, mut bytes) = (Vec::new(), Vec::new());
    let (mut count, mut end) = (0u64, 0usize);
    let mut at = skip(0, true);
    while at < diffs.len() {
        let start = at;
        let mut stop = skip(at, false);
        at = skip(stop, true);
        while at < diffs.len() && at - stop < min_gap {
            stop = skip(at, false);
            at = skip(stop, true);
        }
        count += 1;
        if count > max {
            return None;
        }
        format::put_varint(&mut runs, (start - end) as u64);
        format::put_varint(&mut runs, (stop - start) as u64);
        bytes.extend_from_slice(&diffs[start..stop]);
        end = stop;
    }
    let mut out = Vec::with_capacity(runs.len() + bytes.len() + 10);
    format::put_varint(&mut out, DiffMode::Runs(count).value());
    out.extend_from_slice(&runs);
    out.extend_from_slice(&bytes);
    Some(out)
}

/// Compresses every frame in parallel, with `lc` literal context bits
/// (LZMA2).
fn compress_frames(
    frames: &[&Frame],
    opts: &DiffOptions,
    effort: Effort,
    lc: u32,
    threads: usize,
    monitor: &Monitor,
    progress: &mut dyn Progress,
) -> Result<Vec<Vec<u8>>> {
    parallel_map(frames.len(), threads, monitor, progress, |i| {
        let frame = &frames[i];
        let compressed = compress_one(frame, opts, effort, lc);
        monitor
            .done
            .fetch_add(u64::from(frame.out_len), Ordering::Relaxed);
        compressed
    })
}

/// [`parallel_map`] for work too short to report progress on.
pub(crate) fn parallel_quietly<T: Send>(
    count: usize,
    threads: usize,
    work: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    parallel_map(count, threads, &Monitor::new(1), &mut NoProgress, work)
}

/// `work(0..count)` on up to `threads` threads, results in order; stops
/// early when the monitor's stop is raised (the caller's thread reports
/// progress meanwhile).
pub(crate) fn parallel_map<T: Send>(
    count: usize,
    threads: usize,
    monitor: &Monitor,
    progress: &mut dyn Progress,
    work: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<T>>>> = Mutex::new((0..count).map(|_| None).collect());
    let workers = threads.min(count).max(1);
    let finished = AtomicUsize::new(0);
    let watcher = std::thread::current();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !monitor.stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let r = work(i);
                    if let Ok(mut all) = results.lock()
                        && let Some(slot) = all.get_mut(i)
                    {
                        *slot = Some(r);
                    }
                }
                finished.fetch_add(1, Ordering::Release);
                watcher.unpark();
            });
        }
        monitor.watch(&finished, workers, progress)
    })?;
    let all = results
        .into_inner()
        .map_err(|_| Error::InvalidArgument("a worker thread failed".into()))?;
    all.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::InvalidArgument("a job was not run".into()))))
        .collect()
}

/// `lc`: LZMA2's literal context bits (zstd ignores it).
fn compress_one(frame: &Frame, opts: &DiffOptions, effort: Effort, lc: u32) -> Result<Vec<u8>> {
    match (opts.compression, effort) {
        (Compression::None, _) => Ok(frame.raw.clone()),
        (_, Effort::Rank) => compress_zstd(&frame.raw, RANKING_LEVEL, opts.window_log),
        (Compression::Zstd, _) => compress_zstd(&frame.raw, opts.level, opts.window_log),
        (Compression::Lzma2, _) if opts.split_streams == Some(true) => {
            compress_lzma2_split(frame, opts, lc)
        }
        (Compression::Lzma2, _) => compress_lzma2(&frame.raw, opts, lc),
    }
}

fn compress_zstd(raw: &[u8], level: i32, window_log: u8) -> Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let zerr = |e: std::io::Error| Error::InvalidArgument(format!("zstd failed: {e}"));
    let mut c = zstd::bulk::Compressor::new(level).map_err(zerr)?;
    c.set_parameter(CParameter::WindowLog(u32::from(window_log)))
        .map_err(zerr)?;
    c.set_parameter(CParameter::ChecksumFlag(false))
        .map_err(zerr)?;
    c.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(zerr)?;
    c.compress(raw).map_err(zerr)
}

/// One raw LZMA2 stream of a frame.
fn compress_lzma2(raw: &[u8], opts: &DiffOptions, lc: u32) -> Result<Vec<u8>> {
    // No bigger than the stream: less match finder to set up, the same output.
    let fits = (raw.len() as u64)
        .next_power_of_two()
        .min(1 << opts.window_log);
    let nice = (raw.len() < SMALL_IMAGE).then_some(SMALL_NICE_LEN);
    let mut stream = lzma2_encoder(fits as u32, opts, lc, nice)?;
    let mut out = Vec::with_capacity(raw.len() / 4 + 1024);
    lzma2_encode(&mut stream, raw, &mut out, Action::Finish)?;
    Ok(out)
}

/// A frame as three LZMA2 streams (records, differences, literals) cut at
/// block ends: per block, each stream's segment after its varint length
/// (flushed, so it decodes to that block's part; the last block ends the
/// streams). Literals get `lc`.
fn compress_lzma2_split(frame: &Frame, opts: &DiffOptions, lc: u32) -> Result<Vec<u8>> {
    let lcs = [LC_RECORDS, LC_DIFFERENCES, lc];
    let dictionaries = format::split_dictionaries(opts.window_log);
    let mut streams = Vec::with_capacity(3);
    for (dict, lc) in dictionaries.into_iter().zip(lcs) {
        streams.push(lzma2_encoder(dict, opts, lc, None)?);
    }
    let mut out = Vec::with_capacity(frame.raw.len() / 4 + 1024);
    let mut segment = Vec::new();
    let mut start = 0;
    for (b, ends) in frame.sections.iter().enumerate() {
        let last = b + 1 == frame.sections.len();
        for (stream, &end) in streams.iter_mut().zip(ends) {
            segment.clear();
            let action = if last {
                Action::Finish
            } else {
                Action::SyncFlush
            };
            lzma2_encode(stream, &frame.raw[start..end], &mut segment, action)?;
            format::put_varint(&mut out, segment.len() as u64);
            out.extend_from_slice(&segment);
            start = end;
        }
    }
    Ok(out)
}

/// A raw LZMA2 encoder at xz's preset `opts.level` with the extreme flag
/// (and its longest `nice_len` unless `nice` says otherwise), a
/// `dict`-byte dictionary, `lc` literal context bits and
/// no position bits (the frames are mostly difference bytes, whose value
/// depends little on alignment). The decoder needs neither: LZMA2 chunks
/// carry them.
fn lzma2_encoder(dict: u32, opts: &DiffOptions, lc: u32, nice: Option<u32>) -> Result<Stream> {
    let preset = opts.level.clamp(0, 9) as u32 | PRESET_EXTREME;
    let mut lzma = LzmaOptions::new_preset(preset).map_err(lzma_error)?;
    if let Some(nice) = nice {
        lzma.nice_len(nice);
    }
    lzma.dict_size(dict.max(format::LZMA2_MIN_DICTIONARY))
        .literal_context_bits(lc)
        .literal_position_bits(0)
        .position_bits(0);
    let mut filters = Filters::new();
    filters.lzma2(&lzma);
    Stream::new_raw_encoder(&filters).map_err(lzma_error)
}

/// Encodes all of `input` into `out`, then finishes or flushes the stream.
fn lzma2_encode(
    stream: &mut Stream,
    input: &[u8],
    out: &mut Vec<u8>,
    action: Action,
) -> Result<()> {
    let start = stream.total_in();
    loop {
        if out.capacity() - out.len() < 64 << 10 {
            out.reserve(out.capacity().max(64 << 10));
        }
        let used = (stream.total_in() - start) as usize;
        // Finish and SyncFlush both report StreamEnd when done.
        if stream
            .process_vec(&input[used..], out, action)
            .map_err(lzma_error)?
            == Status::StreamEnd
        {
            return Ok(());
        }
    }
}

fn lzma_error(e: liblzma::stream::Error) -> Error {
    Error::InvalidArgument(format!("LZMA2 failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new image made of short pieces moved from all over the old one
    /// needs a new record per piece: only the low threshold takes them.
    #[test]
    fn moved_pieces_pick_the_low_threshold() {
        let mut rng = fastrand::Rng::with_seed(7);
        let old: Vec<u8> = (0..SMALL_IMAGE + (1 << 20)).map(|_| rng.u8(..)).collect();
        let mut new = Vec::with_capacity(old.len());
        while new.len() < old.len() {
            let at = rng.usize(..old.len() - 48);
            new.extend_from_slice(&old[at..at + 48]);
        }
        let sa = matcher::suffix_array(&old, 1).unwrap();
        let opts = DiffOptions::default();
        assert_eq!(pick_matching(&sa, &old, &new, &opts, 2).unwrap().0, 16);
        let patch = diff(&old, &new, &opts).unwrap();
        assert!(patch.len() < new.len() / 8, "{} bytes", patch.len());
    }

    /// Frames are as many as frame_size asks for, and of equal size.
    #[test]
    fn frames_share_the_image_evenly() {
        let old: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let new = old[..(5 << 12) + 100].to_vec();
        let opts = DiffOptions {
            block_size: 4096,
            frame_size: 4 << 12,
            ..DiffOptions::default()
        };
        let records = [Record {
            copy: new.len() as u64,
            extra: 0,
            old: 0,
        }];
        let frames = build_frames(&old, &new, &records, &opts, Diffs::Whole, false, None).unwrap();
        let lens: Vec<u32> = frames.iter().map(|f| f.out_len).collect();
        assert_eq!(lens, [3 << 12, (2 << 12) + 100]);
    }

    #[test]
    fn x86_is_told_by_how_far_calls_go() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut code: Vec<u8> = (0..1 << 16).map(|_| rng.u8(..0xE0)).collect();
        let mut random = code.clone();
        for at in (0..code.len() - 5).step_by(256) {
            let near = rng.i32(-(1 << 24)..1 << 24);
            code[at] = 0xE8;
            code[at + 1..at + 5].copy_from_slice(&near.to_le_bytes());
            random[at] = 0xE8;
            random[at + 1..at + 5].copy_from_slice(&rng.i32(..).to_le_bytes());
        }
        assert!(looks_like_x86(&code));
        assert!(!looks_like_x86(&random));
        // Too few calls to tell: the transform is tried.
        assert!(looks_like_x86(&random[..1 << 12]));
    }
}
