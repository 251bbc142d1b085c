//! Kernel module dependency resolution for the image: which `.ko` files to ship and in which order
//! the init loads them.
//!
//! Owns the module index of one kernel release under `lib/modules/<release>/` of a
//! [`Tree`](crate::tree::Tree): from `modules.dep` when present, otherwise (Debian's `linux-image`
//! package ships no `modules.dep`; `depmod` writes it at install time) from the `depends=` and
//! `name=` fields of each uncompressed `.ko`'s `.modinfo` section. Names compare the way the kernel
//! compares them: `virtio-net` and `virtio_net` are the same module. Modules listed in
//! `modules.builtin` are satisfied without a file. The module also writes the `modules.dep` of the
//! reduced set so that the shipped tree stays self-consistent. Soft dependencies (`softdep=`) are
//! not followed: name such modules explicitly.

use std::collections::{BTreeMap, BTreeSet};

use object::read::elf::{FileHeader, SectionHeader};

use crate::tree::{self, Tree};

/// Where module trees live, relative to the image root.
pub const MODULES_DIR: &str = "lib/modules";
/// File name suffixes of module files, longest first.
const MODULE_SUFFIXES: [&str; 4] = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"];

/// Errors of building the index and resolving modules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KmodError {
    /// `lib/modules/<release>` is missing from the tree.
    #[error("{dir}: no such module directory")]
    NoModuleDir {
        /// The directory looked for.
        dir: String,
    },
    /// A module file's `.modinfo` could not be read.
    #[error("{path}: cannot read .modinfo: {reason}")]
    Modinfo {
        /// The module file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Compressed modules and no `modules.dep` to name their dependencies.
    #[error("{path}: compressed module and no modules.dep; decompress it first")]
    Compressed {
        /// The module file.
        path: String,
    },
    /// A `modules.dep` line is malformed.
    #[error("modules.dep line {line}: {reason}")]
    ModulesDep {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A wanted module does not exist (neither as a file nor built in).
    #[error("unknown kernel module {name}{}", suggest(.suggestions))]
    Unknown {
        /// The name as requested.
        name: String,
        /// Near names, if any.
        suggestions: Vec<String>,
    },
    /// A module depends on a module that does not exist.
    #[error("module {module} depends on unknown module {dependency}")]
    MissingDependency {
        /// The depending module.
        module: String,
        /// The missing dependency.
        dependency: String,
    },
    /// The dependencies form a cycle through this module.
    #[error("dependency cycle through module {module}")]
    Cycle {
        /// A module on the cycle.
        module: String,
    },
}

fn suggest(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", suggestions.join(", "))
    }
}

/// One loadable module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Canonical name (underscores).
    pub name: String,
    /// Path relative to `lib/modules/<release>/`, as `modules.dep` writes it.
    pub path: String,
    /// Names of the modules to load before this one, in loading order.
    pub depends: Vec<String>,
}

/// The modules of one kernel release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleIndex {
    release: String,
    modules: BTreeMap<String, Module>,
    builtin: BTreeSet<String>,
}

/// The canonical form of a module name: `virtio-net` becomes `virtio_net`.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The canonical module name of a module path (`kernel/net/virtio-x.ko.xz` -> `virtio_x`).
fn name_of_path(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    MODULE_SUFFIXES
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .map(canonical_name)
}

/// The kernel releases present under `lib/modules` of `tree`, sorted.
pub fn releases(tree: &Tree) -> Vec<String> {
    tree.iter_under(MODULES_DIR)
        .filter(|(_, node)| node.is_dir())
        .filter_map(|(path, _)| path.strip_prefix("lib/modules/"))
        .filter(|rest| !rest.contains('/'))
        .map(str::to_owned)
        .collect()
}

/// The `key=value` fields of an uncompressed module's `.modinfo` section, in order.
pub fn modinfo(data: &[u8]) -> Result<Vec<(String, String)>, String> {
    type Header = object::elf::FileHeader64<object::Endianness>;
    let header = Header::parse(data).map_err(|e| e.to_string())?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let sections = header.sections(endian, data).map_err(|e| e.to_string())?;
    let (_, section) = sections
        .section_by_name(endian, b".modinfo")
        .ok_or("no .modinfo section")?;
    let bytes = section.data(endian, data).map_err(|e| e.to_string())?;
    Ok(bytes
        .split(|&b| b == 0)
        .filter_map(|field| {
            let text = String::from_utf8_lossy(field);
            let (key, value) = text.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect())
}

impl ModuleIndex {
    /// Builds the index of `lib/modules/<release>` in `tree`: from `modules.dep` if present,
    /// else from the `.modinfo` of every `.ko`.
    pub fn from_tree(tree: &Tree, release: &str) -> Result<ModuleIndex, KmodError> {
        let dir = tree::join(MODULES_DIR, release);
        if !tree.get(&dir).is_some_and(|n| n.is_dir()) {
            return Err(KmodError::NoModuleDir { dir });
        }
        let text = |name: &str| {
            let data = tree.get(&tree::join(&dir, name)).and_then(|n| n.data());
            data.map(|d| String::from_utf8_lossy(d).into_owned())
        };
        let builtin = text("modules.builtin").unwrap_or_default();
        if let Some(dep) = text("modules.dep") {
            return ModuleIndex::from_modules_dep(release, &dep, &builtin);
        }
        let mut modules = BTreeMap::new();
        let prefix = format!("{dir}/");
        for (path, node) in tree.iter_under(&dir) {
            let Some(name) = name_of_path(path) else {
                continue;
            };
            let Some(data) = node.data() else { continue };
            if !path.ends_with(".ko") {
                return Err(KmodError::Compressed { path: path.clone() });
            }
            let fields = modinfo(data).map_err(|reason| KmodError::Modinfo {
                path: path.clone(),
                reason,
            })?;
            let field = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
            };
            let name = field("name").map_or(name, canonical_name);
            let depends = field("depends")
                .unwrap_or_default()
                .split(',')
                .filter(|d| !d.is_empty())
                .map(canonical_name)
                .collect();
            let rel = path.strip_prefix(&prefix).unwrap_or(path).to_owned();
            modules.insert(
                name.clone(),
                Module {
                    name,
                    path: rel,
                    depends,
                },
            );
        }
        Ok(ModuleIndex {
            release: release.to_owned(),
            modules,
            builtin: parse_builtin(&builtin),
        })
    }

    /// Builds the index from the text of `modules.dep` and `modules.builtin`.
    pub fn from_modules_dep(
        release: &str,
        modules_dep: &str,
        modules_builtin: &str,
    ) -> Result<ModuleIndex, KmodError> {
        let mut modules = BTreeMap::new();
        for (number, line) in modules_dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason| KmodError::ModulesDep {
                line: number + 1,
                reason,
            };
            let (path, deps) = line.split_once(':').ok_or(bad("no ':'"))?;
            let name = name_of_path(path).ok_or(bad("not a module path"))?;
            // modprobe loads the listed dependencies last to first.
            let depends = deps
                .split_whitespace()
                .rev()
                .map(|d| name_of_path(d).ok_or(bad("dependency is not a module path")))
                .collect::<Result<_, _>>()?;
            modules.insert(
                name.clone(),
                Module {
                    name,
                    path: path.to_owned(),
                    depends,
                },
            );
        }
        Ok(ModuleIndex {
            release: release.to_owned(),
            modules,
            builtin: parse_builtin(modules_builtin),
        })
    }

    /// The kernel release.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// The module directory in the tree: `lib/modules/<release>`.
    pub fn dir(&self) -> String {
        tree::join(MODULES_DIR, &self.release)
    }

    /// A loadable module by name (either spelling).
    pub fn get(&self, name: &str) -> Option<&Module> {
        self.modules.get(&canonical_name(name))
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical_name(name))
    }

    /// The modules to load for `wanted`, dependencies first, each once; built-in modules are
    /// satisfied and omitted. The order depends only on `wanted` and the index.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<&Module>, KmodError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for name in wanted {
            let canonical = canonical_name(name);
            if !self.modules.contains_key(&canonical) && !self.builtin.contains(&canonical) {
                return Err(KmodError::Unknown {
                    name: (*name).to_owned(),
                    suggestions: self.near_names(&canonical),
                });
            }
            self.visit(&canonical, &mut Vec::new(), &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<&'a Module>,
    ) -> Result<(), KmodError> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(KmodError::Cycle {
                module: name.to_owned(),
            });
        }
        let module = self
            .modules
            .get(name)
            .ok_or_else(|| KmodError::MissingDependency {
                module: path.last().cloned().unwrap_or_default(),
                dependency: name.to_owned(),
            })?;
        path.push(name.to_owned());
        for dep in &module.depends {
            self.visit(dep, path, done, order)?;
        }
        path.pop();
        done.insert(name.to_owned());
        order.push(module);
        Ok(())
    }

    /// Up to five known names within edit distance 2 of `name`, or containing it.
    fn near_names(&self, name: &str) -> Vec<String> {
        self.modules
            .keys()
            .chain(&self.builtin)
            .filter(|known| {
                (name.len() >= 3 && known.contains(name)) || edit_distance(known, name) <= 2
            })
            .take(5)
            .cloned()
            .collect()
    }

    /// The `modules.dep` of exactly `load_order` (as returned by [`ModuleIndex::load_order`]):
    /// one line per module in that order, listing all its transitive dependencies last-loaded
    /// first, as `depmod` writes them.
    pub fn modules_dep(&self, load_order: &[&Module]) -> String {
        let position: BTreeMap<&str, usize> = load_order
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), i))
            .collect();
        let mut out = String::new();
        for module in load_order {
            let mut deps = BTreeSet::new();
            let mut stack: Vec<&str> = module.depends.iter().map(String::as_str).collect();
            while let Some(dep) = stack.pop() {
                if let Some(&i) = position.get(dep)
                    && deps.insert(std::cmp::Reverse(i))
                {
                    stack.extend(load_order[i].depends.iter().map(String::as_str));
                }
            }
            out.push_str(&module.path);
            out.push(':');
            for std::cmp::Reverse(i) in deps {
                out.push(' ');
                out.push_str(&load_order[i].path);
            }
            out.push('\n');
        }
        out
    }
}

fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(name_of_path).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cost = if ca == cb { prev } else { prev + 1 };
            prev = row[j + 1];
            row[j + 1] = cost.min(row[j] + 1).min(prev + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
kernel/c.ko: kernel/gone.ko
";
    const BUILTIN: &str = "kernel/net/unix/unix.ko\nkernel/net/packet/af_packet.ko\n";

    /// Every module comes after all of its (non-builtin) dependencies.
    fn assert_dependencies_first(index: &ModuleIndex, order: &[&Module]) {
        for (i, module) in order.iter().enumerate() {
            for dep in module.depends.iter().filter(|d| !index.is_builtin(d)) {
                let at = order.iter().position(|m| &m.name == dep);
                assert!(
                    at.is_some_and(|at| at < i),
                    "{} before its dependency {dep}",
                    module.name
                );
            }
        }
    }

    fn names(order: &[&Module]) -> Vec<String> {
        order.iter().map(|m| m.name.clone()).collect()
    }

    #[test]
    fn load_order_from_modules_dep() {
        let index = ModuleIndex::from_modules_dep("6.1.0-test", DEP, BUILTIN).unwrap();
        let order = index
            .load_order(&["virtio-pci", "virtio_net", "unix"])
            .unwrap();
        let want = [
            "virtio_ring",
            "virtio",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio_pci",
            "failover",
            "net_failover",
            "virtio_net",
        ];
        assert_eq!(names(&order), want);
        assert_dependencies_first(&index, &order);
        assert!(index.is_builtin("af-packet") && index.get("unix").is_none());
        assert_eq!(
            names(&index.load_order(&["virtio_ring", "virtio_ring"]).unwrap()),
            ["virtio_ring"]
        );
        assert!(matches!(
            index.load_order(&["a"]),
            Err(KmodError::Cycle { .. })
        ));
        assert_eq!(
            index.load_order(&["c"]),
            Err(KmodError::MissingDependency {
                module: "c".into(),
                dependency: "gone".into()
            })
        );
        let err = index.load_order(&["virtio_nt"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown kernel module virtio_nt (did you mean virtio_net?)"
        );
    }

    #[test]
    fn reduced_modules_dep_round_trips() {
        let index = ModuleIndex::from_modules_dep("r", DEP, "").unwrap();
        let order = index.load_order(&["virtio_net"]).unwrap();
        let text = index.modules_dep(&order);
        assert_eq!(
            text.lines().last(),
            Some(
                "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko"
            )
        );
        let reduced = ModuleIndex::from_modules_dep("r", &text, "").unwrap();
        assert_eq!(
            names(&reduced.load_order(&["virtio_net"]).unwrap()),
            names(&order)
        );
        assert!(matches!(
            reduced.load_order(&["virtio_pci"]),
            Err(KmodError::Unknown { .. })
        ));
        assert!(ModuleIndex::from_modules_dep("r", "no colon\n", "").is_err());
    }

    #[test]
    fn from_tree_prefers_modules_dep_and_rejects_compressed_without_it() {
        let mut tree = Tree::new();
        let dir = "lib/modules/6.1.0-test";
        tree.insert(
            &format!("{dir}/modules.dep"),
            Node::file(DEP.as_bytes(), 0o644),
        )
        .unwrap();
        tree.insert(
            &format!("{dir}/kernel/x.ko.xz"),
            Node::file(&b"xz"[..], 0o644),
        )
        .unwrap();
        assert_eq!(releases(&tree), ["6.1.0-test"]);
        assert!(
            ModuleIndex::from_tree(&tree, "6.1.0-test")
                .unwrap()
                .get("virtio-net")
                .is_some()
        );
        tree.remove(&format!("{dir}/modules.dep"));
        let err = ModuleIndex::from_tree(&tree, "6.1.0-test").unwrap_err();
        assert!(matches!(err, KmodError::Compressed { .. }), "{err}");
        assert!(matches!(
            ModuleIndex::from_tree(&tree, "9.9"),
            Err(KmodError::NoModuleDir { .. })
        ));
        tree.insert(
            &format!("{dir}/kernel/x.ko.xz"),
            Node::file(&b"\x7fELF junk"[..], 0o644),
        )
        .unwrap();
        tree.insert(
            &format!("{dir}/kernel/y.ko"),
            Node::file(&b"\x7fELF junk"[..], 0o644),
        )
        .unwrap();
        tree.remove(&format!("{dir}/kernel/x.ko.xz"));
        assert!(matches!(
            ModuleIndex::from_tree(&tree, "6.1.0-test"),
            Err(KmodError::Modinfo { .. })
        ));
    }
}
