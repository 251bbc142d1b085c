//! Ed25519 keys and detached signatures, shared by image manifests, site configs and reports.
//!
//! Secret keys are PKCS#8 v1 PEM (RFC 8410, the private key only; mode 0600), public keys SPKI
//! PEM, so `openssl pkey` (OpenSSL 3.0 included) reads both. PKCS#8 v2 keys (with the public key
//! inside, as some tools write them) are read too. A detached signature file holds the 64-byte
//! signature as lowercase hex and a newline. Key files are read within
//! [`crate::fsutil::limits::KEY`] bytes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::escape_path;
use crate::fsutil::{ReadError, limits, read_bounded_string};

/// A key or signature could not be made, read or checked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading a key or signature file failed (missing, too large, not a regular file).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The key file is empty (or holds only white space).
    #[error("empty key file {}", escape_path(.path))]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Writing a key failed.
    #[error("{}: cannot write", escape_path(.path))]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an Ed25519 key in the expected PEM form.
    #[error("{}: not an Ed25519 {what} in PEM form: {detail}", escape_path(.path))]
    Format {
        /// The file.
        path: PathBuf,
        /// `secret key` or `public key`.
        what: &'static str,
        /// Decoder's message.
        detail: String,
    },
    /// The signature file is not 64 bytes of hex.
    #[error("{}: not an Ed25519 signature (expected 128 hex digits)", escape_path(.path))]
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
    #[error("{}: already exists; refusing to overwrite a key", escape_path(.path))]
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

/// Writes `key` to `path` (PKCS#8 v1 PEM, mode 0600) and its public half to `path.pub` (SPKI
/// PEM), durably. Refuses to overwrite an existing file (or a dangling link).
pub fn write_keypair(key: &SigningKey, path: &Path) -> Result<PathBuf, KeyError> {
    let pub_path = pub_path_for(path);
    for p in [path, pub_path.as_path()] {
        if p.symlink_metadata().is_ok() {
            return Err(KeyError::Exists {
                path: p.to_path_buf(),
            });
        }
    }
    // The private key alone (version 1): OpenSSL 3.0 cannot read the version 2 form with the
    // public key attached, which is what `SigningKey::to_pkcs8_pem` writes.
    let v1 = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let secret = v1
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
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    crate::fsutil::sync_dir(dir).map_err(|source| KeyError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
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

/// Reads a key file's text, refusing an empty one by name.
fn read_key_text(path: &Path, what: &'static str) -> Result<String, KeyError> {
    let text = read_bounded_string(path, limits::KEY, what)?;
    if text.trim().is_empty() {
        return Err(KeyError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// Reads a PKCS#8 PEM secret key (version 1 or 2).
pub fn read_secret(path: &Path) -> Result<SigningKey, KeyError> {
    let text = read_key_text(path, "secret key")?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::Format {
        path: path.to_path_buf(),
        what: "secret key",
        detail: e.to_string(),
    })
}

/// Parses an SPKI PEM public key from text (`origin` names it in errors).
pub fn parse_public(text: &str, origin: &Path) -> Result<VerifyingKey, KeyError> {
    if text.trim().is_empty() {
        return Err(KeyError::Empty {
            path: origin.to_path_buf(),
        });
    }
    VerifyingKey::from_public_key_pem(text).map_err(|e| KeyError::Format {
        path: origin.to_path_buf(),
        what: "public key",
        detail: e.to_string(),
    })
}

/// Reads an SPKI PEM public key.
pub fn read_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = read_key_text(path, "public key")?;
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
            Err(KeyError::Read(_))
        ));
    }

    #[test]
    fn empty_and_oversized_key_files_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("site.pub");
        for text in ["", "\n  \n"] {
            std::fs::write(&p, text).unwrap();
            let want = format!("empty key file {}", p.display());
            assert_eq!(read_public(&p).unwrap_err().to_string(), want);
            assert_eq!(read_secret(&p).unwrap_err().to_string(), want);
        }
        std::fs::write(&p, "x".repeat(1 << 20)).unwrap();
        let e = read_public(&p).unwrap_err().to_string();
        assert!(e.contains("larger than the limit of 16384 bytes"), "{e}");
        let e = read_public(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn written_keys_are_pkcs8_v1_and_v2_keys_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = generate().unwrap();
        write_keypair(&key, &path).unwrap();
        let pem = std::fs::read_to_string(&path).unwrap();
        let der = pem_body(&pem);
        // RFC 8410 section 10.3: SEQUENCE { INTEGER 0, AlgorithmIdentifier { 1.3.101.112 },
        // OCTET STRING { OCTET STRING (32 bytes) } }, 48 bytes, nothing else.
        assert_eq!(der.len(), 48, "{pem}");
        assert_eq!(
            der[..16],
            [
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20
            ]
        );
        assert_eq!(der[16..], key.to_bytes());
        // A version 2 key (public key attached) is still read.
        let v2 = dir.path().join("v2");
        std::fs::write(
            &v2,
            key.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
        )
        .unwrap();
        assert_eq!(read_secret(&v2).unwrap().to_bytes(), key.to_bytes());
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    /// Whether to run a test needing a tool: run it if present; without it, fail under
    /// `CI=true` and skip (saying so) otherwise.
    fn have(tool: &str) -> bool {
        let found = std::process::Command::new(tool)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "prerequisite missing under CI=true: {tool}"
            );
            eprintln!("SKIP: {tool} is not installed");
        }
        found
    }

    #[test]
    fn openssl_reads_both_halves() {
        if !have("openssl") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = generate().unwrap();
        let pubp = write_keypair(&key, &path).unwrap();
        let openssl = |args: &[&str], file: &Path| {
            let o = std::process::Command::new("openssl")
                .args(args)
                .arg(file)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "openssl {args:?} {}: {}",
                file.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        openssl(&["pkey", "-noout", "-in"], &path);
        // The public key OpenSSL derives from the secret is the one in KEY.pub.
        let derived = openssl(&["pkey", "-pubout", "-in"], &path);
        assert_eq!(derived, std::fs::read_to_string(&pubp).unwrap());
        openssl(&["pkey", "-pubin", "-noout", "-in"], &pubp);
    }
}
