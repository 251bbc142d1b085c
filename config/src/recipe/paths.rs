//! Paths a recipe names (its profile, its files' sources) are relative to the recipe's folder
//! and confined to it: not absolute, no `..`, and, once symbolic links are resolved, still
//! inside the folder; and they name regular files. The current directory and the workspace play
//! no part, so a recipe means the same wherever `imrs-build` runs from.

use std::path::{Component, Path, PathBuf};

use crate::error::{ConfigError, escape_path};

/// A recipe's folder, canonical.
#[derive(Debug, Clone)]
pub struct Folder {
    recipe: PathBuf,
    root: PathBuf,
}

impl Folder {
    /// The folder of the recipe at `recipe`.
    pub fn of(recipe: &Path) -> Result<Folder, ConfigError> {
        let dir = match recipe.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let root = dir.canonicalize().map_err(|e| {
            ConfigError::invalid(
                recipe,
                "(folder)",
                escape_path(dir),
                format!("the recipe's folder cannot be resolved: {e}"),
            )
        })?;
        Ok(Folder {
            recipe: recipe.to_path_buf(),
            root,
        })
    }

    /// The canonical folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves `rel` (written as `value` at `key` in the recipe; `what` it is, for messages)
    /// inside the folder: the canonical path of an existing regular file under it.
    pub fn resolve(
        &self,
        key: &str,
        what: &str,
        value: impl std::fmt::Display,
        rel: PathBuf,
    ) -> Result<PathBuf, ConfigError> {
        let refuse = |rule: String| ConfigError::invalid(&self.recipe, key, &value, rule);
        if rel.is_absolute() {
            return Err(refuse(
                "a path relative to the recipe's folder, not an absolute path".into(),
            ));
        }
        if rel.components().any(|c| c == Component::ParentDir) {
            return Err(refuse("may not leave the recipe's folder ('..')".into()));
        }
        if rel.as_os_str().is_empty() {
            return Err(refuse("a file inside the recipe's folder".into()));
        }
        let joined = self.root.join(&rel);
        let real = joined.canonicalize().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                refuse(format!(
                    "no such {what} ({} does not exist)",
                    escape_path(&joined)
                ))
            } else {
                refuse(format!("{} cannot be resolved: {e}", escape_path(&joined)))
            }
        })?;
        if !real.starts_with(&self.root) {
            return Err(refuse(format!(
                "resolves (through a symbolic link) to {}, outside the recipe's folder {}",
                escape_path(&real),
                escape_path(&self.root)
            )));
        }
        let meta = std::fs::metadata(&real)
            .map_err(|e| refuse(format!("{} cannot be read: {e}", escape_path(&real))))?;
        if !meta.is_file() {
            return Err(refuse(format!(
                "{} is not a regular file",
                escape_path(&real)
            )));
        }
        Ok(real)
    }
}
