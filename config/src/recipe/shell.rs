//! What gives an appliance a shell or a remote login. An IMRS image has neither: the init is the
//! only program that starts others, and nothing accepts a login. A recipe naming one of these
//! packages, executables or file names is refused unless it says `allow_shell = true` with a
//! reason (a debugging image, never a production one).

/// Debian packages that install a shell, a remote login service or a login program.
pub const SHELL_PACKAGES: &[&str] = &[
    // Shells.
    "ash",
    "bash",
    "bash-static",
    "busybox",
    "busybox-static",
    "csh",
    "dash",
    "elvish",
    "fish",
    "ksh",
    "ksh93u+m",
    "loksh",
    "mksh",
    "posh",
    "rc",
    "sash",
    "tcsh",
    "yash",
    "zsh",
    "zsh-static",
    // Remote login and consoles.
    "openssh-server",
    "openssh-sftp-server",
    "ssh",
    "tinysshd",
    "rsh-server",
    "rsh-redone-server",
    "shellinabox",
    "ttyd",
    "mosh",
    "login",
    "openbsd-inetd",
    "inetutils-inetd",
    "xinetd",
];

/// Package name prefixes and fragments with the same meaning (`dropbear`, `dropbear-bin`,
/// `telnetd`, `inetutils-telnetd`, `telnetd-ssl`, ...).
const SHELL_PACKAGE_PREFIXES: &[&str] = &["dropbear"];
const SHELL_PACKAGE_FRAGMENTS: &[&str] = &["telnetd"];

/// File names of shells and login programs (wherever they are placed).
pub const SHELL_PROGRAMS: &[&str] = &[
    "sh",
    "ash",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "csh",
    "tcsh",
    "fish",
    "yash",
    "posh",
    "rc",
    "sash",
    "busybox",
    "sshd",
    "dropbear",
    "dropbearmulti",
    "tinysshd",
    "telnetd",
    "in.telnetd",
    "login",
    "su",
    "sulogin",
    "getty",
    "agetty",
];

/// Whether the package `name` gives a shell or a remote login.
pub fn is_shell_package(name: &str) -> bool {
    SHELL_PACKAGES.contains(&name)
        || SHELL_PACKAGE_PREFIXES.iter().any(|p| name.starts_with(p))
        || SHELL_PACKAGE_FRAGMENTS.iter().any(|f| name.contains(f))
}

/// Whether the image path `path` is a shell or login program (by its file name).
pub fn is_shell_program(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    SHELL_PROGRAMS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells_and_logins_are_recognised() {
        for p in [
            "bash",
            "dash",
            "busybox",
            "zsh",
            "openssh-server",
            "dropbear",
            "dropbear-bin",
            "dropbear-run",
            "telnetd",
            "inetutils-telnetd",
            "telnetd-ssl",
        ] {
            assert!(is_shell_package(p), "{p}");
        }
        for p in [
            "bird2",
            "nsd",
            "knot",
            "chrony",
            "libssl3",
            "bash-completion",
        ] {
            assert!(!is_shell_package(p), "{p}");
        }
        for p in [
            "/bin/sh",
            "/usr/bin/bash",
            "/usr/sbin/sshd",
            "/bin/busybox",
            "sh",
        ] {
            assert!(is_shell_program(p), "{p}");
        }
        for p in ["/usr/sbin/bird", "/usr/bin/shasum", "/etc/sh/x.conf"] {
            assert!(!is_shell_program(p), "{p}");
        }
    }
}
