//! Signed site configs: `site.toml` plus `site.toml.sig` (hex Ed25519 signature over the exact
//! bytes), checked against the public key baked into the image. The init refuses anything else.
//!
//! Both files are read within their limits ([`limits::SITE`], [`limits::SIGNATURE`]); the
//! signature is checked before the text is parsed. Signing validates the config first (the
//! same [`site::validate`] the init runs), so nothing is signed that the appliance would refuse,
//! and a signed config always names its device and sequence (`device`, `sequence`).

use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::escape_path;
use crate::fsutil::{ReadError, limits, read_bounded, read_bounded_string};
use crate::keys::{self, KeyError};
use crate::site::{self, Site};

/// Why a signed site config was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignedSiteError {
    /// No signature file next to the config.
    #[error("{}: missing: the site config is not signed", escape_path(.sig))]
    Unsigned {
        /// Expected signature path.
        sig: PathBuf,
    },
    /// The signature is malformed or does not verify.
    #[error("{}: signature rejected", escape_path(.path))]
    Signature {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: KeyError,
    },
    /// The signed text is not a valid site config.
    #[error("signed but invalid")]
    Invalid(#[source] crate::ConfigError),
    /// Reading the config or its signature failed (or one is too large or not a regular file).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the signature failed.
    #[error("{}: cannot write", escape_path(.path))]
    Write {
        /// The signature file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `site.toml` -> `site.toml.sig`.
pub fn sig_path_for(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// Verifies the signature over `text` first, then parses and validates it.
pub fn verify_text(
    path: &Path,
    text: &[u8],
    sig_text: &str,
    key: &VerifyingKey,
) -> Result<Site, SignedSiteError> {
    let sig = keys::parse_signature(sig_text, &sig_path_for(path)).map_err(|source| {
        SignedSiteError::Signature {
            path: path.to_path_buf(),
            source,
        }
    })?;
    keys::verify(key, text, &sig).map_err(|source| SignedSiteError::Signature {
        path: path.to_path_buf(),
        source,
    })?;
    let text = utf8(path, text)?;
    site::parse(path, text).map_err(SignedSiteError::Invalid)
}

fn utf8<'a>(path: &Path, text: &'a [u8]) -> Result<&'a str, SignedSiteError> {
    std::str::from_utf8(text).map_err(|e| {
        SignedSiteError::Read(ReadError::NotUtf8 {
            path: path.to_path_buf(),
            what: "site config",
            offset: e.valid_up_to(),
        })
    })
}

/// Reads `path` and `path.sig` within their limits. `Ok(None)`: there is no `path`.
pub fn read_pair(path: &Path) -> Result<Option<(Vec<u8>, String)>, SignedSiteError> {
    let text = match read_bounded(path, limits::SITE, "site config") {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let sig = sig_path_for(path);
    let sig_text = match read_bounded_string(&sig, limits::SIGNATURE, "site signature") {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Err(SignedSiteError::Unsigned { sig }),
        Err(e) => return Err(e.into()),
    };
    Ok(Some((text, sig_text)))
}

/// Reads `path` and `path.sig` and verifies them with `key`; `Ok(None)` when there is no
/// `path` (a signature without its config is ignored).
pub fn load_if_present(path: &Path, key: &VerifyingKey) -> Result<Option<Site>, SignedSiteError> {
    match read_pair(path)? {
        Some((text, sig)) => verify_text(path, &text, &sig, key).map(Some),
        None => Ok(None),
    }
}

/// Reads `path` and `path.sig` and verifies them with `key`.
pub fn load(path: &Path, key: &VerifyingKey) -> Result<Site, SignedSiteError> {
    match read_pair(path)? {
        Some((text, sig)) => verify_text(path, &text, &sig, key),
        None => Err(SignedSiteError::Read(ReadError::Io {
            path: path.to_path_buf(),
            what: "site config",
            source: std::io::ErrorKind::NotFound.into(),
        })),
    }
}

/// Signs a site config file after validating it, writing `path.sig`. Returns the signature path.
pub fn sign(path: &Path, key: &SigningKey) -> Result<PathBuf, SignedSiteError> {
    let text = read_bounded(path, limits::SITE, "site config")?;
    site::parse(path, utf8(path, &text)?).map_err(SignedSiteError::Invalid)?;
    let sig = sig_path_for(path);
    crate::fsutil::write_atomic(&sig, keys::sign_hex(key, &text).as_bytes(), 0o644).map_err(
        |source| SignedSiteError::Write {
            path: sig.clone(),
            source,
        },
    )?;
    Ok(sig)
}
