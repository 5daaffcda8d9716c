//! Structure-aware: builds a patch whose header, frame headers and checksums
//! are valid, around fuzzer-chosen frame geometry and payload bytes, so the
//! block/record (both layouts)/sparse difference (runs and bitmaps, both
//! versions' numbering) decoder, the reference map and the zstd and LZMA2
//! (one or three streams) paths get the fuzzer's full attention (a plain byte fuzzer stops
//! at the header CRC).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaflash_core::patch::format::{FrameHeader, Header, Kind};
use otaflash_core::patch::{Applier, ApplyOptions, Compression};
use sha2::{Digest, Sha256};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let old: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let flags = input.u8();
    let layout = input.u8();
    let compression = match (flags & 1, layout & 2) {
        (0, _) => Compression::None,
        (_, 0) => Compression::Zstd,
        _ => Compression::Lzma2,
    };
    let block_size = 512u32 << ((flags >> 1) & 3);
    let new_size = u64::from(input.u16() % 8192);
    let per_frame = u64::from(block_size) * u64::from(1 + (flags >> 3 & 3));
    let mut body = Vec::new();
    // Versions 4 to 6: a reference map (page log, in 6 the rules byte, in
    // 5 and 6 the absolute address of old offset 0, payload length,
    // payload, CRC) leads the body; its payload is fuzzer bytes, raw or for
    // the codec. Rules 0 and 3 are refused; the others scan differently.
    let version = match (layout & 64, layout & 32, layout & 128) {
        (0, 0, _) => 3,
        (0, _, _) => 2,
        (_, 0, _) => 4,
        (_, _, 0) => 5,
        _ => 6,
    };
    let reference_pages = if layout & 64 != 0 {
        let pages = 1 + u32::from(input.u8()) % 47;
        let page_log = 6 + input.u8() % 2;
        let len = usize::from(input.u8());
        let rules = input.u8() % 8;
        let absolute_first = match (version, rules & 4) {
            (6, 0) => 0,
            _ => u64::from(input.u16()) << 8,
        };
        let payload = input.bytes(len).to_vec();
        body.push(page_log);
        if version >= 6 {
            body.push(rules);
        }
        if version >= 5 {
            otaflash_core::patch::format::put_varint(&mut body, absolute_first);
        }
        otaflash_core::patch::format::put_varint(&mut body, payload.len() as u64);
        body.extend_from_slice(&payload);
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        pages
    } else {
        0
    };
    let mut frames = 0u32;
    let mut left = new_size;
    while left > 0 {
        let out_len = left.min(per_frame);
        let len = usize::from(input.u16() % 4096);
        let payload = input.bytes(len).to_vec();
        let raw_len = match compression {
            Compression::None => payload.len() as u32,
            Compression::Zstd | Compression::Lzma2 => u32::from(input.u16()),
        };
        let fh = FrameHeader {
            out_len: out_len as u32,
            comp_len: payload.len() as u32,
            raw_len,
            old_pos: u64::from(input.u16()) % 3001,
        };
        body.extend_from_slice(&fh.encode(&payload));
        body.extend_from_slice(&payload);
        frames += 1;
        left -= out_len;
    }
    let header = Header {
        // All versions: 2 numbers its sparse modes differently, 4 to 6
        // have the map.
        version,
        kind: Kind::Sequential,
        compression,
        block_size,
        window_log: 16,
        frame_count: frames,
        old_size: old.len() as u64,
        new_size,
        body_size: body.len() as u64,
        old_sha256: Sha256::digest(&old).into(),
        new_sha256: [0; 32],
        shift: 0,
        slot_size: 0,
        body_sha256: None,
        sparse_diffs: layout & 1 != 0,
        x86_branches: layout & 4 != 0,
        split_streams: compression == Compression::Lzma2 && layout & 8 != 0,
        record_columns: layout & 16 != 0,
        reference_pages,
    };
    let mut patch = header.encode();
    patch.extend_from_slice(&body);
    let split = usize::from(flags >> 5) * 97 + 1;
    let options = ApplyOptions { read_cache: 1024, ..ApplyOptions::default() };
    let mut applier = Applier::new(old.as_slice(), Vec::new(), options);
    for chunk in patch.chunks(split) {
        if applier.feed(chunk).is_err() {
            return;
        }
    }
    let _ = applier.finish();
    let (_, out) = applier.into_parts();
    assert!(out.len() as u64 <= new_size, "output beyond the declared size");
});
