//! The shared-library closure of dynamically linked executables, resolved inside a
//! [`Tree`](crate::tree::Tree).
//!
//! Owns the image's model of the dynamic loader's search: for each `DT_NEEDED` soname of an object,
//! the object's `DT_RPATH` (only when it has no `DT_RUNPATH`), then its `DT_RUNPATH`, then the
//! default directories ([`LIBRARY_DIRS`](crate::elf::LIBRARY_DIRS)), with `$ORIGIN` expanded and
//! symlinks followed through the tree; candidates of another ELF class or machine are skipped, as
//! `ld.so` skips them. The image has no `ld.so.cache`, so the default directories must hold every
//! library. The program interpreter (`PT_INTERP`) is part of the closure, and so is every symlink
//! followed on the way, so that copying the closure's paths into the image reproduces exactly the
//! lookups the loader will make.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};

use crate::tree::{self, NodeKind, Tree, TreeError};

/// The loader's default search directories on Debian amd64, in search order.
pub const LIBRARY_DIRS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "lib/x86_64-linux-gnu",
    "usr/lib",
    "lib",
];

/// Errors of computing a closure; each names the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// An executable (or interpreter) path does not resolve in the tree.
    #[error("{path}: not found in the tree")]
    NotFound {
        /// The path as requested.
        path: String,
        /// The tree's complaint.
        #[source]
        source: TreeError,
    },
    /// A path resolves to something other than a regular file.
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The resolved path.
        path: String,
    },
    /// An object is not a parsable ELF file.
    #[error("{path}: cannot parse ELF")]
    Parse {
        /// The object's path.
        path: String,
        /// The parser's complaint.
        #[source]
        source: object::read::Error,
    },
    /// An object is some other kind of file (a script, an archive, ...).
    #[error("{path}: not an ELF file")]
    NotElf {
        /// The object's path.
        path: String,
    },
    /// No compatible library with that soname exists in the search path.
    #[error("{executable}: library {soname} (needed by {object}) not found")]
    MissingLibrary {
        /// The executable whose closure needs the library.
        executable: String,
        /// The object (executable or library) with the `DT_NEEDED` entry.
        object: String,
        /// The soname.
        soname: String,
    },
}

/// What the loader needs to know about one ELF object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElfDeps {
    /// `PT_INTERP`, such as `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` sonames, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` directories, unexpanded.
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` directories, unexpanded.
    pub runpath: Vec<String>,
    /// Whether the object is ELFCLASS64.
    pub is_64: bool,
    /// `e_machine`.
    pub machine: u16,
}

/// The result of [`needed_closure`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Closure {
    /// Every path to copy: the executables, libraries, interpreter and each symlink followed
    /// to reach them (including symlinked directories such as `lib64`).
    pub paths: BTreeSet<String>,
    /// Each soname resolved, with the path of the file it resolved to.
    pub libraries: BTreeMap<String, String>,
}

/// Reads the interpreter, needed sonames and search paths of the ELF object `data`;
/// `path` names it in errors.
pub fn dependencies(path: &str, data: &[u8]) -> Result<ElfDeps, ElfError> {
    if !data.starts_with(&elf::ELFMAG) {
        return Err(ElfError::NotElf {
            path: path.to_owned(),
        });
    }
    let parse_err = |source| ElfError::Parse {
        path: path.to_owned(),
        source,
    };
    match object::FileKind::parse(data).map_err(parse_err)? {
        object::FileKind::Elf32 => parse::<elf::FileHeader32<object::Endianness>>(data),
        object::FileKind::Elf64 => parse::<elf::FileHeader64<object::Endianness>>(data),
        _ => {
            return Err(ElfError::NotElf {
                path: path.to_owned(),
            });
        }
    }
    .map_err(parse_err)
}

fn parse<Elf: FileHeader<Endian = object::Endianness>>(
    data: &[u8],
) -> object::read::Result<ElfDeps> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;
    let mut deps = ElfDeps {
        is_64: header.is_class_64(),
        machine: header.e_machine(endian).0,
        ..ElfDeps::default()
    };
    for segment in header.program_headers(endian, data)? {
        if let Some(interp) = segment.interpreter(endian, data)? {
            deps.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let sections = header.sections(endian, data)?;
    let table = sections.dynamic_table(endian, data)?;
    for entry in table.iter() {
        let text = || {
            table
                .string(entry)
                .map(|s| String::from_utf8_lossy(s).into_owned())
        };
        match entry.tag {
            elf::DT_NEEDED => deps.needed.push(text()?),
            elf::DT_RPATH => deps.rpath.extend(text()?.split(':').map(str::to_owned)),
            elf::DT_RUNPATH => deps.runpath.extend(text()?.split(':').map(str::to_owned)),
            _ => {}
        }
    }
    Ok(deps)
}

/// [`needed_closure_in`] with the default [`LIBRARY_DIRS`].
pub fn needed_closure(tree: &Tree, executables: &[&str]) -> Result<Closure, ElfError> {
    needed_closure_in(tree, executables, LIBRARY_DIRS)
}

/// Computes the closure of `executables` (tree paths; symlinks allowed) over `DT_NEEDED`
/// and `PT_INTERP`, searching `lib_dirs` after each object's own run paths.
pub fn needed_closure_in(
    tree: &Tree,
    executables: &[&str],
    lib_dirs: &[&str],
) -> Result<Closure, ElfError> {
    let mut closure = Closure::default();
    let mut parsed: BTreeMap<String, ElfDeps> = BTreeMap::new();
    // (resolved object path, executable it belongs to)
    let mut queue: VecDeque<(String, String)> = VecDeque::new();
    for &executable in executables {
        let resolved = follow(tree, executable, &mut closure)?;
        queue.push_back((resolved, executable.to_owned()));
    }
    while let Some((object_path, executable)) = queue.pop_front() {
        if parsed.contains_key(&object_path) {
            continue;
        }
        let deps = dependencies(&object_path, file_data(tree, &object_path)?)?;
        if let Some(interp) = &deps.interpreter {
            let resolved = follow(tree, interp, &mut closure)?;
            queue.push_back((resolved, executable.clone()));
        }
        let origin = tree::parent(&object_path);
        let dirs: Vec<String> = if deps.runpath.is_empty() {
            &deps.rpath
        } else {
            &deps.runpath
        }
        .iter()
        .filter_map(|dir| expand_origin(dir, origin))
        .chain(lib_dirs.iter().map(|d| (*d).to_owned()))
        .collect();
        for soname in &deps.needed {
            let found = if soname.contains('/') {
                find_compatible(tree, [soname.clone()].into_iter(), &deps)
            } else {
                find_compatible(tree, dirs.iter().map(|d| tree::join(d, soname)), &deps)
            };
            let Some(candidate) = found else {
                return Err(ElfError::MissingLibrary {
                    executable,
                    object: object_path,
                    soname: soname.clone(),
                });
            };
            let resolved = follow(tree, &candidate, &mut closure)?;
            closure.libraries.insert(soname.clone(), resolved.clone());
            queue.push_back((resolved, executable.clone()));
        }
        parsed.insert(object_path, deps);
    }
    Ok(closure)
}

/// Expands `$ORIGIN` (the directory of the object) in a run path entry and normalises it;
/// relative entries (relative to the process's working directory) are dropped.
fn expand_origin(dir: &str, origin: &str) -> Option<String> {
    let origin = format!("/{origin}");
    let expanded = dir
        .replace("${ORIGIN}", &origin)
        .replace("$ORIGIN", &origin);
    if !expanded.starts_with('/') {
        return None;
    }
    // `..` is allowed in run paths; resolve it lexically.
    let mut parts: Vec<&str> = Vec::new();
    for part in expanded.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The first candidate path that resolves to an ELF file of the requester's class and machine.
fn find_compatible(
    tree: &Tree,
    candidates: impl Iterator<Item = String>,
    requester: &ElfDeps,
) -> Option<String> {
    candidates.into_iter().find(|candidate| {
        let Ok(resolved) = tree.resolve(candidate) else {
            return false;
        };
        let Some(data) = tree.get(&resolved).and_then(|n| n.data()) else {
            return false;
        };
        dependencies(candidate, data)
            .is_ok_and(|d| d.is_64 == requester.is_64 && d.machine == requester.machine)
    })
}

/// Resolves `path`, records it and every symlink followed in the closure, and returns the
/// resolved path of the regular file.
fn follow(tree: &Tree, path: &str, closure: &mut Closure) -> Result<String, ElfError> {
    let resolved = tree
        .resolve_traced(path)
        .map_err(|source| ElfError::NotFound {
            path: path.to_owned(),
            source,
        })?;
    file_data(tree, &resolved.path)?;
    closure.paths.extend(resolved.symlinks);
    closure.paths.insert(resolved.path.clone());
    Ok(resolved.path)
}

fn file_data<'t>(tree: &'t Tree, path: &str) -> Result<&'t [u8], ElfError> {
    match tree.get(path).map(|n| &n.kind) {
        Some(NodeKind::File(data)) => Ok(data),
        _ => Err(ElfError::NotAFile {
            path: path.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;
    use std::path::Path;

    /// Copies a host path into `tree` at the same place: symlinks as symlinks (their targets
    /// too, recursively), regular files with their contents. Only reads the host.
    fn load_host(tree: &mut Tree, host: &Path) {
        let rel = host.strip_prefix("/").unwrap().to_str().unwrap();
        if rel.is_empty() || tree.get(rel).is_some() {
            return;
        }
        // Load ancestors first so that symlinked directories (merged-usr) exist as links.
        if let Some(parent) = host.parent() {
            load_host(tree, parent);
        }
        let meta = std::fs::symlink_metadata(host).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(host).unwrap();
            tree.insert(rel, Node::symlink(target.to_str().unwrap()))
                .unwrap();
            let mut joined = std::path::PathBuf::new();
            for component in host.parent().unwrap().join(target).components() {
                match component {
                    std::path::Component::ParentDir => _ = joined.pop(),
                    other => joined.push(other),
                }
            }
            load_host(tree, &joined);
        } else if meta.is_dir() {
            tree.insert(rel, Node::dir(0o755)).unwrap();
        } else {
            tree.insert(rel, Node::file(std::fs::read(host).unwrap(), 0o755))
                .unwrap();
        }
    }

    /// The host's loader directories with every shared library under 16 MiB, and `programs`.
    fn host_tree(programs: &[&str]) -> Tree {
        let mut tree = Tree::new();
        for link in [
            "/lib",
            "/lib64",
            "/bin",
            "/sbin",
            "/usr/lib64/ld-linux-x86-64.so.2",
        ] {
            if Path::new(link).exists() {
                load_host(&mut tree, Path::new(link));
            }
        }
        for entry in std::fs::read_dir("/usr/lib/x86_64-linux-gnu").unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let small = entry.metadata().is_ok_and(|m| m.len() < 16 << 20);
            let library =
                (name.starts_with("lib") && name.contains(".so")) || name.starts_with("ld-");
            if library && small {
                load_host(&mut tree, &entry.path());
            }
        }
        for program in programs {
            load_host(&mut tree, Path::new(program));
        }
        tree
    }

    /// The canonical tree paths `ldd` reports for `program` (libraries and interpreter).
    fn ldd(program: &str) -> BTreeSet<String> {
        let output = std::process::Command::new("ldd")
            .arg(program)
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| {
                let path = line.split("=>").last()?.split_whitespace().next()?;
                path.starts_with('/').then(|| path.to_owned())
            })
            .map(|p| std::fs::canonicalize(p).unwrap().to_str().unwrap()[1..].to_owned())
            .collect()
    }

    #[test]
    fn host_binaries_match_ldd() {
        let programs: Vec<&str> = ["/usr/sbin/nsd", "/usr/sbin/bird", "/usr/bin/ls"]
            .into_iter()
            .filter(|p| Path::new(p).exists())
            .collect();
        assert!(!programs.is_empty() || std::env::var("CI").as_deref() != Ok("true"));
        let tree = host_tree(&programs);
        for program in programs {
            let closure = needed_closure(&tree, &[program]).unwrap();
            let files: BTreeSet<String> = closure
                .paths
                .iter()
                .filter(|p| tree.get(p).and_then(Node::data).is_some())
                .cloned()
                .collect();
            let mut expected = ldd(program);
            expected.insert(program[1..].to_owned());
            assert_eq!(files, expected, "{program}");
            // The loader's path /lib64/ld-linux-x86-64.so.2 needs both links on the way.
            for link in ["lib64", "usr/lib64/ld-linux-x86-64.so.2"] {
                assert!(closure.paths.contains(link), "{program}: {link}");
            }
            // Copied alone, the closure serves every lookup the loader makes.
            let mut image = Tree::new();
            for path in &closure.paths {
                image.copy_from(&tree, path).unwrap();
            }
            let output = std::process::Command::new("ldd")
                .arg(program)
                .output()
                .unwrap();
            for line in String::from_utf8(output.stdout).unwrap().lines() {
                let Some(path) = line
                    .split("=>")
                    .last()
                    .and_then(|p| p.split_whitespace().next())
                else {
                    continue;
                };
                if path.starts_with('/') {
                    assert!(
                        image.resolve(path).is_ok(),
                        "{program}: {path} in the image"
                    );
                }
            }
        }
    }

    #[test]
    fn missing_library_names_executable_and_soname() {
        let mut tree = host_tree(&["/usr/bin/ls"]);
        let libc = tree
            .resolve("usr/lib/x86_64-linux-gnu/libselinux.so.1")
            .unwrap();
        tree.remove(&libc);
        let err = needed_closure(&tree, &["usr/bin/ls"]).unwrap_err();
        assert!(
            matches!(&err, ElfError::MissingLibrary { executable, soname, .. }
                if executable == "usr/bin/ls" && soname == "libselinux.so.1"),
            "{err}"
        );
        let err = needed_closure(&tree, &["usr/bin/nope"]).unwrap_err();
        assert!(matches!(err, ElfError::NotFound { .. }), "{err}");
        tree.insert("usr/bin/text", Node::file(&b"#!/bin/sh\n"[..], 0o755))
            .unwrap();
        let err = needed_closure(&tree, &["usr/bin/text"]).unwrap_err();
        assert!(matches!(err, ElfError::NotElf { .. }), "{err}");
        tree.insert(
            "usr/bin/bad",
            Node::file(&b"\x7fELF\x02\x01\x01"[..], 0o755),
        )
        .unwrap();
        let err = needed_closure(&tree, &["usr/bin/bad"]).unwrap_err();
        assert!(matches!(err, ElfError::Parse { .. }), "{err}");
    }

    #[test]
    fn runpath_origin_and_incompatible_candidates() {
        let host = host_tree(&["/usr/bin/ls"]);
        let libc = host
            .get("usr/lib/x86_64-linux-gnu/libc.so.6")
            .unwrap()
            .clone();
        let ls = host.get("usr/bin/ls").unwrap().clone();
        let mut tree = Tree::new();
        // A non-ELF decoy earlier in the search path must be skipped, not chosen.
        tree.insert(
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            Node::file(&b"not elf"[..], 0o644),
        )
        .unwrap();
        tree.insert("lib/libc.so.6", libc).unwrap();
        tree.insert("opt/app/bin/ls", ls).unwrap();
        let ls_data = tree.get("opt/app/bin/ls").and_then(Node::data).unwrap();
        let deps = dependencies("opt/app/bin/ls", ls_data).unwrap();
        assert!(deps.is_64 && deps.needed.contains(&"libc.so.6".to_owned()));
        assert_eq!(
            expand_origin("$ORIGIN/../lib", "opt/app/bin").as_deref(),
            Some("opt/app/lib")
        );
        assert_eq!(
            expand_origin("${ORIGIN}", "opt/app/bin").as_deref(),
            Some("opt/app/bin")
        );
        assert_eq!(expand_origin("relative", "x"), None);
        let dirs = ["usr/lib/x86_64-linux-gnu", "lib"];
        let found = find_compatible(
            &tree,
            dirs.iter().map(|d| tree::join(d, "libc.so.6")),
            &deps,
        );
        assert_eq!(found.as_deref(), Some("lib/libc.so.6"));
        let wrong_machine = ElfDeps {
            machine: 183,
            ..deps.clone()
        };
        assert_eq!(
            find_compatible(
                &tree,
                dirs.iter().map(|d| tree::join(d, "libc.so.6")),
                &wrong_machine
            ),
            None
        );
    }
}
