//! The package cache: exactly the locked .deb files, each checked against its sha256 on every
//! use. Missing packages are downloaded directly (never through apt) from the lock's mirror, then
//! the Debian snapshot archive at the lock's timestamp, then an extra base (`--snapshot`); a
//! download lands in the cache (atomically) only once its size and sha256 match, so the cache
//! never holds a half-written or wrong package under a valid name.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use imrs_config::lock::{Lock, LockedPackage};
use sha2::{Digest, Sha256};

use crate::download::{Attempt, Downloader, Sources, describe};
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
    /// No source has the package: at least one answered "not found", none served other bytes,
    /// the rest could not be reached.
    #[error(
        "{package} {version}: no source has it (re-lock, or name an archive that has it with \
         --snapshot URL); tried {}",
        describe(.tried)
    )]
    Gone {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// Every URL tried, in order, and why each failed.
        tried: Vec<Attempt>,
    },
    /// No source could be reached or answered (network, proxy, server errors): nothing says the
    /// package is gone.
    #[error(
        "{package} {version}: no source could be reached or served it (check the network and \
         proxy settings, or use --offline with a filled cache); tried {}",
        describe(.tried)
    )]
    Unavailable {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// Every URL tried, in order, and why each failed.
        tried: Vec<Attempt>,
    },
    /// No source gave the locked bytes and at least one served other bytes (wrong size or
    /// sha256): refused, nothing written.
    #[error(
        "{package} {version}: no source served the locked bytes (size {size}, sha256 {sha256}); \
         tried {}",
        describe(.tried)
    )]
    Refused {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// Locked size.
        size: u64,
        /// Locked sha256.
        sha256: String,
        /// Every URL tried, in order, and why each failed.
        tried: Vec<Attempt>,
    },
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

    /// Makes every locked package present and correct: corrupt ones are downloaded again,
    /// missing ones downloaded from `sources` (see [`Sources::urls`]). With `offline`, nothing is
    /// downloaded and anything missing or corrupt is an error.
    pub fn fetch(
        &self,
        lock: &Lock,
        sources: &Sources,
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
        let mut dl = Downloader::new();
        for p in need {
            summary.bytes += self.download(&mut dl, lock, sources, p, ui)?;
            summary.downloaded += 1;
        }
        Ok(summary)
    }

    /// Tries each source of `p` in order; stores the first body whose size and sha256 match.
    fn download(
        &self,
        dl: &mut Downloader,
        lock: &Lock,
        sources: &Sources,
        p: &LockedPackage,
        ui: &Ui,
    ) -> Result<u64, CacheError> {
        let dest = self.path(p);
        let mut tried: Vec<Attempt> = Vec::new();
        for url in sources.urls(lock, p) {
            let pb = ui.bytes(p.size, p.name.clone());
            let got = dl.get(&url, p, &pb);
            pb.finish_and_clear();
            match got {
                Ok(data) => {
                    imrs_config::fsutil::write_atomic(&dest, &data, 0o644).map_err(io(&dest))?;
                    if !tried.is_empty() {
                        ui.warn(format!(
                            "{} {}: fetched from {url} after {}",
                            p.name,
                            p.version,
                            describe(&tried)
                        ));
                    }
                    ui.info(format!(
                        "fetched {} {} ({} bytes)",
                        p.name,
                        p.version,
                        data.len()
                    ));
                    return Ok(data.len() as u64);
                }
                Err(failure) => tried.push(Attempt { url, failure }),
            }
        }
        let (package, version) = (p.name.clone(), p.version.clone());
        Err(if tried.iter().any(|a| a.failure.is_refused()) {
            CacheError::Refused {
                package,
                version,
                size: p.size,
                sha256: p.sha256.clone(),
                tried,
            }
        } else if tried.iter().any(|a| a.failure.is_not_found()) {
            CacheError::Gone {
                package,
                version,
                tried,
            }
        } else {
            CacheError::Unavailable {
                package,
                version,
                tried,
            }
        })
    }
}
