//! Executable-aware copies: the references in copied code predicted from
//! where their targets moved. x86-64: rel32 operands of CALL, JMP and Jcc,
//! disp32 of common RIP-relative instructions; Thumb-2 (Cortex-M
//! firmware): BL and B.W; either: absolute 32-bit addresses.
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
/// image, as position-dependent (non-PIE) executables and MCU firmware
/// hold them in code (`mov $addr, ...`, literal pools) and data. A value
/// `v` with `v - first < len` (mod 2^32) refers to old offset `v - first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Absolute {
    /// The address of old offset 0.
    pub first: u32,
    /// How many addresses count, at most the old image's size.
    pub len: u32,
}

impl Absolute {
    /// Addresses from `first` (below 2^32) for an old image of `old_size`
    /// bytes, up to 2^32.
    pub fn new(first: u64, old_size: u64) -> Option<Self> {
        let first = u32::try_from(first).ok()?;
        let len = old_size.min((1 << 32) - u64::from(first)) as u32;
        Some(Self { first, len })
    }

    /// Whether `value` is an address of the old image.
    #[inline(always)]
    fn holds(self, value: u32) -> bool {
        value.wrapping_sub(self.first) < self.len
    }
}

/// What a map's scan looks for (section 3.2's rules byte).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// x86-64 rel32 and RIP-relative disp32 fields, at any position.
    pub x86: bool,
    /// Thumb-2 BL and B.W, at even old offsets.
    pub thumb: bool,
    /// Absolute addresses: at any position with `x86`, else at old offsets
    /// that are multiples of 4 (literal pools, pointer tables).
    pub absolute: Option<Absolute>,
}

/// How `patch-info` names a map's rules: "x86-64 relative", "Thumb-2
/// branches", "addresses from 0x23000", joined by commas.
impl std::fmt::Display for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.x86 {
            parts.push("x86-64 relative".to_string());
        }
        if self.thumb {
            parts.push("Thumb-2 branches".to_string());
        }
        if let Some(a) = self.absolute {
            parts.push(format!("addresses from {:#x}", a.first));
        }
        f.write_str(&parts.join(", "))
    }
}

impl Rules {
    const X86: u8 = 1;
    const THUMB: u8 = 2;
    const ABSOLUTE: u8 = 4;

    /// A version-4 or -5 map's rules: x86, with absolute addresses from
    /// `first` unless it is 0.
    pub fn x86(first: u64, old_size: u64) -> Result<Self> {
        let absolute = match first {
            0 => None,
            _ => Some(absolute_from(first, old_size)?),
        };
        Ok(Self {
            x86: true,
            thumb: false,
            absolute,
        })
    }

    /// A version-6 map's rules byte and address of old offset 0 (0 when
    /// there are no absolute addresses).
    pub fn decode(byte: u8, first: u64, old_size: u64) -> Result<Self> {
        let known = Self::X86 | Self::THUMB | Self::ABSOLUTE;
        let (x86, thumb) = (byte & Self::X86 != 0, byte & Self::THUMB != 0);
        if byte & !known != 0 || byte == 0 || (x86 && thumb) {
            return Err(corrupt(format!(
                "its reference map's rules {byte:#04x} are not a known combination"
            )));
        }
        let absolute = match byte & Self::ABSOLUTE {
            0 if first != 0 => {
                return Err(corrupt(
                    "its reference map gives an address without absolute references",
                ));
            }
            0 => None,
            _ => Some(absolute_from(first, old_size)?),
        };
        Ok(Self {
            x86,
            thumb,
            absolute,
        })
    }

    /// The address of old offset 0, or 0 without absolute addresses.
    pub fn first(self) -> u32 {
        self.absolute.map_or(0, |a| a.first)
    }

    /// The rules byte.
    pub fn byte(self) -> u8 {
        let bit = |set: bool, bit: u8| if set { bit } else { 0 };
        bit(self.x86, Self::X86)
            | bit(self.thumb, Self::THUMB)
            | bit(self.absolute.is_some(), Self::ABSOLUTE)
    }

    /// The oldest format version that can state these rules: 5 for x86 ones
    /// (absolute addresses from any but 0), else 6.
    pub fn version(self) -> u8 {
        if self.x86 && self.absolute.is_none_or(|a| a.first != 0) {
            5
        } else {
            6
        }
    }
}

fn absolute_from(first: u64, old_size: u64) -> Result<Absolute> {
    Absolute::new(first, old_size).ok_or_else(|| {
        corrupt(format!(
            "its reference map's absolute address {first:#x} is not a 32-bit address"
        ))
    })
}

/// The 32-bit little-endian value at `at`.
#[inline(always)]
fn value_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Whether a 32-bit value is a Thumb-2 BL or B.W instruction (first
/// halfword 11110xxx xxxxxxxx, second 1x x1 ...: BL T1, B T4).
#[inline(always)]
fn is_thumb_branch(value: u32) -> bool {
    value & 0x9000_F800 == 0x9000_F000
}

/// A Thumb-2 BL or B.W's offset from the instruction's end (the PC it
/// reads is its address + 4): S:I1:I2:imm10:imm11:0, sign-extended, where
/// I1 = NOT(J1 XOR S) and I2 = NOT(J2 XOR S).
fn thumb_offset(value: u32) -> i32 {
    let (first, second) = (value & 0xFFFF, value >> 16);
    let s = first >> 10 & 1;
    let i1 = !(second >> 13 ^ s) & 1;
    let i2 = !(second >> 11 ^ s) & 1;
    let imm = s << 24 | i1 << 23 | i2 << 22 | (first & 0x3FF) << 12 | (second & 0x7FF) << 1;
    (imm << 7) as i32 >> 7
}

/// The branch `value` with its offset set to `offset`; None when a Thumb-2
/// branch cannot reach it (odd, or beyond ±16 MiB).
fn thumb_with_offset(value: u32, offset: i32) -> Option<u32> {
    if offset & 1 != 0 || !(-(1 << 24)..1 << 24).contains(&offset) {
        return None;
    }
    let imm = offset as u32;
    let s = imm >> 24 & 1;
    let j1 = (!(imm >> 23) ^ s) & 1;
    let j2 = (!(imm >> 22) ^ s) & 1;
    let first = value & 0xF800 | s << 10 | imm >> 12 & 0x3FF;
    let second = (value >> 16) & 0xD000 | j1 << 13 | j2 << 11 | imm >> 1 & 0x7FF;
    Some(second << 16 | first)
}

/// What a reference field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// An x86 rel32 or disp32: the target less the instruction's end.
    Relative,
    /// A Thumb-2 BL or B.W (the whole instruction): its offset from its end.
    Thumb,
    /// An address.
    Absolute,
}

/// A reference field found by [`FieldScan`]: its four bytes at `at`, the
/// instruction (or, absolute, the value) ending at `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub at: usize,
    pub end: usize,
    pub kind: FieldKind,
}

/// Bytes a window holds: its positions and the bytes an absolute value
/// at the last of them reads.
const WINDOW: usize = LANES + FIELD - 1;

/// Positions the x86 predictor looks at in one go (four windows), and the
/// bytes they read.
const CHUNK: usize = 4 * LANES;
const CHUNK_WINDOW: usize = CHUNK + FIELD;

/// Bit j: whether the 32-bit value at the window's position j is an
/// absolute reference.
#[inline(always)]
fn absolute_mask(w: &[u8; WINDOW], absolute: Absolute) -> u32 {
    (0..LANES).fold(0, |mask, j| {
        mask | u32::from(absolute.holds(value_at(w, j))) << j
    })
}

/// The field a position of x86 code that a window's masks marked begins
/// (`is_relative`: the relative mask did), if it holds one whole: a
/// relative field's operand first, else an absolute value. `last_relative`
/// is the last position an opcode and its four bytes fit at.
#[inline(always)]
fn x86_field(
    code: &[u8],
    at: usize,
    is_relative: bool,
    last_relative: Option<usize>,
    absolute: Option<Absolute>,
) -> Option<Field> {
    // The opcode again tells CALL/JMP: a second mask would cost as much as
    // the first.
    let operand = match last_relative {
        Some(l) if is_relative && at <= l => {
            if is_call(code[at]) {
                Some(at + 1)
            } else {
                (at < l).then_some(at + 2)
            }
        }
        _ => None,
    };
    match operand {
        Some(operand) => Some(Field {
            at: operand,
            end: operand + FIELD,
            kind: FieldKind::Relative,
        }),
        None if absolute.is_some_and(|a| a.holds(value_at(code, at))) => Some(Field {
            at,
            end: at + FIELD,
            kind: FieldKind::Absolute,
        }),
        None => None,
    }
}

/// The reference fields of some code, in order. With x86 rules, at each
/// position a relative field's opcode comes first, then an absolute value;
/// without, at each even old offset a Thumb-2 branch comes first, then (at
/// multiples of 4) an absolute value. After a field the scan resumes at
/// its end, so fields never overlap; they lie wholly inside the code.
/// CALL/JMP take 1 + 4 bytes, the other relative ones 2 + 4, Thumb
/// branches and absolute values 4. An x86 window's masks are kept across
/// the fields found in it (half the work of rescanning).
///
/// The caller passes the code at each step, so it may rewrite fields
/// already returned: the scan only reads bytes past them.
#[derive(Debug, Default)]
pub struct FieldScan {
    rules: Rules,
    /// The old offset of the code's first byte, modulo 4.
    phase: usize,
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
    /// A scan of code copied from old offset `old_pos`.
    pub fn new(rules: Rules, old_pos: u64) -> Self {
        Self {
            rules,
            phase: (old_pos % 4) as usize,
            ..Self::default()
        }
    }

    pub fn next(&mut self, code: &[u8]) -> Option<Field> {
        if self.rules.x86 {
            self.next_x86(code)
        } else {
            self.next_aligned(code)
        }
    }

    /// Thumb-2 branches at even old offsets, absolute values at multiples
    /// of 4: one position at a time (MCU images are small).
    fn next_aligned(&mut self, code: &[u8]) -> Option<Field> {
        let step = if self.rules.thumb { 2 } else { 4 };
        let misaligned = (self.phase + self.resume) % step;
        let mut at = self.resume + (step - misaligned) % step;
        while at + FIELD <= code.len() {
            let value = value_at(code, at);
            let kind = if self.rules.thumb && is_thumb_branch(value) {
                Some(FieldKind::Thumb)
            } else if (self.phase + at).is_multiple_of(4)
                && self.rules.absolute.is_some_and(|a| a.holds(value))
            {
                Some(FieldKind::Absolute)
            } else {
                None
            };
            if let Some(kind) = kind {
                self.resume = at + FIELD;
                return Some(Field {
                    at,
                    end: at + FIELD,
                    kind,
                });
            }
            at += step;
        }
        self.resume = at;
        None
    }

    fn next_x86(&mut self, code: &[u8]) -> Option<Field> {
        let absolute = self.rules.absolute;
        // The last position a relative field's instruction (1 + 4 bytes),
        // and any field, fits at.
        let last_relative = code.len().checked_sub(1 + FIELD);
        let last = code.len().checked_sub(match absolute {
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
                        // The tail, padded with zeros: positions past
                        // `last` end the scan whatever they hold.
                        padded[..code.len() - base].copy_from_slice(&code[base..]);
                        &padded
                    }
                };
                let relative = window_mask(w[..=LANES].try_into().ok()?);
                let absolute = absolute.map_or(0, |a| absolute_mask(w, a));
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
            let is_relative = self.relative >> bit & 1 == 1;
            let Some(field) = x86_field(code, at, is_relative, last_relative, absolute) else {
                continue;
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
pub fn old_target(code: &[u8], field: Field, old_pos: u64, rules: Rules) -> i64 {
    let value = value_at(code, field.at);
    let end = old_pos as i64 + field.end as i64;
    match field.kind {
        FieldKind::Relative => end + i64::from(value as i32),
        FieldKind::Thumb => end + i64::from(thumb_offset(value)),
        FieldKind::Absolute => i64::from(value.wrapping_sub(rules.first())),
    }
}

/// How far the target `target` of an old field moved, as the same field
/// in the new image (its four bytes `value`, ending at new offset
/// `new_end`) says; None when the new bytes are no such field.
pub fn seen_move(field: Field, value: u32, new_end: u64, target: i64, rules: Rules) -> Option<u32> {
    let from_end = |offset: i32| (new_end as i64 + i64::from(offset) - target) as u32;
    match field.kind {
        FieldKind::Relative => Some(from_end(value as i32)),
        FieldKind::Thumb => is_thumb_branch(value).then(|| from_end(thumb_offset(value))),
        FieldKind::Absolute => Some(
            value
                .wrapping_sub(rules.first())
                .wrapping_sub(target as u32),
        ),
    }
}

/// How far targets in each page of the old image moved (modulo 2^32, as
/// rel32 arithmetic is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceMap {
    page_log: u8,
    moves: Vec<u32>,
    old_size: u64,
    rules: Rules,
}

impl ReferenceMap {
    pub fn new(page_log: u8, moves: Vec<u32>, old_size: u64, rules: Rules) -> Self {
        Self {
            page_log,
            moves,
            old_size,
            rules,
        }
    }

    pub fn rules(&self) -> Rules {
        self.rules
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
        if self.rules.x86 {
            return self.rewrite_x86(code, old_pos, new_pos);
        }
        self.rewrite(code, old_pos, new_pos, |code, field, value| {
            code[field.at..field.end].copy_from_slice(&value.to_le_bytes());
        });
    }

    /// [`Self::predict`] with x86 rules, 64 positions at a time with no call
    /// per field: on large images this runs beside the decoder and must keep
    /// up with it (ruff: half a million fields). The fields are
    /// [`FieldScan`]'s.
    #[inline(always)]
    fn rewrite_x86(&self, code: &mut [u8], old_pos: u64, new_pos: u64) {
        let absolute = self.rules.absolute;
        let len = code.len();
        let last_relative = len.checked_sub(1 + FIELD);
        let last = len.checked_sub(match absolute {
            Some(_) => FIELD,
            None => 1 + FIELD,
        });
        let mut window = [0u8; CHUNK_WINDOW];
        let mut free = 0;
        let mut base = 0;
        while let Some(last) = last.filter(|&l| base <= l) {
            let w: &[u8; CHUNK_WINDOW] = match code.get(base..base + CHUNK_WINDOW) {
                Some(w) => w.try_into().unwrap_or(&window),
                None => {
                    // The tail, padded: positions past `last` are dropped.
                    window.fill(0);
                    window[..len - base].copy_from_slice(&code[base..]);
                    &window
                }
            };
            let mut relative = 0u64;
            let mut any = 0u64;
            for q in (0..CHUNK).step_by(LANES) {
                let r = window_mask(w[q..=q + LANES].try_into().unwrap_or(&[0; LANES + 1]));
                relative |= u64::from(r) << q;
                if let Some(a) = absolute {
                    let part = w[q..q + WINDOW].try_into().unwrap_or(&[0; WINDOW]);
                    any |= u64::from(absolute_mask(part, a)) << q;
                }
            }
            // Positions inside the last field, or past `last`, begin none.
            let mut starts = (relative | any) & u64::MAX << (free.max(base) - base);
            if last - base < CHUNK - 1 {
                starts &= (1u64 << (last - base + 1)) - 1;
            }
            while starts != 0 {
                let bit = starts.trailing_zeros() as usize;
                starts &= starts - 1;
                let at = base + bit;
                let is_relative = relative >> bit & 1 == 1;
                let Some(field) = x86_field(code, at, is_relative, last_relative, absolute) else {
                    continue;
                };
                free = field.end;
                let skip = field.end - base;
                starts &= if skip >= CHUNK { 0 } else { u64::MAX << skip };
                let old = value_at(code, field.at);
                let target = old_target(code, field, old_pos, self.rules);
                let Some(moved) = self.move_of(target) else {
                    continue;
                };
                let value = match field.kind {
                    FieldKind::Absolute => old.wrapping_add(moved),
                    _ => (target as u64)
                        .wrapping_add(u64::from(moved))
                        .wrapping_sub(new_pos + field.end as u64) as u32,
                };
                code[field.at..field.end].copy_from_slice(&value.to_le_bytes());
            }
            base += CHUNK;
        }
    }

    /// Calls `rewrite(code, field, value)` for each reference in `code`
    /// the map gives a new value.
    #[inline(always)]
    fn rewrite(
        &self,
        code: &mut [u8],
        old_pos: u64,
        new_pos: u64,
        mut rewrite: impl FnMut(&mut [u8], Field, u32),
    ) {
        let mut scan = FieldScan::new(self.rules, old_pos);
        while let Some(field) = scan.next(code) {
            let target = old_target(code, field, old_pos, self.rules);
            let Some(moved) = self.move_of(target) else {
                continue;
            };
            let offset = (target as u64)
                .wrapping_add(u64::from(moved))
                .wrapping_sub(new_pos + field.end as u64) as u32;
            let value = match field.kind {
                FieldKind::Relative => Some(offset),
                FieldKind::Thumb => thumb_with_offset(value_at(code, field.at), offset as i32),
                // The address moves with its target.
                FieldKind::Absolute => Some(value_at(code, field.at).wrapping_add(moved)),
            };
            if let Some(value) = value {
                rewrite(code, field, value);
            }
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
    rules: Rules,
    moves: Vec<u32>,
    previous: u32,
    /// The bytes of a varint not yet ended.
    pending: Vec<u8>,
}

impl MovesReader {
    pub fn new(page_log: u8, pages: u64, old_size: u64, rules: Rules) -> Result<Self> {
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
        Ok(Self {
            page_log,
            pages: pages as usize,
            old_size,
            rules,
            moves: Vec::with_capacity(pages as usize),
            previous: 0,
            pending: Vec::with_capacity(10),
        })
    }

    /// Takes decompressed bytes; more than the pages' moves is an error.
    /// Varints are read in place; only one cut by the end of `bytes` waits
    /// in `pending` (byte by byte, a map took 0.5 ms of libcrypto3's
    /// apply before its first block).
    pub fn take(&mut self, bytes: &[u8]) -> Result<()> {
        let mut rest = bytes;
        while !self.pending.is_empty() {
            let Some((&byte, after)) = rest.split_first() else {
                return Ok(());
            };
            rest = after;
            self.pending.push(byte);
            if let Some((value, _)) = get_varint(&self.pending)? {
                self.pending.clear();
                self.push_step(value)?;
            }
        }
        while let Some((&byte, after)) = rest.split_first() {
            // Most steps are one byte (0: the page moved as the one before).
            if byte < 0x80 {
                self.push_step(u64::from(byte))?;
                rest = after;
                continue;
            }
            let Some((value, used)) = get_varint(rest)? else {
                self.pending.extend_from_slice(rest);
                break;
            };
            rest = &rest[used..];
            self.push_step(value)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn push_step(&mut self, value: u64) -> Result<()> {
        if self.moves.len() == self.pages {
            return Err(corrupt("its reference map holds more moves than pages"));
        }
        // A step is a 32-bit value, zig-zag encoded.
        let step = i32::try_from(unzigzag(value))
            .map_err(|_| corrupt("its reference map has a bad move"))?;
        self.previous = self.previous.wrapping_add(step as u32);
        self.moves.push(self.previous);
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
            self.rules,
        ))
    }
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::PatchCorrupt(what.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86(absolute: Option<Absolute>) -> Rules {
        Rules {
            x86: true,
            thumb: false,
            absolute,
        }
    }

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
            let mut scan = FieldScan::new(x86(absolute), 0);
            let mut spans = Vec::new();
            while let Some(f) = scan.next(&code) {
                spans.push((f.at, f.end, f.kind == FieldKind::Absolute));
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
        let field = |at, end, absolute| Field {
            at,
            end,
            kind: if absolute {
                FieldKind::Absolute
            } else {
                FieldKind::Relative
            },
        };
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
            let mut scan = FieldScan::new(x86(absolute), 0);
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
        let map = ReferenceMap::new(6, vec![0, 0, 0, 40], 1000, x86(None));
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
        let map = ReferenceMap::new(6, vec![0, 0, 0, 40], 1000, x86(absolute));
        let mut code = [0xBB, 0xC8, 0, 0x40, 0, 0xBB, 0xE8, 0x03, 0x40, 0];
        map.predict(&mut code, 100, 7000);
        assert_eq!(code, [0xBB, 0xF0, 0, 0x40, 0, 0xBB, 0xE8, 0x03, 0x40, 0]);
        // Addresses end at 2^32.
        assert_eq!(Absolute::new(0, 1000).map(|a| a.len), Some(1000));
        assert_eq!(Absolute::new(1 << 32, 1000), None);
        assert_eq!(
            Absolute::new(u64::from(u32::MAX), 1000).map(|a| a.len),
            Some(1)
        );
    }

    #[test]
    fn moves_round_trip_through_their_varints_in_any_pieces() {
        let moves = vec![0, 5, u32::MAX, 7, 0x8000_0000, 3];
        let rules = x86(Absolute::new(0x1000, 6 << 10));
        let map = ReferenceMap::new(10, moves.clone(), 6 << 10, rules);
        let bytes = map.encode_moves();
        for cut in 0..=bytes.len() {
            let mut reader = MovesReader::new(10, 6, 6 << 10, rules).unwrap();
            reader.take(&bytes[..cut]).unwrap();
            reader.take(&bytes[cut..]).unwrap();
            assert_eq!(reader.finish().unwrap(), map);
        }
        let mut bytewise = MovesReader::new(10, 6, 6 << 10, rules).unwrap();
        for byte in &bytes {
            bytewise.take(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(bytewise.finish().unwrap(), map);
        let mut short = MovesReader::new(10, 6, 6 << 10, rules).unwrap();
        short.take(&bytes[..bytes.len() - 1]).unwrap();
        assert!(short.finish().is_err());
        let mut long = MovesReader::new(10, 5, 6 << 10, rules).unwrap();
        assert!(long.take(&bytes).is_err());
        assert!(MovesReader::new(10, 7, 6 << 10, rules).is_err());
        assert!(MovesReader::new(5, 1, 6 << 10, rules).is_err());
    }

    #[test]
    fn rules_round_trip_through_their_byte_and_refuse_the_unknown() {
        let size = 6 << 10;
        let thumb = |absolute| Rules {
            x86: false,
            thumb: true,
            absolute,
        };
        for rules in [
            x86(None),
            x86(Absolute::new(0x40_0000, size)),
            thumb(None),
            thumb(Absolute::new(0, size)),
            thumb(Absolute::new(0x2_3000, size)),
        ] {
            let first = u64::from(rules.first());
            assert_eq!(Rules::decode(rules.byte(), first, size).unwrap(), rules);
        }
        // x86 maps with addresses from 0 (which version 5 cannot say) and
        // Thumb ones need version 6.
        assert_eq!(x86(Absolute::new(0x40_0000, size)).version(), 5);
        assert_eq!(x86(Absolute::new(0, size)).version(), 6);
        assert_eq!(thumb(None).version(), 6);
        assert_eq!(Rules::x86(0, size).unwrap(), x86(None));
        for (byte, first) in [(0, 0), (3, 0), (8, 0), (2, 0x1000), (6, 1 << 32)] {
            assert!(Rules::decode(byte, first, size).is_err(), "{byte} {first}");
        }
        assert!(Rules::x86(1 << 32, size).is_err());
    }

    #[test]
    fn thumb_branches_decode_and_encode() {
        // BL +4 (F000 F802), BL to itself (F7FF FFFE: -4), B.W +0 (F000 B800).
        assert_eq!(thumb_offset(0xF802_F000), 4);
        assert_eq!(thumb_offset(0xFFFE_F7FF), -4);
        assert_eq!(thumb_offset(0xB800_F000), 0);
        assert!(is_thumb_branch(0xF802_F000) && is_thumb_branch(0xB800_F000));
        // BLX (second halfword 11x0) and 16-bit pairs are not.
        assert!(!is_thumb_branch(0xE802_F000) && !is_thumb_branch(0xF802_E000));
        for offset in [0, 2, -2, 4094, -4096, (1 << 24) - 2, -(1 << 24), 0x12_3456] {
            for value in [0xF802_F000, 0xB800_F000] {
                let branch = thumb_with_offset(value, offset).unwrap();
                assert_eq!(thumb_offset(branch), offset);
                // The kind (BL or B.W) stays.
                assert_eq!(branch & 0xD000_F800, value & 0xD000_F800);
            }
        }
        assert_eq!(thumb_with_offset(0xF802_F000, 3), None);
        assert_eq!(thumb_with_offset(0xF802_F000, 1 << 24), None);
    }

    #[test]
    fn thumb_rules_find_branches_at_even_and_addresses_at_aligned_old_offsets() {
        let rules = Rules {
            x86: false,
            thumb: true,
            absolute: Absolute::new(0x2_3000, 0x1000),
        };
        // Copied from old offset 2: code index i is old offset 2 + i.
        let code = [
            0x00, 0xF0, 0x02, 0xF8, // 0: BL at old 2 (even)
            0x11, // 4: an odd byte: what follows is at odd old offsets
            0x00, 0xF0, 0x02, 0xF8, // 5: a BL's bytes at old 7: not one
            0x00, // 9
            0x00, 0x30, 0x02, 0x00, // 10: address at old 12 (aligned)
            0x00, 0x30, 0x02, 0x00, // 14: address at old 16 (aligned)
            0x22, 0x22, // 18
            0x00, 0x30, 0x02, 0x00, // 20: an address at old 22: not aligned
            0x00, 0xF0, 0x02, // 24: a BL cut short by the end
        ];
        let mut scan = FieldScan::new(rules, 2);
        let mut found = Vec::new();
        while let Some(f) = scan.next(&code) {
            found.push((f.at, f.kind));
        }
        assert_eq!(
            found,
            [
                (0, FieldKind::Thumb),
                (10, FieldKind::Absolute),
                (14, FieldKind::Absolute)
            ]
        );
    }

    proptest::proptest! {
        /// The x86 predictor's chunks rewrite the fields [`FieldScan`]
        /// finds one at a time, chunk edges and the tail included.
        #[test]
        fn x86_chunks_rewrite_what_the_field_scan_finds(
            pieces in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        &[][..], &[0xE8], &[0xE9], &[0x0F, 0x85], &[0x8B, 0x05], &[0x48],
                    ]),
                    // Mostly targets inside the map, or addresses in it.
                    proptest::prop_oneof![-600i32..600, 0x100i32..0x500, proptest::num::i32::ANY],
                    0usize..4,
                ),
                0..60,
            ),
            moves in proptest::collection::vec(proptest::num::u32::ANY, 1..16),
            old_pos in 0u64..64,
            new_pos in 0u64..1000,
            with_absolute: bool,
        ) {
            let absolute = if with_absolute { Absolute::new(0x100, 1000) } else { None };
            let map = ReferenceMap::new(6, moves, 1000, x86(absolute));
            // Instructions with their fields, a few bytes of them cut off.
            let mut code = Vec::new();
            for (opcode, field, cut) in pieces {
                code.extend_from_slice(opcode);
                let bytes = field.to_le_bytes();
                code.extend_from_slice(&bytes[..bytes.len() - cut]);
            }
            let mut one_at_a_time = code.clone();
            map.rewrite(&mut one_at_a_time, old_pos, new_pos, |code, field, value| {
                code[field.at..field.end].copy_from_slice(&value.to_le_bytes());
            });
            let mut chunked = code.clone();
            map.predict(&mut chunked, old_pos, new_pos);
            proptest::prop_assert_eq!(&chunked, &one_at_a_time);
        }
    }

    #[test]
    fn a_thumb_branch_is_pointed_where_its_target_moved() {
        // BL at old offset 100 to target 200 (offset 200 - 104 = 96); page 3
        // moved up by 40, the code by 10: the new offset is 240 - 114 = 126.
        let rules = Rules {
            x86: false,
            thumb: true,
            absolute: None,
        };
        let map = ReferenceMap::new(6, vec![0, 0, 0, 40], 1000, rules);
        let mut code = thumb_with_offset(0xF800_F000, 96).unwrap().to_le_bytes();
        map.predict(&mut code, 100, 110);
        assert_eq!(thumb_offset(u32::from_le_bytes(code)), 126);
        let field = Field {
            at: 0,
            end: 4,
            kind: FieldKind::Thumb,
        };
        assert_eq!(
            seen_move(field, u32::from_le_bytes(code), 114, 200, rules),
            Some(40)
        );
    }
}
