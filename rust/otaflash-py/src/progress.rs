//! Core progress events to a Python callable, with Ctrl-C checks.
//!
//! Native loops run detached; every event re-attaches briefly to run the
//! interpreter's signal handlers, so Ctrl-C raises KeyboardInterrupt inside
//! the loop, which stops it. The callback itself is called as
//! `callback(operation, done, total)` at most every 100 ms per operation, and
//! always for the final event of an operation (`done == total`).

use std::time::{Duration, Instant};

use otaflash_core::progress::{Operation, Progress, ProgressEvent};
use pyo3::prelude::*;

const INTERVAL: Duration = Duration::from_millis(100);

pub(crate) struct PyProgress {
    callback: Option<Py<PyAny>>,
    last: Option<(Operation, Instant)>,
}

impl PyProgress {
    pub(crate) fn new(callback: Option<Py<PyAny>>) -> Self {
        Self {
            callback,
            last: None,
        }
    }

    fn due(&self, event: &ProgressEvent) -> bool {
        match self.last {
            None => true,
            Some((operation, at)) => {
                operation != event.operation
                    || at.elapsed() >= INTERVAL
                    || event.total == Some(event.done)
            }
        }
    }
}

impl Progress for PyProgress {
    fn report(&mut self, event: ProgressEvent) -> otaflash_core::Result<()> {
        Python::attach(|py| {
            py.check_signals()?;
            if self.callback.is_some() && self.due(&event) {
                self.last = Some((event.operation, Instant::now()));
                if let Some(callback) = &self.callback {
                    callback.call1(py, (event.operation.name(), event.done, event.total))?;
                }
            }
            Ok::<(), PyErr>(())
        })
        .map_err(|e| otaflash_core::Error::Callback(Box::new(e)))
    }
}
