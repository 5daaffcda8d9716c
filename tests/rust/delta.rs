//! The patch engine end to end: diff, streaming apply in every chunking,
//! checkpoint/resume, in-place with a power cut at every step, and the
//! corrupted-patch corpus (every truncation, every single-bit flip).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use otaflash_core::inplace::InPlaceTarget;
use otaflash_core::io::{FileSource, ReadAt};
use otaflash_core::patch::format::{DiffMode, FrameHeader, Header, get_varint};
use otaflash_core::patch::{
    Applier, ApplyOptions, ApplyReport, Compression, OldCheck, apply_in_place, reference_rules,
};
use otaflash_core::progress::NoProgress;
use otaflash_core::{Error, Result};
use otaflash_diff::{DiffOptions, diff};

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An "old" firmware-like image and a "new" one with inserts, deletes,
/// changed words and moved code.
fn pair(len: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let old: Vec<u8> = noise(len / 4, seed)
        .iter()
        .flat_map(|b| [*b, b.wrapping_mul(3), 0, *b & 0xF0])
        .collect();
    let mut new = old.clone();
    let n = new.len();
    new.splice(n / 3..n / 3, noise(300, seed + 1));
    new.drain(n / 2..n / 2 + 200);
    for i in (0..new.len()).step_by(997) {
        new[i] = new[i].wrapping_add(4);
    }
    new.extend_from_slice(&noise(500, seed + 2));
    (old, new)
}

fn small_opts() -> DiffOptions {
    DiffOptions {
        block_size: 4096,
        frame_size: 16384,
        window_log: 16,
        threads: 2,
        ..DiffOptions::default()
    }
}

fn apply_chunked(old: &[u8], patch: &[u8], chunk: usize) -> Result<Vec<u8>> {
    let (report, _, out) = apply_with(old, patch, chunk, ApplyOptions::default());
    report.map(|_| out)
}

/// Applies `patch` fed in `chunk`-byte pieces: the result, the working set
/// and what reached the sink.
fn apply_with(
    old: impl ReadAt,
    patch: &[u8],
    chunk: usize,
    options: ApplyOptions,
) -> (Result<ApplyReport>, Option<usize>, Vec<u8>) {
    let mut applier = Applier::new(old, Vec::new(), options);
    let result = patch
        .chunks(chunk.max(1))
        .try_for_each(|piece| applier.feed(piece))
        .and_then(|()| applier.finish());
    let working_set = applier.working_set();
    (result, working_set, applier.into_parts().1)
}

/// The working set of applying `patch` with the default options; with a
/// second core, the hashing thread must have added one `block` to it.
fn threaded_working_set(old: &[u8], patch: &[u8], chunk: usize, new: &[u8], block: usize) -> usize {
    let threaded = apply_to(old, patch, chunk, ApplyOptions::default(), new).1;
    if two_cores() {
        let inline = ApplyOptions {
            hash_thread: false,
            ..ApplyOptions::default()
        };
        let inline = apply_to(old, patch, chunk, inline, new).1;
        assert_eq!(threaded, inline + block, "no hashing thread");
    }
    threaded
}

fn two_cores() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
}

/// [`apply_with`] that must make `new`: the report and the working set.
fn apply_to(
    old: &[u8],
    patch: &[u8],
    chunk: usize,
    options: ApplyOptions,
    new: &[u8],
) -> (ApplyReport, usize) {
    let (report, working_set, out) = apply_with(old, patch, chunk, options);
    let report = report.unwrap();
    assert!(out == new, "the output differs from the new image");
    (report, working_set.unwrap())
}

#[test]
fn round_trip_in_any_chunking() {
    let (old, new) = pair(200_000, 1);
    for opts in [
        small_opts(),
        DiffOptions::default(),
        DiffOptions {
            compression: Compression::None,
            ..small_opts()
        },
        DiffOptions {
            sparse_diffs: Some(true),
            ..small_opts()
        },
        DiffOptions {
            sparse_diffs: Some(false),
            ..small_opts()
        },
        DiffOptions {
            compression: Compression::Lzma2,
            level: 9,
            ..small_opts()
        },
        DiffOptions {
            compression: Compression::Lzma2,
            level: 6,
            sparse_diffs: Some(true),
            ..DiffOptions::default()
        },
        DiffOptions {
            compression: Compression::Lzma2,
            level: 9,
            split_streams: Some(true),
            ..small_opts()
        },
        DiffOptions {
            compression: Compression::Lzma2,
            level: 6,
            split_streams: Some(true),
            ..DiffOptions::default()
        },
        // Records one after another, as patches before record columns.
        DiffOptions {
            record_columns: false,
            sparse_diffs: Some(true),
            ..small_opts()
        },
        DiffOptions {
            compression: Compression::Lzma2,
            level: 6,
            split_streams: Some(true),
            record_columns: false,
            ..DiffOptions::default()
        },
    ] {
        let patch = diff(&old, &new, &opts).unwrap();
        let header = Header::decode(&patch).unwrap();
        assert_eq!(header.compression, opts.compression);
        assert_eq!(header.split_streams, opts.split_streams == Some(true));
        assert_eq!(header.record_columns, opts.record_columns);
        if let Some(sparse) = opts.sparse_diffs {
            assert_eq!(header.sparse_diffs, sparse);
        }
        if opts.compression != Compression::None {
            assert!(patch.len() < new.len() / 10, "patch {} bytes", patch.len());
        }
        for chunk in [1, 7, 100, 4096, 65_537, patch.len()] {
            assert_eq!(
                apply_chunked(&old, &patch, chunk).unwrap(),
                new,
                "chunk {chunk}"
            );
        }
    }
}

/// x86-like code: `count` call instructions at random places between filler,
/// each calling one of eight functions at fixed addresses.
fn x86_code(count: usize, seed: u64) -> Vec<u8> {
    let filler = noise(count * 11, seed);
    let mut out = Vec::new();
    for (i, pad) in filler.chunks(11).enumerate() {
        out.extend_from_slice(&pad[..(pad[0] % 11) as usize]);
        let target = 0x40_0000 + 0x1000 * (i as u32 % 8);
        let rel = target.wrapping_sub(out.len() as u32 + 5);
        out.push(0xE8);
        out.extend_from_slice(&rel.to_le_bytes());
    }
    out
}

#[test]
fn x86_literals_round_trip_and_shrink_new_code() {
    let (old, _) = pair(60_000, 11);
    // The new image adds a stretch of new code: literals full of calls.
    let mut new = old.clone();
    new.splice(20_000..20_000, x86_code(3000, 12));
    let mut sizes = Vec::new();
    for x86 in [Some(false), Some(true), None] {
        for compression in [Compression::Zstd, Compression::Lzma2] {
            let opts = DiffOptions {
                x86_branches: x86,
                ..DiffOptions::with_compression(compression)
            };
            let patch = diff(&old, &new, &opts).unwrap();
            let header = Header::decode(&patch).unwrap();
            // Left to choose, the maker takes the transform here.
            assert_eq!(header.x86_branches, x86.unwrap_or(true), "{x86:?}");
            for chunk in [1, 333, patch.len()] {
                assert_eq!(apply_chunked(&old, &patch, chunk).unwrap(), new);
            }
            sizes.push(patch.len());
        }
    }
    // Absolute targets repeat: at least 20 % smaller with either codec.
    for (off, on) in sizes[..2].iter().zip(&sizes[2..4]) {
        assert!(on * 5 < off * 4, "{sizes:?}");
    }
}

/// A program of `funcs` functions after `head`, each referring to another
/// every 24 bytes by the 5 bytes `reference(end, callee)` makes (`end`:
/// offset after them, `callee`: the function's offset); the functions in
/// `grown` end with 64 bytes of new code, so later functions move and
/// references to them change. Returns the image and the functions' offsets.
fn program(
    head: Vec<u8>,
    funcs: usize,
    grown: &[usize],
    seed: u64,
    reference: impl Fn(usize, usize) -> [u8; 5],
) -> (Vec<u8>, Vec<usize>) {
    let sizes: Vec<usize> = noise(funcs, seed)
        .iter()
        .map(|b| 200 + usize::from(*b) * 2)
        .collect();
    let growth = |f: usize| if grown.contains(&f) { 64 } else { 0 };
    let mut starts = Vec::with_capacity(funcs);
    let mut at = head.len();
    for (f, size) in sizes.iter().enumerate() {
        starts.push(at);
        at += size + growth(f);
    }
    let mut out = head;
    for (f, &size) in sizes.iter().enumerate() {
        let body = noise(size, seed + 1 + f as u64);
        let mut i = 0;
        while i < size {
            if i % 24 == 0 && i + 5 <= size {
                let callee = usize::from(body[i]) * 7 % funcs;
                out.extend_from_slice(&reference(out.len() + 5, starts[callee]));
                i += 5;
            } else {
                out.push(body[i]);
                i += 1;
            }
        }
        out.extend_from_slice(&noise(growth(f), seed + 5000 + f as u64));
    }
    (out, starts)
}

/// An x86-64-like program of functions calling each other (CALL rel32).
fn x86_program(funcs: usize, grown: &[usize], seed: u64) -> Vec<u8> {
    let call = |end: usize, callee: usize| {
        let rel = (callee as i64 - end as i64) as i32;
        let mut bytes = [0xE8; 5];
        bytes[1..].copy_from_slice(&rel.to_le_bytes());
        bytes
    };
    program(Vec::new(), funcs, grown, seed, call).0
}

/// `with` (a patch with a reference map) applies in pieces of any size and
/// is under 0.8 times `without`.
fn assert_applies_and_shrinks(
    old: &[u8],
    new: &[u8],
    with: &[u8],
    without: &[u8],
    compression: Compression,
) {
    for chunk in [1, 97, with.len()] {
        assert_eq!(
            apply_chunked(old, with, chunk).unwrap(),
            new,
            "{compression:?}"
        );
    }
    assert!(
        with.len() * 10 < without.len() * 8,
        "{compression:?}: {} against {}",
        with.len(),
        without.len()
    );
}

fn mapped(compression: Compression) -> DiffOptions {
    DiffOptions {
        references: Some(true),
        ..DiffOptions::with_compression(compression)
    }
}

#[test]
fn reference_maps_predict_moved_calls_and_round_trip() {
    let old = x86_program(400, &[], 5);
    let new = x86_program(400, &[3, 50, 120, 200, 333], 5);
    for compression in [Compression::None, Compression::Zstd, Compression::Lzma2] {
        let plain = DiffOptions {
            references: Some(false),
            ..DiffOptions::with_compression(compression)
        };
        let without = diff(&old, &new, &plain).unwrap();
        let with = diff(&old, &new, &mapped(compression)).unwrap();
        let header = Header::decode(&with).unwrap();
        assert_eq!(
            (header.version, Header::decode(&without).unwrap().version),
            (5, 3)
        );
        assert!(header.reference_pages > 0);
        let named = reference_rules(&with, &header)
            .unwrap()
            .map(|r| r.to_string());
        assert_eq!(named.as_deref(), Some("x86-64 relative"));
        assert_eq!(
            reference_rules(&without, &Header::decode(&without).unwrap()).unwrap(),
            None
        );
        // Most calls moved with their targets' pages: far fewer differences.
        assert_applies_and_shrinks(&old, &new, &with, &without, compression);
    }
    resume_from_any_checkpoint_gives_identical_output_with(&old, &new, &mapped(Compression::Zstd));
    let split = DiffOptions {
        split_streams: Some(true),
        ..mapped(Compression::Lzma2)
    };
    assert_eq!(
        apply_chunked(&old, &diff(&old, &new, &split).unwrap(), 333).unwrap(),
        new
    );
}

/// A position-dependent x86-64 executable (ELF, ET_EXEC, loaded at
/// 0x400000): functions that load the addresses of others (MOV ebx, imm32)
/// and a table of their addresses at the end.
fn exec_program(funcs: usize, grown: &[usize], seed: u64) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    let mut elf = vec![0u8; 64 + 56];
    elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD at offset 0
    elf[80..88].copy_from_slice(&BASE.to_le_bytes());
    let address = |offset: usize| BASE + offset as u64;
    let load = |_, callee: usize| {
        let mut bytes = [0xBB; 5];
        bytes[1..].copy_from_slice(&(address(callee) as u32).to_le_bytes());
        bytes
    };
    let (mut out, starts) = program(elf, funcs, grown, seed, load);
    for start in starts {
        out.extend_from_slice(&address(start).to_le_bytes());
    }
    out
}

#[test]
fn reference_maps_move_absolute_addresses_in_position_dependent_executables() {
    let old = exec_program(400, &[], 11);
    let new = exec_program(400, &[3, 50, 120, 200, 333], 11);
    // The same bytes without the ELF header that says where they load.
    let unplaced = |image: &[u8]| [&[0u8; 120][..], &image[120..]].concat();
    for compression in [Compression::Zstd, Compression::Lzma2] {
        let with = diff(&old, &new, &mapped(compression)).unwrap();
        let header = Header::decode(&with).unwrap();
        assert_eq!(header.version, 5);
        let named = reference_rules(&with, &header)
            .unwrap()
            .map(|r| r.to_string());
        assert!(
            named
                .as_deref()
                .is_some_and(|n| n.starts_with("x86-64 relative, addresses from 0x")),
            "{named:?}"
        );
        let without = diff(&unplaced(&old), &unplaced(&new), &mapped(compression)).unwrap();
        assert_eq!(
            apply_chunked(&unplaced(&old), &without, without.len()).unwrap(),
            unplaced(&new)
        );
        // Addresses moved with their targets' pages: far fewer differences.
        assert_applies_and_shrinks(&old, &new, &with, &without, compression);
    }
    resume_from_any_checkpoint_gives_identical_output_with(&old, &new, &mapped(Compression::Zstd));
}

/// The load address of [`thumb_firmware`].
const THUMB_BASE: u32 = 0x2_3000;

/// A Cortex-M firmware image loaded at THUMB_BASE: a vector table, then
/// functions as [`program`] makes them, whose references are BL
/// instructions and, at word-aligned places, literal-pool addresses of
/// the callee (Thumb: odd).
fn thumb_firmware(funcs: usize, grown: &[usize], seed: u64) -> Vec<u8> {
    let mut table = vec![0u8; 64];
    table[..4].copy_from_slice(&0x2001_0000u32.to_le_bytes());
    for vector in table[4..].chunks_mut(4) {
        vector.copy_from_slice(&((THUMB_BASE + 64) | 1).to_le_bytes());
    }
    let reference = |end: usize, callee: usize| {
        let at = end - 5;
        // (The fifth byte, as in 16-bit Thumb instructions' high bytes.)
        let mut bytes = [0x46; 5];
        let value = if at.is_multiple_of(4) && callee % 8 < 4 {
            (THUMB_BASE + callee as u32) | 1
        } else {
            // BL: S:I1:I2:imm10:imm11:0 from the instruction's end.
            let imm = (callee as i64 - (at as i64 + 4)) as u32;
            let s = imm >> 24 & 1;
            let j1 = (!(imm >> 23) ^ s) & 1;
            let j2 = (!(imm >> 22) ^ s) & 1;
            let first = 0xF000 | s << 10 | imm >> 12 & 0x3FF;
            let second = 0xD000 | j1 << 13 | j2 << 11 | imm >> 1 & 0x7FF;
            second << 16 | first
        };
        bytes[..4].copy_from_slice(&value.to_le_bytes());
        bytes
    };
    program(table, funcs, grown, seed, reference).0
}

#[test]
fn cortex_m_firmware_gets_a_thumb_map_at_its_load_address() {
    let old = thumb_firmware(400, &[], 21);
    let new = thumb_firmware(400, &[3, 50, 120, 200, 333], 21);
    for compression in [Compression::Zstd, Compression::Lzma2] {
        // By default the maker tries maps and keeps the smallest patch.
        let with = diff(&old, &new, &DiffOptions::with_compression(compression)).unwrap();
        let header = Header::decode(&with).unwrap();
        assert!(header.version == 6 && header.reference_pages > 0);
        // Thumb and absolute rules, addresses from the reset handler's 4 KiB.
        let (_, rules, first, _) = map_section(&with);
        assert_eq!((rules, first), (Some(6), u64::from(THUMB_BASE)));
        // As `patch-info` names them, from the patch's first bytes only.
        let head = &with[..with.len().min(otaflash_core::patch::INFO_HEAD_MAX)];
        let named = reference_rules(head, &header)
            .unwrap()
            .map(|r| r.to_string());
        assert_eq!(
            named.as_deref(),
            Some("Thumb-2 branches, addresses from 0x23000")
        );
        let cut = &with[..header.encoded_len() + 2];
        assert_eq!(reference_rules(cut, &header).unwrap(), None);
        let plain = DiffOptions {
            references: Some(false),
            ..DiffOptions::with_compression(compression)
        };
        let without = diff(&old, &new, &plain).unwrap();
        assert_eq!(Header::decode(&without).unwrap().version, 3);
        assert_applies_and_shrinks(&old, &new, &with, &without, compression);
    }
    let zstd = DiffOptions::with_compression(Compression::Zstd);
    resume_from_any_checkpoint_gives_identical_output_with(&old, &new, &zstd);
}

#[test]
fn version_4_reference_maps_are_read() {
    let old = x86_program(120, &[], 8);
    let new = x86_program(120, &[7, 60], 8);
    let v5 = diff(&old, &new, &mapped(Compression::Zstd)).unwrap();
    let mut header = Header::decode(&v5).unwrap();
    let body = &v5[header.encoded_len()..];
    // Version 4's map head lacks version 5's absolute address (0 here).
    assert_eq!(body[1], 0);
    let (comp_len, n) = get_varint(&body[2..]).unwrap().unwrap();
    let map_end = 2 + n + comp_len as usize + 4;
    let mut map = [&body[..1], &body[2..map_end - 4]].concat();
    map.extend_from_slice(&crc32fast::hash(&map).to_le_bytes());
    header.version = 4;
    header.body_size -= 1;
    let v4 = [header.encode(), map, body[map_end..].to_vec()].concat();
    assert_eq!(apply_chunked(&old, &v4, 97).unwrap(), new);
}

/// Where a patch's reference map section begins, its rules byte (version
/// 6), its `first`, and where the section ends.
fn map_section(patch: &[u8]) -> (usize, Option<u8>, u64, usize) {
    let header = Header::decode(patch).unwrap();
    let start = header.encoded_len();
    let mut at = start + 1;
    let rules = (header.version >= 6).then(|| {
        at += 1;
        patch[at - 1]
    });
    let (first, n) = get_varint(&patch[at..]).unwrap().unwrap();
    let (comp_len, m) = get_varint(&patch[at + n..]).unwrap().unwrap();
    (start, rules, first, at + n + m + comp_len as usize + 4)
}

/// Every truncation, and every bit flip in the header and the map section.
fn assert_damaged_maps_are_refused(old: &[u8], new: &[u8], opts: &DiffOptions) {
    every_truncation_is_an_error_for(old, new, opts);
    let patch = diff(old, new, opts).unwrap();
    let (_, _, _, end) = map_section(&patch);
    for bit in 0..end * 8 {
        let mut bad = patch.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(apply_chunked(old, &bad, 64).is_err(), "bit {bit}");
    }
}

#[test]
fn a_damaged_reference_map_is_refused() {
    let old = x86_program(120, &[], 8);
    let new = x86_program(120, &[7, 60], 8);
    assert_damaged_maps_are_refused(&old, &new, &mapped(Compression::Zstd));
    let old = thumb_firmware(60, &[], 8);
    let new = thumb_firmware(60, &[7, 40], 8);
    assert_damaged_maps_are_refused(&old, &new, &mapped(Compression::Zstd));
    // In place, there is no map.
    let in_place = DiffOptions {
        references: Some(true),
        ..DiffOptions::in_place(4096, None)
    };
    assert!(diff(&old, &new, &in_place).is_err());
}

#[test]
fn edge_sizes_round_trip() {
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (vec![], vec![]),
        (vec![], noise(5000, 3)),
        (noise(5000, 4), vec![]),
        (vec![7], vec![7]),
        (noise(4096, 5), noise(4096, 5)),
        (noise(10_000, 6), noise(10_000, 7)),
        (vec![0; 50_000], vec![0; 60_000]),
    ];
    for (old, new) in cases {
        let patch = diff(&old, &new, &small_opts()).unwrap();
        assert_eq!(apply_chunked(&old, &patch, 333).unwrap(), new);
    }
}

#[test]
fn wrong_old_image_is_refused_before_anything_is_written() {
    let (old, new) = pair(50_000, 2);
    let patch = diff(&old, &new, &small_opts()).unwrap();
    let mut other = old.clone();
    other[100] ^= 1;
    let mut applier = Applier::new(other.as_slice(), Vec::new(), ApplyOptions::default());
    let err = applier.feed(&patch).unwrap_err();
    assert!(matches!(err, Error::PatchWrongOld { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("this patch needs old image sha256 "),
        "{err}"
    );
    assert!(
        applier.into_parts().1.is_empty(),
        "bytes were written before the refusal"
    );
    let short = &old[..1000];
    let err = apply_chunked(short, &patch, 4096).unwrap_err();
    assert!(
        err.to_string().contains("the device has 1000 bytes"),
        "{err}"
    );
}

/// A sink whose output is thrown away on error (a file renamed on success)
/// may have the old image checked on a second thread while the patch is
/// applied: the same result, and a wrong old image is still refused, never
/// reported as a success.
#[test]
fn old_image_checked_alongside_gives_the_same_result_and_refuses_a_wrong_one() {
    let (old, new) = pair(600_000, 13);
    let opts = DiffOptions {
        block_size: 16384,
        window_log: 16,
        frame_size: 65536,
        ..small_opts()
    };
    let patch = diff(&old, &new, &opts).unwrap();
    let mut other = old.clone();
    // The last byte: the thread finds it last.
    *other.last_mut().unwrap() ^= 1;
    let dir = std::env::temp_dir().join(format!("otaflash-alongside-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("old"), dir.join("other"));
    std::fs::write(&good, &old).unwrap();
    std::fs::write(&bad, &other).unwrap();
    let apply = |path: &std::path::Path, options: ApplyOptions| {
        apply_with(FileSource::open(path).unwrap(), &patch, 5000, options)
    };
    let alongside = ApplyOptions {
        old_check: OldCheck::Alongside,
        ..ApplyOptions::default()
    };
    let (before, before_set, _) = apply(&good, ApplyOptions::default());
    let (aside, aside_set, out) = apply(&good, alongside.clone());
    assert_eq!(aside.unwrap(), before.unwrap());
    assert_eq!(out, new);
    if two_cores() {
        // The thread's 64 KiB read buffer.
        assert_eq!(aside_set.unwrap(), before_set.unwrap() + (64 << 10));
    }
    // Hashed between blocks on the new image's hashing thread, or (without
    // one) on a thread of its own.
    let own_thread = ApplyOptions {
        hash_thread: false,
        ..alongside.clone()
    };
    let (own, _, out) = apply(&good, own_thread.clone());
    assert_eq!(own.unwrap().new_size, new.len() as u64);
    assert_eq!(out, new);
    for options in [alongside.clone(), own_thread] {
        let (wrong, _, _) = apply(&bad, options);
        let err = wrong.unwrap_err();
        assert!(matches!(err, Error::PatchWrongOld { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("this patch needs old image sha256 "),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // An image of fewer than four blocks is checked first: hashing it costs
    // less than a thread.
    let (small_old, small_new) = pair(40_000, 17);
    let small = diff(&small_old, &small_new, &opts).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&good, &small_old).unwrap();
    let apply_small =
        |options: ApplyOptions| apply_with(FileSource::open(&good).unwrap(), &small, 5000, options);
    let (before, before_set, _) = apply_small(ApplyOptions::default());
    let (aside, aside_set, out) = apply_small(alongside.clone());
    assert_eq!(aside.unwrap(), before.unwrap());
    assert_eq!(aside_set, before_set);
    assert_eq!(out, small_new);
    std::fs::remove_dir_all(&dir).unwrap();
    // A source no other thread can read (memory here) is checked first.
    let mut applier = Applier::new(other.as_slice(), Vec::new(), alongside);
    let err = applier.feed(&patch).unwrap_err();
    assert!(matches!(err, Error::PatchWrongOld { .. }), "{err}");
    assert!(applier.into_parts().1.is_empty());
}

/// A rebuild in which many addresses moved a little: one byte in every
/// dozen or so differs (ARM literal pools and branch offsets), and five new
/// bytes early on.
fn scattered_pair(len: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let (old, _) = pair(len, seed);
    let mut new = old.clone();
    new.splice(len / 10..len / 10, noise(5, seed + 8));
    let mut at = 0;
    for r in noise(len / 4, seed + 9) {
        at += 4 + usize::from(r % 16);
        if let Some(byte) = new.get_mut(at) {
            *byte = byte.wrapping_add(1 + r % 3);
        }
    }
    (old, new)
}

/// An uncompressed patch's first frame: its header, its raw payload, and
/// where the first block's difference mode varint starts in that payload
/// with the bytes that block copies.
fn first_block(patch: &[u8]) -> (FrameHeader, Vec<u8>, usize, u64) {
    let header = Header::decode(patch).unwrap();
    assert_eq!(header.compression, Compression::None);
    let body = &patch[header.encoded_len()..];
    let (fh, _, len) = FrameHeader::decode(body, 0, &header, header.new_size)
        .unwrap()
        .unwrap();
    let raw = body[len..len + fh.comp_len as usize].to_vec();
    let mut at = 0;
    let mut next = || {
        let (v, n) = get_varint(&raw[at..]).unwrap().unwrap();
        at += n;
        v
    };
    let count = next();
    // Record columns: all copy lengths first.
    let copied = (0..count).map(|_| next()).sum();
    for _ in 0..2 * count {
        next();
    }
    (fh, raw, at, copied)
}

fn first_diff_mode(patch: &[u8]) -> DiffMode {
    let (_, raw, at, _) = first_block(patch);
    let version = Header::decode(patch).unwrap().version;
    DiffMode::from_value(version, get_varint(&raw[at..]).unwrap().unwrap().0)
}

#[test]
fn scattered_changes_take_the_difference_bitmap_and_few_take_runs() {
    let uncompressed = DiffOptions {
        compression: Compression::None,
        sparse_diffs: Some(true),
        ..small_opts()
    };
    let (old, new) = pair(40_000, 11);
    assert!(matches!(
        first_diff_mode(&diff(&old, &new, &uncompressed).unwrap()),
        DiffMode::Runs(n) if n > 0
    ));
    let (old, new) = scattered_pair(40_000, 11);
    let patch = diff(&old, &new, &uncompressed).unwrap();
    assert_eq!(first_diff_mode(&patch), DiffMode::Bitmap);
    for opts in [
        uncompressed.clone(),
        DiffOptions {
            sparse_diffs: Some(true),
            ..small_opts()
        },
        DiffOptions {
            compression: Compression::Lzma2,
            level: 9,
            sparse_diffs: Some(true),
            ..small_opts()
        },
    ] {
        let patch = diff(&old, &new, &opts).unwrap();
        let whole = diff(
            &old,
            &new,
            &DiffOptions {
                sparse_diffs: Some(false),
                ..opts.clone()
            },
        )
        .unwrap();
        assert!(
            patch.len() < whole.len(),
            "{:?}: bitmap {} bytes, whole {}",
            opts.compression,
            patch.len(),
            whole.len()
        );
        for chunk in [1, 7, 4096, patch.len()] {
            assert_eq!(apply_chunked(&old, &patch, chunk).unwrap(), new);
        }
    }
    // A smaller pair for the corrupted-patch corpus.
    let (old, new) = scattered_pair(6_000, 12);
    let patch = diff(&old, &new, &uncompressed).unwrap();
    assert_eq!(first_diff_mode(&patch), DiffMode::Bitmap);
    every_truncation_is_an_error_for(&old, &new, &uncompressed);
    for bit in 0..patch.len() * 8 {
        let mut bad = patch.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(apply_chunked(&old, &bad, 512).is_err(), "bit {bit}");
    }
    // A bitmap marking a byte past the block's copies, under a valid CRC
    // (the inserted literals leave spare bits in its last byte).
    let (fh, mut raw, at, copied) = first_block(&patch);
    assert_ne!(copied % 8, 0);
    raw[at + 1 + (copied as usize).div_ceil(8) - 1] |= 0x80;
    let header = Header::decode(&patch).unwrap();
    let frame_start = header.encoded_len();
    let (_, _, len) = FrameHeader::decode(&patch[frame_start..], 0, &header, header.new_size)
        .unwrap()
        .unwrap();
    let mut bad = patch[..frame_start].to_vec();
    bad.extend_from_slice(&fh.encode(&raw));
    bad.extend_from_slice(&raw);
    bad.extend_from_slice(&patch[frame_start + len + raw.len()..]);
    let err = apply_chunked(&old, &bad, 4096).unwrap_err();
    assert!(err.to_string().contains("past its block's copies"), "{err}");
}

/// Version 2 patches (made before the bitmap mode, whose run modes count
/// from 1) still apply: one zstd and one LZMA2, both with difference runs.
#[test]
fn version_two_patches_apply() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/delta-v2");
    let old = std::fs::read(dir.join("old")).unwrap();
    let new = std::fs::read(dir.join("new")).unwrap();
    for name in ["zstd.otap", "lzma2.otap"] {
        let patch = std::fs::read(dir.join(name)).unwrap();
        let header = Header::decode(&patch).unwrap();
        assert_eq!((header.version, header.sparse_diffs), (2, true), "{name}");
        for chunk in [1, 50, patch.len()] {
            assert_eq!(apply_chunked(&old, &patch, chunk).unwrap(), new, "{name}");
        }
    }
}

/// One option set per body encoding: zstd, LZMA2, with sparse differences
/// and x86 literals, LZMA2 in three streams.
fn encodings() -> [DiffOptions; 4] {
    [
        small_opts(),
        DiffOptions {
            sparse_diffs: Some(true),
            ..small_opts()
        },
        DiffOptions {
            compression: Compression::Lzma2,
            level: 9,
            sparse_diffs: Some(true),
            x86_branches: Some(true),
            ..small_opts()
        },
        DiffOptions {
            compression: Compression::Lzma2,
            level: 9,
            split_streams: Some(true),
            ..small_opts()
        },
    ]
}

#[test]
fn every_truncation_is_an_error() {
    let (old, new) = pair(20_000, 3);
    for opts in encodings() {
        every_truncation_is_an_error_for(&old, &new, &opts);
    }
}

fn every_truncation_is_an_error_for(old: &[u8], new: &[u8], opts: &DiffOptions) {
    let patch = diff(old, new, opts).unwrap();
    for len in 0..patch.len() {
        let err = apply_chunked(old, &patch[..len], 1000).unwrap_err();
        assert!(
            matches!(err, Error::PatchCorrupt(_) | Error::PatchForeign(_)),
            "{:?} length {len}: {err}",
            opts.compression
        );
    }
    let mut longer = patch.clone();
    longer.push(0);
    assert!(apply_chunked(old, &longer, 1000).is_err());
}

#[test]
fn every_single_bit_flip_is_an_error() {
    let (old, new) = pair(12_000, 4);
    for opts in encodings() {
        let patch = diff(&old, &new, &opts).unwrap();
        for bit in 0..patch.len() * 8 {
            let mut bad = patch.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                apply_chunked(&old, &bad, 512).is_err(),
                "{:?}: flip of bit {bit} went unnoticed",
                opts.compression
            );
        }
    }
}

fn reencode(patch: &[u8], edit: impl FnOnce(&mut Header)) -> Vec<u8> {
    let mut header = Header::decode(patch).unwrap();
    let body = &patch[header.encoded_len()..];
    edit(&mut header);
    let mut out = header.encode();
    out.extend_from_slice(body);
    out
}

#[test]
fn lying_headers_are_refused() {
    let (old, new) = pair(30_000, 5);
    let patch = diff(&old, &new, &small_opts()).unwrap();
    // Output larger than declared: the frames make more than new_size.
    let err = apply_chunked(&old, &reencode(&patch, |h| h.new_size -= 1000), 999).unwrap_err();
    assert!(err.to_string().contains("remain"), "{err}");
    let err = Header::decode(&reencode(&patch, |h| h.old_size = 1 << 50)).unwrap_err();
    assert!(err.to_string().contains("absurd"), "{err}");
    let err = Header::decode(&reencode(&patch, |h| h.block_size = u32::MAX)).unwrap_err();
    assert!(err.to_string().contains("block size"), "{err}");
    let err = apply_chunked(&old, b"\x28\xb5\x2f\xfd0000000000", 10).unwrap_err();
    assert!(err.to_string().contains("zstd"), "{err}");
}

/// Large LZMA2 images split their frames in three streams by default (the
/// corpus benchmark measures what that saves), and the applier still fits
/// 4 MiB with the hashing thread.
#[test]
fn large_lzma2_images_split_in_streams_within_four_mib() {
    let (old, new) = pair(3 << 20, 12);
    let opts = DiffOptions {
        level: 4,
        ..DiffOptions::with_compression(Compression::Lzma2)
    };
    let split = diff(&old, &new, &opts).unwrap();
    assert!(Header::decode(&split).unwrap().split_streams);
    let one = DiffOptions {
        split_streams: Some(false),
        ..opts
    };
    let one = diff(&old, &new, &one).unwrap();
    assert!(!Header::decode(&one).unwrap().split_streams);
    for patch in [&split, &one] {
        let threaded = threaded_working_set(&old, patch, 100_003, &new, 256 << 10);
        assert!(threaded <= 4 << 20, "{threaded}");
    }
}

/// zstd patches use 256 KiB blocks so that the new image's hashing thread
/// and an alongside check of the old image both fit 4 MiB.
#[test]
fn large_zstd_images_hash_on_threads_within_four_mib() {
    let (old, new) = pair(3 << 20, 14);
    let opts = DiffOptions {
        level: 3,
        ..DiffOptions::default()
    };
    let patch = diff(&old, &new, &opts).unwrap();
    assert_eq!(Header::decode(&patch).unwrap().block_size, 256 << 10);
    let threaded = threaded_working_set(&old, &patch, patch.len(), &new, 256 << 10);
    assert!(threaded + (64 << 10) <= 4 << 20, "{threaded}");
}

#[test]
fn the_hash_thread_runs_within_the_budget_and_gives_the_same_result() {
    let (old, new) = pair(100_000, 9);
    let patch = diff(&old, &new, &small_opts()).unwrap();
    let apply = |options| apply_to(&old, &patch, 3000, options, &new);
    let (inline, inline_set) = apply(ApplyOptions {
        hash_thread: false,
        ..ApplyOptions::default()
    });
    let (threaded, threaded_set) = apply(ApplyOptions::default());
    assert_eq!(inline, threaded);
    if two_cores() {
        // The thread holds one block of 4096 bytes.
        assert_eq!(threaded_set, inline_set + 4096);
    }
    // A budget without room for that block hashes inline.
    let (_, tight_set) = apply(ApplyOptions {
        max_working_set: inline_set,
        ..ApplyOptions::default()
    });
    assert_eq!(tight_set, inline_set);
}

#[test]
fn the_reference_thread_gives_the_same_result_within_the_budget() {
    let old = x86_program(400, &[], 5);
    let new = x86_program(400, &[3, 50, 120, 200, 333], 5);
    // Small blocks: many of them, each predicted on the thread.
    let opts = DiffOptions {
        block_size: 4096,
        ..mapped(Compression::Zstd)
    };
    let patch = diff(&old, &new, &opts).unwrap();
    let apply = |options, chunk| apply_to(&old, &patch, chunk, options, &new);
    let inline = ApplyOptions {
        reference_thread: false,
        ..ApplyOptions::default()
    };
    for chunk in [1, 97, patch.len()] {
        let ((inline_report, inline_set), (report, set)) = (
            apply(inline.clone(), chunk),
            apply(ApplyOptions::default(), chunk),
        );
        assert_eq!(inline_report, report);
        if two_cores() {
            // The thread's block buffer, the job's copies list ((4096 / 32
            // + 1) entries of 16 bytes) and a 64 KiB read cache take the
            // 256 KiB read cache's place.
            assert_eq!(set, inline_set - (256 << 10) + 4096 + 129 * 16 + (64 << 10));
        }
    }
    // With a read cache smaller than the thread's memory, a budget without
    // room for the difference predicts inline.
    let small_cache = ApplyOptions {
        read_cache: 2048,
        ..ApplyOptions::default()
    };
    let small_inline = ApplyOptions {
        reference_thread: false,
        ..small_cache.clone()
    };
    let small_inline_set = apply(small_inline, 333).1;
    if two_cores() {
        assert_eq!(
            apply(small_cache.clone(), 333).1,
            small_inline_set - 2048 + 4096 + 129 * 16 + 2048
        );
    }
    let tight = ApplyOptions {
        max_working_set: small_inline_set,
        ..small_cache
    };
    assert_eq!(apply(tight, 333).1, small_inline_set);
    // The old image checked alongside is hashed by the prediction thread
    // between blocks: the same result, and a wrong old image refused.
    let dir = std::env::temp_dir().join(format!("otaflash-predict-old-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("old"), dir.join("other"));
    let mut other = old.clone();
    other[old.len() / 2] ^= 1;
    std::fs::write(&good, &old).unwrap();
    std::fs::write(&bad, &other).unwrap();
    let alongside = ApplyOptions {
        old_check: OldCheck::Alongside,
        ..ApplyOptions::default()
    };
    let (report, _, out) = apply_with(
        FileSource::open(&good).unwrap(),
        &patch,
        97,
        alongside.clone(),
    );
    assert_eq!(report.unwrap().new_size, new.len() as u64);
    assert_eq!(out, new);
    let (wrong, _, _) = apply_with(FileSource::open(&bad).unwrap(), &patch, 97, alongside);
    let err = wrong.unwrap_err();
    assert!(matches!(err, Error::PatchWrongOld { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    resume_from_any_checkpoint_gives_identical_output_with(&old, &new, &opts);
}

#[test]
fn working_set_is_bounded_and_enforced() {
    let (old, new) = pair(100_000, 6);
    let opts = DiffOptions {
        block_size: 4096,
        window_log: 12,
        frame_size: 16384,
        ..DiffOptions::default()
    };
    let patch = diff(&old, &new, &opts).unwrap();
    let tight = ApplyOptions {
        max_working_set: 600 << 10,
        read_cache: 4096,
        ..ApplyOptions::default()
    };
    let mut applier = Applier::new(old.as_slice(), Vec::new(), tight.clone());
    applier.feed(&patch).unwrap();
    assert!(applier.working_set().unwrap() <= 600 << 10);
    applier.finish().unwrap();
    let raw = diff(
        &old,
        &new,
        &DiffOptions {
            compression: Compression::None,
            ..opts
        },
    )
    .unwrap();
    let tiny = ApplyOptions {
        max_working_set: 96 << 10,
        read_cache: 4096,
        ..ApplyOptions::default()
    };
    let mut applier = Applier::new(old.as_slice(), Vec::new(), tiny.clone());
    applier.feed(&raw).unwrap();
    applier.finish().unwrap();
    assert_eq!(applier.into_parts().1, new);
    let big = diff(&old, &new, &DiffOptions::default()).unwrap();
    let err = Applier::new(old.as_slice(), Vec::new(), tiny)
        .feed(&big)
        .unwrap_err();
    assert!(err.to_string().contains("working memory"), "{err}");
}

#[test]
fn resume_from_any_checkpoint_gives_identical_output() {
    let (old, new) = pair(150_000, 7);
    for opts in encodings() {
        resume_from_any_checkpoint_gives_identical_output_with(&old, &new, &opts);
    }
}

fn resume_from_any_checkpoint_gives_identical_output_with(
    old: &[u8],
    new: &[u8],
    opts: &DiffOptions,
) {
    let patch = diff(old, new, opts).unwrap();
    let mut seen = 0;
    for cut in (0..patch.len()).step_by(patch.len() / 37 + 1) {
        let mut applier = Applier::new(old, Vec::new(), ApplyOptions::default());
        applier.feed(&patch[..cut]).ok();
        let Some(cp) = applier.checkpoint() else {
            continue;
        };
        let (_, written) = applier.into_parts();
        // Power cut: the sink keeps what it had durably at the checkpoint.
        let kept = written[..cp.output_offset as usize].to_vec();
        let mut resumed =
            Applier::resume(old, kept, &cp.to_bytes(), ApplyOptions::default()).unwrap();
        assert_eq!(resumed.patch_offset(), cp.patch_offset);
        for piece in patch[cp.patch_offset as usize..].chunks(777) {
            resumed.feed(piece).unwrap();
        }
        resumed.finish().unwrap();
        assert_eq!(
            resumed.into_parts().1,
            new,
            "{:?} cut at {cut}",
            opts.compression
        );
        seen += 1;
    }
    assert!(seen > 10);
    let mut bad = Applier::new(old, Vec::new(), ApplyOptions::default());
    bad.feed(&patch[..patch.len() / 2]).unwrap();
    let mut bytes = bad.checkpoint().unwrap().to_bytes();
    bytes[40] ^= 1;
    assert!(Applier::resume(old, Vec::new(), &bytes, ApplyOptions::default()).is_err());
}

/// A simulated single-slot flash that loses power on a chosen operation.
#[derive(Clone)]
struct MemSlot {
    mem: Vec<u8>,
    block: u64,
    steps: HashMap<[u8; 32], u64>,
    ops: u64,
    cut_at: Option<u64>,
    /// When the cut hits record_steps: true = the record made it to flash.
    record_survives: bool,
}

impl ReadAt for MemSlot {
    fn size(&self) -> u64 {
        self.mem.len() as u64
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (&self.mem[..]).read_exact_at(offset, buf)
    }
}

impl MemSlot {
    fn tick(&mut self) -> bool {
        self.ops += 1;
        self.cut_at == Some(self.ops)
    }
}

fn power_cut() -> Error {
    Error::InvalidArgument("power cut".into())
}

impl InPlaceTarget for MemSlot {
    fn block_size(&self) -> u64 {
        self.block
    }

    fn replace_block(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        assert_eq!(offset % self.block, 0);
        assert!(data.len() as u64 <= self.block);
        let at = offset as usize;
        let cut = self.tick();
        // Erase, then program; a cut leaves the block half programmed.
        self.mem[at..at + self.block as usize].fill(0xFF);
        if cut {
            let half = data.len() / 2;
            self.mem[at..at + half].copy_from_slice(&data[..half]);
            return Err(power_cut());
        }
        self.mem[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn completed_steps(&mut self, update_id: &[u8; 32]) -> Result<u64> {
        Ok(self.steps.get(update_id).copied().unwrap_or(0))
    }

    fn record_steps(&mut self, update_id: &[u8; 32], count: u64) -> Result<()> {
        if self.tick() {
            if self.record_survives {
                self.steps.insert(*update_id, count);
            }
            return Err(power_cut());
        }
        self.steps.insert(*update_id, count);
        Ok(())
    }
}

fn slot_with(old: &[u8], size: usize, block: u64) -> MemSlot {
    let mut mem = vec![0xFF; size];
    mem[..old.len()].copy_from_slice(old);
    MemSlot {
        mem,
        block,
        steps: HashMap::new(),
        ops: 0,
        cut_at: None,
        record_survives: false,
    }
}

#[test]
fn in_place_survives_a_power_cut_at_every_operation() {
    let (old, new) = pair(40_000, 8);
    let block = 4096u32;
    let zstd = DiffOptions {
        frame_size: 8192,
        window_log: 14,
        ..DiffOptions::in_place(block, None)
    };
    // Resuming inside a frame restarts its decoder: LZMA2 and sparse runs too.
    let lzma2 = DiffOptions {
        compression: Compression::Lzma2,
        level: 9,
        sparse_diffs: Some(true),
        x86_branches: Some(true),
        ..zstd.clone()
    };
    let split = DiffOptions {
        split_streams: Some(true),
        ..lzma2.clone()
    };
    for opts in [zstd, lzma2, split] {
        in_place_survives_a_power_cut_at_every_operation_with(&old, &new, block, &opts);
    }
}

fn in_place_survives_a_power_cut_at_every_operation_with(
    old: &[u8],
    new: &[u8],
    block: u32,
    opts: &DiffOptions,
) {
    let patch = diff(old, new, opts).unwrap();
    let header = Header::decode(&patch).unwrap();
    let slot_size = header.slot_size as usize;
    let options = ApplyOptions::default();

    let mut clean = slot_with(old, slot_size, block.into());
    apply_in_place(&mut clean, &mut patch.as_slice(), &options, &mut NoProgress).unwrap();
    assert_eq!(&clean.mem[..new.len()], new);
    let total_ops = clean.ops;
    assert!(total_ops > 20);

    for survives in [false, true] {
        for cut in 1..=total_ops {
            let mut slot = slot_with(old, slot_size, block.into());
            slot.cut_at = Some(cut);
            slot.record_survives = survives;
            let err = apply_in_place(&mut slot, &mut patch.as_slice(), &options, &mut NoProgress)
                .unwrap_err();
            assert_eq!(err.to_string(), "power cut");
            // Reboot, and a second cut during the resume for good measure.
            slot.ops = 0;
            slot.cut_at = Some(cut % 5 + 1);
            let _ = apply_in_place(&mut slot, &mut patch.as_slice(), &options, &mut NoProgress);
            slot.cut_at = None;
            let resumed =
                apply_in_place(&mut slot, &mut patch.as_slice(), &options, &mut NoProgress);
            assert!(
                resumed.is_ok(),
                "cut at op {cut} (record survives: {survives}): {:?}",
                resumed.err()
            );
            assert_eq!(&slot.mem[..new.len()], new, "cut at op {cut}");
        }
    }
}

#[test]
fn in_place_refuses_bad_patches_and_wrong_slots_before_writing() {
    let (old, new) = pair(20_000, 9);
    let opts = DiffOptions::in_place(4096, None);
    let patch = diff(&old, &new, &opts).unwrap();
    let header = Header::decode(&patch).unwrap();
    let slot_size = header.slot_size as usize;
    let pristine = slot_with(&old, slot_size, 4096);
    let options = ApplyOptions::default();
    for bit in (0..patch.len() * 8).step_by(7) {
        let mut bad = patch.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let mut slot = pristine.clone();
        assert!(apply_in_place(&mut slot, &mut bad.as_slice(), &options, &mut NoProgress).is_err());
        assert_eq!(slot.mem, pristine.mem, "bit {bit}: the slot was touched");
    }
    let mut wrong = slot_with(&new, slot_size, 4096);
    let err =
        apply_in_place(&mut wrong, &mut patch.as_slice(), &options, &mut NoProgress).unwrap_err();
    assert!(matches!(err, Error::PatchWrongOld { .. }), "{err}");
    let mut other_block = slot_with(&old, slot_size, 8192);
    assert!(
        apply_in_place(
            &mut other_block,
            &mut patch.as_slice(),
            &options,
            &mut NoProgress
        )
        .is_err()
    );
    let seq = diff(&old, &new, &small_opts()).unwrap();
    let mut slot = pristine.clone();
    assert!(apply_in_place(&mut slot, &mut seq.as_slice(), &options, &mut NoProgress).is_err());
}
