//! Published vectors (tests/vectors/hashes.tsv, shared with the Python suite),
//! fed whole and in awkward chunk sizes.

#![allow(clippy::unwrap_used)]

use otaflash_core::hash::{HashAlgorithm, Hasher, digest, hash_reader};
use otaflash_core::progress::NoProgress;

struct Vector {
    algorithm: HashAlgorithm,
    message: Vec<u8>,
    expected: String,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vectors/hashes.tsv"
    );
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "bad vector line {line:?}");
            Vector {
                algorithm: fields[0].parse().unwrap(),
                message: fields[2].repeat(fields[1].parse().unwrap()).into_bytes(),
                expected: fields[3].to_string(),
            }
        })
        .collect()
}

#[test]
fn one_shot() {
    let vectors = vectors();
    assert!(vectors.len() >= 15);
    for v in vectors {
        assert_eq!(
            digest(v.algorithm, &v.message).to_hex(),
            v.expected,
            "{}",
            v.algorithm
        );
    }
}

#[test]
fn chunked() {
    for v in vectors() {
        for chunk in [1, 3, 63, 64, 65, 4096] {
            let mut h = Hasher::new(v.algorithm);
            for piece in v.message.chunks(chunk) {
                h.update(piece);
            }
            assert_eq!(
                h.finalize().to_hex(),
                v.expected,
                "{} in {chunk}-byte chunks",
                v.algorithm
            );
        }
    }
}

#[test]
fn streamed_all_at_once() {
    for v in vectors() {
        let got = hash_reader(&v.message[..], &HashAlgorithm::ALL, &mut NoProgress).unwrap();
        assert_eq!(got.size, v.message.len() as u64);
        assert_eq!(got.get(v.algorithm).unwrap().to_hex(), v.expected);
    }
}
