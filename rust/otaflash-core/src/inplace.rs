//! The contract between an in-place (single-slot) update and the flash that
//! holds it. The delta engine's in-place kind drives it; the flash layer's
//! single-slot layout implements it over a real or simulated device.
//!
//! An in-place update is a numbered sequence of steps, each replacing one
//! aligned block of the slot. The patch is ordered so that a step never
//! reads bytes that it or an earlier step has overwritten; so after a power
//! cut, re-running from `completed_steps()` produces the identical image.

use crate::Result;
use crate::io::ReadAt;

pub trait InPlaceTarget: ReadAt {
    /// Steps replace whole blocks of this many bytes (the erase block), at
    /// offsets that are multiples of it.
    fn block_size(&self) -> u64;

    /// Durably replaces the block at `offset` with `data` (at most
    /// `block_size` bytes; a shorter block is the image's tail): erase,
    /// program, read back and verify. Must be safe to repeat after a cut.
    fn replace_block(&mut self, offset: u64, data: &[u8]) -> Result<()>;

    /// How many steps of the update identified by `update_id` (the patch id:
    /// SHA-256 of the patch header, which commits to the old, new and body
    /// digests) are durably complete; 0 if it has not started.
    fn completed_steps(&mut self, update_id: &[u8; 32]) -> Result<u64>;

    /// Durably records that steps `0..count` of `update_id` are complete.
    fn record_steps(&mut self, update_id: &[u8; 32], count: u64) -> Result<()>;
}
