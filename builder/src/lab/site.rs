//! The lab's site config and its TLS: a fresh CA and receiver certificate per run (rcgen,
//! ECDSA P-256, the receiver's certificate for its IP address), and a copy of the site config
//! whose `phone_home.ca_pem` is that CA, validated and signed with the image's site-signing key
//! exactly like `imrs-build site sign`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use imrs_config::image::SITE_PUBKEY_PATH;
use imrs_config::{keys, signed, site};

/// The receiver's TLS files and the CA that issued them.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA certificate (PEM), written into the site config.
    pub ca_pem: String,
    /// The receiver's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The receiver's private key.
    pub key: PathBuf,
}

/// Generates a CA and a server certificate for `ip` into `dir` (`ca.pem`, `receiver.pem`,
/// `receiver.key`).
pub fn make_tls(dir: &Path, ip: IpAddr) -> Result<Tls> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().context("cannot generate the lab CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("lab CA parameters")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::OrganizationName, "IMRS lab");
    ca.distinguished_name
        .push(DnType::CommonName, "IMRS lab phone-home CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).context("cannot sign the lab CA")?;
    let issuer = Issuer::new(ca, ca_key);
    let srv_key = KeyPair::generate().context("cannot generate the receiver key")?;
    let mut srv = CertificateParams::new(Vec::<String>::new()).context("receiver parameters")?;
    srv.subject_alt_names = vec![SanType::IpAddress(ip)];
    srv.distinguished_name
        .push(DnType::CommonName, format!("IMRS lab receiver {ip}"));
    srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let srv_cert = srv
        .signed_by(&srv_key, &issuer)
        .context("cannot sign the receiver certificate")?;
    let ca_pem = ca_cert.pem();
    let cert = dir.join("receiver.pem");
    let key = dir.join("receiver.key");
    let write = |p: &Path, data: &str| {
        std::fs::write(p, data).with_context(|| format!("{}: cannot write", p.display()))
    };
    write(&dir.join("ca.pem"), &ca_pem)?;
    write(&cert, &srv_cert.pem())?;
    write(&key, &srv_key.serialize_pem())?;
    Ok(Tls { ca_pem, cert, key })
}

/// Writes `out` (a copy of the site config `src` with `phone_home.ca_pem` = `ca_pem` and the
/// lab's operations key `ops` as `fleet.ops_public_keys`), checks it like `imrs-build site
/// check`, and signs it (`out.sig`) with `key`. Returns the parsed site.
pub fn write_signed_site(
    src: &Path,
    out: &Path,
    ca_pem: &str,
    ops: &VerifyingKey,
    key: &SigningKey,
) -> Result<site::Site> {
    let text =
        std::fs::read_to_string(src).with_context(|| format!("{}: cannot read", src.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not TOML", src.display()))?;
    let Some(ph) = table
        .get_mut("phone_home")
        .and_then(toml::Value::as_table_mut)
    else {
        bail!(
            "{}: no [phone_home] table; the lab needs it to receive the report",
            src.display()
        );
    };
    ph.insert("ca_pem".into(), toml::Value::String(ca_pem.to_string()));
    let fleet = table
        .entry("fleet")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(f) = fleet.as_table_mut() {
        f.insert(
            "ops_public_keys".into(),
            toml::Value::Array(vec![toml::Value::String(imrs_config::keys::public_pem(
                ops,
            ))]),
        );
    }
    let header = format!(
        "# Written by `imrs-build lab` from {} with this run's phone-home CA and operations key; \
         signed ({}).\n",
        src.display(),
        signed::sig_path_for(out).display()
    );
    let body = toml::to_string(&table).context("cannot write the lab site as TOML")?;
    let new = format!("{header}{body}");
    let parsed = site::parse(out, &new)?;
    if !parsed.lab {
        bail!(
            "{}: lab = false; the lab only boots lab site configs (lab = true)",
            src.display()
        );
    }
    std::fs::write(out, &new).with_context(|| format!("{}: cannot write", out.display()))?;
    signed::sign(out, key)?;
    Ok(parsed)
}

/// The site-signing public key baked into an image folder's initramfs.
pub fn image_site_pubkey(image: &Path) -> Result<VerifyingKey> {
    let initramfs = image.join(crate::image_dir::INITRAMFS);
    let entries = crate::verify::read_initramfs(&initramfs)?;
    let name = SITE_PUBKEY_PATH.trim_start_matches('/');
    let entry = entries
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| anyhow::anyhow!("{}: has no {SITE_PUBKEY_PATH}", initramfs.display()))?;
    let text = String::from_utf8_lossy(&entry.data);
    Ok(keys::parse_public(&text, Path::new(SITE_PUBKEY_PATH))?)
}

/// Fails unless `key` is the image's site-signing key (else the box would refuse the lab site).
pub fn check_key_matches(image: &Path, key: &SigningKey, key_path: &Path) -> Result<()> {
    let want = image_site_pubkey(image)?;
    let have = key.verifying_key();
    if want != have {
        bail!(
            "{}: key {} is not the site-signing key of {} (key {}); pass the key the image was \
             built with (`build --key`, or the secret half of its --site-pubkey)",
            key_path.display(),
            keys::key_id(&have),
            image.display(),
            keys::key_id(&want)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_site_gets_the_new_ca_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let tls = make_tls(dir.path(), "192.0.2.80".parse().unwrap()).unwrap();
        assert!(tls.ca_pem.contains("BEGIN CERTIFICATE"));
        let key = keys::generate().unwrap();
        let src = crate::workspace::this_checkout().join("images/sites/lab.toml");
        let out = dir.path().join("site.toml");
        let ops = keys::generate().unwrap().verifying_key();
        let s = write_signed_site(&src, &out, &tls.ca_pem, &ops, &key).unwrap();
        assert_eq!(s.phone_home.ca_pem, tls.ca_pem);
        assert_eq!(s.fleet.ops_keys(), vec![ops]);
        let verified = signed::load(&out, &key.verifying_key()).unwrap();
        assert_eq!(verified.phone_home.ca_pem, tls.ca_pem);
        assert_eq!(verified.site_id, "lab-01");
    }

    #[test]
    fn non_lab_sites_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate().unwrap();
        let src = crate::workspace::this_checkout().join("images/sites/example.toml");
        let tls = make_tls(dir.path(), "192.0.2.80".parse().unwrap()).unwrap();
        let ops = key.verifying_key();
        let e = write_signed_site(&src, &dir.path().join("s.toml"), &tls.ca_pem, &ops, &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lab = false"), "{e}");
    }
}
