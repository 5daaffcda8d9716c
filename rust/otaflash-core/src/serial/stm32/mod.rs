//! The STM32 system-memory bootloader over USART (ST AN3155): a host that
//! flashes through it, and an emulator of it for tests and dry runs.
//!
//! Every command is `cmd, !cmd` answered by ACK (0x79) or NACK (0x1F);
//! addresses are 4 bytes big-endian plus their XOR; lengths go as N-1. The
//! chip table gives flash, RAM and page layouts by product ID (the figures
//! of ST AN2606, as stm32flash's `dev_table.c` also lists them).

pub mod emulator;
pub mod host;

pub const ACK: u8 = 0x79;
pub const NACK: u8 = 0x1F;
pub const BUSY: u8 = 0x76;
pub const INIT: u8 = 0x7F;

pub mod cmd {
    pub const GET: u8 = 0x00;
    pub const GET_VERSION: u8 = 0x01;
    pub const GET_ID: u8 = 0x02;
    pub const READ_MEMORY: u8 = 0x11;
    pub const GO: u8 = 0x21;
    pub const WRITE_MEMORY: u8 = 0x31;
    pub const WRITE_MEMORY_NS: u8 = 0x32;
    pub const ERASE: u8 = 0x43;
    pub const EXTENDED_ERASE: u8 = 0x44;
    pub const EXTENDED_ERASE_NS: u8 = 0x45;
    pub const WRITE_PROTECT: u8 = 0x63;
    pub const WRITE_UNPROTECT: u8 = 0x73;
    pub const READOUT_PROTECT: u8 = 0x82;
    pub const READOUT_UNPROTECT: u8 = 0x92;
}

/// How a chip's flash is divided for erasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    /// Pages of one size.
    Uniform(u32),
    /// Sectors of these sizes in order; the last size repeats to the end.
    Sectors(&'static [u32]),
}

const K: u32 = 1024;
const F2F4: &[u32] = &[16 * K, 16 * K, 16 * K, 16 * K, 64 * K, 128 * K];
#[rustfmt::skip]
const F4_DUAL_BANK: &[u32] = &[
    16 * K, 16 * K, 16 * K, 16 * K, 64 * K, 128 * K, 128 * K, 128 * K,
    16 * K, 16 * K, 16 * K, 16 * K, 64 * K, 128 * K,
];
const F7: &[u32] = &[32 * K, 32 * K, 32 * K, 32 * K, 128 * K, 256 * K];

/// Where a family keeps its flash-size register and unique ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoRegisters {
    pub flash_size: u32,
    pub unique_id: u32,
}

const F0_INFO: InfoRegisters = InfoRegisters {
    flash_size: 0x1FFF_F7CC,
    unique_id: 0x1FFF_F7AC,
};
const F1_INFO: InfoRegisters = InfoRegisters {
    flash_size: 0x1FFF_F7E0,
    unique_id: 0x1FFF_F7E8,
};
const F3_INFO: InfoRegisters = F0_INFO;
const F4_INFO: InfoRegisters = InfoRegisters {
    flash_size: 0x1FFF_7A22,
    unique_id: 0x1FFF_7A10,
};
const F7_INFO: InfoRegisters = InfoRegisters {
    flash_size: 0x1FF0_F442,
    unique_id: 0x1FF0_F420,
};
const L0_INFO: InfoRegisters = InfoRegisters {
    flash_size: 0x1FF8_007C,
    unique_id: 0x1FF8_0050,
};
const L1_INFO: InfoRegisters = InfoRegisters {
    flash_size: 0x1FF8_004C,
    unique_id: 0x1FF8_0050,
};
const L4_INFO: InfoRegisters = InfoRegisters {
    flash_size: 0x1FFF_75E0,
    unique_id: 0x1FFF_7590,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chip {
    pub pid: u16,
    pub name: &'static str,
    /// RAM the bootloader leaves to the host (start, end exclusive).
    pub ram: (u32, u32),
    pub flash: (u32, u32),
    pub pages: Pages,
    pub option_bytes: (u32, u32),
    pub system_memory: (u32, u32),
    pub info: InfoRegisters,
}

macro_rules! chip {
    ($pid:expr, $name:expr, $ram:expr, $flash:expr, $pages:expr, $opt:expr, $sys:expr, $info:expr) => {
        Chip {
            pid: $pid,
            name: $name,
            ram: $ram,
            flash: $flash,
            pages: $pages,
            option_bytes: $opt,
            system_memory: $sys,
            info: $info,
        }
    };
}

use Pages::{Sectors, Uniform};

/// Product IDs the host knows the layout of (ST AN2606).
#[rustfmt::skip]
pub const CHIPS: &[Chip] = &[
    chip!(0x440, "STM32F030x8/F05xxx", (0x2000_0800, 0x2000_2000), (0x0800_0000, 0x0801_0000), Uniform(K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_EC00, 0x1FFF_F800), F0_INFO),
    chip!(0x442, "STM32F030xC/F09xxx", (0x2000_1800, 0x2000_8000), (0x0800_0000, 0x0804_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_D800, 0x1FFF_F800), F0_INFO),
    chip!(0x444, "STM32F03xx4/6", (0x2000_0800, 0x2000_1000), (0x0800_0000, 0x0800_8000), Uniform(K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_EC00, 0x1FFF_F800), F0_INFO),
    chip!(0x445, "STM32F04xxx/F070x6", (0x2000_1800, 0x2000_1800), (0x0800_0000, 0x0800_8000), Uniform(K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_C400, 0x1FFF_F800), F0_INFO),
    chip!(0x448, "STM32F070xB/F071xx/F072xx", (0x2000_1800, 0x2000_4000), (0x0800_0000, 0x0802_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_C800, 0x1FFF_F800), F0_INFO),
    chip!(0x412, "STM32F10xxx Low-density", (0x2000_0200, 0x2000_2800), (0x0800_0000, 0x0800_8000), Uniform(K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_F000, 0x1FFF_F800), F1_INFO),
    chip!(0x410, "STM32F10xxx Medium-density", (0x2000_0200, 0x2000_5000), (0x0800_0000, 0x0802_0000), Uniform(K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_F000, 0x1FFF_F800), F1_INFO),
    chip!(0x414, "STM32F10xxx High-density", (0x2000_0200, 0x2001_0000), (0x0800_0000, 0x0808_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_F000, 0x1FFF_F800), F1_INFO),
    chip!(0x420, "STM32F10xxx Medium-density VL", (0x2000_0200, 0x2000_2000), (0x0800_0000, 0x0802_0000), Uniform(K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_F000, 0x1FFF_F800), F1_INFO),
    chip!(0x428, "STM32F10xxx High-density VL", (0x2000_0200, 0x2000_8000), (0x0800_0000, 0x0808_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_F000, 0x1FFF_F800), F1_INFO),
    chip!(0x418, "STM32F105xx/F107xx", (0x2000_1000, 0x2001_0000), (0x0800_0000, 0x0804_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_B000, 0x1FFF_F800), F1_INFO),
    chip!(0x430, "STM32F10xxx XL-density", (0x2000_0800, 0x2001_8000), (0x0800_0000, 0x0810_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_E000, 0x1FFF_F800), F1_INFO),
    chip!(0x411, "STM32F2xxxx", (0x2000_2000, 0x2002_0000), (0x0800_0000, 0x0810_0000), Sectors(F2F4), (0x1FFF_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x432, "STM32F373xx/F378xx", (0x2000_1400, 0x2000_8000), (0x0800_0000, 0x0804_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_D800, 0x1FFF_F800), F3_INFO),
    chip!(0x422, "STM32F302xB(C)/F303xB(C)/F358xx", (0x2000_1400, 0x2000_A000), (0x0800_0000, 0x0804_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_D800, 0x1FFF_F800), F3_INFO),
    chip!(0x439, "STM32F301xx/F302x4(6/8)/F318xx", (0x2000_1800, 0x2000_4000), (0x0800_0000, 0x0801_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_D800, 0x1FFF_F800), F3_INFO),
    chip!(0x438, "STM32F303x4(6/8)/F334xx/F328xx", (0x2000_1800, 0x2000_3000), (0x0800_0000, 0x0801_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_D800, 0x1FFF_F800), F3_INFO),
    chip!(0x446, "STM32F302xD(E)/F303xD(E)/F398xx", (0x2000_1800, 0x2001_0000), (0x0800_0000, 0x0808_0000), Uniform(2 * K), (0x1FFF_F800, 0x1FFF_F810), (0x1FFF_D800, 0x1FFF_F800), F3_INFO),
    chip!(0x413, "STM32F40xxx/41xxx", (0x2000_3000, 0x2002_0000), (0x0800_0000, 0x0810_0000), Sectors(F2F4), (0x1FFF_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x419, "STM32F42xxx/43xxx", (0x2000_3000, 0x2003_0000), (0x0800_0000, 0x0820_0000), Sectors(F4_DUAL_BANK), (0x1FFE_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x423, "STM32F401xB(C)", (0x2000_3000, 0x2001_0000), (0x0800_0000, 0x0804_0000), Sectors(F2F4), (0x1FFF_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x433, "STM32F401xD(E)", (0x2000_3000, 0x2001_8000), (0x0800_0000, 0x0808_0000), Sectors(F2F4), (0x1FFF_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x458, "STM32F410xx", (0x2000_3000, 0x2000_8000), (0x0800_0000, 0x0802_0000), Sectors(F2F4), (0x1FFF_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x431, "STM32F411xx", (0x2000_3000, 0x2002_0000), (0x0800_0000, 0x0808_0000), Sectors(F2F4), (0x1FFF_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x441, "STM32F412xx", (0x2000_3000, 0x2002_0000), (0x0800_0000, 0x0810_0000), Sectors(F2F4), (0x1FFF_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x463, "STM32F413xx", (0x2000_3000, 0x2005_0000), (0x0800_0000, 0x0818_0000), Sectors(F2F4), (0x1FFF_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x421, "STM32F446xx", (0x2000_3000, 0x2002_0000), (0x0800_0000, 0x0808_0000), Sectors(F2F4), (0x1FFF_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x434, "STM32F469xx", (0x2000_3000, 0x2006_0000), (0x0800_0000, 0x0820_0000), Sectors(F4_DUAL_BANK), (0x1FFE_C000, 0x1FFF_C010), (0x1FFF_0000, 0x1FFF_7800), F4_INFO),
    chip!(0x452, "STM32F72xxx/73xxx", (0x2000_4000, 0x2004_0000), (0x0800_0000, 0x0808_0000), Sectors(F7), (0x1FFF_0000, 0x1FFF_0020), (0x1FF0_0000, 0x1FF0_EDC0), F7_INFO),
    chip!(0x449, "STM32F74xxx/75xxx", (0x2000_4000, 0x2005_0000), (0x0800_0000, 0x0810_0000), Sectors(F7), (0x1FFF_0000, 0x1FFF_0020), (0x1FF0_0000, 0x1FF0_EDC0), F7_INFO),
    chip!(0x451, "STM32F76xxx/77xxx", (0x2000_4000, 0x2008_0000), (0x0800_0000, 0x0820_0000), Sectors(F7), (0x1FFF_0000, 0x1FFF_0020), (0x1FF0_0000, 0x1FF0_EDC0), F7_INFO),
    chip!(0x425, "STM32L031xx/041xx", (0x2000_1000, 0x2000_2000), (0x0800_0000, 0x0800_8000), Uniform(128), (0x1FF8_0000, 0x1FF8_0020), (0x1FF0_0000, 0x1FF0_1000), L0_INFO),
    chip!(0x417, "STM32L05xxx/06xxx", (0x2000_1000, 0x2000_2000), (0x0800_0000, 0x0801_0000), Uniform(128), (0x1FF8_0000, 0x1FF8_0020), (0x1FF0_0000, 0x1FF0_1000), L0_INFO),
    chip!(0x447, "STM32L07xxx/08xxx", (0x2000_2000, 0x2000_5000), (0x0800_0000, 0x0803_0000), Uniform(128), (0x1FF8_0000, 0x1FF8_0020), (0x1FF0_0000, 0x1FF0_2000), L0_INFO),
    chip!(0x416, "STM32L1xxx6(8/B)", (0x2000_0800, 0x2000_4000), (0x0800_0000, 0x0802_0000), Uniform(256), (0x1FF8_0000, 0x1FF8_0020), (0x1FF0_0000, 0x1FF0_1000), L1_INFO),
    chip!(0x429, "STM32L1xxx6(8/B)A", (0x2000_1000, 0x2000_8000), (0x0800_0000, 0x0802_0000), Uniform(256), (0x1FF8_0000, 0x1FF8_0020), (0x1FF0_0000, 0x1FF0_1000), L1_INFO),
    chip!(0x427, "STM32L1xxxC", (0x2000_1000, 0x2000_8000), (0x0800_0000, 0x0804_0000), Uniform(256), (0x1FF8_0000, 0x1FF8_0020), (0x1FF0_0000, 0x1FF0_2000), L1_INFO),
    chip!(0x436, "STM32L1xxxD", (0x2000_1000, 0x2000_C000), (0x0800_0000, 0x0806_0000), Uniform(256), (0x1FF8_0000, 0x1FF8_00A0), (0x1FF0_0000, 0x1FF0_2000), L1_INFO),
    chip!(0x437, "STM32L1xxxE", (0x2000_1000, 0x2001_4000), (0x0800_0000, 0x0808_0000), Uniform(256), (0x1FF8_0000, 0x1FF8_00A0), (0x1FF0_0000, 0x1FF0_2000), L1_INFO),
    chip!(0x415, "STM32L47xxx/48xxx", (0x2000_3100, 0x2001_8000), (0x0800_0000, 0x0810_0000), Uniform(2 * K), (0x1FFF_7800, 0x1FFF_F810), (0x1FFF_0000, 0x1FFF_7000), L4_INFO),
    chip!(0x435, "STM32L43xxx/44xxx", (0x2000_3100, 0x2000_C000), (0x0800_0000, 0x0804_0000), Uniform(2 * K), (0x1FFF_7800, 0x1FFF_F810), (0x1FFF_0000, 0x1FFF_7000), L4_INFO),
    chip!(0x461, "STM32L496xx/4A6xx", (0x2000_3100, 0x2004_0000), (0x0800_0000, 0x0810_0000), Uniform(2 * K), (0x1FFF_7800, 0x1FFF_F810), (0x1FFF_0000, 0x1FFF_7000), L4_INFO),
];

impl Chip {
    pub fn by_pid(pid: u16) -> Option<&'static Chip> {
        CHIPS.iter().find(|chip| chip.pid == pid)
    }

    pub fn flash_size(&self) -> u32 {
        self.flash.1 - self.flash.0
    }

    /// Each page's (start address, size), in order, covering the flash.
    pub fn page_spans(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let (start, end) = self.flash;
        let mut address = start;
        let mut index = 0usize;
        std::iter::from_fn(move || {
            if address >= end {
                return None;
            }
            let size = match self.pages {
                Uniform(size) => size,
                Sectors(sizes) => sizes
                    .get(index)
                    .or(sizes.last())
                    .copied()
                    .unwrap_or(end - address),
            };
            let span = (address, size.min(end - address));
            address = address.saturating_add(size);
            index += 1;
            Some(span)
        })
    }

    /// The page numbers whose pages overlap `[address, address + len)`.
    pub fn pages_covering(&self, address: u32, len: u32) -> Vec<u16> {
        let end = address.saturating_add(len);
        self.page_spans()
            .enumerate()
            .filter(|(_, (start, size))| *start < end && start + size > address)
            .map(|(i, _)| i as u16)
            .collect()
    }

    pub fn page_span(&self, page: u16) -> Option<(u32, u32)> {
        self.page_spans().nth(usize::from(page))
    }
}

/// The 4 address bytes (big-endian) followed by their XOR.
pub fn address_bytes(address: u32) -> [u8; 5] {
    let [a, b, c, d] = address.to_be_bytes();
    [a, b, c, d, a ^ b ^ c ^ d]
}

pub fn xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_layouts_cover_the_flash_exactly() {
        for chip in CHIPS {
            let total: u64 = chip.page_spans().map(|(_, size)| u64::from(size)).sum();
            assert_eq!(total, u64::from(chip.flash_size()), "{}", chip.name);
        }
        let f4 = Chip::by_pid(0x413).unwrap();
        assert_eq!(f4.page_spans().count(), 12);
        assert_eq!(f4.pages_covering(0x0800_0000, 1), vec![0]);
        assert_eq!(
            f4.pages_covering(0x0800_0000, 0x1_0001),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(f4.page_span(5), Some((0x0802_0000, 128 * K)));
        let f1 = Chip::by_pid(0x410).unwrap();
        assert_eq!(f1.pages_covering(0x0800_0400, 0x800), vec![1, 2]);
        assert_eq!(address_bytes(0x0800_0000), [8, 0, 0, 0, 8]);
    }
}
