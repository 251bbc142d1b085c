//! The image layout: the paths every image owns, which a recipe's `files` may not replace.
//!
//! The builder (`builder/src/assemble.rs`) lays out every image the same way: `/init` (the static
//! imrs-init) and the `poweroff`/`reboot`/`halt` links to it, the merged-usr skeleton (`/bin`,
//! `/sbin`, `/lib`, `/lib64` are links into `/usr`), the daemons and their libraries from the
//! locked packages, the kernel modules under `/usr/lib/modules`, what the init reads under
//! `/etc/imrs` (image info, site-signing key, embedded site config), `/etc/passwd`, `/etc/group`,
//! `/etc/hostname`, `/etc/nsswitch.conf` (and `/etc/hosts`, which the init writes), the device
//! nodes in `/dev`, and the mount points the init uses. A recipe file
//! over any of these would replace the init, a daemon, a library or a key the image's signature
//! vouches for, so [`owner`] names them; the recipe check refuses such a destination.
//!
//! The one path under `/etc/imrs` a recipe supplies is the trust anchor file
//! ([`crate::image::ANCHORS_PATH`]).

use crate::image::{ANCHORS_PATH, IMAGE_INFO_PATH, IMAGE_PUBKEY_PATH, SITE_PUBKEY_PATH};

/// The merged-usr links at the root of every image and where they point.
pub const MERGED_USR: [(&str, &str); 4] = [
    ("/bin", "/usr/bin"),
    ("/sbin", "/usr/sbin"),
    ("/lib", "/usr/lib"),
    ("/lib64", "/usr/lib64"),
];

/// Executables the init runs from the image (the daemons and their control tools).
pub const DAEMON_BINARIES: [&str; 12] = [
    "/usr/sbin/bird",
    "/usr/sbin/birdc",
    "/usr/sbin/birdcl",
    "/usr/sbin/nsd",
    "/usr/sbin/nsd-control",
    "/usr/sbin/nsd-checkconf",
    "/usr/sbin/knotd",
    "/usr/sbin/knotc",
    "/usr/sbin/chronyd",
    "/usr/sbin/chronyc",
    "/usr/sbin/kzonecheck",
    "/usr/sbin/nft",
];

/// Paths under `/etc/imrs` that a recipe provides (everything else there is the image's).
pub const RECIPE_SUPPLIED: [&str; 1] = [ANCHORS_PATH];

/// One path the image owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    /// Absolute path.
    pub path: &'static str,
    /// Whether everything below the path is owned too.
    pub subtree: bool,
    /// What it is, for error messages.
    pub what: &'static str,
}

const fn exact(path: &'static str, what: &'static str) -> Owned {
    Owned {
        path,
        subtree: false,
        what,
    }
}

const fn tree(path: &'static str, what: &'static str) -> Owned {
    Owned {
        path,
        subtree: true,
        what,
    }
}

/// Every path the image owns. Paths through the merged-usr links are checked as the `/usr`
/// path they lead to.
pub const OWNED: &[Owned] = &[
    exact("/init", "the image's init (imrs-init)"),
    exact("/usr/sbin/poweroff", "a link to the init"),
    exact("/usr/sbin/reboot", "a link to the init"),
    exact("/usr/sbin/halt", "a link to the init"),
    exact(IMAGE_INFO_PATH, "the image's description of itself"),
    exact(SITE_PUBKEY_PATH, "the site-signing public key"),
    exact(
        IMAGE_PUBKEY_PATH,
        "the image-signing public key (remote updates verify with it)",
    ),
    tree(
        "/etc/imrs",
        "the init's configuration (image info, keys, site config)",
    ),
    exact("/etc/passwd", "the image's user database"),
    exact("/etc/group", "the image's group database"),
    exact("/etc/hostname", "the image's host name"),
    exact(
        "/etc/nsswitch.conf",
        "the image's name service switch (files only)",
    ),
    exact(
        "/etc/hosts",
        "written by the init at boot (the site's NTS servers)",
    ),
    tree("/usr/lib/modules", "the kernel modules"),
    tree(
        "/usr/lib/x86_64-linux-gnu",
        "the libraries of the image's executables",
    ),
    tree("/usr/lib64", "the dynamic loader"),
    exact("/usr", "a folder of the merged-usr skeleton"),
    exact("/usr/bin", "a folder of the merged-usr skeleton"),
    exact("/usr/sbin", "a folder of the merged-usr skeleton"),
    exact("/usr/lib", "a folder of the merged-usr skeleton"),
    exact("/bin", "a merged-usr link"),
    exact("/sbin", "a merged-usr link"),
    exact("/lib", "a merged-usr link"),
    exact("/lib64", "a merged-usr link"),
    tree("/dev", "device nodes"),
    tree("/proc", "a kernel file system mount point"),
    tree("/sys", "a kernel file system mount point"),
    tree("/run", "the init's runtime folder"),
    tree("/tmp", "a runtime folder"),
    tree("/var/lib/imrs", "the data partition's mount point"),
    exact("/root", "root's home folder"),
];

/// `path` with a leading merged-usr link replaced by its target (`/bin/sh` -> `/usr/bin/sh`);
/// the links themselves are kept.
pub fn through_merged_usr(path: &str) -> String {
    for (link, target) in MERGED_USR {
        if let Some(rest) = path.strip_prefix(link)
            && rest.starts_with('/')
        {
            return format!("{target}{rest}");
        }
    }
    path.to_string()
}

fn covers(o: &Owned, path: &str) -> bool {
    path == o.path
        || (o.subtree
            && path
                .strip_prefix(o.path)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// What the image has at `dest` (an absolute, normalised path) that a recipe file would
/// replace, or `None` when the path is free. `binaries` are the recipe's `userland.binaries`
/// (the daemons the image ships).
pub fn owner(dest: &str, binaries: &[String]) -> Option<String> {
    let path = through_merged_usr(dest);
    if RECIPE_SUPPLIED.contains(&path.as_str()) {
        return None;
    }
    let daemon = |b: &str| through_merged_usr(b) == path;
    if DAEMON_BINARIES.iter().any(|b| daemon(b)) || binaries.iter().any(|b| daemon(b)) {
        return Some("a daemon executable from the locked packages".into());
    }
    OWNED.iter().find(|o| covers(o, &path)).map(|o| {
        if o.path == path {
            o.what.to_string()
        } else {
            format!("inside {}: {}", o.path, o.what)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_are_owned_and_others_free() {
        let bins = vec!["/usr/sbin/nsd".to_string(), "/usr/bin/custom".to_string()];
        for p in [
            "/init",
            "/etc/imrs/image.json",
            "/etc/imrs/site-signing.pub",
            "/etc/imrs/site.toml",
            "/etc/imrs/site.toml.sig",
            "/etc/imrs/anything",
            "/usr/lib/modules/6.1.0-44-amd64/kernel/x.ko",
            "/lib/modules/6.1.0-44-amd64/modules.dep",
            "/usr/sbin/bird",
            "/sbin/nsd",
            "/usr/bin/custom",
            "/usr/sbin/reboot",
            "/dev/console",
            "/dev/sda",
            "/bin",
            "/lib64",
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/etc/passwd",
            "/var/lib/imrs/zone/root.zone",
            "/run/imrs/dns/nsd.conf",
            "/proc/sys/kernel/x",
        ] {
            assert!(owner(p, &bins).is_some(), "{p} is the image's");
        }
        for p in [
            "/etc/imrs/root-anchors.xml",
            "/etc/chrony/chrony.conf",
            "/usr/share/imrs/notes.txt",
            "/usr/local/bin/tool",
            "/etc/imrs-extra",
            "/initrd",
            "/var/lib/imrsx",
        ] {
            assert_eq!(owner(p, &bins), None, "{p} is free");
        }
        assert_eq!(through_merged_usr("/bin/sh"), "/usr/bin/sh");
        assert_eq!(through_merged_usr("/binary"), "/binary");
        assert_eq!(through_merged_usr("/bin"), "/bin");
    }
}
