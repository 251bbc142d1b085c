//! The lab's site config and its TLS: a fresh CA and receiver certificate per run (rcgen,
//! ECDSA P-256, the receiver's certificate for its IP address; with NTS servers in the site,
//! also their certificate for their names), and a copy of the site config whose
//! `phone_home.ca_pem` (and `ntp.nts_ca_pem`) is that CA, validated and signed with the image's
//! site-signing key exactly like `imrs-build site sign`. The `nts` scenario's site is the lab
//! site with its `[ntp]` replaced by one NTS server ([`nts_site`]).

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
    /// The NTS server's certificate and key, when names were given.
    pub nts: Option<(PathBuf, PathBuf)>,
}

/// The `nts` scenario's NTS server: its name (in its certificate and the site) and address.
pub const NTS_NAME: &str = "nts.lab.test";
/// The `nts` scenario's NTS server address (on the lab's tap).
pub const NTS_ADDR: &str = "192.0.2.123";

/// Generates a CA and a server certificate for `ip` into `dir` (`ca.pem`, `receiver.pem`,
/// `receiver.key`) and, when `nts_names` is not empty, a certificate for those names
/// (`nts.pem`, `nts.key`).
pub fn make_tls(dir: &Path, ip: IpAddr, nts_names: &[String]) -> Result<Tls> {
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
    let nts = if nts_names.is_empty() {
        None
    } else {
        let nts_key = KeyPair::generate().context("cannot generate the NTS server key")?;
        let mut p = CertificateParams::new(nts_names.to_vec())
            .with_context(|| format!("NTS server names {nts_names:?}"))?;
        p.distinguished_name
            .push(DnType::CommonName, format!("IMRS lab NTS {}", nts_names[0]));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let nts_cert = p
            .signed_by(&nts_key, &issuer)
            .context("cannot sign the NTS server certificate")?;
        let (c, k) = (dir.join("nts.pem"), dir.join("nts.key"));
        write(&c, &nts_cert.pem())?;
        write(&k, &nts_key.serialize_pem())?;
        Some((c, k))
    };
    Ok(Tls {
        ca_pem,
        cert,
        key,
        nts,
    })
}

/// Writes `out`: the site config `src` with its `[ntp]` replaced by the `nts` scenario's NTS
/// server ([`NTS_NAME`] at [`NTS_ADDR`]) and `ca_pem` as the CA its certificate chains to.
pub fn nts_site(src: &Path, out: &Path, ca_pem: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(src).with_context(|| format!("{}: cannot read", src.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not TOML", src.display()))?;
    let mut server = toml::Table::new();
    server.insert("name".into(), NTS_NAME.into());
    server.insert("address".into(), NTS_ADDR.into());
    let mut ntp = toml::Table::new();
    ntp.insert(
        "nts".into(),
        toml::Value::Array(vec![toml::Value::Table(server)]),
    );
    ntp.insert("nts_ca_pem".into(), ca_pem.into());
    table.insert("ntp".into(), toml::Value::Table(ntp));
    let header = format!(
        "# Written by `imrs-build lab` from {} for the nts scenario: its time from the lab's NTS \
         server.\n",
        src.display()
    );
    let body = toml::to_string(&table).context("cannot write the NTS site as TOML")?;
    std::fs::write(out, format!("{header}{body}"))
        .with_context(|| format!("{}: cannot write", out.display()))
}

/// Writes `out` (a copy of the site config `src` with `phone_home.ca_pem` = `ca_pem` (and
/// `ntp.nts_ca_pem`, with NTS servers) and the
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
    // NTS servers are the lab's too: their certificate comes from this run's CA.
    if let Some(ntp) = table.get_mut("ntp").and_then(toml::Value::as_table_mut)
        && ntp
            .get("nts")
            .and_then(toml::Value::as_array)
            .is_some_and(|a| !a.is_empty())
    {
        ntp.insert("nts_ca_pem".into(), toml::Value::String(ca_pem.to_string()));
    }
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
        let tls = make_tls(dir.path(), "192.0.2.80".parse().unwrap(), &[]).unwrap();
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

    /// The `nts` scenario's site: one NTS server, this run's CA as its trust, signed; the
    /// plan puts the server on the tap; the certificate names it.
    #[test]
    fn the_nts_site_trusts_this_runs_ca_for_its_one_server() {
        let dir = tempfile::tempdir().unwrap();
        let tls = make_tls(
            dir.path(),
            "192.0.2.80".parse().unwrap(),
            &[NTS_NAME.to_string()],
        )
        .unwrap();
        let (cert, key_file) = tls.nts.clone().expect("an NTS certificate");
        assert!(
            std::fs::read_to_string(&cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert!(
            std::fs::read_to_string(&key_file)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        let src = crate::workspace::this_checkout().join("images/sites/lab.toml");
        let derived = dir.path().join("nts-source.toml");
        nts_site(&src, &derived, &tls.ca_pem).unwrap();
        let key = keys::generate().unwrap();
        let ops = keys::generate().unwrap().verifying_key();
        let out = dir.path().join("site.toml");
        let s = write_signed_site(&derived, &out, &tls.ca_pem, &ops, &key).unwrap();
        assert_eq!(s.ntp.nts.len(), 1);
        assert_eq!(s.ntp.nts[0].name, NTS_NAME);
        assert_eq!(s.ntp.nts[0].address.to_string(), NTS_ADDR);
        assert_eq!(s.ntp.nts_ca_pem, tls.ca_pem);
        assert!(s.ntp.servers.is_empty() && !s.ntp.trust_rtc);
        let plan = super::super::plan::Plan::from_site(&s).unwrap();
        assert_eq!(
            plan.nts,
            [(NTS_NAME.to_string(), "192.0.2.123:4460".parse().unwrap())]
        );
        assert!(
            plan.tap_addresses()
                .iter()
                .any(|a| a.to_string() == "192.0.2.123/24")
        );
        // Without names, no NTS certificate.
        assert!(
            make_tls(dir.path(), "192.0.2.80".parse().unwrap(), &[])
                .unwrap()
                .nts
                .is_none()
        );
    }

    #[test]
    fn non_lab_sites_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate().unwrap();
        let src = crate::workspace::this_checkout().join("images/sites/example.toml");
        let tls = make_tls(dir.path(), "192.0.2.80".parse().unwrap(), &[]).unwrap();
        let ops = key.verifying_key();
        let e = write_signed_site(&src, &dir.path().join("s.toml"), &tls.ca_pem, &ops, &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lab = false"), "{e}");
    }
}
