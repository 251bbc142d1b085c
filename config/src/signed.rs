//! Signed site configs: `site.toml` plus `site.toml.sig` (hex Ed25519 signature over the exact
//! bytes), checked against the public key baked into the image. The init refuses anything else.

use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::keys::{self, KeyError};
use crate::site::{self, Site};

/// Why a signed site config was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignedSiteError {
    /// No signature file next to the config.
    #[error("{sig}: missing: the site config is not signed")]
    Unsigned {
        /// Expected signature path.
        sig: PathBuf,
    },
    /// The signature is malformed or does not verify.
    #[error("{path}: signature rejected")]
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
    /// Reading failed.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
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
    let text = std::str::from_utf8(text).map_err(|_| {
        SignedSiteError::Invalid(crate::ConfigError::Parse {
            path: path.to_path_buf(),
            message: "not UTF-8".into(),
        })
    })?;
    site::parse(path, text).map_err(SignedSiteError::Invalid)
}

/// Reads `path` and `path.sig` and verifies them with `key`.
pub fn load(path: &Path, key: &VerifyingKey) -> Result<Site, SignedSiteError> {
    let text = std::fs::read(path).map_err(|source| SignedSiteError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let sig = sig_path_for(path);
    let sig_text = match std::fs::read_to_string(&sig) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SignedSiteError::Unsigned { sig });
        }
        Err(source) => return Err(SignedSiteError::Read { path: sig, source }),
    };
    verify_text(path, &text, &sig_text, key)
}

/// Signs a site config file after validating it, writing `path.sig`. Returns the signature path.
pub fn sign(path: &Path, key: &SigningKey) -> Result<PathBuf, SignedSiteError> {
    let text = std::fs::read(path).map_err(|source| SignedSiteError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let s = std::str::from_utf8(&text).map_err(|_| {
        SignedSiteError::Invalid(crate::ConfigError::Parse {
            path: path.to_path_buf(),
            message: "not UTF-8".into(),
        })
    })?;
    site::parse(path, s).map_err(SignedSiteError::Invalid)?;
    let sig = sig_path_for(path);
    crate::fsutil::write_atomic(&sig, keys::sign_hex(key, &text).as_bytes(), 0o644).map_err(
        |source| SignedSiteError::Read {
            path: sig.clone(),
            source,
        },
    )?;
    Ok(sig)
}
