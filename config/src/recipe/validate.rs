//! The rules of a recipe's values (paths on disk are resolved by [`super::paths`] after these
//! pass): names and lengths, one DNS daemon and BIRD, file destinations that are normal absolute
//! paths off everything the image owns, sane modes, and no shell or remote login unless the
//! recipe allows one and says why.

use std::collections::BTreeSet;
use std::path::Path;

use super::shell::{is_shell_package, is_shell_program};
use super::{DnsImpl, RECIPE_VERSION, Recipe};
use crate::error::{Checker, ConfigError};
use crate::layout;

/// Most entries in a recipe list (packages, binaries, modules, files).
const LIST_MAX: usize = 256;
/// Longest name-like value (image name, version, package, module, profile), in bytes.
const NAME_MAX: usize = 64;
/// Longest path inside the image, in bytes.
const IMAGE_PATH_MAX: usize = 1024;

fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.len() <= NAME_MAX
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(&c))
}

/// Whether `p` is an absolute, normalised path inside the image: `/a/b`, no empty, `.` or `..`
/// component, no control characters, no trailing slash, not `/` itself.
fn is_image_path(p: &str) -> bool {
    p.len() > 1
        && p.len() <= IMAGE_PATH_MAX
        && p.starts_with('/')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && c.len() <= 255)
        && !p.chars().any(char::is_control)
}

/// Checks every value rule of a recipe; `path` names the file in errors.
pub(super) fn validate(path: &Path, r: &Recipe) -> Result<(), ConfigError> {
    let c = Checker { path };
    c.ensure(
        r.version == RECIPE_VERSION,
        "version",
        r.version,
        format!("this imrs-build understands recipe version {RECIPE_VERSION}"),
    )?;
    c.length("name", &r.name, 1, NAME_MAX)?;
    c.ensure(
        r.name
            .bytes()
            .all(|ch| ch.is_ascii_alphanumeric() || b"-_.".contains(&ch)),
        "name",
        &r.name,
        "letters, digits, '-', '_', '.' only",
    )?;
    c.length("image_version", &r.image_version, 1, NAME_MAX)?;
    c.ensure(
        r.image_version.bytes().all(|b| b.is_ascii_graphic()),
        "image_version",
        &r.image_version,
        "printable characters without spaces",
    )?;
    c.length("profile", &r.profile, 1, NAME_MAX)?;
    c.ensure(
        r.profile
            .bytes()
            .all(|ch| ch.is_ascii_alphanumeric() || b"-_".contains(&ch)),
        "profile",
        &r.profile,
        "a profile name (letters, digits, '-', '_'): the file profiles/<profile>.toml next to \
         the recipe",
    )?;
    c.ensure(
        r.architecture == "amd64",
        "architecture",
        &r.architecture,
        "only amd64 appliances exist",
    )?;
    kernel(&c, r)?;
    if let Some(b) = &r.boot {
        c.ensure(
            is_package_name(&b.package),
            "boot.package",
            &b.package,
            "a Debian package name (systemd-boot-efi)",
        )?;
    }
    userland(&c, r)?;
    files(&c, r)?;
    shells(&c, r)?;
    for (i, m) in r.apt.mirrors.iter().enumerate() {
        c.ensure(
            crate::lock::is_mirror_url(m),
            format!("apt.mirrors[{i}]"),
            m,
            "an http:// or https:// archive base URL without a trailing slash, query or credentials",
        )?;
    }
    for (i, s) in r.apt.suites.iter().enumerate() {
        c.ensure(
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.+/".contains(ch)),
            format!("apt.suites[{i}]"),
            s,
            "a suite name such as bookworm or bookworm-security",
        )?;
    }
    if let Some(s) = &r.apt.snapshot {
        c.length("apt.snapshot", s, 1, 2048)?;
        c.no_control("apt.snapshot", s)?;
        c.ensure(
            s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file://"),
            "apt.snapshot",
            s,
            "an http(s):// or file:// URL",
        )?;
    }
    Ok(())
}

fn kernel(c: &Checker<'_>, r: &Recipe) -> Result<(), ConfigError> {
    c.ensure(
        is_package_name(&r.kernel.package) && r.kernel.package.starts_with("linux-image-"),
        "kernel.package",
        &r.kernel.package,
        "must be a Debian linux-image-* package",
    )?;
    c.count("kernel.modules", &r.kernel.modules, LIST_MAX)?;
    for (i, m) in r.kernel.modules.iter().enumerate() {
        c.ensure(
            !m.is_empty()
                && m.len() <= NAME_MAX
                && m.bytes()
                    .all(|ch| ch.is_ascii_alphanumeric() || b"-_".contains(&ch)),
            format!("kernel.modules[{i}]"),
            m,
            "a module name (letters, digits, '-', '_')",
        )?;
    }
    c.length("kernel.cmdline", &r.kernel.cmdline, 0, 1024)?;
    c.ensure(
        !r.kernel.cmdline.chars().any(char::is_control),
        "kernel.cmdline",
        &r.kernel.cmdline,
        "one line without control characters",
    )
}

fn userland(c: &Checker<'_>, r: &Recipe) -> Result<(), ConfigError> {
    let u = &r.userland;
    for (key, list) in [
        ("userland.packages", &u.packages),
        ("userland.exclude", &u.exclude),
    ] {
        c.count(key, list, LIST_MAX)?;
        for (i, p) in list.iter().enumerate() {
            c.ensure(
                is_package_name(p),
                format!("{key}[{i}]"),
                p,
                "a Debian package name",
            )?;
        }
    }
    let dns_pkg = r.dns.package();
    c.ensure(
        u.packages.iter().any(|p| p == dns_pkg),
        "userland.packages",
        format!("{:?}", u.packages),
        format!("dns = \"{}\" needs the package {dns_pkg}", r.dns),
    )?;
    let other = match r.dns {
        DnsImpl::Nsd => "knot",
        DnsImpl::Knot => "nsd",
    };
    c.ensure(
        !u.packages.iter().any(|p| p == other),
        "userland.packages",
        format!("{:?}", u.packages),
        format!(
            "dns = \"{}\": the image carries one DNS daemon, not {other}",
            r.dns
        ),
    )?;
    c.ensure(
        u.packages.iter().any(|p| p == "bird2"),
        "userland.packages",
        format!("{:?}", u.packages),
        "BGP needs bird2",
    )?;
    c.count("userland.binaries", &u.binaries, LIST_MAX)?;
    for (i, b) in u.binaries.iter().enumerate() {
        c.ensure(
            is_image_path(b),
            format!("userland.binaries[{i}]"),
            b,
            "an absolute, normalised path inside a package",
        )?;
    }
    Ok(())
}

fn files(c: &Checker<'_>, r: &Recipe) -> Result<(), ConfigError> {
    c.count("files", &r.files, LIST_MAX)?;
    let mut dests = BTreeSet::new();
    for (i, f) in r.files.iter().enumerate() {
        let k = |x: &str| format!("files[{i}].{x}");
        c.ensure(
            is_image_path(&f.dest),
            k("dest"),
            &f.dest,
            "an absolute, normalised path inside the image (/a/b: no '.', '..', '//' or \
             trailing '/')",
        )?;
        if let Some(owner) = layout::owner(&f.dest, &r.userland.binaries) {
            c.ensure(
                false,
                k("dest"),
                &f.dest,
                format!("the image owns this path ({owner}); a recipe file may not replace it"),
            )?;
        }
        c.ensure(
            dests.insert(layout::through_merged_usr(&f.dest)),
            k("dest"),
            &f.dest,
            "another file has the same destination",
        )?;
        c.ensure(
            f.sha256.len() == 64 && f.sha256.bytes().all(|ch| ch.is_ascii_hexdigit()),
            k("sha256"),
            &f.sha256,
            "64 hex digits",
        )?;
        c.ensure(
            f.mode <= 0o7777,
            k("mode"),
            format!("{:o}", f.mode),
            "permission bits only",
        )?;
        c.ensure(
            f.mode & 0o7000 == 0,
            k("mode"),
            format!("{:o}", f.mode),
            "no setuid, setgid or sticky bit",
        )?;
        c.ensure(
            f.mode & 0o002 == 0,
            k("mode"),
            format!("{:o}", f.mode),
            "not world-writable",
        )?;
    }
    Ok(())
}

fn shells(c: &Checker<'_>, r: &Recipe) -> Result<(), ConfigError> {
    let reason = r.allow_shell_reason.as_deref().unwrap_or("");
    if r.allow_shell {
        c.ensure(
            !reason.trim().is_empty(),
            "allow_shell_reason",
            reason,
            "allow_shell = true needs a reason (allow_shell_reason = \"...\")",
        )?;
        c.length("allow_shell_reason", reason, 1, 500)?;
        c.no_control("allow_shell_reason", reason)?;
        return Ok(());
    }
    c.ensure(
        r.allow_shell_reason.is_none(),
        "allow_shell_reason",
        reason,
        "given without allow_shell = true",
    )?;
    const RULE: &str = "gives the appliance a shell or a remote login; refused unless the \
                        recipe says allow_shell = true with allow_shell_reason";
    for (i, p) in r.userland.packages.iter().enumerate() {
        c.ensure(
            !is_shell_package(p),
            format!("userland.packages[{i}]"),
            p,
            RULE,
        )?;
    }
    for (i, b) in r.userland.binaries.iter().enumerate() {
        c.ensure(
            !is_shell_program(b),
            format!("userland.binaries[{i}]"),
            b,
            RULE,
        )?;
    }
    for (i, f) in r.files.iter().enumerate() {
        c.ensure(
            !is_shell_program(&f.dest),
            format!("files[{i}].dest"),
            &f.dest,
            RULE,
        )?;
    }
    Ok(())
}
