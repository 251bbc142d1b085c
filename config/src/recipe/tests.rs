//! Recipe and profile tests: the shipped recipes load; each bad input names file, key and rule.

use std::path::{Path, PathBuf};

use super::*;

fn images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../images")
}

/// Copies the shipped qemu recipe, its profiles and files into a temp dir, applying `edit` to
/// the recipe text.
fn variant(edit: impl Fn(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    for p in ["qemu", "calypso", "pandora"] {
        std::fs::copy(
            images().join(format!("profiles/{p}.toml")),
            dir.path().join(format!("profiles/{p}.toml")),
        )
        .unwrap();
    }
    std::fs::create_dir(dir.path().join("files")).unwrap();
    std::fs::copy(
        images().join("files/root-anchors.xml"),
        dir.path().join("files/root-anchors.xml"),
    )
    .unwrap();
    let text = std::fs::read_to_string(images().join("qemu.toml")).unwrap();
    let path = dir.path().join("qemu.toml");
    std::fs::write(&path, edit(text)).unwrap();
    (dir, path)
}

#[test]
fn shipped_recipes_load() {
    for (name, dns, profile) in [
        ("qemu", DnsImpl::Nsd, "qemu"),
        ("qemu-knot", DnsImpl::Knot, "qemu"),
        ("calypso", DnsImpl::Nsd, "calypso"),
        ("pandora", DnsImpl::Knot, "pandora"),
    ] {
        let r = load(&images().join(format!("{name}.toml"))).unwrap();
        assert_eq!(r.recipe.dns, dns, "{name}");
        assert_eq!(r.profile.name, profile);
        assert!(r.modules.iter().all(|m| !m.contains('-')));
        assert_eq!(r.sha256.len(), 64);
        assert_eq!(
            r.recipe.boot.as_ref().map(|b| b.package.as_str()),
            Some("systemd-boot-efi"),
            "{name}: appliance disks need the boot loader"
        );
    }
}

#[test]
fn bad_recipes_name_key_and_rule() {
    type Edit = dyn Fn(String) -> String;
    let cases: &[(&str, &Edit, &str)] = &[
        (
            "unknown key",
            &|t| t.replace("dns = \"nsd\"", "dns = \"nsd\"\ncolour = \"blue\""),
            "unknown field `colour`",
        ),
        (
            "missing profile",
            &|t| t.replace("profile = \"qemu\"", "profile = \"toaster\""),
            "no such hardware profile",
        ),
        (
            "bad dns",
            &|t| t.replace("dns = \"nsd\"", "dns = \"bind\""),
            "unknown variant `bind`",
        ),
        (
            "dns without package",
            &|t| t.replace("dns = \"nsd\"", "dns = \"knot\""),
            "needs the package knot",
        ),
        (
            "version",
            &|t| t.replace("version = 1", "version = 7"),
            "version = 7",
        ),
        (
            "bad module",
            &|t| t.replace("\"dummy\"", "\"dum my\""),
            "kernel.modules[1]",
        ),
        (
            "not a kernel",
            &|t| t.replace("linux-image-amd64", "bash"),
            "kernel.package = bash",
        ),
        (
            "bad sha",
            &|t| t.replace("sha256 = \"fa2d", "sha256 = \"zz2d"),
            "files[0].sha256",
        ),
        (
            "relative dest",
            &|t| t.replace("dest = \"/etc", "dest = \"etc"),
            "files[0].dest",
        ),
        (
            "bad mirror",
            &|t| t.replace("\"http://deb.debian.org/debian\",", "\"ftp://x/debian\","),
            "apt.mirrors[0] = ftp://x/debian",
        ),
        (
            "bad suite",
            &|t| t.replace("\"bookworm-updates\"", "\"book worm\""),
            "apt.suites[1]",
        ),
        (
            "no bird",
            &|t| t.replace("\"bird2\", \"nsd\"", "\"nsd\""),
            "BGP needs bird2",
        ),
        (
            "bad boot loader package",
            &|t| {
                t.replace(
                    "package = \"systemd-boot-efi\"",
                    "package = \"Systemd Boot\"",
                )
            },
            "boot.package = Systemd Boot",
        ),
    ];
    for (what, edit, expect) in cases {
        let (_d, path) = variant(edit);
        let err = load(&path).expect_err(what).to_string();
        assert!(err.contains(expect), "{what}: {err}");
        assert!(
            err.contains("qemu.toml") || err.contains("toaster"),
            "{what}: names the file: {err}"
        );
    }
}

#[test]
fn bad_profile_is_named() {
    let (dir, path) = variant(|t| t);
    let prof = dir.path().join("profiles/qemu.toml");
    let text = std::fs::read_to_string(&prof).unwrap();
    std::fs::write(&prof, text.replace("min_mib = 512", "min_mib = 12")).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains("memory.min_mib = 12"), "{err}");
    std::fs::write(&prof, text.replace("name = \"qemu\"", "name = \"kvm\"")).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains("must match the file name"), "{err}");
}

/// The qemu recipe with one more `[[files]]` entry (`files[1]`).
fn extra_file(source: &str, dest: &str, mode: Option<&str>) -> impl Fn(String) -> String {
    let entry = format!(
        "\n[[files]]\nsource = \"{source}\"\ndest = \"{dest}\"\nsha256 = \"{}\"\n{}",
        "0".repeat(64),
        mode.map(|m| format!("mode = {m}\n")).unwrap_or_default()
    );
    move |t: String| format!("{t}{entry}")
}

fn with_package(p: &'static str) -> impl Fn(String) -> String {
    move |t: String| {
        t.replace(
            "\"bird2\", \"nsd\"",
            &format!("\"bird2\", \"nsd\", \"{p}\""),
        )
    }
}

#[test]
fn unsafe_recipes_are_refused() {
    type Edit = Box<dyn Fn(String) -> String>;
    let anchors = "files/root-anchors.xml";
    let cases: Vec<(&str, Edit, &str)> = vec![
        // Paths stay inside the recipe's folder.
        (
            "profile reaching out with ..",
            Box::new(|t| t.replace("profile = \"qemu\"", "profile = \"../../etc/passwd\"")),
            "profile = ../../etc/passwd: a profile name",
        ),
        (
            "profile given as a path",
            Box::new(|t| t.replace("profile = \"qemu\"", "profile = \"/etc/passwd\"")),
            "profile = /etc/passwd: a profile name",
        ),
        (
            "source with ..",
            Box::new(extra_file("../../etc/shadow", "/etc/x", None)),
            "files[1].source = ../../etc/shadow: may not leave the recipe's folder",
        ),
        (
            "absolute source",
            Box::new(extra_file("/etc/shadow", "/etc/x", None)),
            "files[1].source = /etc/shadow: a path relative to the recipe's folder",
        ),
        (
            "source that does not exist",
            Box::new(extra_file("files/nope", "/etc/x", None)),
            "files[1].source = files/nope: no such file",
        ),
        (
            "source that is a folder",
            Box::new(extra_file("files", "/etc/x", None)),
            "is not a regular file",
        ),
        // Modes.
        (
            "setuid",
            Box::new(extra_file(anchors, "/etc/x", Some("0o4755"))),
            "files[1].mode = 4755: no setuid, setgid or sticky bit",
        ),
        (
            "setgid",
            Box::new(extra_file(anchors, "/etc/x", Some("0o2755"))),
            "files[1].mode = 2755: no setuid",
        ),
        (
            "sticky",
            Box::new(extra_file(anchors, "/etc/x", Some("0o1644"))),
            "files[1].mode = 1644: no setuid",
        ),
        (
            "world-writable 0777",
            Box::new(extra_file(anchors, "/etc/x", Some("0o777"))),
            "files[1].mode = 777: not world-writable",
        ),
        (
            "world-writable 0666",
            Box::new(extra_file(anchors, "/etc/x", Some("0o666"))),
            "files[1].mode = 666: not world-writable",
        ),
        // Destinations the image owns.
        (
            "over the init",
            Box::new(extra_file(anchors, "/init", None)),
            "files[1].dest = /init: the image owns this path (the image's init (imrs-init))",
        ),
        (
            "over the site key",
            Box::new(extra_file(anchors, "/etc/imrs/site-signing.pub", None)),
            "files[1].dest = /etc/imrs/site-signing.pub: the image owns this path",
        ),
        (
            "over an embedded site config",
            Box::new(extra_file(anchors, "/etc/imrs/site.toml", None)),
            "files[1].dest = /etc/imrs/site.toml: the image owns this path (inside /etc/imrs",
        ),
        (
            "into the modules",
            Box::new(extra_file(
                anchors,
                "/usr/lib/modules/6.1.0-44-amd64/evil.ko",
                None,
            )),
            "the image owns this path (inside /usr/lib/modules: the kernel modules)",
        ),
        (
            "into the modules through /lib",
            Box::new(extra_file(anchors, "/lib/modules/x/modules.dep", None)),
            "files[1].dest = /lib/modules/x/modules.dep: the image owns this path",
        ),
        (
            "over a daemon",
            Box::new(extra_file(anchors, "/usr/sbin/nsd", None)),
            "files[1].dest = /usr/sbin/nsd: the image owns this path (a daemon executable",
        ),
        (
            "over a daemon through /sbin",
            Box::new(extra_file(anchors, "/sbin/bird", None)),
            "files[1].dest = /sbin/bird: the image owns this path (a daemon executable",
        ),
        (
            "over a library",
            Box::new(extra_file(anchors, "/lib/x86_64-linux-gnu/libc.so.6", None)),
            "the image owns this path (inside /usr/lib/x86_64-linux-gnu",
        ),
        (
            "over a device node",
            Box::new(extra_file(anchors, "/dev/console", None)),
            "files[1].dest = /dev/console: the image owns this path",
        ),
        (
            "over a merged-usr link",
            Box::new(extra_file(anchors, "/bin", None)),
            "files[1].dest = /bin: the image owns this path (a merged-usr link)",
        ),
        (
            "over reboot",
            Box::new(extra_file(anchors, "/usr/sbin/reboot", None)),
            "files[1].dest = /usr/sbin/reboot: the image owns this path (a link to the init)",
        ),
        (
            "over the data partition",
            Box::new(extra_file(anchors, "/var/lib/imrs/zone/root.zone", None)),
            "the image owns this path (inside /var/lib/imrs",
        ),
        (
            "a destination with //",
            Box::new(extra_file(anchors, "//init", None)),
            "files[1].dest = //init: an absolute, normalised path",
        ),
        (
            "a destination with .",
            Box::new(extra_file(anchors, "/etc/./x", None)),
            "files[1].dest = /etc/./x: an absolute, normalised path",
        ),
        (
            "a destination with ..",
            Box::new(extra_file(anchors, "/etc/../init", None)),
            "files[1].dest = /etc/../init: an absolute, normalised path",
        ),
        (
            "two files at one destination",
            Box::new(extra_file(anchors, "/etc/imrs/root-anchors.xml", None)),
            "files[1].dest = /etc/imrs/root-anchors.xml: another file has the same destination",
        ),
        // Shells and remote logins.
        (
            "bash",
            Box::new(with_package("bash")),
            "userland.packages[2] = bash: gives the appliance a shell or a remote login",
        ),
        (
            "dash",
            Box::new(with_package("dash")),
            "userland.packages[2] = dash: gives",
        ),
        (
            "busybox",
            Box::new(with_package("busybox")),
            "userland.packages[2] = busybox: gives",
        ),
        (
            "zsh",
            Box::new(with_package("zsh")),
            "userland.packages[2] = zsh: gives",
        ),
        (
            "openssh-server",
            Box::new(with_package("openssh-server")),
            "userland.packages[2] = openssh-server: gives",
        ),
        (
            "dropbear-bin",
            Box::new(with_package("dropbear-bin")),
            "userland.packages[2] = dropbear-bin: gives",
        ),
        (
            "inetutils-telnetd",
            Box::new(with_package("inetutils-telnetd")),
            "userland.packages[2] = inetutils-telnetd: gives",
        ),
        (
            "a shell among the binaries",
            Box::new(|t| {
                t.replace(
                    "\"/usr/sbin/nft\"]",
                    "\"/usr/sbin/nft\", \"/usr/bin/dash\"]",
                )
            }),
            "userland.binaries[7] = /usr/bin/dash: gives the appliance a shell",
        ),
        (
            "a file placed at /bin/sh",
            Box::new(extra_file(anchors, "/bin/sh", Some("0o755"))),
            "files[1].dest = /bin/sh: gives the appliance a shell",
        ),
        (
            "allow_shell without a reason",
            Box::new(|t| {
                with_package("bash")(t)
                    .replace("dns = \"nsd\"", "dns = \"nsd\"\nallow_shell = true")
            }),
            "allow_shell_reason = : allow_shell = true needs a reason",
        ),
        (
            "allow_shell with a blank reason",
            Box::new(|t| {
                t.replace(
                    "dns = \"nsd\"",
                    "dns = \"nsd\"\nallow_shell = true\nallow_shell_reason = \"  \"",
                )
            }),
            "allow_shell = true needs a reason",
        ),
        (
            "a reason without allow_shell",
            Box::new(|t| {
                t.replace(
                    "dns = \"nsd\"",
                    "dns = \"nsd\"\nallow_shell_reason = \"debug\"",
                )
            }),
            "allow_shell_reason = debug: given without allow_shell = true",
        ),
        // Lengths and characters.
        (
            "a control character in the command line",
            Box::new(|t| t.replace("panic=-1", "panic=-1\\u001b[2J")),
            "kernel.cmdline = console=ttyS0 panic=-1\\u{1b}[2J loglevel=4 module.sig_enforce=1 \
             cryptomgr.notests: one line",
        ),
        (
            "a huge image name",
            Box::new(|t| {
                t.replace(
                    "name = \"imrs-qemu\"",
                    &format!("name = \"{}\"", "x".repeat(5000)),
                )
            }),
            "name = xxxx",
        ),
    ];
    for (what, edit, expect) in cases {
        let (_d, path) = variant(edit);
        let err = load(&path).expect_err(what).to_string();
        assert!(err.contains(expect), "{what}: {err}");
        assert!(err.contains("qemu.toml"), "{what}: names the file: {err}");
        assert!(!err.chars().any(char::is_control), "{what}: {err:?}");
        assert!(err.len() < 1000, "{what}: {} bytes", err.len());
    }
}

#[cfg(unix)]
#[test]
fn symbolic_links_out_of_the_recipe_folder_are_refused() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "root:x:0:0\n").unwrap();
    std::fs::copy(
        images().join("profiles/qemu.toml"),
        outside.path().join("qemu.toml"),
    )
    .unwrap();

    // A profile that is a link to a file outside.
    let (dir, path) = variant(|t| t);
    let prof = dir.path().join("profiles/qemu.toml");
    std::fs::remove_file(&prof).unwrap();
    symlink(outside.path().join("qemu.toml"), &prof).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(
        err.contains("profile = qemu: resolves (through a symbolic link) to")
            && err.contains("outside the recipe's folder"),
        "{err}"
    );

    // The profiles folder itself is a link to outside.
    let (dir, path) = variant(|t| t);
    std::fs::remove_dir_all(dir.path().join("profiles")).unwrap();
    symlink(outside.path(), dir.path().join("profiles")).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains("outside the recipe's folder"), "{err}");

    // A file source that is a link to outside.
    let (dir, path) = variant(extra_file("files/link", "/etc/x", None));
    symlink(outside.path().join("secret"), dir.path().join("files/link")).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(
        err.contains("files[1].source = files/link: resolves (through a symbolic link)"),
        "{err}"
    );
    assert!(
        !err.contains("root:x"),
        "the file's content is never echoed: {err}"
    );

    // A link that stays inside is fine.
    let (dir, path) = variant(extra_file("files/alias.xml", "/etc/x", None));
    symlink("root-anchors.xml", dir.path().join("files/alias.xml")).unwrap();
    let r = load(&path).unwrap();
    assert_eq!(r.sources.len(), 2);
    assert!(r.sources[1].ends_with("files/root-anchors.xml"));
}

#[test]
fn sources_are_relative_to_the_recipe_not_the_working_directory() {
    let (dir, path) = variant(|t| t);
    // From another working directory (this test's is the crate folder), the recipe's own
    // folder is used.
    let r = load(&path).unwrap();
    let want = dir.path().canonicalize().unwrap();
    assert_eq!(r.sources[0], want.join("files/root-anchors.xml"));
    assert_eq!(r.profile_path, want.join("profiles/qemu.toml"));
    let data = r.read_source(0).unwrap();
    assert_eq!(
        data,
        std::fs::read(images().join("files/root-anchors.xml")).unwrap()
    );
    assert!(r.read_source(5).is_err());
}

#[test]
fn a_shell_is_allowed_with_a_reason() {
    let (_d, path) = variant(|t| {
        with_package("busybox")(t).replace(
            "dns = \"nsd\"",
            "dns = \"nsd\"\nallow_shell = true\nallow_shell_reason = \"debug image for the lab\"",
        )
    });
    let r = load(&path).unwrap();
    assert!(r.recipe.allow_shell);
    let (_d, path) = variant(|t| {
        extra_file("files/root-anchors.xml", "/bin/sh", Some("0o755"))(t).replace(
            "dns = \"nsd\"",
            "dns = \"nsd\"\nallow_shell = true\nallow_shell_reason = \"debug image\"",
        )
    });
    load(&path).unwrap();
}

#[test]
fn huge_or_special_recipe_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.toml");
    std::fs::File::create(&p).unwrap().set_len(1 << 40).unwrap();
    let err = load(&p).unwrap_err().to_string();
    assert!(
        err.ends_with("the recipe is larger than the limit of 262144 bytes"),
        "{err}"
    );
    let err = load(Path::new("/dev/zero")).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}
