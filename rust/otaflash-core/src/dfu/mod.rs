//! USB DFU 1.1 and ST DfuSe: the byte formats a DFU host needs, with no USB
//! in sight (the transfers are pyusb's, in `otaflash.usb`).
//!
//! - [`suffix`]: the 16-byte DFU suffix (VID/PID/bcdDevice/bcdDFU and a
//!   CRC-32 *without* the final XOR), and the vendor prefixes dfu-util knows;
//! - [`dfuse`]: DfuSe `.dfu` files (targets per alt setting, elements per
//!   address), read and written;
//! - [`layout`]: the DfuSe memory layout an alt setting names
//!   (`@Internal Flash /0x08000000/64*002Kg`), the erase plan for an image
//!   and the check that it fits, before anything is written.

pub mod dfuse;
pub mod layout;
pub mod suffix;

pub use dfuse::{DfuseElement, DfuseFile, DfuseTarget};
pub use layout::{ErasePlan, MemoryLayout, Segment};
pub use suffix::{DfuFile, Prefix, Suffix, dfu_crc};
