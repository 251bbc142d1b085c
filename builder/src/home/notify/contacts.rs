//! Whom to tell, per site: the `[host]` sections of the site configs in `home serve --sites
//! DIR` (every `*.toml` there, validated as the appliance validates them). Two files for one
//! site id are refused, naming both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imrs_config::site::{self, Host};

/// The site configs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    /// The folder cannot be listed.
    #[error("{path}: cannot list the site configs")]
    List {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A site config is invalid.
    #[error("site config")]
    Site(#[from] imrs_config::ConfigError),
    /// Two files configure one site.
    #[error("{first} and {second} both configure site {site_id}")]
    Duplicate {
        /// The site id.
        site_id: String,
        /// The first file.
        first: PathBuf,
        /// The second.
        second: PathBuf,
    },
}

/// Each site's host organisation and the file it came from.
#[derive(Debug, Clone, Default)]
pub struct Contacts {
    by_site: BTreeMap<String, (Host, PathBuf)>,
}

impl Contacts {
    /// Reads every `*.toml` in `dir` (sorted by name).
    pub fn load(dir: &Path) -> Result<Contacts, ContactsError> {
        let list_err = |source| ContactsError::List {
            path: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(list_err)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(list_err)?;
        files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
        files.sort();
        let mut by_site: BTreeMap<String, (Host, PathBuf)> = BTreeMap::new();
        for f in files {
            let s = site::load(&f)?;
            if let Some((_, first)) = by_site.get(&s.site_id) {
                return Err(ContactsError::Duplicate {
                    site_id: s.site_id,
                    first: first.clone(),
                    second: f,
                });
            }
            by_site.insert(s.site_id, (s.host, f));
        }
        Ok(Contacts { by_site })
    }

    /// The host of `site_id`, when its config is known.
    pub fn host(&self, site_id: &str) -> Option<&Host> {
        self.by_site.get(site_id).map(|(h, _)| h)
    }

    /// Sites known, and how many of them have someone to tell.
    pub fn counts(&self) -> (usize, usize) {
        let with = self
            .by_site
            .values()
            .filter(|(h, _)| h.has_contacts())
            .count();
        (self.by_site.len(), with)
    }

    /// Sites with e-mail contacts.
    pub fn emailed_sites(&self) -> Vec<&str> {
        self.by_site
            .iter()
            .filter(|(_, (h, _))| !h.email.is_empty())
            .map(|(s, _)| s.as_str())
            .collect()
    }
}
