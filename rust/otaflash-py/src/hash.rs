//! hashlib-compatible hashers and the single-pass multi-digest `hash_file`.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use otaflash_core::hash::{self as core_hash, HashAlgorithm};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffer::ByteView;
use crate::errors::OtaResult;
use crate::progress::PyProgress;

/// hashlib releases the GIL from this size on; so do we.
const DETACH_THRESHOLD: usize = 2048;

/// Frozen with a Mutex inside: `update` runs detached, and a `&mut self`
/// borrow must never be held across that.
#[pyclass(module = "otaflash._core", frozen)]
#[derive(Debug)]
pub struct Hasher {
    algorithm: HashAlgorithm,
    state: Mutex<core_hash::Hasher>,
}

impl Hasher {
    fn lock(&self) -> MutexGuard<'_, core_hash::Hasher> {
        // Hashing cannot leave the state half-updated in a way that matters.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn absorb(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let view = ByteView::new(data)?;
        let bytes = view.as_bytes();
        if bytes.len() >= DETACH_THRESHOLD {
            py.detach(|| self.lock().update(bytes));
        } else {
            self.lock().update(bytes);
        }
        Ok(())
    }
}

#[pymethods]
impl Hasher {
    #[new]
    #[pyo3(signature = (name, data = None))]
    fn new(py: Python<'_>, name: &str, data: Option<&Bound<'_, PyAny>>) -> OtaResult<Self> {
        let algorithm: HashAlgorithm = name.parse()?;
        let hasher = Self {
            algorithm,
            state: Mutex::new(core_hash::Hasher::new(algorithm)),
        };
        if let Some(data) = data {
            hasher.absorb(py, data)?;
        }
        Ok(hasher)
    }

    fn update(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.absorb(py, data)
    }

    fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.lock().finalize().as_bytes())
    }

    fn hexdigest(&self) -> String {
        self.lock().finalize().to_hex()
    }

    fn copy(&self) -> Self {
        Self {
            algorithm: self.algorithm,
            state: Mutex::new(self.lock().clone()),
        }
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.algorithm.name()
    }

    #[getter]
    fn digest_size(&self) -> usize {
        self.algorithm.digest_size()
    }

    #[getter]
    fn block_size(&self) -> usize {
        self.algorithm.block_size()
    }

    fn __repr__(&self) -> String {
        format!("<{} otaflash.hashing.Hasher object>", self.algorithm)
    }
}

/// Returns `(size, [(name, hexdigest), ...])`; `otaflash.hashing.hash_file`
/// shapes it. See `PyProgress` for how `progress` is called and Ctrl-C handled.
#[pyfunction]
#[pyo3(signature = (path, algorithms, progress = None))]
pub fn hash_file(
    py: Python<'_>,
    path: PathBuf,
    algorithms: Vec<String>,
    progress: Option<Py<PyAny>>,
) -> OtaResult<(u64, Vec<(&'static str, String)>)> {
    let algorithms = algorithms
        .iter()
        .map(|name| name.parse::<HashAlgorithm>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut progress = PyProgress::new(progress);
    let result = py.detach(|| core_hash::hash_file(&path, &algorithms, &mut progress))?;
    let digests = result
        .digests
        .iter()
        .map(|d| (d.algorithm().name(), d.to_hex()))
        .collect::<Vec<_>>();
    Ok((result.size, digests))
}
