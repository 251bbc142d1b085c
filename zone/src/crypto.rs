//! The cryptography of DNSSEC and ZONEMD: zone keys prepared once, and digests.
//!
//! Owns turning DNSKEY RDATA into a verifying key (RSA per RFC 3110, ECDSA per RFC 6605,
//! Ed25519 per RFC 8080) and the digests that DS (RFC 4509, RFC 6605) and ZONEMD (RFC 8976)
//! records carry. Everything runs on aws-lc-rs.
//!
//! A key is parsed once per DNSKEY and then used for every signature it made: for RSA this keeps
//! the per-modulus Montgomery constants out of each of the thousands of verifications of a
//! root zone (about a quarter of the cost of a verification with a library that recomputes
//! them on every call, as `ring` does).

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};

/// DNSSEC algorithm numbers this crate verifies (IANA "DNS Security Algorithm Numbers").
mod alg {
    pub const RSASHA1: u8 = 5;
    pub const RSASHA1_NSEC3_SHA1: u8 = 7;
    pub const RSASHA256: u8 = 8;
    pub const RSASHA512: u8 = 10;
    pub const ECDSAP256SHA256: u8 = 13;
    pub const ECDSAP384SHA384: u8 = 14;
    pub const ED25519: u8 = 15;
}

/// Why a DNSKEY cannot be used to verify signatures.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The RDATA is shorter than its fixed fields.
    #[error("DNSKEY RDATA too short ({len} octets)")]
    Short {
        /// RDATA length.
        len: usize,
    },
    /// The algorithm is not one this crate verifies.
    #[error("DNSSEC algorithm {algorithm} is not supported")]
    Unsupported {
        /// Algorithm number.
        algorithm: u8,
    },
    /// An RSA modulus outside the sizes verified (1024 to 8192 bits).
    #[error(
        "RSA modulus of {bits} bits for DNSSEC algorithm {algorithm} (1024 to 8192 are verified)"
    )]
    RsaSize {
        /// Algorithm number.
        algorithm: u8,
        /// Modulus size in bits.
        bits: usize,
    },
    /// The public key field does not hold a valid key of its algorithm.
    #[error("malformed public key for DNSSEC algorithm {algorithm}")]
    Malformed {
        /// Algorithm number.
        algorithm: u8,
    },
}

/// A zone key ready to verify RRSIG signatures.
pub struct VerifyingKey {
    key: ParsedPublicKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey").finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Prepares the key of DNSKEY RDATA (flags, protocol, algorithm, public key).
    pub fn from_dnskey(rdata: &[u8]) -> Result<Self, KeyError> {
        if rdata.len() < 4 {
            return Err(KeyError::Short { len: rdata.len() });
        }
        let algorithm = rdata[3];
        let public = &rdata[4..];
        let malformed = || KeyError::Malformed { algorithm };
        let key = match algorithm {
            alg::RSASHA1 | alg::RSASHA1_NSEC3_SHA1 | alg::RSASHA256 | alg::RSASHA512 => {
                let params = match algorithm {
                    alg::RSASHA256 => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                    alg::RSASHA512 => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
                    _ => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
                };
                let (e, n) = rsa_exponent_and_modulus(public).ok_or_else(malformed)?;
                let bits = bit_length(n);
                if !(1024..=8192).contains(&bits) {
                    return Err(KeyError::RsaSize { algorithm, bits });
                }
                RsaPublicKeyComponents { n, e }
                    .to_parsed_public_key(params)
                    .map_err(|_| malformed())?
            }
            alg::ECDSAP256SHA256 | alg::ECDSAP384SHA384 => {
                let (params, len) = if algorithm == alg::ECDSAP256SHA256 {
                    (&signature::ECDSA_P256_SHA256_FIXED, 64)
                } else {
                    (&signature::ECDSA_P384_SHA384_FIXED, 96)
                };
                if public.len() != len {
                    return Err(malformed());
                }
                // RFC 6605: the key is x | y; the library takes the uncompressed point.
                let mut point = Vec::with_capacity(1 + len);
                point.push(0x04);
                point.extend_from_slice(public);
                ParsedPublicKey::new(params, point).map_err(|_| malformed())?
            }
            alg::ED25519 => {
                if public.len() != 32 {
                    return Err(malformed());
                }
                ParsedPublicKey::new(&signature::ED25519, public).map_err(|_| malformed())?
            }
            _ => return Err(KeyError::Unsupported { algorithm }),
        };
        Ok(VerifyingKey { key })
    }

    /// Whether `signature` (RRSIG's signature field) is this key's signature of `data`.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> bool {
        self.key.verify_sig(data, signature).is_ok()
    }
}

/// The exponent and modulus of an RSA key field (RFC 3110 section 2): a one-octet exponent
/// length, or zero and a two-octet length, then the exponent, then the modulus.
fn rsa_exponent_and_modulus(public: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = public.split_first()?;
    let (len, rest) = if first == 0 {
        let (len, rest) = rest.split_at_checked(2)?;
        (u16::from_be_bytes([len[0], len[1]]) as usize, rest)
    } else {
        (first as usize, rest)
    };
    let (e, n) = rest.split_at_checked(len)?;
    (!e.is_empty() && !n.is_empty()).then_some((e, n))
}

/// Bits in a big-endian unsigned integer.
fn bit_length(n: &[u8]) -> usize {
    match n.iter().position(|&b| b != 0) {
        Some(i) => (n.len() - i) * 8 - n[i].leading_zeros() as usize,
        None => 0,
    }
}

/// The hash functions DS and ZONEMD records name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1 (DS digest type 1).
    Sha1,
    /// SHA-256 (DS digest type 2).
    Sha256,
    /// SHA-384 (DS digest type 4, ZONEMD hash algorithm 1).
    Sha384,
    /// SHA-512 (ZONEMD hash algorithm 2).
    Sha512,
}

/// An incremental digest.
pub struct Hasher(digest::Context);

impl Hasher {
    /// Starts a digest.
    pub fn new(hash: Hash) -> Self {
        Hasher(digest::Context::new(match hash {
            Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha384 => &digest::SHA384,
            Hash::Sha512 => &digest::SHA512,
        }))
    }

    /// Adds data.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest.
    pub fn finish(self) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_key_field_layouts() {
        // One-octet exponent length.
        assert_eq!(
            rsa_exponent_and_modulus(&[3, 1, 0, 1, 0xc3, 0x01]),
            Some((&[1, 0, 1][..], &[0xc3, 0x01][..]))
        );
        // Zero, then a two-octet length.
        assert_eq!(
            rsa_exponent_and_modulus(&[0, 0, 3, 1, 0, 1, 0xc3]),
            Some((&[1, 0, 1][..], &[0xc3][..]))
        );
        // Truncated, or nothing left for the modulus.
        assert_eq!(rsa_exponent_and_modulus(&[3, 1, 0]), None);
        assert_eq!(rsa_exponent_and_modulus(&[3, 1, 0, 1]), None);
        assert_eq!(rsa_exponent_and_modulus(&[0, 0]), None);
        assert_eq!(rsa_exponent_and_modulus(&[]), None);
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(
            VerifyingKey::from_dnskey(&[1, 0, 3]).unwrap_err(),
            KeyError::Short { len: 3 }
        );
        assert_eq!(
            VerifyingKey::from_dnskey(&[1, 0, 3, 16, 1, 2]).unwrap_err(),
            KeyError::Unsupported { algorithm: 16 }
        );
        assert_eq!(
            VerifyingKey::from_dnskey(&[1, 0, 3, 13, 4, 5]).unwrap_err(),
            KeyError::Malformed { algorithm: 13 }
        );
        // An RSA modulus of 16 bits is refused when the key is prepared.
        assert_eq!(
            VerifyingKey::from_dnskey(&[1, 0, 3, 8, 3, 1, 0, 1, 0xc3, 0x01]).unwrap_err(),
            KeyError::RsaSize {
                algorithm: 8,
                bits: 16
            }
        );
        assert_eq!(bit_length(&[0, 0, 1]), 1);
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(bit_length(&[0, 0]), 0);
    }

    #[test]
    fn known_digests() {
        let mut h = Hasher::new(Hash::Sha384);
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(
            hex::encode(h.finish()),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed\
             8086072ba1e7cc2358baeca134c825a7"
        );
        let mut h = Hasher::new(Hash::Sha1);
        h.update(b"abc");
        assert_eq!(
            hex::encode(h.finish()),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
