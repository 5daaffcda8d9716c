//! Decodes a patch body (frames of blocks) pushed in chunks of any size into
//! output blocks, with a working set fixed by the header: one output block,
//! its record table, a small staging buffer, the old-image read cache and the
//! zstd window.

use std::sync::Arc;

use bytes::BytesMut;

use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};
use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

use super::format::{
    Compression, DiffMode, FrameHeader, Header, MAX_FRAME_HEADER_LEN, RECORD_DENSITY, get_varint,
    split_dictionaries, unzigzag,
};
use super::predictor::BackgroundPredictor;
use super::references::{MovesReader, ReferenceMap, Rules};
use crate::io::ReadAt;
use crate::{Error, Result};

/// Decompressed bytes are parsed from a buffer of this size.
const STAGING: usize = 64 << 10;
/// zstd's fixed decoder state (entropy tables, block buffers) above its window.
const ZSTD_FIXED: usize = 480 << 10;
/// The LZMA2 decoder's probability tables and state above its dictionary
/// (lc + lp ≤ 4 in LZMA2: at most 48 KiB of tables).
const LZMA2_FIXED: usize = 64 << 10;

fn corrupt(what: impl Into<String>) -> Error {
    Error::PatchCorrupt(what.into())
}

/// Bytes of a block's copies' table (old offset, block offset, length).
pub(crate) fn records_table(header: &Header) -> usize {
    (header.block_size as usize / RECORD_DENSITY as usize + 1) * std::mem::size_of::<Entry>()
}

/// Working memory the body decoder needs for `header`, with a read cache of
/// `read_cache` bytes.
pub fn working_set(header: &Header, read_cache: usize) -> usize {
    let block = header.block_size as usize;
    // Sparse differences reuse the copies' table (`BodyDecoder::copies`).
    let spans = (block / RECORD_DENSITY as usize + 1) * std::mem::size_of::<Span>();
    let records = spans + records_table(header);
    let codec = match header.compression {
        Compression::None => 0,
        Compression::Zstd => (1usize << header.window_log) + ZSTD_FIXED,
        Compression::Lzma2 if header.split_streams => split_dictionaries(header.window_log)
            .iter()
            .map(|&d| d as usize + LZMA2_FIXED)
            .sum(),
        Compression::Lzma2 => (1usize << header.window_log) + LZMA2_FIXED,
    };
    let references = header.reference_pages as usize * std::mem::size_of::<u32>();
    block + records + STAGING + read_cache + codec + references
}

/// The read cache while references are predicted aside: the block's old
/// bytes are read into a second block buffer, the cache only gathers short
/// copies.
const ASIDE_READ_CACHE: usize = 64 << 10;

/// What [`working_set`]'s read cache becomes when references are predicted
/// aside: a second block buffer, the job's list of copies and a smaller
/// cache.
pub(crate) fn aside_working_set(header: &Header, read_cache: usize) -> usize {
    header.block_size as usize + records_table(header) + ASIDE_READ_CACHE.min(read_cache)
}

/// Reads of the old image through a 4-way set-associative cache of 4 KiB
/// pages (least recently used way replaced): patches copy many short runs
/// from a few regions that move through the old image, so a miss must cost
/// one page, not a window. Long copies bypass the cache.
#[derive(Debug)]
pub(crate) struct ReadCache {
    pages: Vec<u8>,
    tags: Vec<u64>,
    used: Vec<u64>,
    clock: u64,
    sets: usize,
}

const PAGE: usize = 4096;
const WAYS: usize = 4;
const EMPTY: u64 = u64::MAX;

impl ReadCache {
    pub(crate) fn new(capacity: usize) -> Self {
        let sets = (capacity / (PAGE * WAYS)).max(1);
        Self {
            pages: vec![0; sets * WAYS * PAGE],
            tags: vec![EMPTY; sets * WAYS],
            used: vec![0; sets * WAYS],
            clock: 0,
            sets,
        }
    }

    /// The cache slot holding `page`, loading it if needed.
    fn slot(&mut self, old: &mut dyn ReadAt, page: u64, avail: usize) -> Result<usize> {
        self.clock += 1;
        let set = (page % self.sets as u64) as usize * WAYS;
        let ways = set..set + WAYS;
        if let Some(slot) = ways.clone().find(|&w| self.tags[w] == page) {
            self.used[slot] = self.clock;
            return Ok(slot);
        }
        let slot = ways.min_by_key(|&w| self.used[w]).unwrap_or(set);
        let base = slot * PAGE;
        self.tags[slot] = EMPTY;
        old.read_exact_at(page * PAGE as u64, &mut self.pages[base..base + avail])?;
        self.tags[slot] = page;
        self.used[slot] = self.clock;
        Ok(slot)
    }

    /// Fills `block` from the old image: `copies` are (old offset, block
    /// offset, length). They are read in old-image order, nearby short ones
    /// coalesced into one read through the cache's buffer, so a block costs a
    /// few large reads however scattered its copies are; a long copy is read
    /// straight into the block (a read of its own costs less than passing
    /// its bytes through the buffer).
    pub(crate) fn gather(
        &mut self,
        old: &mut dyn ReadAt,
        copies: &mut [Entry],
        block: &mut [u8],
    ) -> Result<()> {
        const GAP: u64 = 2 * PAGE as u64;
        const LONG: u64 = 32 << 10;
        self.tags.fill(EMPTY);
        copies.sort_unstable_by_key(|c| c.0);
        let cap = self.pages.len() as u64;
        let long = |len: u32| u64::from(len) >= LONG.min(cap + 1);
        let mut i = 0;
        while i < copies.len() {
            let (start, at, len) = copies[i];
            if long(len) {
                old.read_exact_at(start, &mut block[at as usize..at as usize + len as usize])?;
                i += 1;
                continue;
            }
            let mut end = start + u64::from(len);
            let mut j = i + 1;
            while j < copies.len() {
                let (s, _, l) = copies[j];
                let e = (s + u64::from(l)).max(end);
                if long(l) || s > end + GAP || e - start > cap {
                    break;
                }
                end = e;
                j += 1;
            }
            let run = &mut self.pages[..(end - start) as usize];
            old.read_exact_at(start, run)?;
            for &(s, at, len) in &copies[i..j] {
                let from = (s - start) as usize;
                block[at as usize..at as usize + len as usize]
                    .copy_from_slice(&run[from..from + len as usize]);
            }
            i = j;
        }
        Ok(())
    }

    pub(crate) fn read(&mut self, old: &mut dyn ReadAt, pos: u64, out: &mut [u8]) -> Result<()> {
        if out.len() >= 4 * PAGE {
            return old.read_exact_at(pos, out);
        }
        let size = old.size();
        let mut done = 0;
        while done < out.len() {
            let at = pos + done as u64;
            let page = at / PAGE as u64;
            let start = page * PAGE as u64;
            let avail = (size.saturating_sub(start)).min(PAGE as u64) as usize;
            let offset = (at - start) as usize;
            if offset >= avail {
                return Err(corrupt("it copies from beyond the end of the old image"));
            }
            let base = self.slot(old, page, avail)? * PAGE;
            let n = (avail - offset).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.pages[base + offset..base + offset + n]);
            done += n;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Span {
    at: u32,
    copy: u32,
    extra: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Count,
    Records {
        left: u64,
    },
    /// `record_columns`: reading field `column` (0 copies, 1 extras, 2
    /// offset changes) of record `index` of `count`.
    Columns {
        column: u8,
        index: usize,
        count: usize,
    },
    /// Sparse patches: the block's difference mode (format::DiffMode).
    DiffMode,
    /// Sparse: reading the runs; `end` is where the last one ended.
    Runs {
        left: u64,
        end: u64,
        copied: u64,
    },
    /// Sparse: reading the bitmap of non-zero differences (`len` bytes for
    /// the block's `copied` bytes, `read` so far).
    Bitmap {
        len: usize,
        read: usize,
        copied: u64,
    },
    /// Sparse: adding the marked differences from the one at `at` on.
    Marked {
        at: u64,
    },
    /// Sparse: adding the non-zero bytes of run `run`.
    Sparse {
        run: usize,
        done: u32,
    },
    Diff {
        span: usize,
        done: u32,
    },
    Extra {
        span: usize,
        done: u32,
    },
}

/// Where the decoder stands, so a checkpoint can restart at a frame boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Body bytes consumed (the patch offset is this plus the header length).
    pub body_pos: u64,
    /// Output bytes produced.
    pub out_pos: u64,
    /// Frames completed.
    pub frame_index: u32,
}

/// The frame being decoded.
struct Frame {
    header: FrameHeader,
    comp_left: u64,
    raw_seen: u64,
    out_left: u64,
    crc: crc32fast::Hasher,
    /// The CRC-32 the frame header stores (over its fields and the payload).
    stored_crc: u32,
    codec_done: bool,
}

/// Receives each finished output block with its offset in the new image.
pub(crate) type Emit<'a> = dyn FnMut(u64, &[u8]) -> Result<()> + 'a;

/// A frame payload's decompressor; each frame is one complete stream, or
/// (split LZMA2) three.
enum Codec {
    Raw,
    Zstd(Box<DCtx<'static>>),
    Lzma2 { stream: Box<Stream>, window_log: u8 },
    Split(Box<SplitLzma2>),
}

impl Codec {
    fn new(header: &Header) -> Result<Self> {
        Ok(match header.compression {
            Compression::None => Self::Raw,
            Compression::Zstd => {
                let mut dctx = DCtx::try_create()
                    .ok_or_else(|| Error::PatchUnsupported("zstd could not allocate".into()))?;
                dctx.set_parameter(DParameter::WindowLogMax(u32::from(header.window_log)))
                    .map_err(zstd_error)?;
                Self::Zstd(Box::new(dctx))
            }
            Compression::Lzma2 if header.split_streams => {
                Self::Split(Box::new(SplitLzma2::new(header.window_log)?))
            }
            Compression::Lzma2 => Self::Lzma2 {
                stream: Box::new(lzma2_decoder(1 << header.window_log)?),
                window_log: header.window_log,
            },
        })
    }

    /// Ready for a new frame.
    fn reset(&mut self) -> Result<()> {
        match self {
            Self::Raw => Ok(()),
            Self::Zstd(dctx) => dctx
                .reset(ResetDirective::SessionOnly)
                .map(|_| ())
                .map_err(zstd_error),
            Self::Lzma2 { stream, window_log } => {
                **stream = lzma2_decoder(1 << *window_log)?;
                Ok(())
            }
            Self::Split(split) => {
                **split = SplitLzma2::new(split.window_log)?;
                Ok(())
            }
        }
    }

    /// Decodes from `input` into `out`: (input bytes used, bytes made, the
    /// stream ended).
    fn run(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize, bool)> {
        match self {
            Self::Raw => Err(corrupt("no decoder")),
            Self::Zstd(dctx) => {
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(out);
                let hint = dctx
                    .decompress_stream(&mut outb, &mut inb)
                    .map_err(zstd_error)?;
                Ok((inb.pos(), outb.pos(), hint == 0))
            }
            Self::Lzma2 { stream, .. } => lzma2_run(stream, input, out),
            Self::Split(split) => split.run(input, out),
        }
    }

    /// Decodes the reference map's payload: like a frame's, except that
    /// split LZMA2 patches compress it as one stream, with the records
    /// stream's dictionary.
    fn run_map(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize, bool)> {
        match self {
            Self::Raw => {
                let n = input.len().min(out.len());
                out[..n].copy_from_slice(&input[..n]);
                Ok((n, n, false))
            }
            Self::Split(split) => lzma2_run(&mut split.streams[0], input, out),
            other => other.run(input, out),
        }
    }
}

/// The reference map (docs/patch-format.md section 3.2) as it arrives:
/// `page_log:u8 [first:varint] comp_len:varint payload crc:u32` (first in
/// version 5).
struct MapReading {
    head: Vec<u8>,
    comp_left: Option<u64>,
    crc: crc32fast::Hasher,
    stored_crc: Vec<u8>,
    moves: Option<MovesReader>,
    codec_done: bool,
}

/// A reference map's head (docs/patch-format.md section 3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapHead {
    pub page_log: u8,
    pub rules: Rules,
    /// Bytes of the compressed moves that follow.
    pub comp_len: u64,
}

/// The most bytes a map head takes: page_log, the rules byte and two varints.
pub const MAX_MAP_HEAD_LEN: usize = 2 + 2 * 10;

impl MapHead {
    /// The head at the start of `bytes` (the body's first bytes), or None
    /// while they end inside it: `page_log:u8`, in version 6 the rules byte,
    /// in versions 5 and 6 the address of old offset 0, the compressed length.
    pub fn parse(bytes: &[u8], header: &Header) -> Result<Option<Self>> {
        let Some(&page_log) = bytes.first() else {
            return Ok(None);
        };
        let fixed = if header.version >= 6 { 2 } else { 1 };
        let wanted = if header.version >= 5 { 2 } else { 1 };
        let mut fields = [0u64; 2];
        let (mut at, mut parsed) = (fixed, 0);
        // (get_varint refuses a varint longer than 10 bytes.)
        while parsed < wanted && at < bytes.len() {
            let Some((value, n)) = get_varint(&bytes[at..])? else {
                break;
            };
            fields[parsed] = value;
            (at, parsed) = (at + n, parsed + 1);
        }
        if parsed < wanted {
            return Ok(None);
        }
        let (rules, comp_len) = match header.version {
            6.. => (
                Rules::decode(bytes[1], fields[0], header.old_size)?,
                fields[1],
            ),
            5 => (Rules::x86(fields[0], header.old_size)?, fields[1]),
            _ => (Rules::x86(0, header.old_size)?, fields[0]),
        };
        Ok(Some(Self {
            page_log,
            rules,
            comp_len,
        }))
    }
}

/// The patch's reference map: none, being read, or read.
enum References {
    None,
    Reading(Box<MapReading>),
    /// Shared with the prediction thread, if there is one.
    Ready(Arc<ReferenceMap>),
}

/// One step of a raw LZMA2 decoder: (input used, bytes made, it ended).
fn lzma2_run(stream: &mut Stream, input: &[u8], out: &mut [u8]) -> Result<(usize, usize, bool)> {
    let (in0, out0) = (stream.total_in(), stream.total_out());
    let status = stream
        .process(input, out, Action::Run)
        .map_err(|e| corrupt(format!("its LZMA2 data does not decode ({e})")))?;
    Ok((
        (stream.total_in() - in0) as usize,
        (stream.total_out() - out0) as usize,
        status == Status::StreamEnd,
    ))
}

/// A split LZMA2 frame: per block, a varint length and a segment of the
/// records stream, then of the differences stream, then of the literals
/// stream. Each segment decodes to exactly that block's part, so the output
/// is the same byte sequence a one-stream frame decodes to.
struct SplitLzma2 {
    window_log: u8,
    streams: [Stream; 3],
    ended: [bool; 3],
    /// The stream the current (or next) segment belongs to.
    current: usize,
    /// Bytes of the current segment still to come; None while its length is read.
    left: Option<u64>,
    /// The length varint's bytes so far.
    length: Vec<u8>,
}

impl SplitLzma2 {
    fn new(window_log: u8) -> Result<Self> {
        let [r, d, l] = split_dictionaries(window_log);
        Ok(Self {
            window_log,
            streams: [lzma2_decoder(r)?, lzma2_decoder(d)?, lzma2_decoder(l)?],
            ended: [false; 3],
            current: 0,
            left: None,
            length: Vec::with_capacity(10),
        })
    }

    fn run(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize, bool)> {
        let (mut used, mut made) = (0, 0);
        while !self.finished() {
            let Some(left) = self.left else {
                let Some(&byte) = input.get(used) else {
                    break;
                };
                used += 1;
                self.length.push(byte);
                if let Some((len, _)) = get_varint(&self.length)? {
                    self.length.clear();
                    if len > 0 && self.ended[self.current] {
                        return Err(corrupt("a frame stream has data after its end"));
                    }
                    self.left = Some(len);
                }
                continue;
            };
            if self.ended[self.current] {
                // An empty segment of a stream that has ended.
                self.next_segment();
                continue;
            }
            let take = (left as usize).min(input.len() - used);
            let stream = &mut self.streams[self.current];
            let (i, o, ended) = lzma2_run(stream, &input[used..used + take], &mut out[made..])?;
            used += i;
            made += o;
            let left = left - i as u64;
            self.left = Some(left);
            self.ended[self.current] = ended;
            if ended && left > 0 {
                return Err(corrupt("a frame stream has data after its end"));
            }
            // A segment is done when all its bytes are in and its decoder
            // has given all it holds (a call that made nothing with room to
            // spare).
            if left == 0 && (ended || o == 0 && made < out.len()) {
                self.next_segment();
            } else if i == 0 && o == 0 {
                break;
            }
        }
        Ok((used, made, self.finished()))
    }

    fn next_segment(&mut self) {
        self.left = None;
        self.current = (self.current + 1) % 3;
    }

    /// All three streams have ended, and no segment is open.
    fn finished(&self) -> bool {
        self.ended == [true; 3] && self.left.is_none() && self.length.is_empty()
    }
}

/// A raw LZMA2 decoder with a dictionary of `dict_size` bytes.
fn lzma2_decoder(dict_size: u32) -> Result<Stream> {
    let unsupported = |e: liblzma::stream::Error| {
        Error::PatchUnsupported(format!("LZMA2 decoder could not start ({e})"))
    };
    let mut opts = LzmaOptions::new_preset(0).map_err(unsupported)?;
    opts.dict_size(dict_size);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    Stream::new_raw_decoder(&filters).map_err(unsupported)
}

pub(crate) struct BodyDecoder {
    header: Header,
    codec: Codec,
    staging: Vec<u8>,
    st_start: usize,
    st_end: usize,
    frame_head: Vec<u8>,
    frame: Option<Frame>,
    block: BytesMut,
    block_len: usize,
    spans: Vec<Span>,
    /// The block's copies (old offset, block offset, length) until they are
    /// gathered; then, with sparse differences, the runs of non-zero ones
    /// (start, length, 0; counted in the concatenation of the copies) or
    /// the bitmap of which copied bytes differ, 128 bits per entry (see
    /// `entry_bits`). Both fit: runs are as few as records, and the bitmap
    /// needs an entry per 128 bytes.
    copies: Vec<Entry>,
    /// Sparse: the span holding the next difference and where it starts.
    cursor: (usize, u64),
    phase: Phase,
    filled: usize,
    old_pos: u64,
    pub(crate) cache: ReadCache,
    /// Running position (mid-frame bytes included).
    pos: Position,
    /// The last frame boundary.
    boundary: Position,
    references: References,
    /// Predict references on a second thread ([`BackgroundPredictor`]).
    predictor: Option<Arc<BackgroundPredictor>>,
    /// Predicting aside: the block buffer the next block's old bytes are
    /// read into (the thread predicts them there, then it becomes the block).
    spare: BytesMut,
    /// Predicting aside: a finished block (offset, length) still in `block`,
    /// written out while the thread predicts the next one.
    pending: Option<(u64, usize)>,
}

impl std::fmt::Debug for BodyDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyDecoder")
            .field("pos", &self.pos)
            .finish()
    }
}

impl BodyDecoder {
    /// A decoder starting at `pos`, which must be a frame boundary; past
    /// the start of a patch with a reference map, it needs that map (kept in
    /// the checkpoint).
    pub(crate) fn new(
        header: &Header,
        read_cache: usize,
        pos: Position,
        map: Option<ReferenceMap>,
    ) -> Result<Self> {
        let codec = Codec::new(header)?;
        let block = header.block_size as usize;
        let references = match (header.reference_pages, map) {
            (0, _) => References::None,
            (pages, Some(map)) if map.pages() == pages as usize => References::Ready(Arc::new(map)),
            (_, None) if pos.body_pos == 0 => References::Reading(Box::new(MapReading {
                head: Vec::with_capacity(MAX_MAP_HEAD_LEN),
                comp_left: None,
                crc: crc32fast::Hasher::new(),
                stored_crc: Vec::with_capacity(4),
                moves: None,
                codec_done: header.compression == Compression::None,
            })),
            _ => {
                return Err(Error::InvalidArgument(
                    "the checkpoint lacks the patch's reference map: start the apply again".into(),
                ));
            }
        };
        Ok(Self {
            header: header.clone(),
            codec,
            staging: vec![0; STAGING],
            st_start: 0,
            st_end: 0,
            frame_head: Vec::with_capacity(MAX_FRAME_HEADER_LEN),
            frame: None,
            block: BytesMut::zeroed(block),
            block_len: 0,
            spans: Vec::with_capacity(block / RECORD_DENSITY as usize + 1),
            copies: Vec::with_capacity(block / RECORD_DENSITY as usize + 1),
            cursor: (0, 0),
            phase: Phase::Count,
            filled: 0,
            old_pos: 0,
            cache: ReadCache::new(read_cache),
            pos,
            boundary: pos,
            references,
            predictor: None,
            spare: BytesMut::new(),
            pending: None,
        })
    }

    /// Predicts references with `predictor` from now on. Its memory
    /// ([`aside_working_set`]) replaces the read cache's: a second block
    /// buffer, the job's copies and a smaller cache.
    pub(crate) fn predict_aside(&mut self, predictor: Arc<BackgroundPredictor>) {
        self.predictor = Some(predictor);
        self.spare = BytesMut::zeroed(self.header.block_size as usize);
        self.cache = ReadCache::new(ASIDE_READ_CACHE.min(self.cache.pages.len()));
    }

    /// The reference map, once read.
    pub(crate) fn reference_map(&self) -> Option<&ReferenceMap> {
        match &self.references {
            References::Ready(map) => Some(map.as_ref()),
            _ => None,
        }
    }

    /// Takes reference-map bytes from the front of `data` (section 3.2):
    /// how many it used.
    fn read_map(&mut self, data: &[u8]) -> Result<usize> {
        let References::Reading(map) = &mut self.references else {
            return Ok(0);
        };
        let mut used = 0;
        let header = &self.header;
        while used < data.len() {
            let rest = &data[used..];
            let Some(left) = map.comp_left else {
                map.head.push(rest[0]);
                used += 1;
                let Some(MapHead {
                    page_log,
                    rules,
                    comp_len,
                }) = MapHead::parse(&map.head, header)?
                else {
                    continue;
                };
                let pages = u64::from(header.reference_pages);
                if comp_len == 0 || comp_len > pages * 5 + pages / 128 + 1024 {
                    return Err(corrupt(format!(
                        "its reference map of {pages} pages declares {comp_len} bytes"
                    )));
                }
                map.moves = Some(MovesReader::new(page_log, pages, header.old_size, rules)?);
                map.crc.update(&map.head);
                map.comp_left = Some(comp_len);
                continue;
            };
            if left > 0 {
                let take = (left as usize).min(rest.len());
                let input = &rest[..take];
                let (i, o, ended) = self.codec.run_map(input, &mut self.staging)?;
                map.crc.update(&input[..i]);
                if let Some(moves) = map.moves.as_mut() {
                    moves.take(&self.staging[..o])?;
                }
                map.codec_done |= ended;
                map.comp_left = Some(left - i as u64);
                used += i;
                if ended && left > i as u64 {
                    return Err(corrupt("its reference map has bytes after its stream"));
                }
                if i == 0 && o == 0 {
                    return Err(corrupt("its reference map does not decode"));
                }
                continue;
            }
            // Drain the decoder, then the CRC.
            loop {
                let (_, o, ended) = self.codec.run_map(&[], &mut self.staging)?;
                if let Some(moves) = map.moves.as_mut() {
                    moves.take(&self.staging[..o])?;
                }
                map.codec_done |= ended;
                if o == 0 {
                    break;
                }
            }
            let n = (4 - map.stored_crc.len()).min(rest.len());
            map.stored_crc.extend_from_slice(&rest[..n]);
            used += n;
            if map.stored_crc.len() == 4 {
                if !map.codec_done {
                    return Err(corrupt("its reference map ends inside its stream"));
                }
                let stored = super::format::le_u32(&map.stored_crc, 0);
                if std::mem::take(&mut map.crc).finalize() != stored {
                    return Err(corrupt("its reference map's checksum does not match"));
                }
                let moves = map
                    .moves
                    .take()
                    .ok_or_else(|| corrupt("no reference map"))?;
                self.references = References::Ready(Arc::new(moves.finish()?));
                break;
            }
        }
        self.pos.body_pos += used as u64;
        Ok(used)
    }

    /// The last frame boundary passed (where a resume can restart).
    pub(crate) fn boundary(&self) -> Position {
        self.boundary
    }

    /// Body bytes until the current frame (or frame header, or reference
    /// map) ends.
    pub(crate) fn bytes_to_boundary(&self) -> Option<u64> {
        match (&self.frame, &self.references) {
            (Some(frame), _) => Some(frame.comp_left),
            // The map's payload and CRC at once (a byte at a time, its
            // decoding cost libcrypto3's apply 0.5 ms before the first block).
            (None, References::Reading(map)) => Some(
                map.comp_left
                    .map_or(1, |left| left + (4 - map.stored_crc.len()) as u64),
            ),
            // Frame headers are a few bytes: take them one at a time.
            (None, _) => Some(1),
        }
    }

    pub(crate) fn out_pos(&self) -> u64 {
        self.pos.out_pos
            + self
                .frame
                .as_ref()
                .map_or(0, |f| u64::from(f.header.out_len) - f.out_left)
    }

    /// Every frame is decoded and every output byte made.
    pub(crate) fn is_complete(&self) -> bool {
        self.frame.is_none()
            && self.frame_head.is_empty()
            && !matches!(self.references, References::Reading(_))
            && self.pos.out_pos == self.header.new_size
            && self.pos.frame_index == self.header.frame_count
    }

    /// Decodes `data` (the next body bytes). Finished blocks go to `emit`.
    pub(crate) fn push(
        &mut self,
        mut data: &[u8],
        old: &mut dyn ReadAt,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        while !data.is_empty() {
            if matches!(self.references, References::Reading(_)) {
                let used = self.read_map(data)?;
                data = &data[used..];
                continue;
            }
            if self.frame.is_none() {
                if self.pos.out_pos == self.header.new_size {
                    return Err(corrupt(format!(
                        "it has {} bytes after its last frame",
                        data.len()
                    )));
                }
                // Bytes past the frame header stay in `data`: take what may
                // belong to it, then give back what did not.
                let had = self.frame_head.len();
                let take = (MAX_FRAME_HEADER_LEN - had).min(data.len());
                self.frame_head.extend_from_slice(&data[..take]);
                match self.start_frame()? {
                    Some(len) => data = &data[len - had..],
                    None => return Ok(()),
                }
                continue;
            }
            let take = {
                let frame = self.frame.as_ref().ok_or_else(|| corrupt("no frame"))?;
                (frame.comp_left.min(data.len() as u64)) as usize
            };
            let (piece, rest) = data.split_at(take);
            data = rest;
            self.consume_payload(piece, old, emit)?;
        }
        Ok(())
    }

    /// Starts the frame whose header `frame_head` begins with: its header
    /// length, or None until `frame_head` holds all of it.
    fn start_frame(&mut self) -> Result<Option<usize>> {
        let out_left = self.header.new_size - self.pos.out_pos;
        if self.pos.frame_index >= self.header.frame_count {
            return Err(corrupt(format!(
                "it has more frames than the {} its header declares",
                self.header.frame_count
            )));
        }
        let Some((fh, stored_crc, len)) = FrameHeader::decode(
            &self.frame_head,
            self.pos.frame_index,
            &self.header,
            out_left,
        )?
        else {
            if self.frame_head.len() >= MAX_FRAME_HEADER_LEN {
                return Err(corrupt(format!(
                    "frame {} header is damaged",
                    self.pos.frame_index
                )));
            }
            return Ok(None);
        };
        self.frame_head.clear();
        self.codec.reset()?;
        self.st_start = 0;
        self.st_end = 0;
        self.old_pos = fh.old_pos;
        self.phase = Phase::Count;
        self.frame = Some(Frame {
            header: fh,
            comp_left: u64::from(fh.comp_len),
            raw_seen: 0,
            out_left: u64::from(fh.out_len),
            crc: fh.crc_start(),
            stored_crc,
            codec_done: false,
        });
        self.pos.body_pos += len as u64;
        Ok(Some(len))
    }

    /// The old-image space copies may address (in-place: the shifted slot).
    fn old_space(&self) -> u64 {
        self.header.old_size
    }

    fn consume_payload(
        &mut self,
        piece: &[u8],
        old: &mut dyn ReadAt,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        {
            let frame = self.frame.as_mut().ok_or_else(|| corrupt("no frame"))?;
            frame.crc.update(piece);
            frame.comp_left -= piece.len() as u64;
        }
        self.pos.body_pos += piece.len() as u64;
        match self.header.compression {
            Compression::None => {
                let mut input = piece;
                while !input.is_empty() {
                    self.compact();
                    let room = STAGING - self.st_end;
                    let n = room.min(input.len());
                    self.staging[self.st_end..self.st_end + n].copy_from_slice(&input[..n]);
                    self.st_end += n;
                    input = &input[n..];
                    self.note_raw(n as u64)?;
                    self.parse(old, emit)?;
                }
            }
            Compression::Zstd | Compression::Lzma2 => {
                let mut input = piece;
                loop {
                    let made = self.inflate(&mut input)?;
                    self.parse(old, emit)?;
                    if input.is_empty() && made == 0 {
                        break;
                    }
                }
            }
        }
        let left = self.frame.as_ref().map_or(1, |f| f.comp_left);
        if left == 0 {
            if self.header.compression == Compression::None
                && let Some(frame) = self.frame.as_mut()
            {
                frame.codec_done = true;
            }
            self.parse(old, emit)?;
            // A frame boundary is a checkpoint: all its output is out.
            self.flush_pending(emit)?;
            self.end_frame()?;
        }
        Ok(())
    }

    /// Runs the decompressor once into the free end of the staging buffer,
    /// advancing `input`; returns the bytes it produced.
    fn inflate(&mut self, input: &mut &[u8]) -> Result<usize> {
        self.compact();
        let done = self.frame.as_ref().is_some_and(|f| f.codec_done);
        if done {
            if !input.is_empty() {
                return Err(corrupt("a frame has bytes after its compressed stream"));
            }
            return Ok(0);
        }
        let (used, made, ended) = self.codec.run(input, &mut self.staging[self.st_end..])?;
        *input = &input[used..];
        self.st_end += made;
        if ended {
            if let Some(frame) = self.frame.as_mut() {
                frame.codec_done = true;
            }
            if !input.is_empty() {
                return Err(corrupt("a frame has bytes after its compressed stream"));
            }
        }
        self.note_raw(made as u64)?;
        Ok(made)
    }

    fn note_raw(&mut self, n: u64) -> Result<()> {
        let frame = self.frame.as_mut().ok_or_else(|| corrupt("no frame"))?;
        frame.raw_seen += n;
        if frame.raw_seen > u64::from(frame.header.raw_len) {
            return Err(corrupt(format!(
                "frame {} decodes to more than the {} bytes it declares",
                self.pos.frame_index, frame.header.raw_len
            )));
        }
        Ok(())
    }

    fn end_frame(&mut self) -> Result<()> {
        let index = self.pos.frame_index;
        // Drain whatever the decoder still holds.
        if self.header.compression != Compression::None {
            let mut empty: &[u8] = &[];
            if self.inflate(&mut empty)? > 0 {
                return Err(corrupt(format!("frame {index} decodes past its data")));
            }
        }
        let frame = self.frame.take().ok_or_else(|| corrupt("no frame"))?;
        if !frame.codec_done {
            return Err(corrupt(format!(
                "frame {index} ends inside its compressed stream"
            )));
        }
        if frame.crc.finalize() != frame.stored_crc {
            return Err(corrupt(format!("frame {index} checksum does not match")));
        }
        if frame.raw_seen != u64::from(frame.header.raw_len)
            || frame.out_left != 0
            || self.st_start != self.st_end
            || self.phase != Phase::Count
        {
            return Err(corrupt(format!(
                "frame {index} does not add up: its data ends before its {} output bytes",
                frame.header.out_len
            )));
        }
        self.pos.out_pos += u64::from(frame.header.out_len);
        self.pos.frame_index += 1;
        self.boundary = self.pos;
        Ok(())
    }

    fn compact(&mut self) {
        if self.st_start == self.st_end {
            self.st_start = 0;
            self.st_end = 0;
        } else if self.st_start > 0 && STAGING - self.st_end < 16 {
            self.staging.copy_within(self.st_start..self.st_end, 0);
            self.st_end -= self.st_start;
            self.st_start = 0;
        }
    }

    fn take_varint(&mut self) -> Result<Option<u64>> {
        match get_varint(&self.staging[self.st_start..self.st_end])? {
            Some((v, n)) => {
                self.st_start += n;
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    /// Parses staged bytes as far as they go.
    fn parse(&mut self, old: &mut dyn ReadAt, emit: &mut Emit<'_>) -> Result<()> {
        loop {
            let Some(frame) = self.frame.as_ref() else {
                return Ok(());
            };
            match self.phase {
                Phase::Count => {
                    if self.st_start == self.st_end {
                        return Ok(());
                    }
                    if frame.out_left == 0 {
                        return Err(corrupt(format!(
                            "frame {} has data after its last block",
                            self.pos.frame_index
                        )));
                    }
                    let block_len = frame.out_left.min(u64::from(self.header.block_size)) as usize;
                    let Some(count) = self.take_varint()? else {
                        return Ok(());
                    };
                    let max = (block_len / RECORD_DENSITY as usize + 1) as u64;
                    if count == 0 || count > max {
                        return Err(corrupt(format!(
                            "a block of {block_len} bytes declares {count} records (at most {max})"
                        )));
                    }
                    self.block_len = block_len;
                    self.filled = 0;
                    self.spans.clear();
                    self.copies.clear();
                    self.phase = if self.header.record_columns {
                        Phase::Columns {
                            column: 0,
                            index: 0,
                            count: count as usize,
                        }
                    } else {
                        Phase::Records { left: count }
                    };
                }
                Phase::Records { left } => {
                    if left == 0 {
                        self.records_done(old, emit)?;
                        continue;
                    }
                    let mark = self.st_start;
                    let (Some(copy), Some(extra), Some(seek)) = (
                        self.take_varint()?,
                        self.take_varint()?,
                        self.take_varint()?,
                    ) else {
                        self.st_start = mark;
                        return Ok(());
                    };
                    let span = self.record(copy, extra, unzigzag(seek))?;
                    self.spans.push(span);
                    self.phase = Phase::Records { left: left - 1 };
                }
                Phase::Columns {
                    column,
                    index,
                    count,
                } => {
                    if index == count {
                        if column == 2 {
                            self.records_done(old, emit)?;
                        } else {
                            self.phase = Phase::Columns {
                                column: column + 1,
                                index: 0,
                                count,
                            };
                        }
                        continue;
                    }
                    let Some(value) = self.take_varint()? else {
                        return Ok(());
                    };
                    self.record_field(column, index, value)?;
                    self.phase = Phase::Columns {
                        column,
                        index: index + 1,
                        count,
                    };
                }
                Phase::DiffMode => {
                    let Some(value) = self.take_varint()? else {
                        return Ok(());
                    };
                    let copied: u64 = self.spans.iter().map(|s| u64::from(s.copy)).sum();
                    self.cursor = (0, 0);
                    self.copies.clear();
                    self.phase = match DiffMode::from_value(self.header.version, value) {
                        DiffMode::Whole => Phase::Diff { span: 0, done: 0 },
                        DiffMode::Bitmap => Phase::Bitmap {
                            len: copied.div_ceil(8) as usize,
                            read: 0,
                            copied,
                        },
                        DiffMode::Runs(runs) => {
                            let max = (self.block_len / RECORD_DENSITY as usize + 1) as u64;
                            if runs > max {
                                return Err(corrupt(format!(
                                    "a block of {} bytes declares {runs} difference runs \
                                     (at most {max})",
                                    self.block_len
                                )));
                            }
                            Phase::Runs {
                                left: runs,
                                end: 0,
                                copied,
                            }
                        }
                    };
                }
                Phase::Bitmap { len, read, copied } => {
                    if read == len {
                        if next_marked(&self.copies, copied).is_some() {
                            return Err(corrupt(
                                "a difference bitmap marks bytes past its block's copies",
                            ));
                        }
                        self.phase = Phase::Marked { at: 0 };
                        continue;
                    }
                    let avail = self.st_end - self.st_start;
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = avail.min(len - read);
                    for (k, &byte) in (read..).zip(&self.staging[self.st_start..self.st_start + n])
                    {
                        if k % 16 == 0 {
                            self.copies.push((0, 0, 0));
                        }
                        if let Some(last) = self.copies.last_mut() {
                            *last =
                                bits_entry(entry_bits(*last) | u128::from(byte) << (8 * (k % 16)));
                        }
                    }
                    self.st_start += n;
                    self.phase = Phase::Bitmap {
                        len,
                        read: read + n,
                        copied,
                    };
                }
                Phase::Marked { mut at } => {
                    // As many marked differences as are staged, in one go.
                    loop {
                        let Some(d) = next_marked(&self.copies, at) else {
                            self.phase = Phase::Extra { span: 0, done: 0 };
                            break;
                        };
                        if self.st_start == self.st_end {
                            self.phase = Phase::Marked { at: d };
                            return Ok(());
                        }
                        let (s, offset) = self.copy_at(d)?;
                        self.add_staged((s.at + offset) as usize, 1);
                        at = d + 1;
                    }
                }
                Phase::Runs { left, end, copied } => {
                    if left == 0 {
                        self.cursor = (0, 0);
                        self.phase = Phase::Sparse { run: 0, done: 0 };
                        continue;
                    }
                    let mark = self.st_start;
                    let (Some(skip), Some(len)) = (self.take_varint()?, self.take_varint()?) else {
                        self.st_start = mark;
                        return Ok(());
                    };
                    let start = end.saturating_add(skip);
                    if len == 0 || start.saturating_add(len) > copied {
                        return Err(corrupt(format!(
                            "a difference run of {len} bytes at {start} lies outside the \
                             {copied} bytes its block copies"
                        )));
                    }
                    self.copies.push((start, len as u32, 0));
                    self.phase = Phase::Runs {
                        left: left - 1,
                        end: start + len,
                        copied,
                    };
                }
                Phase::Sparse { run, done } => {
                    let Some(&(start, len, _)) = self.copies.get(run) else {
                        self.phase = Phase::Extra { span: 0, done: 0 };
                        continue;
                    };
                    if done == len {
                        self.phase = Phase::Sparse {
                            run: run + 1,
                            done: 0,
                        };
                        continue;
                    }
                    let avail = self.st_end - self.st_start;
                    if avail == 0 {
                        return Ok(());
                    }
                    let (s, offset) = self.copy_at(start + u64::from(done))?;
                    let n = avail
                        .min((len - done) as usize)
                        .min((s.copy - offset) as usize);
                    self.add_staged((s.at + offset) as usize, n);
                    self.phase = Phase::Sparse {
                        run,
                        done: done + n as u32,
                    };
                }
                Phase::Diff { span, done } => {
                    let Some(s) = self.spans.get(span).copied() else {
                        self.phase = Phase::Extra { span: 0, done: 0 };
                        continue;
                    };
                    if done == s.copy {
                        self.phase = Phase::Diff {
                            span: span + 1,
                            done: 0,
                        };
                        continue;
                    }
                    let avail = self.st_end - self.st_start;
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = avail.min((s.copy - done) as usize);
                    self.add_staged((s.at + done) as usize, n);
                    self.phase = Phase::Diff {
                        span,
                        done: done + n as u32,
                    };
                }
                Phase::Extra { span, done } => {
                    let Some(s) = self.spans.get(span).copied() else {
                        self.finish_block(emit)?;
                        continue;
                    };
                    if done == s.extra {
                        self.phase = Phase::Extra {
                            span: span + 1,
                            done: 0,
                        };
                        continue;
                    }
                    let avail = self.st_end - self.st_start;
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = avail.min((s.extra - done) as usize);
                    let at = (s.at + s.copy + done) as usize;
                    self.block[at..at + n]
                        .copy_from_slice(&self.staging[self.st_start..self.st_start + n]);
                    self.st_start += n;
                    self.phase = Phase::Extra {
                        span,
                        done: done + n as u32,
                    };
                }
            }
        }
    }

    /// The span holding byte `d` of the block's copies (counted in their
    /// concatenation) and the offset in it. Sparse differences ascend, so
    /// the cursor only moves forward.
    fn copy_at(&mut self, d: u64) -> Result<(Span, u32)> {
        let (mut span, mut base) = self.cursor;
        loop {
            let s = self
                .spans
                .get(span)
                .copied()
                .ok_or_else(|| corrupt("a difference lies outside its block's copies"))?;
            if d < base + u64::from(s.copy) {
                self.cursor = (span, base);
                return Ok((s, (d - base) as u32));
            }
            base += u64::from(s.copy);
            span += 1;
        }
    }

    /// Adds the next `n` staged difference bytes to the block at `at`.
    fn add_staged(&mut self, at: usize, n: usize) {
        let src = &self.staging[self.st_start..self.st_start + n];
        for (dst, d) in self.block[at..at + n].iter_mut().zip(src) {
            *dst = dst.wrapping_add(*d);
        }
        self.st_start += n;
    }

    /// All the block's records are read: checks they fill it, reads their
    /// old bytes (with a reference map, as its predictions rewrite them).
    fn records_done(&mut self, old: &mut dyn ReadAt, emit: &mut Emit<'_>) -> Result<()> {
        if self.filled != self.block_len {
            return Err(corrupt(format!(
                "a block's records make {} of its {} bytes",
                self.filled, self.block_len
            )));
        }
        let map = match &self.references {
            References::Ready(map) => Some(Arc::clone(map)),
            _ => None,
        };
        if let (Some(map), Some(predictor)) = (&map, self.predictor.clone()) {
            self.predict_block_aside(map, &predictor, old, emit)?;
        } else {
            self.cache
                .gather(old, &mut self.copies, &mut self.block[..self.block_len])?;
            if let Some(map) = &map {
                let block_start = self.out_pos();
                for &(from, at, len) in &self.copies {
                    let code = &mut self.block[at as usize..(at + len) as usize];
                    map.predict(code, from, block_start + u64::from(at));
                }
            }
        }
        self.phase = if self.header.sparse_diffs {
            Phase::DiffMode
        } else {
            Phase::Diff { span: 0, done: 0 }
        };
        Ok(())
    }

    /// Reads the block's old bytes into the spare buffer and has the thread
    /// predict them there while the previous block is written out; then the
    /// spare buffer becomes the block (differences and literals follow). On
    /// large x86 images this hides the writing behind the prediction.
    fn predict_block_aside(
        &mut self,
        map: &Arc<ReferenceMap>,
        predictor: &BackgroundPredictor,
        old: &mut dyn ReadAt,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        let mut bytes = std::mem::take(&mut self.spare);
        self.cache
            .gather(old, &mut self.copies, &mut bytes[..self.block_len])?;
        // The buffer is cut into pieces along the copies, in block order.
        self.copies.sort_unstable_by_key(|c| c.1);
        predictor.start(map, bytes, &self.copies, self.out_pos())?;
        self.flush_pending(emit)?;
        let predicted = predictor.finish(map)?;
        self.spare = std::mem::replace(&mut self.block, predicted);
        Ok(())
    }

    /// Writes out the finished block predicting aside held back.
    fn flush_pending(&mut self, emit: &mut Emit<'_>) -> Result<()> {
        match self.pending.take() {
            Some((offset, len)) => emit(offset, &self.block[..len]),
            None => Ok(()),
        }
    }

    /// One field of a record stored in columns: copies and extras are held
    /// in `spans` until the offset changes place each record.
    fn record_field(&mut self, column: u8, index: usize, value: u64) -> Result<()> {
        if column == 2 {
            let Span { copy, extra, .. } = *self
                .spans
                .get(index)
                .ok_or_else(|| corrupt("a record field without its record"))?;
            // The offset change counts the literals: the old position moves
            // past them too.
            let seek = unzigzag(value).saturating_add(i64::from(extra));
            let placed = self.record(u64::from(copy), u64::from(extra), seek)?;
            if let Some(span) = self.spans.get_mut(index) {
                *span = placed;
            }
            return Ok(());
        }
        if value > self.block_len as u64 {
            return Err(corrupt(format!(
                "a record of {value} {} bytes does not fit its {}-byte block",
                if column == 0 { "copied" } else { "literal" },
                self.block_len
            )));
        }
        match self.spans.get_mut(index) {
            Some(span) if column == 1 => span.extra = value as u32,
            None if column == 0 => self.spans.push(Span {
                at: 0,
                copy: value as u32,
                extra: 0,
            }),
            _ => return Err(corrupt("a record field without its record")),
        }
        Ok(())
    }

    /// Checks and places a record at the block's fill point: queues its
    /// copy and moves the old position.
    fn record(&mut self, copy: u64, extra: u64, seek: i64) -> Result<Span> {
        let room = (self.block_len - self.filled) as u64;
        let total = copy.saturating_add(extra);
        if total == 0 || total > room {
            return Err(corrupt(format!(
                "a record of {copy}+{extra} bytes does not fit the {room} bytes left in its block"
            )));
        }
        let end = self.old_pos + copy;
        if end > self.old_space() {
            return Err(corrupt(format!(
                "it copies {copy} bytes from old offset {} beyond the old image ({} bytes)",
                self.old_pos,
                self.old_space()
            )));
        }
        let at = self.filled;
        if copy > 0 {
            self.copies.push((self.old_pos, at as u32, copy as u32));
        }
        let next = i128::from(end) + i128::from(seek);
        if next < 0 || next > i128::from(self.old_space()) {
            return Err(corrupt(format!(
                "it seeks to old offset {next}, outside the old image"
            )));
        }
        self.old_pos = next as u64;
        self.filled += total as usize;
        Ok(Span {
            at: at as u32,
            copy: copy as u32,
            extra: extra as u32,
        })
    }

    fn finish_block(&mut self, emit: &mut Emit<'_>) -> Result<()> {
        let offset = self.out_pos();
        let frame = self.frame.as_mut().ok_or_else(|| corrupt("no frame"))?;
        frame.out_left -= self.block_len as u64;
        self.phase = Phase::Count;
        if self.header.x86_branches {
            for s in &self.spans {
                let start = (s.at + s.copy) as usize;
                super::branches::x86_decode(
                    &mut self.block[start..start + s.extra as usize],
                    offset + start as u64,
                );
            }
        }
        if self.predictor.is_some() {
            self.pending = Some((offset, self.block_len));
            return Ok(());
        }
        emit(offset, &self.block[..self.block_len])
    }
}

/// An entry of the copies' table: (old offset, block offset, length).
type Entry = (u64, u32, u32);

/// An entry of a bitmap held in the copies' table: its 16 bytes in order,
/// bit i of the bitmap being bit i % 128 of entry i / 128.
fn entry_bits(e: Entry) -> u128 {
    u128::from(e.0) | u128::from(e.1) << 64 | u128::from(e.2) << 96
}

fn bits_entry(bits: u128) -> Entry {
    (bits as u64, (bits >> 64) as u32, (bits >> 96) as u32)
}

/// The first bit set at or after bit `at` of a bitmap held in `table`.
fn next_marked(table: &[Entry], at: u64) -> Option<u64> {
    let mut word = (at / 128) as usize;
    let mut bits = entry_bits(*table.get(word)?) & (u128::MAX << (at % 128));
    while bits == 0 {
        word += 1;
        bits = entry_bits(*table.get(word)?);
    }
    Some(word as u64 * 128 + u64::from(bits.trailing_zeros()))
}

fn zstd_error(code: usize) -> Error {
    corrupt(format!(
        "its zstd data does not decode ({})",
        zstd_safe::get_error_name(code)
    ))
}

#[cfg(test)]
mod tests {
    use super::super::format;
    use super::*;

    /// Segments of three LZMA2 streams, flushed after each part, ended
    /// after the last: what the diff writes for a split frame.
    fn split_payload(parts: &[[&[u8]; 3]], window_log: u8) -> Vec<u8> {
        let mut streams: Vec<Stream> = split_dictionaries(window_log)
            .into_iter()
            .map(|dict| {
                let mut opts = LzmaOptions::new_preset(6).unwrap();
                opts.dict_size(dict);
                let mut filters = Filters::new();
                filters.lzma2(&opts);
                Stream::new_raw_encoder(&filters).unwrap()
            })
            .collect();
        let mut out = Vec::new();
        for (b, block) in parts.iter().enumerate() {
            for (stream, part) in streams.iter_mut().zip(block) {
                let action = if b + 1 == parts.len() {
                    Action::Finish
                } else {
                    Action::SyncFlush
                };
                let mut segment = Vec::with_capacity(part.len() + 1024);
                let status = stream.process_vec(part, &mut segment, action).unwrap();
                assert_eq!(status, Status::StreamEnd);
                format::put_varint(&mut out, segment.len() as u64);
                out.extend_from_slice(&segment);
            }
        }
        out
    }

    /// Decodes `payload` fed `chunk` bytes at a time into an output buffer
    /// of `room` bytes: (output, bytes left unused, the streams ended).
    fn decode(payload: &[u8], chunk: usize, room: usize) -> Result<(Vec<u8>, usize, bool)> {
        let mut split = SplitLzma2::new(12)?;
        let mut out = Vec::new();
        let mut buf = vec![0; room];
        let mut ended = false;
        let mut unused = 0;
        for piece in payload.chunks(chunk) {
            let mut input = piece;
            loop {
                let (used, made, done) = split.run(input, &mut buf)?;
                out.extend_from_slice(&buf[..made]);
                input = &input[used..];
                ended = done;
                if done || used == 0 && made == 0 {
                    break;
                }
            }
            unused += input.len();
        }
        Ok((out, unused, ended))
    }

    #[test]
    fn split_frames_decode_in_block_order_whatever_the_buffers() {
        let text: Vec<u8> = (0..30_000u32).map(|i| (i * 7 / 5 % 253) as u8).collect();
        let parts: [[&[u8]; 3]; 3] = [
            [&text[..10], &text[100..5000], &text[6000..6100]],
            [&[], &text[9000..20_000], &[]],
            [&text[..3], &[], &text[20_000..]],
        ];
        let want: Vec<u8> = parts
            .iter()
            .flatten()
            .flat_map(|p| p.iter().copied())
            .collect();
        let payload = split_payload(&parts, 12);
        for (chunk, room) in [(1, 7), (13, 1), (payload.len(), 4096), (999, 65_536)] {
            let (got, unused, ended) = decode(&payload, chunk, room).unwrap();
            assert!(ended && unused == 0, "chunk {chunk} room {room}");
            assert_eq!(got, want, "chunk {chunk} room {room}");
        }
        // Bytes after the three ends are left for the caller to refuse.
        let mut longer = payload.clone();
        longer.push(0);
        assert_eq!(decode(&longer, 5, 100).unwrap().1, 1);
    }

    #[test]
    fn a_split_stream_with_data_after_its_end_is_refused() {
        // Block 0 ends the records stream but only flushes the others;
        // block 1 then brings records again.
        let whole = split_payload(&[[b"records", b"", b""]], 12);
        let flushed = split_payload(&[[b"", b"diffs", b"literals"], [b"", b"", b""]], 12);
        let records_end = 1 + usize::from(whole[0]);
        let mut payload = whole[..records_end].to_vec();
        // The diff and literal segments of the two-block payload's block 0.
        let mut at = 1 + usize::from(flushed[0]);
        for _ in 0..2 {
            let len = 1 + usize::from(flushed[at]);
            payload.extend_from_slice(&flushed[at..at + len]);
            at += len;
        }
        payload.extend_from_slice(&whole[..records_end]);
        let err = decode(&payload, 3, 64).unwrap_err().to_string();
        assert!(err.contains("after its end"), "{err}");
    }
}
