//! Flashing over serial links.
//!
//! - [`link`]: the byte pipe every protocol here is written against
//!   (a port's file descriptor, an in-memory pair; the binding adds pyserial);
//! - the otaflash protocol ([`frame`], [`message`], [`host`], [`agent`],
//!   [`slot`], [`ab_slot`], [`delta`]): windowed, compressed, resumable,
//!   verified by a read-back hash — specified in `docs/serial-protocol.md`;
//! - [`ymodem`]: YMODEM sender and receiver (lrzsz, U-Boot `loady`);
//! - [`stm32`]: the STM32 system bootloader (ST AN3155), host and emulator.

pub mod ab_slot;
pub mod agent;
pub mod delta;
pub mod frame;
pub mod host;
pub mod link;
pub mod message;
pub mod slot;
pub mod stm32;
pub mod ymodem;

use crate::Result;
use crate::hash::{HashAlgorithm, Hasher};
use crate::io::ReadAt;

/// SHA-256 of the first `len` bytes of `source`, read in 64 KiB pieces.
pub(crate) fn sha256_of(source: &mut dyn ReadAt, len: u64) -> Result<[u8; 32]> {
    let mut hasher = Hasher::new(HashAlgorithm::Sha256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        let chunk = buf.get_mut(..n).unwrap_or_default();
        source.read_exact_at(offset, chunk)?;
        hasher.update(chunk);
        offset += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(hasher.finalize().as_bytes());
    Ok(out)
}

/// Lower-case hex of a digest, for messages and reports.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
