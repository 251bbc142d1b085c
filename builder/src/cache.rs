//! The package cache: exactly the locked .deb files, each checked against its sha256 on every
//! use. Downloads go to a temporary file and are renamed into place only once size and sha256
//! match, so the cache never holds a half-written or wrong package under a valid name.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use imrs_config::lock::{Lock, LockedPackage};
use sha2::{Digest, Sha256};

use crate::apt::{self, AptError};
use crate::ui::Ui;

/// A cached package is missing, wrong, or could not be downloaded.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Filesystem error in the cache.
    #[error("{path}: cache I/O failed")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cached file's sha256 is not the locked one.
    #[error(
        "{package} {version}: {path} has sha256 {actual}, the lock says {expected}; delete it and \
         run `imrs-build fetch` again"
    )]
    Corrupt {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// File.
        path: PathBuf,
        /// Locked sha256.
        expected: String,
        /// Found sha256.
        actual: String,
    },
    /// `--offline` and the package is not in the cache.
    #[error("{package} {version}: not in the cache ({path}) and --offline forbids downloading")]
    Missing {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// Expected cache file.
        path: PathBuf,
    },
    /// The mirror or snapshot served something else than the lock says.
    #[error(
        "{package} {version}: downloaded from {url}: sha256 {actual}, the lock says {expected}"
    )]
    Mismatch {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// Source URL.
        url: String,
        /// Locked sha256.
        expected: String,
        /// Received sha256.
        actual: String,
    },
    /// HTTP failure.
    #[error("{package}: download from {url} failed: {detail}")]
    Download {
        /// Package.
        package: String,
        /// URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// apt could not locate the package.
    #[error(transparent)]
    Apt(#[from] AptError),
}

/// The package cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// What a fetch did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FetchSummary {
    /// Packages already present and correct.
    pub cached: usize,
    /// Packages downloaded.
    pub downloaded: usize,
    /// Bytes downloaded.
    pub bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// sha256 of a file, streaming.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl Cache {
    /// Opens (creating) a cache folder.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        let debs = dir.join("debs");
        std::fs::create_dir_all(&debs).map_err(io(&debs))?;
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    /// The cache's root folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a package lives in the cache.
    pub fn path(&self, p: &LockedPackage) -> PathBuf {
        self.dir.join("debs").join(p.deb_name())
    }

    /// The checked path of a cached package: missing is [`CacheError::Missing`], a wrong hash
    /// [`CacheError::Corrupt`].
    pub fn checked(&self, p: &LockedPackage) -> Result<PathBuf, CacheError> {
        let path = self.path(p);
        if !path.exists() {
            return Err(CacheError::Missing {
                package: p.name.clone(),
                version: p.version.clone(),
                path,
            });
        }
        let actual = sha256_file(&path).map_err(io(&path))?;
        if actual != p.sha256 {
            return Err(CacheError::Corrupt {
                package: p.name.clone(),
                version: p.version.clone(),
                path,
                expected: p.sha256.clone(),
                actual,
            });
        }
        Ok(path)
    }

    /// Makes every locked package present and correct: corrupt ones are downloaded again, missing
    /// ones downloaded from the host's apt mirror, or from `snapshot` if a version has left it.
    /// With `offline`, nothing is downloaded and anything missing or corrupt is an error.
    pub fn fetch(
        &self,
        lock: &Lock,
        snapshot: Option<&str>,
        offline: bool,
        ui: &Ui,
    ) -> Result<FetchSummary, CacheError> {
        let mut summary = FetchSummary::default();
        let mut need: Vec<&LockedPackage> = Vec::new();
        let check = ui.count(lock.packages.len() as u64, "checking cache");
        for p in &lock.packages {
            check.set_message(p.name.clone());
            match self.checked(p) {
                Ok(_) => summary.cached += 1,
                Err(e @ CacheError::Corrupt { .. }) if offline => return Err(e),
                Err(e @ CacheError::Corrupt { .. }) => {
                    ui.warn(format!("{e}; downloading it again"));
                    need.push(p);
                }
                Err(e @ CacheError::Missing { .. }) if offline => return Err(e),
                Err(CacheError::Missing { .. }) => need.push(p),
                Err(e) => return Err(e),
            }
            check.inc(1);
        }
        check.finish_and_clear();
        if need.is_empty() {
            return Ok(summary);
        }
        // Where does the host's apt find them? A gone version falls back to the snapshot.
        let sources: Vec<(String, &LockedPackage)> = match apt::print_uris(&need) {
            Ok(uris) => need
                .iter()
                .map(|p| (uris[&p.name].url.clone(), *p))
                .collect(),
            Err(AptError::Gone { name, version }) => match snapshot {
                Some(base) => {
                    ui.warn(format!(
                        "{name} {version} has left the apt mirror; fetching from the snapshot {base}"
                    ));
                    let mut out = Vec::new();
                    for p in &need {
                        let url = match apt::print_uris(&[p]) {
                            Ok(u) => u[&p.name].url.clone(),
                            Err(AptError::Gone { .. }) => {
                                format!("{}/{}", base.trim_end_matches('/'), p.filename)
                            }
                            Err(e) => return Err(e.into()),
                        };
                        out.push((url, *p));
                    }
                    out
                }
                None => return Err(AptError::Gone { name, version }.into()),
            },
            Err(e) => return Err(e.into()),
        };
        for (url, p) in sources {
            summary.bytes += self.download(&url, p, ui)?;
            summary.downloaded += 1;
        }
        Ok(summary)
    }

    fn download(&self, url: &str, p: &LockedPackage, ui: &Ui) -> Result<u64, CacheError> {
        let dest = self.path(p);
        let tmp = dest.with_extension("deb.part");
        let fail = |detail: String| CacheError::Download {
            package: p.name.clone(),
            url: url.to_string(),
            detail,
        };
        let mut reader: Box<dyn Read> = if let Some(local) = url.strip_prefix("file://") {
            Box::new(File::open(local).map_err(|e| fail(e.to_string()))?)
        } else {
            let resp = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
            Box::new(resp.into_body().into_reader())
        };
        let pb = ui.bytes(p.size, p.name.clone());
        let mut out = File::create(&tmp).map_err(io(&tmp))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io(&tmp))?;
            total += n as u64;
            pb.set_position(total);
        }
        pb.finish_and_clear();
        out.sync_all().map_err(io(&tmp))?;
        drop(out);
        let actual = hex::encode(h.finalize());
        if actual != p.sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Err(CacheError::Mismatch {
                package: p.name.clone(),
                version: p.version.clone(),
                url: url.to_string(),
                expected: p.sha256.clone(),
                actual,
            });
        }
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        ui.info(format!(
            "fetched {} {} ({} bytes)",
            p.name, p.version, total
        ));
        Ok(total)
    }
}
