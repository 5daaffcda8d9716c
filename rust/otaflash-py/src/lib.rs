//! `otaflash._core`: the thin PyO3 layer over otaflash-core. It converts
//! arguments, releases the GIL around native work and maps errors; nothing
//! else. Users import from `otaflash.*`, never from here.

mod buffer;
mod errors;
mod hash;
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

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // PEP 440 spelling of Cargo's pre-release suffixes (0.2.0-alpha.1 -> 0.2.0a1).
        let version = env!("CARGO_PKG_VERSION")
            .replace("-alpha.", "a")
            .replace("-beta.", "b")
            .replace("-rc.", "rc");
        m.add("__version__", version)
    }
}
