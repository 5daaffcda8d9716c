//! Frames on the wire: `COBS(body ‖ CRC-32(body)) 0x00`.
//!
//! COBS keeps 0x00 out of the encoded bytes, so a receiver that lost sync
//! (a dropped or corrupted byte) is back in step at the next 0x00, and the
//! CRC-32 (zlib's, little-endian on the wire) rejects anything damaged.
//! Overhead: one byte per 254 plus the delimiter and the 4-byte CRC.

use std::collections::VecDeque;

use crate::hash::{HashAlgorithm, Hasher};

pub const DELIMITER: u8 = 0;
const CRC_LEN: usize = 4;

/// CRC-32/ISO-HDLC (zlib's) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut hasher = Hasher::new(HashAlgorithm::Crc32);
    hasher.update(data);
    let digest = hasher.finalize();
    let mut be = [0u8; 4];
    be.copy_from_slice(digest.as_bytes());
    u32::from_be_bytes(be)
}

/// Appends the frame carrying `body` to `out`.
pub fn encode(body: &[u8], out: &mut Vec<u8>) {
    let mut raw = Vec::with_capacity(body.len() + CRC_LEN);
    raw.extend_from_slice(body);
    raw.extend_from_slice(&crc32(body).to_le_bytes());
    let start = out.len();
    out.resize(start + cobs::max_encoding_length(raw.len()), 0);
    // The buffer was sized by the crate's own bound, so this cannot fail;
    // fall back to an empty frame (which receivers drop) rather than panic.
    let written = cobs::try_encode(&raw, out.get_mut(start..).unwrap_or_default()).unwrap_or(0);
    out.truncate(start + written);
    out.push(DELIMITER);
}

/// Counts of what a [`FrameReader`] threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameStats {
    pub frames: u64,
    pub crc_errors: u64,
    pub framing_errors: u64,
}

/// Splits received bytes into frames and checks each one.
#[derive(Debug)]
pub struct FrameReader {
    pending: Vec<u8>,
    max_encoded: usize,
    overflowed: bool,
    pub stats: FrameStats,
}

impl FrameReader {
    /// Frames whose body is longer than `max_body` are dropped unread, so a
    /// stream of garbage never grows the buffer.
    pub fn new(max_body: usize) -> Self {
        let max_encoded = cobs::max_encoding_length(max_body + CRC_LEN);
        Self {
            pending: Vec::with_capacity(max_encoded),
            max_encoded,
            overflowed: false,
            stats: FrameStats::default(),
        }
    }

    /// Forgets a partly received frame (after a baud change or a resync).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.overflowed = false;
    }

    /// Feeds received bytes; every complete frame that checks out is pushed
    /// to `out` as its body (CRC removed).
    pub fn push(&mut self, data: &[u8], out: &mut VecDeque<Vec<u8>>) {
        for &byte in data {
            if byte != DELIMITER {
                if self.pending.len() < self.max_encoded {
                    self.pending.push(byte);
                } else {
                    self.overflowed = true;
                }
                continue;
            }
            if self.overflowed {
                self.stats.framing_errors += 1;
            } else if !self.pending.is_empty() {
                match cobs::decode_in_place(&mut self.pending) {
                    Ok(len) if len > CRC_LEN => {
                        let (body, crc) = self.pending.split_at(len - CRC_LEN);
                        let mut expected = [0u8; CRC_LEN];
                        expected.copy_from_slice(crc.get(..CRC_LEN).unwrap_or(&[0; 4]));
                        if crc32(body) == u32::from_le_bytes(expected) {
                            self.stats.frames += 1;
                            out.push_back(body.to_vec());
                        } else {
                            self.stats.crc_errors += 1;
                        }
                    }
                    _ => self.stats.framing_errors += 1,
                }
            }
            self.pending.clear();
            self.overflowed = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(reader: &mut FrameReader, wire: &[u8]) -> Vec<Vec<u8>> {
        let mut out = VecDeque::new();
        reader.push(wire, &mut out);
        out.into_iter().collect()
    }

    #[test]
    fn the_specifications_example_frame() {
        // docs/serial-protocol.md, section 1: HELLO from session 0x1234.
        let body = [0x01, 0x4f, 0x54, 0x41, 0x46, 0x01, 0x34, 0x12];
        let mut wire = Vec::new();
        encode(&body, &mut wire);
        assert_eq!(
            wire,
            [
                0x0d, 0x01, 0x4f, 0x54, 0x41, 0x46, 0x01, 0x34, 0x12, 0x16, 0x0e, 0x69, 0x1e, 0x00
            ]
        );
        let hello = crate::serial::message::Message::Hello { session: 0x1234 };
        assert_eq!(hello.encode(), body);
    }

    #[test]
    fn crc_is_zlibs() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn frames_round_trip_in_any_chunking() {
        let bodies: Vec<Vec<u8>> =
            vec![vec![1], vec![0; 300], (0..=255).collect(), vec![0xFF; 1100]];
        let mut wire = Vec::new();
        for body in &bodies {
            encode(body, &mut wire);
        }
        assert_eq!(wire.iter().filter(|&&b| b == 0).count(), bodies.len());
        for chunk in [1, 7, 255, wire.len()] {
            let mut reader = FrameReader::new(2048);
            let mut out = VecDeque::new();
            for piece in wire.chunks(chunk) {
                reader.push(piece, &mut out);
            }
            assert_eq!(out.into_iter().collect::<Vec<_>>(), bodies);
        }
    }

    #[test]
    fn damage_is_rejected_and_the_next_frame_still_decodes() {
        let mut wire = Vec::new();
        encode(b"first frame", &mut wire);
        let first_len = wire.len();
        encode(b"second frame", &mut wire);
        for i in 0..first_len - 1 {
            for bit in 0..8 {
                let mut damaged = wire.clone();
                damaged[i] ^= 1 << bit;
                let mut reader = FrameReader::new(64);
                let frames = frames_of(&mut reader, &damaged);
                // A flipped byte can become a delimiter and split the frame,
                // but nothing damaged may ever come out.
                assert!(!frames.iter().any(|f| f.as_slice() == b"first frame"));
                assert_eq!(frames.last().map(Vec::as_slice), Some(&b"second frame"[..]));
                assert!(frames.iter().all(|f| f.as_slice() == b"second frame"));
            }
        }
        // A dropped byte costs that frame only.
        let mut dropped = wire.clone();
        dropped.remove(3);
        let mut reader = FrameReader::new(64);
        assert_eq!(
            frames_of(&mut reader, &dropped),
            vec![b"second frame".to_vec()]
        );
        assert_eq!(reader.stats.frames, 1);
    }

    #[test]
    fn oversized_garbage_is_dropped_without_growing() {
        let mut reader = FrameReader::new(16);
        let mut wire = vec![0x55; 10_000];
        wire.push(0);
        encode(b"ok", &mut wire);
        assert_eq!(frames_of(&mut reader, &wire), vec![b"ok".to_vec()]);
        assert_eq!(reader.stats.framing_errors, 1);
        assert!(reader.pending.capacity() < 100);
    }
}
