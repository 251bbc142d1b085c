//! The format layer against the real locked Debian kernel package (fetched into the shared test
//! cache): full extraction, and the module index built from the modules' own `.modinfo`
//! (Debian ships no modules.dep).

mod common;

use std::path::PathBuf;

use common::*;
use imrs_build::deb::DebArchive;
use imrs_build::kmod::{ModuleIndex, releases};
use imrs_build::tree::{self, Tree};

fn kernel_deb() -> Option<PathBuf> {
    let lock = usable_lock("qemu.toml")?;
    let l: serde_json::Value = serde_json::from_slice(&std::fs::read(lock).unwrap()).unwrap();
    let k = l["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "kernel")
        .unwrap();
    let name = format!(
        "{}_{}_{}.deb",
        k["name"].as_str().unwrap(),
        k["version"].as_str().unwrap().replace(':', "%3a"),
        k["architecture"].as_str().unwrap()
    );
    Some(cache().join("debs").join(name))
}

#[test]
fn real_kernel_package_extracts() {
    let Some(path) = kernel_deb() else { return };
    let start = std::time::Instant::now();
    let deb = DebArchive::open(&path).unwrap();
    let tree = deb.files().unwrap();
    eprintln!(
        "{}: {} nodes, {} bytes in {:?}",
        deb.control().package(),
        tree.len(),
        tree.total_size(),
        start.elapsed()
    );
    assert!(deb.control().package().starts_with("linux-image-"));
    assert!(tree.iter().any(|(p, _)| p.starts_with("boot/vmlinuz-")));
    assert!(tree.len() > 4000);
}

#[test]
fn real_kernel_module_order_from_modinfo() {
    let Some(path) = kernel_deb() else { return };
    let deb = DebArchive::open(&path).unwrap();
    let mut tree = Tree::new();
    deb.extract_into(&mut tree, |p| p.starts_with("lib/modules/"))
        .unwrap();
    let release = releases(&tree).pop().unwrap();
    let index = ModuleIndex::from_tree(&tree, &release).unwrap();
    let order = index
        .load_order(&["virtio_pci", "virtio-net", "unix"])
        .unwrap();
    let names: Vec<String> = order.iter().map(|m| m.name.clone()).collect();
    // Dependencies first, each once.
    for (i, m) in order.iter().enumerate() {
        for d in &m.depends {
            let pos = names.iter().position(|n| n == d);
            assert!(
                pos.is_some_and(|p| p < i),
                "{} needs {d} first: {names:?}",
                m.name
            );
        }
    }
    assert_eq!(names.last().map(String::as_str), Some("virtio_net"));
    let mut sorted = names.clone();
    sorted.sort();
    // The set recorded in docs/lab-notes.md for virtio-net.
    assert_eq!(
        sorted,
        [
            "failover",
            "net_failover",
            "virtio",
            "virtio_net",
            "virtio_pci",
            "virtio_pci_legacy_dev",
            "virtio_pci_modern_dev",
            "virtio_ring"
        ]
    );
    assert!(
        order
            .iter()
            .all(|m| tree.get(&tree::join(&index.dir(), &m.path)).is_some())
    );
    assert!(index.is_builtin("unix"));
    let err = index.load_order(&["virtio_nett"]).unwrap_err().to_string();
    assert!(
        err.contains("virtio_nett") && err.contains("virtio_net"),
        "{err}"
    );
}
