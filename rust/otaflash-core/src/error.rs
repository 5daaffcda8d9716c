//! The one error type of the core. Each variant carries enough context to
//! tell a user what went wrong and where; the Python binding maps each to a
//! class in `otaflash.errors` in one place.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operation on a named file or device failed.
    #[error("cannot {action} {}: {}", path.display(), describe_io(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("unknown hash algorithm {0:?}; choose from md5, sha1, sha256, crc32")]
    UnknownAlgorithm(String),

    /// Bytes did not match what they were expected to be.
    #[error("{subject}: {what} mismatch, expected {expected}, got {actual}")]
    Verify {
        subject: String,
        what: String,
        expected: String,
        actual: String,
    },

    #[error("{0}")]
    InvalidArgument(String),

    /// A patch whose bytes are damaged: truncated, bit-flipped, inconsistent.
    #[error("the patch is corrupt: {0}")]
    PatchCorrupt(String),

    /// Not a patch format otaflash reads (what it looks like instead).
    #[error("not a patch otaflash can apply: {0}")]
    PatchForeign(String),

    /// A well-formed patch this build or this target cannot apply.
    #[error("cannot apply this patch: {0}")]
    PatchUnsupported(String),

    /// The old image is not the one the patch was made from.
    #[error("{}", wrong_old_message(*expected_size, expected_sha256, *actual_size, actual_sha256.as_deref()))]
    PatchWrongOld {
        expected_size: u64,
        expected_sha256: String,
        actual_size: u64,
        /// None when the size alone already rules it out.
        actual_sha256: Option<String>,
    },

    #[error("cancelled")]
    Cancelled,

    /// A flash operation failed on the device; `source` carries the errno.
    #[error(
        "cannot {operation} {device} at {offset:#x} (+{len:#x}): {}",
        describe_errno(source)
    )]
    Flash {
        device: String,
        operation: &'static str,
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },

    /// An image, offset or layout does not fit the flash geometry.
    #[error("{0}")]
    Geometry(String),

    /// A target is not what it must be (not an MTD device, a malformed URI).
    #[error("{target}: {reason}")]
    Target { target: String, reason: String },

    /// The simulated flash lost power (fault injection); nothing after this
    /// operation reached the device.
    #[error("{device}: power cut at flash operation {operation}")]
    PowerCut { device: String, operation: u64 },

    /// The on-flash update state forbids or does not explain the request.
    #[error("{0}")]
    Slot(String),

    /// A DFU firmware file (suffix, DfuSe structure) is corrupt or foreign.
    #[error("{file}: {reason}")]
    DfuFile { file: String, reason: String },
    /// The link to a device (serial port, socket) failed or was closed.
    #[error("{port}: {message}")]
    Link {
        port: String,
        message: String,
        #[source]
        source: Option<io::Error>,
    },

    /// The device did not answer in time.
    #[error("{port}: no reply from the device for {:.1} s while {waiting_for}", timeout.as_secs_f64())]
    Timeout {
        port: String,
        waiting_for: String,
        timeout: Duration,
    },

    /// The peer sent something the protocol does not allow.
    #[error("{port}: {protocol} protocol error: {message}")]
    Protocol {
        port: String,
        protocol: &'static str,
        message: String,
    },

    /// The device answered but refused or failed an operation.
    #[error("{port}: the device {message}")]
    Device {
        port: String,
        kind: DeviceErrorKind,
        message: String,
    },

    /// A caller-supplied callback (progress, I/O adapter) failed; the caller's
    /// own error is carried through unchanged so it can be re-raised as is.
    #[error("{0}")]
    Callback(Box<dyn std::error::Error + Send + Sync>),
}

/// What a device-side failure was about; the binding maps each to the
/// matching `otaflash.errors` class (flash, patch, verify, bad request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceErrorKind {
    /// The device's storage refused or failed (erase, write, read, NACK).
    Flash,
    /// The device rejected a patch (corrupt, foreign, wrong old image).
    Patch,
    /// What the device wrote does not read back as expected.
    Verify,
    /// The device does not support what was asked (a capability, a size).
    Unsupported,
    /// Anything else the device reported.
    Other,
}

impl Error {
    pub fn link(port: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Link {
            port: port.into(),
            message: message.into(),
            source: None,
        }
    }

    pub fn link_io(port: impl Into<String>, action: &str, source: io::Error) -> Self {
        Self::Link {
            port: port.into(),
            message: format!("cannot {action}: {}", describe_io(&source)),
            source: Some(source),
        }
    }

    pub fn io(action: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// The OS error number behind an I/O failure, when there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } | Self::Flash { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Like [`describe_io`], plus the errno's symbolic name (`EIO`), which is
/// what MTD documentation and kernel logs use.
fn describe_errno(error: &io::Error) -> String {
    let text = describe_io(error);
    match error.raw_os_error() {
        Some(code) => format!("{text} ({:?})", nix::errno::Errno::from_raw(code)),
        None => text,
    }
}

fn wrong_old_message(
    expected_size: u64,
    expected: &str,
    actual_size: u64,
    actual: Option<&str>,
) -> String {
    match actual {
        Some(actual) => {
            format!("this patch needs old image sha256 {expected}, the device has {actual}")
        }
        None => format!(
            "this patch needs an old image of {expected_size} bytes (sha256 {expected}), \
             the device has {actual_size} bytes"
        ),
    }
}

/// `io::Error`'s Display ends in "(os error 2)" and starts with a capital;
/// messages here read as one lower-case clause.
fn describe_io(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::IsADirectory => "it is a directory".into(),
        io::ErrorKind::UnexpectedEof => "it ended early".into(),
        _ => {
            let text = error.to_string();
            let text = match text.rfind(" (os error ") {
                Some(cut) => text.get(..cut).unwrap_or(&text).to_string(),
                None => text,
            };
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_messages_name_the_file_and_the_cause() {
        let e = Error::io("open", "/x/fw.bin", io::Error::from_raw_os_error(2));
        assert_eq!(
            e.to_string(),
            "cannot open /x/fw.bin: no such file or directory"
        );
        assert_eq!(e.raw_os_error(), Some(2));
        let e = Error::io("read", "/dev/mtd0", io::Error::from_raw_os_error(5));
        assert_eq!(e.to_string(), "cannot read /dev/mtd0: input/output error");
        let e = Error::Flash {
            device: "/dev/mtd3".into(),
            operation: "erase",
            offset: 0x20000,
            len: 0x20000,
            source: io::Error::from_raw_os_error(5),
        };
        assert_eq!(
            e.to_string(),
            "cannot erase /dev/mtd3 at 0x20000 (+0x20000): input/output error (EIO)"
        );
        assert_eq!(e.raw_os_error(), Some(5));
    }
}
