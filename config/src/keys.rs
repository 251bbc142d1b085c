//! Ed25519 keys and detached signatures, shared by image manifests, site configs and reports.
//!
//! Secret keys are PKCS#8 PEM (mode 0600), public keys SPKI PEM, so `openssl pkey` reads both.
//! A detached signature file holds the 64-byte signature as lowercase hex and a newline.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// A key or signature could not be made, read or checked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading a key or signature file failed.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing a key failed.
    #[error("{path}: cannot write")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an Ed25519 key in the expected PEM form.
    #[error("{path}: not an Ed25519 {what} in PEM form: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// `secret key` or `public key`.
        what: &'static str,
        /// Decoder's message.
        detail: String,
    },
    /// The signature file is not 64 bytes of hex.
    #[error("{path}: not an Ed25519 signature (expected 128 hex digits)")]
    SignatureFormat {
        /// The file.
        path: PathBuf,
    },
    /// The signature does not match the data and key.
    #[error("signature does not verify with public key {key_id}")]
    BadSignature {
        /// Short fingerprint of the key used.
        key_id: String,
    },
    /// The system random source failed.
    #[error("cannot get random bytes from the kernel: {0}")]
    Random(String),
    /// The key already exists and we refuse to overwrite it.
    #[error("{path}: already exists; refusing to overwrite a key")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

/// Generates a new signing key from the kernel's random source.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` to `path` (PKCS#8 PEM, mode 0600) and its public half to `path.pub`.
/// Refuses to overwrite an existing file.
pub fn write_keypair(key: &SigningKey, path: &Path) -> Result<PathBuf, KeyError> {
    let pub_path = pub_path_for(path);
    for p in [path, pub_path.as_path()] {
        if p.exists() {
            return Err(KeyError::Exists {
                path: p.to_path_buf(),
            });
        }
    }
    let secret = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| KeyError::Format {
            path: path.to_path_buf(),
            what: "secret key",
            detail: e.to_string(),
        })?;
    write_new(path, secret.as_bytes(), 0o600)?;
    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| KeyError::Format {
            path: pub_path.clone(),
            what: "public key",
            detail: e.to_string(),
        })?;
    write_new(&pub_path, public.as_bytes(), 0o644)?;
    Ok(pub_path)
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

/// `KEY` -> `KEY.pub`.
pub fn pub_path_for(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Reads a PKCS#8 PEM secret key.
pub fn read_secret(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::Format {
        path: path.to_path_buf(),
        what: "secret key",
        detail: e.to_string(),
    })
}

/// Parses an SPKI PEM public key from text (`origin` names it in errors).
pub fn parse_public(text: &str, origin: &Path) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(text).map_err(|e| KeyError::Format {
        path: origin.to_path_buf(),
        what: "public key",
        detail: e.to_string(),
    })
}

/// Reads an SPKI PEM public key.
pub fn read_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_public(&text, path)
}

/// The public key as SPKI PEM text.
pub fn public_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(Default::default())
        .unwrap_or_else(|_| String::new())
}

/// A short, stable fingerprint of a public key: the first 16 hex digits of its sha256.
pub fn key_id(key: &VerifyingKey) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(key.as_bytes());
    hex::encode(&d[..8])
}

/// Signs `data`, returning the signature as hex text with a trailing newline.
pub fn sign_hex(key: &SigningKey, data: &[u8]) -> String {
    format!("{}\n", hex::encode(key.sign(data).to_bytes()))
}

/// Parses a hex signature (surrounding whitespace allowed).
pub fn parse_signature(text: &str, origin: &Path) -> Result<Signature, KeyError> {
    let bytes = hex::decode(text.trim()).map_err(|_| KeyError::SignatureFormat {
        path: origin.to_path_buf(),
    })?;
    let arr: [u8; 64] = bytes.try_into().map_err(|_| KeyError::SignatureFormat {
        path: origin.to_path_buf(),
    })?;
    Ok(Signature::from_bytes(&arr))
}

/// Verifies `sig` over `data` with `key` (strict: rejects malleable signatures).
pub fn verify(key: &VerifyingKey, data: &[u8], sig: &Signature) -> Result<(), KeyError> {
    key.verify_strict(data, sig)
        .map_err(|_| KeyError::BadSignature {
            key_id: key_id(key),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = generate().unwrap();
        let pubp = write_keypair(&key, &path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sk = read_secret(&path).unwrap();
        let pk = read_public(&pubp).unwrap();
        let sig = sign_hex(&sk, b"hello");
        let sig = parse_signature(&sig, &path).unwrap();
        verify(&pk, b"hello", &sig).unwrap();
        assert!(verify(&pk, b"hellp", &sig).is_err());
        let other = generate().unwrap();
        assert!(verify(&other.verifying_key(), b"hello", &sig).is_err());
        assert!(matches!(
            write_keypair(&key, &path),
            Err(KeyError::Exists { .. })
        ));
    }

    #[test]
    fn garbage_key_and_signature() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad");
        std::fs::write(&p, "not a key").unwrap();
        assert!(matches!(read_secret(&p), Err(KeyError::Format { .. })));
        assert!(matches!(read_public(&p), Err(KeyError::Format { .. })));
        assert!(parse_signature("abcd", &p).is_err());
        assert!(matches!(
            read_secret(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
    }
}
