//! VCDIFF patches (RFC 3284) as xdelta3 writes them, through the same
//! push-fed applier, byte-identical to `xdelta3 -d`.
//!
//! A VCDIFF patch is a header and a series of windows. Each window makes a
//! piece of the new image from a range of the old one (the source segment,
//! read at offsets here), from literal bytes, and from earlier bytes of the
//! same piece, so one window's encoding and its output are held whole (a
//! stated cost: xdelta3 writes windows of up to 8 MiB by default). xdelta3's
//! extensions are understood: the application header, an Adler-32 of each
//! window's output (checked), and LZMA secondary compression of the three
//! sections (its default: one xz stream per section kind, continued from
//! window to window). Its DJW and FGK secondary coders are refused by name.
//! The format carries no hash of the old image: it cannot be checked before
//! writing, only each window's output after making it.

use liblzma::stream::{Action, Stream};
use sha2::{Digest as _, Sha256};

use super::apply::{ApplyOptions, ApplyReport};
use super::body::ReadCache;
use crate::io::{ImageSink, ReadAt};
use crate::progress::{Operation, Progress, ProgressEvent};
use crate::{Error, Result};

pub(crate) const VCDIFF_MAGIC: &[u8; 4] = b"\xd6\xc3\xc4\x00";

const HDR_SECONDARY: u8 = 0x01;
const HDR_CODETABLE: u8 = 0x02;
const HDR_APPHEADER: u8 = 0x04;
const WIN_SOURCE: u8 = 0x01;
const WIN_TARGET: u8 = 0x02;
const WIN_ADLER32: u8 = 0x04;
/// xdelta3's secondary compressor ids.
const SECONDARY_DJW: u8 = 1;
const SECONDARY_LZMA: u8 = 2;
const SECONDARY_FGK: u8 = 16;
const SECTION_NAMES: [&str; 3] = ["data", "instructions", "addresses"];
/// The RFC's address cache: 4 near slots, 3 × 256 same slots.
const NEAR: usize = 4;
const SAME: usize = 3 * 256;

fn corrupt(what: impl Into<String>) -> Error {
    Error::PatchCorrupt(format!("VCDIFF: {}", what.into()))
}

/// Reads RFC 3284 integers (base 128, most significant digit first) and
/// bytes; `None` when the input ends first.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }

    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.at)?;
        self.at += 1;
        Some(v)
    }

    fn int(&mut self) -> Result<Option<u64>> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(byte) = self.byte() else {
                return Ok(None);
            };
            if i == 9 || v >> 57 != 0 {
                return Err(corrupt("a number overflows 64 bits"));
            }
            v = v << 7 | u64::from(byte & 0x7f);
            if byte & 0x80 == 0 {
                return Ok(Some(v));
            }
        }
        Err(corrupt("a number overflows 64 bits"))
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let part = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(part)
    }

    fn rest(&self) -> &'a [u8] {
        &self.b[self.at..]
    }
}

/// xdelta3's name for a secondary compressor id.
fn coder_name(id: u8) -> Option<&'static str> {
    match id {
        SECONDARY_LZMA => Some("lzma"),
        SECONDARY_DJW => Some("djw"),
        SECONDARY_FGK => Some("fgk"),
        _ => None,
    }
}

/// The secondary compressor a VCDIFF file header names.
pub(crate) fn secondary_name(head: &[u8]) -> &'static str {
    match (head.get(4), head.get(5)) {
        (Some(ind), Some(&id)) if ind & HDR_SECONDARY != 0 => coder_name(id).unwrap_or("unknown"),
        _ => "none",
    }
}

/// Inside a section whose bytes are all present, running out is corruption.
fn within<T>(v: Option<T>, section: &str) -> Result<T> {
    v.ok_or_else(|| corrupt(format!("its {section} section ends early")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Noop,
    Run,
    Add,
    /// A copy with its address mode (0 ..= 8).
    Copy(u8),
}

#[derive(Clone, Copy, Debug)]
struct Half {
    op: Op,
    /// 0: the size follows in the instruction section.
    size: u8,
}

const NOOP: Half = Half {
    op: Op::Noop,
    size: 0,
};

/// RFC 3284 section 5.6: the default instruction code table.
fn default_code_table() -> [[Half; 2]; 256] {
    let mut t = [[NOOP; 2]; 256];
    let half = |op, size| Half { op, size };
    t[0][0] = half(Op::Run, 0);
    let mut i = 1;
    for size in 0..=17 {
        t[i][0] = half(Op::Add, size);
        i += 1;
    }
    for mode in 0..=8 {
        t[i][0] = half(Op::Copy(mode), 0);
        i += 1;
        for size in 4..=18 {
            t[i][0] = half(Op::Copy(mode), size);
            i += 1;
        }
    }
    for mode in 0..=5 {
        for add in 1..=4 {
            for copy in 4..=6 {
                t[i] = [half(Op::Add, add), half(Op::Copy(mode), copy)];
                i += 1;
            }
        }
    }
    for mode in 6..=8 {
        for add in 1..=4 {
            t[i] = [half(Op::Add, add), half(Op::Copy(mode), 4)];
            i += 1;
        }
    }
    for mode in 0..=8 {
        t[i] = [half(Op::Copy(mode), 4), half(Op::Add, 1)];
        i += 1;
    }
    t
}

/// RFC 3284 section 5.1: recently used copy addresses, reset every window.
struct AddressCache {
    near: [u64; NEAR],
    next: usize,
    same: Vec<u64>,
}

impl AddressCache {
    fn new() -> Self {
        Self {
            near: [0; NEAR],
            next: 0,
            same: vec![0; SAME],
        }
    }

    fn reset(&mut self) {
        self.near = [0; NEAR];
        self.next = 0;
        self.same.fill(0);
    }

    fn decode(&mut self, here: u64, mode: u8, addrs: &mut Reader<'_>) -> Result<u64> {
        let read = |r: &mut Reader<'_>| -> Result<u64> { within(r.int()?, "addresses") };
        let addr = match mode {
            0 => read(addrs)?,
            1 => here
                .checked_sub(read(addrs)?)
                .ok_or_else(|| corrupt("a copy address lies before the window"))?,
            2..=5 => self.near[usize::from(mode - 2)]
                .checked_add(read(addrs)?)
                .ok_or_else(|| corrupt("a copy address overflows"))?,
            _ => {
                let slot =
                    usize::from(mode - 6) * 256 + usize::from(within(addrs.byte(), "addresses")?);
                self.same[slot]
            }
        };
        self.near[self.next] = addr;
        self.next = (self.next + 1) % NEAR;
        self.same[(addr % SAME as u64) as usize] = addr;
        Ok(addr)
    }
}

/// xdelta3's LZMA secondary compression: per section kind, one xz stream
/// continued across windows; each compressed section is its decoded size
/// and the stream's next bytes up to a sync flush.
struct Secondary {
    streams: [Option<Stream>; 3],
    memlimit: u64,
}

impl Secondary {
    fn decode(&mut self, kind: usize, section: &[u8], limit: usize) -> Result<Vec<u8>> {
        let name = SECTION_NAMES[kind];
        let mut r = Reader::new(section);
        let size = within(r.int()?, name)?;
        if size == 0 || size > limit as u64 {
            return Err(corrupt(format!(
                "its compressed {name} section declares {size} bytes"
            )));
        }
        let stream = match &mut self.streams[kind] {
            Some(s) => s,
            empty => empty.insert(
                Stream::new_stream_decoder(self.memlimit, 0)
                    .map_err(|e| corrupt(format!("cannot start its LZMA decoder: {e}")))?,
            ),
        };
        let mut out = vec![0u8; size as usize];
        let mut input = r.rest();
        let mut made = 0usize;
        loop {
            let (in0, out0) = (stream.total_in(), stream.total_out());
            let result = stream.process(input, &mut out[made..], Action::Run);
            let used = (stream.total_in() - in0) as usize;
            let got = (stream.total_out() - out0) as usize;
            if let Err(e) = result {
                return Err(match e {
                    liblzma::stream::Error::MemLimit => Error::PatchUnsupported(format!(
                        "its LZMA {name} stream needs more than {} MiB to decode \
                         (made with `xdelta3 -9`? the limit is legacy_buffer_limit)",
                        self.memlimit >> 20
                    )),
                    other => corrupt(format!("its LZMA {name} stream is damaged: {other}")),
                });
            }
            input = &input[used..];
            made += got;
            if made == out.len() && input.is_empty() {
                return Ok(out);
            }
            if used == 0 && got == 0 {
                return Err(corrupt(format!(
                    "its compressed {name} section does not hold its {size} bytes"
                )));
            }
        }
    }
}

/// Where the bytes being collected belong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    FileHeader,
    Window,
}

pub(crate) struct VcdiffApply {
    unit: Unit,
    /// The current unit's bytes (the header, or one window), held whole.
    held: Vec<u8>,
    table: [[Half; 2]; 256],
    cache: AddressCache,
    secondary: Option<Secondary>,
    target: Vec<u8>,
    new_pos: u64,
    windows: u64,
    hash: Sha256,
    reads: ReadCache,
    limit: usize,
    read_cache: usize,
    /// The most memory any window needed (for the working-set report).
    peak: usize,
}

impl VcdiffApply {
    pub(crate) fn new(options: &ApplyOptions) -> Self {
        Self {
            unit: Unit::FileHeader,
            held: Vec::new(),
            table: default_code_table(),
            cache: AddressCache::new(),
            secondary: None,
            target: Vec::new(),
            new_pos: 0,
            windows: 0,
            hash: Sha256::new(),
            reads: ReadCache::new(options.read_cache),
            limit: options.legacy_buffer_limit,
            read_cache: options.read_cache,
            peak: 0,
        }
    }

    pub(crate) fn out_pos(&self) -> u64 {
        self.new_pos
    }

    pub(crate) fn working_set(&self) -> usize {
        self.peak + self.read_cache + SAME * 8
    }

    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        old: &mut dyn ReadAt,
        sink: &mut dyn ImageSink,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        self.held.extend_from_slice(chunk);
        loop {
            let used = match self.unit {
                Unit::FileHeader => self.parse_file_header()?,
                Unit::Window => self.window(old, sink, progress)?,
            };
            match used {
                Some(n) => {
                    self.held.drain(..n);
                }
                None => break,
            }
            if self.held.is_empty() {
                break;
            }
        }
        if self.held.len() > self.limit {
            return Err(Error::PatchUnsupported(format!(
                "this VCDIFF window needs more than {} bytes held in memory (legacy_buffer_limit)",
                self.limit
            )));
        }
        Ok(())
    }

    /// Parses the file header once it is complete: its length, or None.
    fn parse_file_header(&mut self) -> Result<Option<usize>> {
        let mut r = Reader::new(&self.held);
        let Some(magic) = r.bytes(4) else {
            return Ok(None);
        };
        if magic != VCDIFF_MAGIC {
            return Err(corrupt("wrong magic"));
        }
        let Some(indicator) = r.byte() else {
            return Ok(None);
        };
        if indicator & !(HDR_SECONDARY | HDR_CODETABLE | HDR_APPHEADER) != 0 {
            return Err(corrupt(format!(
                "unknown header indicator bits {indicator:#04x}"
            )));
        }
        if indicator & HDR_SECONDARY != 0 {
            let Some(id) = r.byte() else {
                return Ok(None);
            };
            match coder_name(id) {
                Some("lzma") => {}
                Some(name) => {
                    return Err(Error::PatchUnsupported(format!(
                        "this VCDIFF patch uses xdelta3's {name} secondary compression; make \
                         it with `xdelta3 -S lzma` (the default) or `-S none`"
                    )));
                }
                None => return Err(corrupt(format!("unknown secondary compressor {id}"))),
            }
            self.secondary = Some(Secondary {
                streams: [None, None, None],
                memlimit: self.limit as u64,
            });
        }
        if indicator & HDR_CODETABLE != 0 {
            return Err(Error::PatchUnsupported(
                "this VCDIFF patch brings its own instruction code table; otaflash applies \
                 patches using the default table (as xdelta3 writes them)"
                    .into(),
            ));
        }
        if indicator & HDR_APPHEADER != 0 {
            let Some(len) = r.int()? else {
                return Ok(None);
            };
            if len > self.limit as u64 {
                return Err(corrupt(format!("absurd application header length {len}")));
            }
            if r.bytes(len as usize).is_none() {
                return Ok(None);
            }
        }
        self.unit = Unit::Window;
        Ok(Some(r.at))
    }

    /// Decodes the window at the start of `held` once it is complete and
    /// writes its output: the bytes it took, or None.
    fn window(
        &mut self,
        old: &mut dyn ReadAt,
        sink: &mut dyn ImageSink,
        progress: &mut dyn Progress,
    ) -> Result<Option<usize>> {
        let held = std::mem::take(&mut self.held);
        let result = self.window_from(&held, old, sink, progress);
        self.held = held;
        result
    }

    fn window_from(
        &mut self,
        held: &[u8],
        old: &mut dyn ReadAt,
        sink: &mut dyn ImageSink,
        progress: &mut dyn Progress,
    ) -> Result<Option<usize>> {
        let index = self.windows;
        let mut r = Reader::new(held);
        let Some(indicator) = r.byte() else {
            return Ok(None);
        };
        if indicator & !(WIN_SOURCE | WIN_TARGET | WIN_ADLER32) != 0 {
            return Err(corrupt(format!(
                "window {index} has unknown indicator bits {indicator:#04x}"
            )));
        }
        if indicator & WIN_TARGET != 0 {
            return Err(Error::PatchUnsupported(
                "this VCDIFF patch copies from earlier output windows (VCD_TARGET), which \
                 xdelta3 never writes"
                    .into(),
            ));
        }
        let (source_len, source_pos) = if indicator & WIN_SOURCE != 0 {
            let Some(len) = r.int()? else { return Ok(None) };
            let Some(pos) = r.int()? else { return Ok(None) };
            if pos.checked_add(len).is_none_or(|end| end > old.size()) {
                return Err(corrupt(format!(
                    "window {index} copies old bytes {pos}..{} beyond the old image's {} \
                     (is this the old image the patch was made from?)",
                    pos.saturating_add(len),
                    old.size()
                )));
            }
            (len, pos)
        } else {
            (0, 0)
        };
        let Some(encoding_len) = r.int()? else {
            return Ok(None);
        };
        if encoding_len > self.limit as u64 {
            return Err(Error::PatchUnsupported(format!(
                "VCDIFF window {index} is {encoding_len} bytes, more than the {} it may hold \
                 (legacy_buffer_limit)",
                self.limit
            )));
        }
        let start = r.at;
        let Some(encoding) = r.bytes(encoding_len as usize) else {
            return Ok(None);
        };
        self.decode_window(index, indicator, source_len, source_pos, encoding, old)?;
        // The window is complete and checked: it goes out.
        self.hash.update(&self.target);
        sink.write(&self.target)?;
        self.new_pos += self.target.len() as u64;
        self.windows += 1;
        progress.report(ProgressEvent {
            operation: Operation::Patch,
            done: self.new_pos,
            total: None,
        })?;
        self.peak = self.peak.max(held.len() + 2 * self.target.capacity());
        Ok(Some(start + encoding_len as usize))
    }

    fn decode_window(
        &mut self,
        index: u64,
        indicator: u8,
        source_len: u64,
        source_pos: u64,
        encoding: &[u8],
        old: &mut dyn ReadAt,
    ) -> Result<()> {
        let mut r = Reader::new(encoding);
        let short = || corrupt(format!("window {index}'s header is truncated"));
        let target_len = r.int()?.ok_or_else(short)?;
        if target_len > self.limit as u64 {
            return Err(Error::PatchUnsupported(format!(
                "VCDIFF window {index} makes {target_len} bytes, more than the {} it may hold \
                 (legacy_buffer_limit)",
                self.limit
            )));
        }
        let delta_indicator = r.byte().ok_or_else(short)?;
        if delta_indicator & !7 != 0 || (delta_indicator != 0 && self.secondary.is_none()) {
            return Err(corrupt(format!(
                "window {index} has invalid delta indicator bits {delta_indicator:#04x}"
            )));
        }
        let mut lens = [0u64; 3];
        for len in &mut lens {
            *len = r.int()?.ok_or_else(short)?;
        }
        let adler = if indicator & WIN_ADLER32 != 0 {
            let b = r.bytes(4).ok_or_else(short)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        } else {
            None
        };
        let total = lens.iter().try_fold(0u64, |a, &l| a.checked_add(l));
        if total != Some(r.rest().len() as u64) {
            return Err(corrupt(format!(
                "window {index}'s sections do not add up to its encoding length"
            )));
        }
        let mut sections: [Vec<u8>; 3] = Default::default();
        let mut at = 0usize;
        let rest = r.rest();
        for (kind, &len) in lens.iter().enumerate() {
            let raw = &rest[at..at + len as usize];
            at += len as usize;
            sections[kind] = if delta_indicator & (1 << kind) != 0 {
                let secondary = self
                    .secondary
                    .as_mut()
                    .ok_or_else(|| corrupt("no secondary"))?;
                secondary.decode(kind, raw, self.limit)?
            } else {
                raw.to_vec()
            };
        }
        self.run(index, &sections, source_len, source_pos, target_len, old)?;
        if let Some(expected) = adler {
            let actual = adler2::adler32_slice(&self.target);
            if actual != expected {
                return Err(Error::Verify {
                    subject: format!("VCDIFF window {index}"),
                    what: "adler32".into(),
                    expected: format!("{expected:08x}"),
                    actual: format!("{actual:08x}"),
                });
            }
        }
        Ok(())
    }

    /// Executes the window's instructions into `self.target`.
    fn run(
        &mut self,
        index: u64,
        sections: &[Vec<u8>; 3],
        source_len: u64,
        source_pos: u64,
        target_len: u64,
        old: &mut dyn ReadAt,
    ) -> Result<()> {
        let [data, inst, addr] = sections;
        let (mut data, mut inst, mut addr) =
            (Reader::new(data), Reader::new(inst), Reader::new(addr));
        self.target.clear();
        self.target.reserve(target_len as usize);
        self.cache.reset();
        let too_long = || {
            corrupt(format!(
                "window {index} makes more than its {target_len} bytes"
            ))
        };
        while let Some(opcode) = inst.byte() {
            for half in self.table[usize::from(opcode)] {
                if half.op == Op::Noop {
                    continue;
                }
                let size = if half.size == 0 {
                    within(inst.int()?, "instructions")?
                } else {
                    u64::from(half.size)
                };
                let made = self.target.len() as u64;
                if made.checked_add(size).is_none_or(|end| end > target_len) {
                    return Err(too_long());
                }
                let size = size as usize;
                match half.op {
                    Op::Noop => {}
                    Op::Run => {
                        let byte = within(data.byte(), "data")?;
                        self.target.resize(self.target.len() + size, byte);
                    }
                    Op::Add => self
                        .target
                        .extend_from_slice(within(data.bytes(size), "data")?),
                    Op::Copy(mode) => {
                        let here = source_len + made;
                        let at = self.cache.decode(here, mode, &mut addr)?;
                        if at >= here {
                            return Err(corrupt(format!(
                                "window {index} copies from {at}, which is not made yet"
                            )));
                        }
                        if at < source_len {
                            if at + size as u64 > source_len {
                                return Err(corrupt(format!(
                                    "window {index} copies past the end of its source segment"
                                )));
                            }
                            let from = self.target.len();
                            self.target.resize(from + size, 0);
                            self.reads
                                .read(old, source_pos + at, &mut self.target[from..])?;
                        } else {
                            // Copies within the window may overlap what they
                            // make (a repeated pattern): then byte by byte.
                            let from = (at - source_len) as usize;
                            if from + size <= self.target.len() {
                                self.target.extend_from_within(from..from + size);
                            } else {
                                for i in from..from + size {
                                    let byte = self.target[i];
                                    self.target.push(byte);
                                }
                            }
                        }
                    }
                }
            }
        }
        if (self.target.len() as u64) != target_len {
            return Err(corrupt(format!(
                "window {index} makes {} of its {target_len} bytes",
                self.target.len()
            )));
        }
        if !data.rest().is_empty() || !addr.rest().is_empty() {
            return Err(corrupt(format!(
                "window {index} has unused data or addresses"
            )));
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self, progress: &mut dyn Progress) -> Result<ApplyReport> {
        if self.unit == Unit::FileHeader {
            return Err(corrupt("it is truncated inside its header"));
        }
        if !self.held.is_empty() {
            return Err(corrupt(format!(
                "it is truncated: window {} is incomplete ({} bytes)",
                self.windows,
                self.held.len()
            )));
        }
        progress.report(ProgressEvent {
            operation: Operation::Patch,
            done: self.new_pos,
            total: Some(self.new_pos),
        })?;
        Ok(ApplyReport {
            format: "vcdiff",
            new_size: self.new_pos,
            new_sha256: self.hash.clone().finalize().into(),
            patch_size: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_code_table_matches_rfc_3284() {
        let t = default_code_table();
        assert_eq!(t[0][0].op, Op::Run);
        assert_eq!((t[1][0].op, t[1][0].size), (Op::Add, 0));
        assert_eq!((t[18][0].op, t[18][0].size), (Op::Add, 17));
        assert_eq!((t[19][0].op, t[19][0].size), (Op::Copy(0), 0));
        assert_eq!((t[20][0].op, t[20][0].size), (Op::Copy(0), 4));
        assert_eq!((t[162][0].op, t[162][0].size), (Op::Copy(8), 18));
        assert_eq!(
            (t[163][0].size, t[163][1].op, t[163][1].size),
            (1, Op::Copy(0), 4)
        );
        assert_eq!((t[165][0].size, t[165][1].size), (1, 6));
        assert_eq!((t[166][0].size, t[166][1].size), (2, 4));
        assert_eq!(
            (t[234][0].size, t[234][1].op, t[234][1].size),
            (4, Op::Copy(5), 6)
        );
        assert_eq!((t[235][0].size, t[235][1].op), (1, Op::Copy(6)));
        assert_eq!((t[246][0].size, t[246][1].op), (4, Op::Copy(8)));
        assert_eq!(
            (t[247][0].op, t[247][1].op, t[247][1].size),
            (Op::Copy(0), Op::Add, 1)
        );
        assert_eq!(t[255][0].op, Op::Copy(8));
    }

    /// A VCDIFF file with one source-less window.
    fn patch(target_len: u8, data: &[u8], inst: &[u8], addr: &[u8]) -> Vec<u8> {
        let mut p = VCDIFF_MAGIC.to_vec();
        p.push(0); // no secondary, code table or application header
        p.push(0); // window: no source, no checksum
        let body = [
            &[
                target_len,
                0,
                data.len() as u8,
                inst.len() as u8,
                addr.len() as u8,
            ][..],
            data,
            inst,
            addr,
        ]
        .concat();
        p.push(body.len() as u8);
        p.extend_from_slice(&body);
        p
    }

    fn apply(patch: &[u8], limit: usize) -> Result<Vec<u8>> {
        let options = ApplyOptions {
            legacy_buffer_limit: limit,
            ..ApplyOptions::default()
        };
        let mut v = VcdiffApply::new(&options);
        let mut out = Vec::new();
        let mut old: &[u8] = &[];
        for byte in patch {
            v.feed(
                std::slice::from_ref(byte),
                &mut old,
                &mut out,
                &mut crate::progress::NoProgress,
            )?;
        }
        v.finish(&mut crate::progress::NoProgress)?;
        Ok(out)
    }

    #[test]
    fn adds_runs_and_overlapping_copies_of_the_window_itself() {
        // ADD 2 "ab"; COPY 6 from address 0 (VCD_SELF), overlapping what it makes;
        // RUN 3 of "z".
        let p = patch(11, b"abz", &[3, 22, 0, 3], &[0]);
        assert_eq!(apply(&p, 1 << 20).unwrap(), b"ababababzzz");
    }

    #[test]
    fn windows_beyond_the_limit_and_lying_windows_are_refused() {
        let p = patch(5, b"hello", &[6], &[]);
        assert_eq!(apply(&p, 1 << 20).unwrap(), b"hello");
        let err = apply(&p, 4).unwrap_err().to_string();
        assert!(err.contains("legacy_buffer_limit"), "{err}");
        // The window claims 6 bytes but makes 5.
        let err = apply(&patch(6, b"hello", &[6], &[]), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("makes 5 of its 6"), "{err}");
        // A copy from an address not made yet.
        let err = apply(&patch(5, b"", &[21], &[9]), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not made yet"), "{err}");
    }

    #[test]
    fn integers_are_big_endian_base_128() {
        let mut r = Reader::new(&[0x81, 0x00, 0x7f, 0x80]);
        assert_eq!(r.int().unwrap(), Some(128));
        assert_eq!(r.int().unwrap(), Some(127));
        assert_eq!(r.int().unwrap(), None);
        assert!(Reader::new(&[0xff; 11]).int().is_err());
    }
}
