//! The error both binaries report for a config file they cannot use (the loading itself, which
//! does I/O, stays in each binary's `config` module).

use std::path::PathBuf;

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for the config struct.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// Values that parse but make no sense; every problem is listed.
    #[error("invalid config: {}", .0.join("; "))]
    Invalid(Vec<String>),
}
