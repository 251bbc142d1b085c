//! The imrs workspace a command works in, found on disk the way cargo finds a manifest: walk up
//! from a starting folder (the recipe's or the image's folder, then the current directory) to the
//! first folder whose `Cargo.toml` has a `[workspace]` table and that holds the `imrs-init`
//! package in `init/`. Never the folder this binary was compiled in: `imrs-build` works wherever
//! it is installed, and needs a workspace only to compile the init (else `--init BIN`) and for
//! the lab's defaults (the lab site config and the bundled root zone; else `--site`, `--zone`).

use std::path::{Path, PathBuf};

/// The lab's default site config, relative to the workspace.
pub const LAB_SITE: &str = "images/sites/lab.toml";
/// The real root zone data (`testdata/rootzone/README.md`), relative to the workspace.
pub const ROOTZONE_DATA: &str = "testdata/rootzone";

/// No workspace above any starting folder.
#[derive(Debug, thiserror::Error)]
#[error(
    "no imrs workspace (a Cargo.toml with [workspace] beside init/ holding imrs-init) in {} or \
     any folder above",
    list(.searched)
)]
pub struct NotFound {
    /// The starting folders, in the order searched.
    pub searched: Vec<PathBuf>,
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A found workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// The folder holding the workspace's `Cargo.toml`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lab's default site config.
    pub fn lab_site(&self) -> PathBuf {
        self.root.join(LAB_SITE)
    }

    /// The real root zone data folder.
    pub fn rootzone_data(&self) -> PathBuf {
        self.root.join(ROOTZONE_DATA)
    }
}

/// Whether `dir` is the imrs workspace root: `Cargo.toml` with a `[workspace]` table and
/// `init/Cargo.toml` of the package `imrs-init`.
pub fn is_workspace(dir: &Path) -> bool {
    let table = |p: PathBuf| -> Option<toml::Table> {
        std::fs::read_to_string(p).ok()?.parse::<toml::Table>().ok()
    };
    let Some(root) = table(dir.join("Cargo.toml")) else {
        return false;
    };
    if !root.get("workspace").is_some_and(toml::Value::is_table) {
        return false;
    }
    table(dir.join("init/Cargo.toml")).is_some_and(|t| {
        t.get("package")
            .and_then(|p| p.get("name"))
            .and_then(toml::Value::as_str)
            == Some("imrs-init")
    })
}

/// The workspace at or above `start` (its real path: `..` and symlinks resolved, so the walk
/// goes through the folders that really hold it).
pub fn find_from(start: &Path) -> Option<Workspace> {
    let start = start
        .canonicalize()
        .or_else(|_| std::path::absolute(start))
        .ok()?;
    start
        .ancestors()
        .find(|d| is_workspace(d))
        .map(|d| Workspace {
            root: d.to_path_buf(),
        })
}

/// The folder to start from for a command's input: the folder of a file (a recipe), the folder
/// itself (an image folder).
pub fn start_of(input: &Path) -> PathBuf {
    if input.is_dir() {
        input.to_path_buf()
    } else {
        match input.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// The workspace above the folder of `input` (a recipe or an image folder), else above the
/// current directory.
pub fn find(input: Option<&Path>) -> Result<Workspace, NotFound> {
    let mut searched = Vec::new();
    if let Some(i) = input {
        searched.push(start_of(i));
    }
    searched.push(std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")));
    for s in &searched {
        if let Some(w) = find_from(s) {
            return Ok(w);
        }
    }
    Err(NotFound {
        searched: searched
            .into_iter()
            .map(|s| std::path::absolute(&s).unwrap_or(s))
            .collect(),
    })
}

/// The checkout this crate is compiled in, for unit tests that read the repository's files
/// (never for the program itself).
#[cfg(test)]
pub(crate) fn this_checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn fake_workspace(root: &Path) {
        write(
            &root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"init\"]\n",
        );
        write(
            &root.join("init/Cargo.toml"),
            "[package]\nname = \"imrs-init\"\nversion = \"0.1.0\"\n",
        );
    }

    #[test]
    fn found_from_a_recipe_deep_inside() {
        let t = tempfile::tempdir().unwrap();
        fake_workspace(t.path());
        write(&t.path().join("images/sub/r.toml"), "");
        let w = find_from(&start_of(&t.path().join("images/sub/r.toml"))).unwrap();
        assert_eq!(w.root(), t.path().canonicalize().unwrap());
        assert_eq!(w.lab_site(), w.root().join("images/sites/lab.toml"));
        assert_eq!(w.rootzone_data(), w.root().join("testdata/rootzone"));
    }

    #[test]
    fn a_member_manifest_or_another_workspace_is_not_it() {
        let t = tempfile::tempdir().unwrap();
        // A workspace without init/: not imrs.
        write(&t.path().join("Cargo.toml"), "[workspace]\nmembers = []\n");
        assert!(find_from(t.path()).is_none());
        // init/ of another package.
        write(
            &t.path().join("init/Cargo.toml"),
            "[package]\nname = \"other\"\n",
        );
        assert!(!is_workspace(t.path()));
        // The imrs-init package's own folder is not the workspace: the walk goes on up.
        fake_workspace(&t.path().join("outer"));
        assert!(!is_workspace(&t.path().join("outer/init")));
        let w = find_from(&t.path().join("outer/init")).unwrap();
        assert_eq!(w.root(), t.path().join("outer").canonicalize().unwrap());
        // A broken Cargo.toml is skipped, not an error.
        write(&t.path().join("broken/Cargo.toml"), "[workspace\n");
        assert!(!is_workspace(&t.path().join("broken")));
    }

    #[test]
    fn this_repository_is_a_workspace() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let w = find_from(here).unwrap();
        assert!(w.root().join("init/Cargo.toml").is_file());
        assert!(w.lab_site().is_file());
        assert!(w.rootzone_data().join("root.zone.2026073102").is_file());
    }

    #[test]
    fn not_found_names_every_folder_searched() {
        let e = NotFound {
            searched: vec![PathBuf::from("/a/b"), PathBuf::from("/c")],
        };
        let m = e.to_string();
        assert!(m.contains("/a/b, /c"), "{m}");
        assert!(m.contains("[workspace]"), "{m}");
    }
}
