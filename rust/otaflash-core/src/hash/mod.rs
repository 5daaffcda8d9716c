//! Streaming hashes: MD5 and SHA-256 (update manifests, Alibaba `sign`),
//! SHA-1 (hawkBit artifacts) and CRC-32 (frames, DFU suffixes).
//!
//! SHA-1/SHA-256 come from RustCrypto (SHA-NI at run time) and CRC-32 from
//! crc32fast (PCLMULQDQ); MD5 is [`md5::Md5`], see there for why.

pub mod background;
mod file;
pub mod md5;

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

pub use file::{FileDigests, hash_file, hash_reader};

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    Md5,
    Sha1,
    Sha256,
    Crc32,
}

impl HashAlgorithm {
    pub const ALL: [Self; 4] = [Self::Md5, Self::Sha1, Self::Sha256, Self::Crc32];

    /// The hashlib-style name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Crc32 => "crc32",
        }
    }

    pub fn digest_size(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Crc32 => 4,
        }
    }

    /// Internal block size in bytes, as hashlib reports it; CRC-32 has none.
    pub fn block_size(self) -> usize {
        match self {
            Self::Crc32 => 1,
            _ => 64,
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgorithm {
    type Err = Error;

    /// Accepts hashlib names in any case, and the spellings found in update
    /// manifests (`SHA-256`, `Md5`, `CRC-32`).
    fn from_str(name: &str) -> Result<Self> {
        let folded: String = name
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        Self::ALL
            .into_iter()
            .find(|alg| alg.name() == folded)
            .ok_or_else(|| Error::UnknownAlgorithm(name.to_string()))
    }
}

/// A finished digest; CRC-32 is stored big-endian so its hex matches
/// `format(zlib.crc32(data), "08x")`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: HashAlgorithm,
    bytes: [u8; 32],
}

impl Digest {
    fn new(algorithm: HashAlgorithm, value: &[u8]) -> Self {
        let mut bytes = [0u8; 32];
        for (dst, src) in bytes.iter_mut().zip(value) {
            *dst = *src;
        }
        Self { algorithm, bytes }
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    pub fn as_bytes(&self) -> &[u8] {
        let (digest, _) = self.bytes.split_at(self.algorithm.digest_size());
        digest
    }

    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(2 * self.as_bytes().len());
        for byte in self.as_bytes() {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 15)]));
        }
        out
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.to_hex())
    }
}

/// A running hash of one algorithm. `finalize` borrows, so a digest can be
/// taken at any point and hashing can go on (hashlib semantics).
#[derive(Clone)]
pub enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Crc32(crc32fast::Hasher),
}

impl Hasher {
    pub fn new(algorithm: HashAlgorithm) -> Self {
        match algorithm {
            HashAlgorithm::Md5 => Self::Md5(md5::Md5::new()),
            HashAlgorithm::Sha1 => Self::Sha1(sha1::Sha1::new()),
            HashAlgorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
            HashAlgorithm::Crc32 => Self::Crc32(crc32fast::Hasher::new()),
        }
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        match self {
            Self::Md5(_) => HashAlgorithm::Md5,
            Self::Sha1(_) => HashAlgorithm::Sha1,
            Self::Sha256(_) => HashAlgorithm::Sha256,
            Self::Crc32(_) => HashAlgorithm::Crc32,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Md5(h) => h.update(data),
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Crc32(h) => h.update(data),
        }
    }

    pub fn finalize(&self) -> Digest {
        let algorithm = self.algorithm();
        match self {
            Self::Md5(h) => Digest::new(algorithm, &h.finalize()),
            Self::Sha1(h) => Digest::new(algorithm, &h.clone().finalize()),
            Self::Sha256(h) => Digest::new(algorithm, &h.clone().finalize()),
            Self::Crc32(h) => Digest::new(algorithm, &h.clone().finalize().to_be_bytes()),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algorithm())
    }
}

/// One-shot digest of a byte slice.
pub fn digest(algorithm: HashAlgorithm, data: &[u8]) -> Digest {
    let mut hasher = Hasher::new(algorithm);
    hasher.update(data);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_accept_manifest_spellings() {
        for alg in HashAlgorithm::ALL {
            assert_eq!(alg.name().parse::<HashAlgorithm>().unwrap(), alg);
        }
        assert_eq!(
            "SHA-256".parse::<HashAlgorithm>().unwrap(),
            HashAlgorithm::Sha256
        );
        assert_eq!("Md5".parse::<HashAlgorithm>().unwrap(), HashAlgorithm::Md5);
        assert_eq!(
            "CRC-32".parse::<HashAlgorithm>().unwrap(),
            HashAlgorithm::Crc32
        );
        let err = "sha512".parse::<HashAlgorithm>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown hash algorithm \"sha512\"; choose from md5, sha1, sha256, crc32"
        );
    }

    #[test]
    fn crc32_digest_is_big_endian_like_zlib_hex() {
        assert_eq!(
            digest(HashAlgorithm::Crc32, b"123456789").to_hex(),
            "cbf43926"
        );
    }

    #[test]
    fn finalize_does_not_consume() {
        let mut h = Hasher::new(HashAlgorithm::Sha1);
        h.update(b"ab");
        let first = h.finalize();
        assert_eq!(first, h.finalize());
        h.update(b"c");
        assert_eq!(
            h.finalize().to_hex(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
