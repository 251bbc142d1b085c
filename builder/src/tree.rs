//! The in-memory root filesystem tree that every build stage reads and writes.
//!
//! Owns the path convention of the builder: a path is *relative to the image root*, with no
//! leading `/`, no `.` or empty components and no `..` (for example
//! `usr/lib/x86_64-linux-gnu/libc.so.6`); the root itself is the empty path and is implicit.
//! [`normalize`](crate::tree::normalize) turns `/usr/lib`, `./usr//lib/` into that form.
//! Nodes are kept in a [`BTreeMap`](std::collections::BTreeMap), so iteration is sorted by
//! path bytes, which puts every directory before its children and makes every consumer
//! deterministic.
//!
//! Symlinks are followed the way the kernel follows them:
//! [`Tree::resolve`](crate::tree::Tree::resolve) handles absolute targets (relative to the
//! image root) and relative ones (relative to the link's directory), and
//! [`Tree::insert`](crate::tree::Tree::insert) follows symlinked parent directories, so with
//! merged-usr links (`lib -> usr/lib`) inserting `lib/x86_64-linux-gnu/libc.so.6` stores the
//! file under `usr/lib`.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::sync::Arc;

/// How many symlinks one resolution may follow before it is reported as a loop (Linux: 40).
pub const MAX_SYMLINK_FOLLOWS: usize = 40;

/// Mode of the directories that [`Tree::insert`] creates implicitly.
pub const DEFAULT_DIR_MODE: u32 = 0o755;

/// Errors of tree operations; each names the path it concerns.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// The path contains `..`, or normalises to the root where a node is required.
    #[error("invalid tree path {path:?}")]
    InvalidPath {
        /// The path as given.
        path: String,
    },
    /// A component that must be a directory is a file or device.
    #[error("{path}: a parent component is not a directory")]
    NotADirectory {
        /// The path being inserted or resolved.
        path: String,
    },
    /// A path (or a symlink's target) does not exist.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path being resolved.
        path: String,
    },
    /// More than [`MAX_SYMLINK_FOLLOWS`] symlinks were followed.
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The path being resolved.
        path: String,
    },
}

/// What a node is, with its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file; the data is shared so that hardlinks and copies between trees are cheap.
    File(Arc<[u8]>),
    /// A directory; its entries are the paths below it in the tree.
    Dir,
    /// A symbolic link with its target exactly as stored (absolute or relative).
    Symlink(String),
    /// A character device node.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// One file, directory, symlink or device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What the node is.
    pub kind: NodeKind,
    /// Permission bits (`0o7777` at most: rwx, setuid, setgid, sticky); never the file type.
    pub mode: u32,
}

impl Node {
    /// A regular file.
    pub fn file(data: impl Into<Arc<[u8]>>, mode: u32) -> Self {
        Node {
            kind: NodeKind::File(data.into()),
            mode: mode & 0o7777,
        }
    }

    /// A directory.
    pub fn dir(mode: u32) -> Self {
        Node {
            kind: NodeKind::Dir,
            mode: mode & 0o7777,
        }
    }

    /// A symbolic link (mode `0o777`, as Linux reports for every symlink).
    pub fn symlink(target: impl Into<String>) -> Self {
        Node {
            kind: NodeKind::Symlink(target.into()),
            mode: 0o777,
        }
    }

    /// A character device node.
    pub fn char_device(major: u32, minor: u32, mode: u32) -> Self {
        Node {
            kind: NodeKind::CharDevice { major, minor },
            mode: mode & 0o7777,
        }
    }

    /// The file contents, if this is a regular file.
    pub fn data(&self) -> Option<&[u8]> {
        match &self.kind {
            NodeKind::File(data) => Some(data),
            _ => None,
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir)
    }
}

/// Normalises `path` to the tree convention: strips leading `/` and `./`, drops empty and `.`
/// components. The root normalises to `""`. `..` is rejected: tree paths never contain it.
pub fn normalize(path: &str) -> Result<String, TreeError> {
    let mut out = String::with_capacity(path.len());
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(TreeError::InvalidPath {
                    path: path.to_owned(),
                });
            }
            c => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(c);
            }
        }
    }
    Ok(out)
}

/// Joins a normalised directory and a normalised relative path.
pub fn join(dir: &str, name: &str) -> String {
    match (dir.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (false, true) => dir.to_owned(),
        (false, false) => format!("{dir}/{name}"),
    }
}

/// The parent directory of a normalised path (`""` for top-level entries and the root).
pub fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// The result of [`Tree::resolve_traced`]: the final path and every symlink followed on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Normalised path of the node that is not a symlink.
    pub path: String,
    /// Paths of the symlink nodes followed, in the order they were followed.
    pub symlinks: Vec<String>,
}

/// An in-memory root filesystem; see the module documentation for the path convention.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// An empty tree (only the implicit root directory).
    pub fn new() -> Self {
        Tree::default()
    }

    /// Number of nodes, not counting the implicit root.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree holds nothing but the implicit root.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Inserts `node` at `path`, replacing any node there (a directory's children are kept
    /// when a directory replaces a directory, and removed otherwise; a directory inserted
    /// over a symlink to a directory leaves the link in place). Missing parent
    /// directories are created with [`DEFAULT_DIR_MODE`]; existing parents that are symlinks
    /// are followed, as `open(O_CREAT)` would. Returns the normalised path actually written.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<String, TreeError> {
        let norm = normalize(path)?;
        if norm.is_empty() {
            return Err(TreeError::InvalidPath {
                path: path.to_owned(),
            });
        }
        let (dir, name) = match norm.rfind('/') {
            Some(i) => (&norm[..i], &norm[i + 1..]),
            None => ("", norm.as_str()),
        };
        let dir = self.mkdir_all(dir, &norm)?;
        let full = join(&dir, name);
        // A directory over a symlink to a directory keeps the link, as dpkg and tar do: a
        // package's `./lib/` entry must not undo merged-usr's `lib -> usr/lib`.
        if node.is_dir()
            && matches!(
                self.nodes.get(&full),
                Some(Node {
                    kind: NodeKind::Symlink(_),
                    ..
                })
            )
            && let Ok(target) = self.resolve(&full)
            && (target.is_empty() || self.nodes.get(&target).is_some_and(Node::is_dir))
        {
            return Ok(target);
        }
        let keep_children = node.is_dir() && self.nodes.get(&full).is_some_and(Node::is_dir);
        if !keep_children {
            self.remove(&full);
        }
        self.nodes.insert(full.clone(), node);
        Ok(full)
    }

    /// Creates `dir` and its missing ancestors (following symlinked ones) and returns the
    /// resolved directory path. `for_path` names the operation in errors.
    fn mkdir_all(&mut self, dir: &str, for_path: &str) -> Result<String, TreeError> {
        let mut current = String::new();
        for component in dir.split('/').filter(|c| !c.is_empty()) {
            let candidate = join(&current, component);
            current = match self.nodes.get(&candidate) {
                None => {
                    self.nodes
                        .insert(candidate.clone(), Node::dir(DEFAULT_DIR_MODE));
                    candidate
                }
                Some(node) if node.is_dir() => candidate,
                Some(Node {
                    kind: NodeKind::Symlink(_),
                    ..
                }) => {
                    let resolved = self.resolve(&candidate).map_err(|e| match e {
                        TreeError::NotFound { .. } => TreeError::NotFound {
                            path: for_path.to_owned(),
                        },
                        other => other,
                    })?;
                    if !self.nodes.get(&resolved).is_some_and(Node::is_dir) && !resolved.is_empty()
                    {
                        return Err(TreeError::NotADirectory {
                            path: for_path.to_owned(),
                        });
                    }
                    resolved
                }
                Some(_) => {
                    return Err(TreeError::NotADirectory {
                        path: for_path.to_owned(),
                    });
                }
            };
        }
        Ok(current)
    }

    /// The node stored at exactly `path` (symlinks are not followed).
    pub fn get(&self, path: &str) -> Option<&Node> {
        let norm = normalize(path).ok()?;
        self.nodes.get(&norm)
    }

    /// Whether a node is stored at exactly `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// Follows symlinks in every component of `path`, the last one included, and returns the
    /// normalised path of the existing non-symlink node it names (`""` for the root).
    pub fn resolve(&self, path: &str) -> Result<String, TreeError> {
        self.resolve_traced(path).map(|r| r.path)
    }

    /// Like [`Tree::resolve`], also reporting each symlink followed (needed to ship a library
    /// together with the links through which the loader finds it).
    pub fn resolve_traced(&self, path: &str) -> Result<Resolved, TreeError> {
        let err_path = || path.to_owned();
        // Components still to walk, in reverse order so that `pop` yields the next one.
        let mut pending: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
        let mut current = String::new();
        let mut symlinks = Vec::new();
        while let Some(component) = pending.pop() {
            match component.as_str() {
                "" | "." => continue,
                ".." => {
                    current = parent(&current).to_owned();
                    continue;
                }
                _ => {}
            }
            let candidate = join(&current, &component);
            match self.nodes.get(&candidate) {
                None => return Err(TreeError::NotFound { path: err_path() }),
                Some(Node {
                    kind: NodeKind::Symlink(target),
                    ..
                }) => {
                    if symlinks.len() >= MAX_SYMLINK_FOLLOWS {
                        return Err(TreeError::SymlinkLoop { path: err_path() });
                    }
                    symlinks.push(candidate);
                    if target.starts_with('/') {
                        current.clear();
                    }
                    pending.extend(target.split('/').rev().map(str::to_owned));
                }
                Some(node) => {
                    if !pending.iter().all(|c| c.is_empty()) && !node.is_dir() {
                        return Err(TreeError::NotADirectory { path: err_path() });
                    }
                    current = candidate;
                }
            }
        }
        Ok(Resolved {
            path: current,
            symlinks,
        })
    }

    /// Removes the node at exactly `path` (and everything below it if it is a directory).
    /// Returns the removed node itself.
    pub fn remove(&mut self, path: &str) -> Option<Node> {
        let norm = normalize(path).ok()?;
        let removed = self.nodes.remove(&norm)?;
        if removed.is_dir() {
            let prefix = format!("{norm}/");
            let below: Vec<String> = self
                .nodes
                .range(prefix.clone()..)
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            for key in below {
                self.nodes.remove(&key);
            }
        }
        Some(removed)
    }

    /// Copies the node at exactly `path` in `src` into this tree at the same path (symlinks are
    /// copied as symlinks). Missing parent directories take their mode from `src`.
    pub fn copy_from(&mut self, src: &Tree, path: &str) -> Result<(), TreeError> {
        let norm = normalize(path)?;
        let node = src
            .nodes
            .get(&norm)
            .ok_or_else(|| TreeError::NotFound { path: norm.clone() })?;
        let mut ancestor = String::new();
        for component in parent(&norm).split('/').filter(|c| !c.is_empty()) {
            ancestor = join(&ancestor, component);
            if !self.nodes.contains_key(&ancestor) {
                match src.nodes.get(&ancestor) {
                    Some(n) if n.is_dir() => {
                        self.insert(&ancestor, n.clone())?;
                    }
                    // A symlinked ancestor in `src` (merged-usr): let `insert` follow ours.
                    _ => {}
                }
            }
        }
        self.insert(&norm, node.clone())?;
        Ok(())
    }

    /// Iterates over all nodes sorted by path (parents before children).
    pub fn iter(&self) -> btree_map::Iter<'_, String, Node> {
        self.nodes.iter()
    }

    /// Iterates over the nodes strictly below directory `dir` (any depth), sorted.
    pub fn iter_under<'a>(
        &'a self,
        dir: &str,
    ) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let prefix = match normalize(dir) {
            Ok(d) if d.is_empty() => String::new(),
            Ok(d) => format!("{d}/"),
            Err(_) => "\0invalid".to_owned(),
        };
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// Sum of the sizes of all regular files (symlink targets and directories not counted).
    pub fn total_size(&self) -> u64 {
        self.nodes
            .values()
            .filter_map(Node::data)
            .map(|d| d.len() as u64)
            .sum()
    }
}

impl<'a> IntoIterator for &'a Tree {
    type Item = (&'a String, &'a Node);
    type IntoIter = btree_map::Iter<'a, String, Node>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A merged-usr tree with a loader and a versioned library behind a soname link.
    fn merged_usr() -> Tree {
        let mut t = Tree::new();
        for (link, target) in [
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
        ] {
            t.insert(target, Node::dir(0o755)).unwrap();
            t.insert(link, Node::symlink(target)).unwrap();
        }
        t.insert(
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            Node::file(&b"libc"[..], 0o644),
        )
        .unwrap();
        t.insert(
            "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            Node::file(&b"ld"[..], 0o755),
        )
        .unwrap();
        t.insert(
            "usr/lib64/ld-linux-x86-64.so.2",
            Node::symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        t.insert(
            "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3",
            Node::file(&b"foo"[..], 0o644),
        )
        .unwrap();
        t.insert(
            "usr/lib/x86_64-linux-gnu/libfoo.so.1",
            Node::symlink("libfoo.so.1.2.3"),
        )
        .unwrap();
        t
    }

    #[test]
    fn normalize_table() {
        let cases = [
            ("/usr/lib/", Ok("usr/lib")),
            ("./usr//lib/./x", Ok("usr/lib/x")),
            ("usr", Ok("usr")),
            ("/", Ok("")),
            ("./", Ok("")),
            ("usr/../etc", Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize(input).map_err(|_| ()),
                want.map(str::to_owned),
                "{input}"
            );
        }
    }

    #[test]
    fn insert_creates_parents_and_follows_symlinked_parents() {
        let mut t = merged_usr();
        assert!(t.get("usr/lib/x86_64-linux-gnu").is_some_and(Node::is_dir));
        let written = t.insert(
            "/lib/x86_64-linux-gnu/libm.so.6",
            Node::file(&b"m"[..], 0o644),
        );
        assert_eq!(written.unwrap(), "usr/lib/x86_64-linux-gnu/libm.so.6");
        assert!(t.get("lib/x86_64-linux-gnu/libm.so.6").is_none());
        let written = t.insert("lib", Node::dir(0o755));
        assert_eq!(written.unwrap(), "usr/lib");
        assert_eq!(
            t.get("lib"),
            Some(&Node::symlink("usr/lib")),
            "merged-usr link kept"
        );
        assert!(t.get("usr/lib/x86_64-linux-gnu/libc.so.6").is_some());
        t.insert("bin", Node::file(&b"x"[..], 0o644)).unwrap();
        assert!(
            t.get("bin").and_then(Node::data).is_some(),
            "a file replaces a link"
        );
        let err = t.insert("usr/lib/x86_64-linux-gnu/libc.so.6/x", Node::dir(0o755));
        assert!(
            matches!(err, Err(TreeError::NotADirectory { .. })),
            "{err:?}"
        );
        assert!(matches!(
            t.insert("/", Node::dir(0o755)),
            Err(TreeError::InvalidPath { .. })
        ));
    }

    #[test]
    fn resolve_table() {
        let t = merged_usr();
        type Want = Result<(&'static str, &'static [&'static str]), ()>;
        let cases: [(&str, Want); 7] = [
            (
                "usr/lib/x86_64-linux-gnu/libc.so.6",
                Ok(("usr/lib/x86_64-linux-gnu/libc.so.6", &[])),
            ),
            (
                "/lib/x86_64-linux-gnu/libc.so.6",
                Ok(("usr/lib/x86_64-linux-gnu/libc.so.6", &["lib"])),
            ),
            (
                "/lib64/ld-linux-x86-64.so.2",
                Ok((
                    "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                    &["lib64", "usr/lib64/ld-linux-x86-64.so.2", "lib"],
                )),
            ),
            (
                "lib/x86_64-linux-gnu/libfoo.so.1",
                Ok((
                    "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3",
                    &["lib", "usr/lib/x86_64-linux-gnu/libfoo.so.1"],
                )),
            ),
            ("usr/lib/../lib64/../bin", Ok(("usr/bin", &[]))),
            ("lib/missing.so", Err(())),
            ("usr/lib/x86_64-linux-gnu/libc.so.6/x", Err(())),
        ];
        for (input, want) in cases {
            let got = t.resolve_traced(input).map_err(|_| ());
            let want = want.map(|(p, links)| Resolved {
                path: p.to_owned(),
                symlinks: links.iter().map(|s| (*s).to_owned()).collect(),
            });
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn resolve_reports_loops_and_dangling_links() {
        let mut t = Tree::new();
        t.insert("a", Node::symlink("b")).unwrap();
        t.insert("b", Node::symlink("/a")).unwrap();
        t.insert("dangling", Node::symlink("nowhere")).unwrap();
        assert_eq!(
            t.resolve("a"),
            Err(TreeError::SymlinkLoop { path: "a".into() })
        );
        assert_eq!(
            t.resolve("dangling"),
            Err(TreeError::NotFound {
                path: "dangling".into()
            })
        );
        assert_eq!(t.resolve("/"), Ok(String::new()));
    }

    #[test]
    fn remove_takes_children_and_iteration_is_sorted() {
        let mut t = merged_usr();
        t.insert("usr/lib-extra/x", Node::file(&b"x"[..], 0o644))
            .unwrap();
        let paths: Vec<&String> = t.iter().map(|(p, _)| p).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        assert_eq!(t.iter_under("usr/lib64").count(), 1);
        assert!(t.remove("usr/lib").is_some_and(|n| n.is_dir()));
        assert!(t.get("usr/lib/x86_64-linux-gnu/libc.so.6").is_none());
        assert!(
            t.get("usr/lib-extra/x").is_some(),
            "a sibling sharing the prefix survives"
        );
        assert_eq!(t.total_size(), 1);
    }

    #[test]
    fn copy_from_keeps_links_and_parent_modes() {
        let mut src = merged_usr();
        src.insert("etc/secret", Node::dir(0o700)).unwrap();
        src.insert("etc/secret/key", Node::file(&b"k"[..], 0o600))
            .unwrap();
        let mut dst = Tree::new();
        dst.copy_from(&src, "etc/secret/key").unwrap();
        dst.copy_from(&src, "usr/lib/x86_64-linux-gnu/libfoo.so.1")
            .unwrap();
        assert_eq!(dst.get("etc/secret").map(|n| n.mode), Some(0o700));
        assert_eq!(dst.get("etc/secret/key"), src.get("etc/secret/key"));
        assert_eq!(
            dst.get("usr/lib/x86_64-linux-gnu/libfoo.so.1"),
            Some(&Node::symlink("libfoo.so.1.2.3"))
        );
        assert!(matches!(
            dst.copy_from(&src, "nope"),
            Err(TreeError::NotFound { .. })
        ));
    }
}
