//! Executable-aware copies: the x86-64 references in copied code (rel32
//! operands of CALL, JMP and Jcc, disp32 of common RIP-relative
//! instructions) predicted from where their targets moved.
//!
//! When a rebuilt binary's code moves, every reference to a moved target
//! changes, and bsdiff-style differences carry those changes byte by byte
//! (ruff: 1.4 M non-zero difference bytes). A patch with a reference map
//! (docs/patch-format.md section 3.2) carries, per page of the old image,
//! how far targets in that page moved; the applier rewrites each reference
//! in a copy's old bytes to point where its target went before adding the
//! differences, which are then mostly zero (ruff: differences −30 %).

use super::format::{get_varint, put_signed, unzigzag};
use crate::{Error, Result};
use wide::u8x16;

/// A map has at most this many pages (a 256 KiB table): the maker picks the
/// page size so the old image fits.
pub const MAX_PAGES: u64 = 1 << 16;
/// Page sizes from 2^6 (64 B) to 2^40 bytes.
pub const MIN_PAGE_LOG: u8 = 6;
pub const MAX_PAGE_LOG: u8 = 40;

/// Operand bytes of a reference field.
const FIELD: usize = 4;

/// Opcode positions looked at in one go: one SIMD register. (Two, as one
/// 32-bit mask, made the compiler spill the mask bit by bit: 2x slower.)
const LANES: usize = 16;

/// Bit j: whether the window's position j begins a reference field. The window holds one byte past its positions:
/// opcode byte `a` at position j, followed by `b`, begins CALL/JMP rel32
/// (E8, E9), Jcc rel32 (0F 80..8F), or an instruction whose ModRM (mod 00,
/// r/m 101) makes its last four bytes a RIP-relative disp32: the ALU ops
/// ADD, OR, ADC, SBB, AND, SUB, XOR, CMP between a register and memory (01,
/// 03, 09, 0B, ..., 39, 3B: `a & 0xC5 == 0x01`), MOV (89, 8B), LEA (8D),
/// MOVSXD (63) and group 5 (FF: INC, DEC, CALL, JMP, PUSH). 16 positions at
/// once in SIMD lanes (SSE2 on x86-64, NEON on AArch64); the tests hold it
/// to a byte-at-a-time definition.
#[inline(always)]
fn window_mask(w: &[u8; LANES + 1]) -> u32 {
    let mut opcodes = [0u8; LANES];
    let mut modrms = [0u8; LANES];
    opcodes.copy_from_slice(&w[..LANES]);
    modrms.copy_from_slice(&w[1..]);
    let (a, b) = (u8x16::new(opcodes), u8x16::new(modrms));
    let is = |v: u8x16, mask: u8, value: u8| (v & u8x16::splat(mask)).simd_eq(u8x16::splat(value));
    let call = is(a, 0xFE, 0xE8);
    let jcc = a.simd_eq(u8x16::splat(0x0F)) & is(b, 0xF0, 0x80);
    let rip_op = is(a, 0xC5, 0x01)
        | is(a, 0xFD, 0x89)
        | a.simd_eq(u8x16::splat(0x8D))
        | a.simd_eq(u8x16::splat(0x63))
        | a.simd_eq(u8x16::splat(0xFF));
    let rip = rip_op & is(b, 0xC7, 0x05);
    (call | jcc | rip).to_bitmask()
}

/// Whether an opcode begins CALL/JMP rel32 (the others have a ModRM byte).
fn is_call(opcode: u8) -> bool {
    opcode & 0xFE == 0xE8
}

/// Absolute references: 32-bit values that are addresses in the old
/// image, as position-dependent (non-PIE) executables hold them in code
/// (`mov $addr, ...`) and data. A value `v` with `v - first < len` (mod
/// 2^32) refers to old offset `v - first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Absolute {
    /// The address of old offset 0 (never 0: zeros pad the scan's tail).
    pub first: u32,
    /// How many addresses count, at most the old image's size.
    pub len: u32,
}

impl Absolute {
    /// Addresses from `first` (1..2^32) for an old image of `old_size`
    /// bytes, up to 2^32.
    pub fn new(first: u64, old_size: u64) -> Option<Self> {
        let first = u32::try_from(first).ok().filter(|&f| f != 0)?;
        let len = old_size.min((1 << 32) - u64::from(first)) as u32;
        Some(Self { first, len })
    }

    /// Whether `value` is an address of the old image.
    #[inline(always)]
    fn holds(self, value: u32) -> bool {
        value.wrapping_sub(self.first) < self.len
    }
}

/// The 32-bit little-endian value at `at`.
#[inline(always)]
fn value_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// A reference field found by [`FieldScan`]: its four operand bytes at
/// `at`, the instruction (or, absolute, the value) ending at `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub at: usize,
    pub end: usize,
    pub absolute: bool,
}

/// Bytes a window holds: its positions and the bytes an absolute value
/// at the last of them reads.
const WINDOW: usize = LANES + FIELD - 1;

/// Bit j: whether the 32-bit value at the window's position j is an
/// absolute reference.
#[inline(always)]
fn absolute_mask(w: &[u8; WINDOW], absolute: Absolute) -> u32 {
    (0..LANES).fold(0, |mask, j| {
        mask | u32::from(absolute.holds(value_at(w, j))) << j
    })
}

/// The reference fields of some code, in order. At each position, a
/// relative field's opcode comes first, then an absolute value; after a
/// field the scan resumes at its end, so fields never overlap; they lie
/// wholly inside the code. CALL/JMP take 1 + 4 bytes, the other relative
/// ones 2 + 4, absolute values 4. A window's masks are kept across the
/// fields found in it (half the work of rescanning).
///
/// The caller passes the code at each step, so it may rewrite fields
/// already returned: the masks only depend on bytes past them.
#[derive(Debug, Default)]
pub struct FieldScan {
    absolute: Option<Absolute>,
    /// The current window's first position.
    base: usize,
    /// Positions in the window not yet looked at that begin a relative
    /// field, or any field.
    relative: u32,
    starts: u32,
    /// The first position a field may begin at.
    resume: usize,
    /// Whether `base` is a loaded window (false before the first).
    loaded: bool,
}

impl FieldScan {
    pub fn new(absolute: Option<Absolute>) -> Self {
        Self {
            absolute,
            ..Self::default()
        }
    }

    pub fn next(&mut self, code: &[u8]) -> Option<Field> {
        // The last position a relative field's instruction (1 + 4 bytes),
        // and any field, fits at.
        let last_relative = code.len().checked_sub(1 + FIELD);
        let last = code.len().checked_sub(match self.absolute {
            Some(_) => FIELD,
            None => 1 + FIELD,
        })?;
        loop {
            if self.starts == 0 {
                let base = if self.loaded {
                    (self.base + LANES).max(self.resume)
                } else {
                    self.resume
                };
                if base > last {
                    return None;
                }
                let mut padded = [0u8; WINDOW];
                let w: &[u8; WINDOW] = match code.get(base..base + WINDOW) {
                    Some(w) => w.try_into().ok()?,
                    None => {
                        // The tail, padded with zeros (which begin nothing).
                        padded[..code.len() - base].copy_from_slice(&code[base..]);
                        &padded
                    }
                };
                let relative = window_mask(w[..=LANES].try_into().ok()?);
                let absolute = self.absolute.map_or(0, |a| absolute_mask(w, a));
                *self = Self {
                    base,
                    relative,
                    starts: relative | absolute,
                    resume: base,
                    loaded: true,
                    ..*self
                };
                continue;
            }
            let bit = self.starts.trailing_zeros();
            self.starts &= self.starts - 1;
            let at = self.base + bit as usize;
            if at > last {
                self.starts = 0;
                return None;
            }
            // The operand of a relative field here. The opcode again tells
            // CALL/JMP: a second mask would cost as much as the first.
            let relative = match last_relative {
                Some(l) if self.relative >> bit & 1 == 1 && at <= l => {
                    if is_call(code[at]) {
                        Some(at + 1)
                    } else {
                        (at < l).then_some(at + 2)
                    }
                }
                _ => None,
            };
            let field = match relative {
                Some(operand) => Field {
                    at: operand,
                    end: operand + FIELD,
                    absolute: false,
                },
                None if self.absolute.is_some_and(|a| a.holds(value_at(code, at))) => Field {
                    at,
                    end: at + FIELD,
                    absolute: true,
                },
                None => continue,
            };
            self.resume = field.end;
            // Positions before the end of this field are passed over.
            let skip = field.end - self.base;
            self.starts = if skip >= LANES {
                0
            } else {
                self.starts & (u32::MAX << skip)
            };
            return Some(field);
        }
    }
}

/// The old-image offset a field of old bytes `code`, copied from old offset
/// `old_pos`, refers to.
pub fn old_target(code: &[u8], field: Field, old_pos: u64, absolute: Option<Absolute>) -> i64 {
    let operand = value_at(code, field.at);
    match absolute {
        Some(a) if field.absolute => i64::from(operand.wrapping_sub(a.first)),
        _ => old_pos as i64 + field.end as i64 + i64::from(operand as i32),
    }
}

/// How far targets in each page of the old image moved (modulo 2^32, as
/// rel32 arithmetic is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceMap {
    page_log: u8,
    moves: Vec<u32>,
    old_size: u64,
    absolute: Option<Absolute>,
}

impl ReferenceMap {
    pub fn new(page_log: u8, moves: Vec<u32>, old_size: u64, absolute: Option<Absolute>) -> Self {
        Self {
            page_log,
            moves,
            old_size,
            absolute,
        }
    }

    pub fn absolute(&self) -> Option<Absolute> {
        self.absolute
    }

    pub fn page_log(&self) -> u8 {
        self.page_log
    }

    pub fn pages(&self) -> usize {
        self.moves.len()
    }

    /// The page log a map of an old image of `old_size` bytes uses: the
    /// smallest page (at least 2^MIN_PAGE_LOG) for which it fits MAX_PAGES.
    pub fn page_log_for(old_size: u64) -> u8 {
        let mut log = MIN_PAGE_LOG;
        while old_size.div_ceil(1 << log) > MAX_PAGES {
            log += 1;
        }
        log
    }

    /// Where the map predicts `target` (an old-image offset) went, as a
    /// move; None outside the old image or past the map's pages.
    fn move_of(&self, target: i64) -> Option<u32> {
        let t = u64::try_from(target).ok().filter(|&t| t < self.old_size)?;
        self.moves.get((t >> self.page_log) as usize).copied()
    }

    /// Rewrites the references in `code` (old bytes copied from old offset
    /// `old_pos` to new offset `new_pos`) to point where the map says their
    /// targets went.
    pub fn predict(&self, code: &mut [u8], old_pos: u64, new_pos: u64) {
        let mut scan = FieldScan::new(self.absolute);
        while let Some(field) = scan.next(code) {
            let target = old_target(code, field, old_pos, self.absolute);
            let Some(moved) = self.move_of(target) else {
                continue;
            };
            let operand = match self.absolute {
                // The value moves with its target.
                Some(a) if field.absolute => {
                    (target as u32).wrapping_add(a.first).wrapping_add(moved)
                }
                _ => (target as u64)
                    .wrapping_add(u64::from(moved))
                    .wrapping_sub(new_pos + field.end as u64) as u32,
            };
            code[field.at..field.end].copy_from_slice(&operand.to_le_bytes());
        }
    }

    /// The map's moves as section 3.2 stores them before compression: per
    /// page, the change from the previous page's move as a zig-zag varint.
    pub fn encode_moves(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.moves.len() * 2);
        let mut previous = 0u32;
        for &m in &self.moves {
            put_signed(&mut out, i64::from(m.wrapping_sub(previous) as i32));
            previous = m;
        }
        out
    }
}

/// Reads a map's moves from their varints as they are decompressed.
#[derive(Debug)]
pub struct MovesReader {
    page_log: u8,
    pages: usize,
    old_size: u64,
    absolute: Option<Absolute>,
    moves: Vec<u32>,
    previous: u32,
    /// The bytes of a varint not yet ended.
    pending: Vec<u8>,
}

impl MovesReader {
    /// `absolute_first`: the address of old offset 0 when the map moves
    /// absolute references too, else 0.
    pub fn new(page_log: u8, pages: u64, old_size: u64, absolute_first: u64) -> Result<Self> {
        if !(MIN_PAGE_LOG..=MAX_PAGE_LOG).contains(&page_log) {
            return Err(corrupt(format!(
                "its reference map's page size 2^{page_log} is out of range"
            )));
        }
        if pages == 0 || pages > MAX_PAGES || pages > old_size.div_ceil(1 << page_log) {
            return Err(corrupt(format!(
                "its reference map has {pages} pages of 2^{page_log} bytes for an old image \
                 of {old_size} bytes"
            )));
        }
        let absolute = match absolute_first {
            0 => None,
            first => Some(Absolute::new(first, old_size).ok_or_else(|| {
                corrupt(format!(
                    "its reference map's absolute address {first:#x} is not a 32-bit address"
                ))
            })?),
        };
        Ok(Self {
            page_log,
            pages: pages as usize,
            old_size,
            absolute,
            moves: Vec::with_capacity(pages as usize),
            previous: 0,
            pending: Vec::with_capacity(10),
        })
    }

    /// Takes decompressed bytes; more than the pages' moves is an error.
    pub fn take(&mut self, bytes: &[u8]) -> Result<()> {
        for &byte in bytes {
            if self.moves.len() == self.pages {
                return Err(corrupt("its reference map holds more moves than pages"));
            }
            self.pending.push(byte);
            let Some((value, _)) = get_varint(&self.pending)? else {
                continue;
            };
            self.pending.clear();
            // A step is a 32-bit value, zig-zag encoded.
            let step = i32::try_from(unzigzag(value))
                .map_err(|_| corrupt("its reference map has a bad move"))?;
            self.previous = self.previous.wrapping_add(step as u32);
            self.moves.push(self.previous);
        }
        Ok(())
    }

    /// The map, once every page's move has been read.
    pub fn finish(self) -> Result<ReferenceMap> {
        if self.moves.len() != self.pages || !self.pending.is_empty() {
            return Err(corrupt(format!(
                "its reference map ends after {} of its {} pages",
                self.moves.len(),
                self.pages
            )));
        }
        Ok(ReferenceMap::new(
            self.page_log,
            self.moves,
            self.old_size,
            self.absolute,
        ))
    }
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::PatchCorrupt(what.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_after_their_opcodes_and_never_overlap() {
        // CALL rel32; LEA rax,[rip+d]; JNE rel32; MOV eax, imm32 (B8: none);
        // an E8 inside the CALL's operand is not an opcode.
        let code = [
            0xE8, 1, 0xE8, 0, 0, //
            0x48, 0x8D, 0x05, 4, 0, 0, 0, //
            0x0F, 0x85, 8, 0, 0, 0, //
            0xB8, 1, 2, 3, 4,
        ];
        let spans = |absolute| {
            let mut scan = FieldScan::new(absolute);
            let mut spans = Vec::new();
            while let Some(f) = scan.next(&code) {
                spans.push((f.at, f.end, f.absolute));
            }
            spans
        };
        assert_eq!(
            spans(None),
            [(1, 5, false), (8, 12, false), (14, 18, false)]
        );
        // With addresses 0x04030201.. absolute, the MOV's immediate is one.
        let absolute = Absolute::new(0x0403_0201, 16);
        assert_eq!(
            spans(absolute),
            [
                (1, 5, false),
                (8, 12, false),
                (14, 18, false),
                (19, 23, true)
            ]
        );
    }

    /// Kinds of reference field, as bits.
    const CALL: u8 = 1;
    const JCC: u8 = 2;
    const RIP: u8 = 4;

    /// What opcode byte `a`, followed by `b`, begins, one position at a
    /// time (see [`window_mask`]).
    fn kind(a: u8, b: u8) -> u8 {
        let call = u8::from(a & 0xFE == 0xE8);
        let jcc = u8::from(a == 0x0F) & u8::from(b & 0xF0 == 0x80);
        let rip_op = u8::from(a & 0xC5 == 0x01)
            | u8::from(a & 0xFD == 0x89)
            | u8::from(a == 0x8D)
            | u8::from(a == 0x63)
            | u8::from(a == 0xFF);
        let rip = rip_op & u8::from(b & 0xC7 == 0x05);
        (call * CALL) | (jcc * JCC) | (rip * RIP)
    }

    #[test]
    fn window_mask_agrees_with_the_definition_on_every_byte_pair() {
        for at in [0, 13, LANES - 1] {
            for a in 0..=255u8 {
                for b in 0..=255u8 {
                    let mut w = [0u8; LANES + 1];
                    (w[at], w[at + 1]) = (a, b);
                    let k = kind(a, b);
                    assert_eq!(window_mask(&w) & 1 << at, u32::from(k != 0) << at);
                    assert_eq!(k == CALL, is_call(a));
                }
            }
        }
    }

    /// The scan's definition, one position at a time.
    fn fields_one_by_one(code: &[u8], absolute: Option<Absolute>) -> Vec<Field> {
        let mut fields = Vec::new();
        let mut at = 0;
        let field = |at, end, absolute| Field { at, end, absolute };
        while at + FIELD <= code.len() {
            let relative = match code.get(at + 1) {
                Some(&b) if at + 1 + FIELD <= code.len() => kind(code[at], b),
                _ => 0,
            };
            let value = u32::from_le_bytes(code[at..at + 4].try_into().unwrap());
            if relative == CALL {
                fields.push(field(at + 1, at + 1 + FIELD, false));
            } else if relative != 0 && at + 2 + FIELD <= code.len() {
                fields.push(field(at + 2, at + 2 + FIELD, false));
            } else if absolute.is_some_and(|a| value.wrapping_sub(a.first) < a.len) {
                fields.push(field(at, at + FIELD, true));
            } else {
                at += 1;
                continue;
            }
            at = fields[fields.len() - 1].end;
        }
        fields
    }

    proptest::proptest! {
        /// Bytes drawn mostly from opcodes and ModRM bytes that begin
        /// references and bytes of absolute addresses (0x0D0C0000 up, with
        /// or without absolute references), so fields crowd, straddle
        /// windows and end near the tail.
        #[test]
        fn the_window_scan_finds_what_the_definition_does(
            code in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(vec![
                        0xE8u8, 0xE9, 0x0F, 0x85, 0x8B, 0x05, 0x8D, 0x3D, 0x0C, 0x0D
                    ]),
                    proptest::num::u8::ANY,
                ],
                0..200,
            ),
            with_absolute: bool,
        ) {
            let absolute = Absolute::new(0x0D0C_0000, 0x10000).filter(|_| with_absolute);
            let mut scan = FieldScan::new(absolute);
            let mut found = Vec::new();
            while let Some(f) = scan.next(&code) {
                found.push(f);
            }
            proptest::prop_assert_eq!(found, fields_one_by_one(&code, absolute));
        }
    }

    #[test]
    fn a_call_is_pointed_where_its_target_moved() {
        // Old: CALL at old offset 100 to target 200 (rel = 200 - 105 = 95).
        // Targets in page 200 >> 6 = 3 moved up by 40; the code by 10.
        let mut code = [0xE8, 95, 0, 0, 0];
        let map = ReferenceMap::new(6, vec![0, 0, 0, 40], 1000, None);
        map.predict(&mut code, 100, 110);
        // New: 240 - 115 = 125.
        assert_eq!(code, [0xE8, 125, 0, 0, 0]);
        // A target past the map's pages or the old image is left alone.
        let mut far = [0xE8, 0, 1, 0, 0];
        map.predict(&mut far, 100, 110);
        assert_eq!(far, [0xE8, 0, 1, 0, 0]);
    }

    #[test]
    fn an_absolute_address_moves_with_its_target() {
        // Old offset 0 at address 0x400000: MOV ebx, 0x4000C8 (offset 200,
        // page 3, which moved up by 40) becomes MOV ebx, 0x4000F0 wherever
        // the code went; an address past the old image is left alone.
        let absolute = Absolute::new(0x40_0000, 1000);
        let map = ReferenceMap::new(6, vec![0, 0, 0, 40], 1000, absolute);
        let mut code = [0xBB, 0xC8, 0, 0x40, 0, 0xBB, 0xE8, 0x03, 0x40, 0];
        map.predict(&mut code, 100, 7000);
        assert_eq!(code, [0xBB, 0xF0, 0, 0x40, 0, 0xBB, 0xE8, 0x03, 0x40, 0]);
        // Addresses start at 1 and end at 2^32.
        assert_eq!(Absolute::new(0, 1000), None);
        assert_eq!(Absolute::new(1 << 32, 1000), None);
        assert_eq!(
            Absolute::new(u64::from(u32::MAX), 1000).map(|a| a.len),
            Some(1)
        );
    }

    #[test]
    fn moves_round_trip_through_their_varints_in_any_pieces() {
        let moves = vec![0, 5, u32::MAX, 7, 0x8000_0000, 3];
        let map = ReferenceMap::new(10, moves.clone(), 6 << 10, Absolute::new(0x1000, 6 << 10));
        let bytes = map.encode_moves();
        for cut in 0..=bytes.len() {
            let mut reader = MovesReader::new(10, 6, 6 << 10, 0x1000).unwrap();
            reader.take(&bytes[..cut]).unwrap();
            reader.take(&bytes[cut..]).unwrap();
            assert_eq!(reader.finish().unwrap(), map);
        }
        let mut short = MovesReader::new(10, 6, 6 << 10, 0x1000).unwrap();
        short.take(&bytes[..bytes.len() - 1]).unwrap();
        assert!(short.finish().is_err());
        let mut long = MovesReader::new(10, 5, 6 << 10, 0x1000).unwrap();
        assert!(long.take(&bytes).is_err());
        assert!(MovesReader::new(10, 7, 6 << 10, 0).is_err());
        assert!(MovesReader::new(5, 1, 6 << 10, 0).is_err());
        assert!(MovesReader::new(10, 6, 6 << 10, 1 << 32).is_err());
    }
}
