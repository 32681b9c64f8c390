//! Secrets (tokens, passwords, HMAC keys, NATS seeds and credentials): read once at load time from a file or an
//! environment variable (or, for references, once at start from Parameter Store: `super::resolve`), then held
//! in a [`Secret`] that never prints its bytes.

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use serde::{Serialize, Serializer};

/// What every printed form of a [`Secret`] shows.
pub const REDACTED: &str = "<redacted>";

/// Largest secret file read (NATS credentials files are the largest, a few KiB).
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A secret value. `Debug`, `Display` and `Serialize` print `<redacted>`; only [`Secret::expose`] gives the bytes.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into().into_boxed_slice())
    }

    /// The secret's bytes, for the one place that hands them to a client library.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, for client libraries that take a `&str` (NATS token, password, seed, credentials).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// A secret read from a file, and a warning when the file is readable by group or others.
pub fn read_file(path: &Path) -> Result<(Secret, Option<String>), String> {
    // Checked before opening: opening a FIFO would block until something writes to it.
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read secret file `{}`: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("secret file `{}` is not a regular file", path.display()));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read secret file `{}`: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read secret file `{}`: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!("secret file `{}` is larger than {MAX_SECRET_BYTES} bytes", path.display()));
    }
    trim_newline(&mut bytes);
    if bytes.is_empty() {
        return Err(format!("secret file `{}` is empty", path.display()));
    }
    let mode = metadata.permissions().mode() & 0o777;
    let warning = (mode & 0o077 != 0).then(|| {
        format!("secret file `{}` is readable by group or others (mode {mode:03o}); chmod 600 it", path.display())
    });
    Ok((Secret::new(bytes), warning))
}

/// A secret read from the environment variable `name` (looked up in `env`).
pub fn read_env(name: &str, env: &[(String, String)]) -> Result<Secret, String> {
    match env.iter().rev().find(|(key, _)| key == name) {
        None => Err(format!("environment variable `{name}` is not set")),
        Some((_, value)) => {
            let mut bytes = value.as_bytes().to_vec();
            trim_newline(&mut bytes);
            if bytes.is_empty() {
                Err(format!("environment variable `{name}` is empty"))
            } else {
                Ok(Secret::new(bytes))
            }
        }
    }
}

/// Drops one trailing line ending (`\n` or `\r\n`), as `echo` and editors leave one.
pub(super) fn trim_newline(bytes: &mut Vec<u8>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

/// Whether `name` can be an environment variable name (the `*_env` fields hold names, never values).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 255
}
