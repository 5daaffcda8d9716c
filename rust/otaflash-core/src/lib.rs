//! The byte engine of otaflash: everything that touches firmware bytes lives
//! here, with no Python in sight, so `cargo test` runs without an interpreter
//! and the same code can back an on-device agent.
//!
//! ```
//! use otaflash_core::hash::{HashAlgorithm, Hasher};
//!
//! let mut hasher = Hasher::new(HashAlgorithm::Sha256);
//! hasher.update(b"abc");
//! assert_eq!(
//!     hasher.finalize().to_hex(),
//!     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
//! );
//! ```

pub mod dfu;
pub mod error;
pub mod flash;
pub mod hash;
pub mod inplace;
pub mod io;
pub mod patch;
pub mod progress;
pub mod serial;

pub use error::{DeviceErrorKind, Error, Result};
