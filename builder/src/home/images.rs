//! Image payloads for remote updates: `fleet command DEVICE update IMAGE-DIR` publishes an
//! image's slot files (kernel, initramfs, manifest and its signature) in the folder `images/`
//! beside the receiver's database, named by the sha256 of the manifest; the receiver serves
//! them to the box on its TLS port as `GET /v1/images/<manifest-sha256>/<file>`.
//!
//! Nothing here is trusted by the box: it checks the manifest against the sha256 in the
//! signed command, the manifest's signature against its image key, and every file against
//! the manifest. The folder is content-addressed, so publishing the same image twice (or for
//! two devices) reuses one copy; a copy is published whole (written under a temporary name,
//! synced, renamed) or not at all.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use imrs_disk::SlotPayload;
use imrs_disk::payload::{INITRAMFS, KERNEL, MANIFEST, SIGNATURE};

/// The URL path under which images are served.
pub const URL_PREFIX: &str = "/v1/images/";

/// The slot files an image consists of, as served.
pub const FILES: [&str; 4] = [MANIFEST, SIGNATURE, KERNEL, INITRAMFS];

/// The image folder of the receiver whose database is `db`.
pub fn dir_for(db: &Path) -> PathBuf {
    db.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("images")
}

/// The URL path of a published image (what the `update` command carries).
pub fn url_path(manifest_sha256: &str) -> String {
    format!("{URL_PREFIX}{manifest_sha256}")
}

/// The file a request path names: `/v1/images/<64 lowercase hex>/<one of FILES>`, as a path
/// under `images`; `None` for anything else (no other path can be reached).
pub fn resolve(images: &Path, url_path: &str) -> Option<PathBuf> {
    let rest = url_path.strip_prefix(URL_PREFIX)?;
    let (sha, name) = rest.split_once('/')?;
    let hex = sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hex && FILES.contains(&name)).then(|| images.join(sha).join(name))
}

/// Publishes the image folder `src` (its slot files must match its manifest; its signature is
/// the box's to check, and the caller's with `--pubkey`) under `images`. Returns the payload
/// and whether a copy was already there.
pub fn publish(images: &Path, src: &Path) -> Result<(SlotPayload, bool)> {
    let payload = SlotPayload::from_folder(src)
        .with_context(|| format!("{}: not a complete image folder", src.display()))?;
    let sha = payload.manifest_sha256();
    let dest = images.join(&sha);
    if dest.is_dir() {
        let there = SlotPayload::from_folder(&dest).with_context(|| {
            format!(
                "{}: a published image is damaged; remove the folder and publish again",
                dest.display()
            )
        })?;
        if there.files() != payload.files() {
            bail!(
                "{}: holds other files under this manifest's sha256; remove it and publish again",
                dest.display()
            );
        }
        return Ok((payload, true));
    }
    std::fs::create_dir_all(images)
        .with_context(|| format!("{}: cannot create", images.display()))?;
    let temp = images.join(format!(".{sha}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir(&temp).with_context(|| format!("{}: cannot create", temp.display()))?;
    let written = (|| -> Result<()> {
        for (name, data) in payload.files() {
            imrs_config::fsutil::write_atomic(&temp.join(name), data, 0o644)
                .with_context(|| format!("{}: cannot write", temp.join(name).display()))?;
        }
        std::fs::rename(&temp, &dest)
            .with_context(|| format!("{}: cannot rename into place", dest.display()))?;
        imrs_config::fsutil::sync_dir(images)
            .with_context(|| format!("{}: cannot sync", images.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    written.map(|()| (payload, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_four_files_of_a_named_image_resolve() {
        let d = Path::new("images");
        let sha = "ab".repeat(32);
        assert_eq!(
            resolve(d, &format!("/v1/images/{sha}/vmlinuz")),
            Some(d.join(&sha).join("vmlinuz"))
        );
        for bad in [
            format!("/v1/images/{sha}/../../etc/passwd"),
            format!("/v1/images/{sha}/"),
            format!("/v1/images/{sha}"),
            format!("/v1/images/{}/vmlinuz", "AB".repeat(32)),
            format!("/v1/images/{}/vmlinuz", "ab".repeat(31)),
            "/v1/images/../x/vmlinuz".to_string(),
            format!("/v1/reports/{sha}/vmlinuz"),
        ] {
            assert_eq!(resolve(d, &bad), None, "{bad}");
        }
        assert_eq!(
            dir_for(Path::new("home.sqlite")),
            Path::new("./images").to_path_buf()
        );
        assert_eq!(
            dir_for(Path::new("home/db")),
            Path::new("home/images").to_path_buf()
        );
    }
}
