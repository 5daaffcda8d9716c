//! `otaflash._core`: the thin PyO3 layer over otaflash-core. It converts
//! arguments, releases the GIL around native work and maps errors; nothing
//! else. Users import from `otaflash.*`, never from here.

mod buffer;
mod delta;
mod dfu;
mod errors;
mod flash;
mod hash;
mod install;
mod link;
mod progress;
mod serial;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _core {
    use super::*;

    #[pymodule_export]
    use super::hash::{Hasher, hash_file};
    #[pymodule_export]
    use super::serial::{
        agent_target, serial_agent, serial_flash, stm32_emulate, stm32_emulated_chips, stm32_flash,
        stm32_info, ymodem_receive, ymodem_send,
    };

    #[pymodule_export]
    use super::delta::{Applier, apply_file, checkpoint_offsets, diff, patch_info};

    #[pymodule_export]
    use super::flash::FlashTarget;

    #[pymodule_export]
    use super::dfu::{
        FlashBlocks, dfu_add_suffix, dfu_crc, dfu_file_info, dfuse_erase_plan, dfuse_file_build,
        dfuse_file_parse, dfuse_layout,
    };
    #[pymodule_export]
    use super::install::{InstallSession, apply_patch_in_place, begin_install};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // PEP 440 spelling of Cargo's pre-release suffixes (0.2.0-alpha.1 -> 0.2.0a1).
        let version = env!("CARGO_PKG_VERSION")
            .replace("-alpha.", "a")
            .replace("-beta.", "b")
            .replace("-rc.", "rc");
        m.add("__version__", version)?;
        m.add("PATCH_HEADER_MAX", otaflash_core::patch::INFO_HEAD_MAX)
    }
}
