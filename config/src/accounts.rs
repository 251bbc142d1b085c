//! The image's accounts: root, one account per daemon, and nobody, with fixed ids.
//!
//! Every daemon on the appliance runs under its own account (issue 18: least privilege), named
//! as Debian names them so the daemons' own lookups (`username: nsd`, `user: knot:knot`,
//! `bird -u bird -g bird`, `chronyd -u _chrony`) find them. The ids are fixed here, not taken
//! from a package's maintainer script, so two builds of the same recipe write the same
//! `/etc/passwd` and `/etc/group` byte for byte (sorted by id), and the init can give a daemon
//! its run directory by id without reading the file.
//!
//! Every image carries all four daemon accounts whatever its DNS daemon: four short lines, and
//! one layout for every image.

/// One account (user and its group of the same name and id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// User and group name.
    pub name: &'static str,
    /// User id; the group id is the same.
    pub id: u32,
    /// Home directory (`/nonexistent` for daemons: none of them needs one).
    pub home: &'static str,
    /// What runs under it, for the GECOS field and messages.
    pub what: &'static str,
}

impl Account {
    /// The group id (equal to the user id).
    pub const fn gid(&self) -> u32 {
        self.id
    }
}

/// The shell of every account: no account on the appliance logs in, and the image has no
/// shell (`/usr/sbin/nologin` is absent, so a login attempt fails).
pub const SHELL: &str = "/usr/sbin/nologin";

/// root.
pub const ROOT: Account = Account {
    name: "root",
    id: 0,
    home: "/root",
    what: "root",
};
/// BIRD (`bird -u bird -g bird`: keeps `CAP_NET_BIND_SERVICE`, `CAP_NET_ADMIN`,
/// `CAP_NET_RAW`).
pub const BIRD: Account = Account {
    name: "bird",
    id: 101,
    home: "/nonexistent",
    what: "BIRD routing daemon",
};
/// chronyd (`-u _chrony`: keeps `CAP_SYS_TIME` only).
pub const CHRONY: Account = Account {
    name: "_chrony",
    id: 102,
    home: "/nonexistent",
    what: "chrony time daemon",
};
/// Knot DNS (`user: knot:knot`).
pub const KNOT: Account = Account {
    name: "knot",
    id: 103,
    home: "/nonexistent",
    what: "Knot DNS server",
};
/// NSD (`username: nsd`, in its chroot).
pub const NSD: Account = Account {
    name: "nsd",
    id: 104,
    home: "/nonexistent",
    what: "NSD DNS server",
};
/// nobody.
pub const NOBODY: Account = Account {
    name: "nobody",
    id: 65534,
    home: "/nonexistent",
    what: "nobody",
};

/// Every account in the image, by id.
pub const ALL: [Account; 6] = [ROOT, BIRD, CHRONY, KNOT, NSD, NOBODY];

/// The account named `name`.
pub fn by_name(name: &str) -> Option<Account> {
    ALL.iter().copied().find(|a| a.name == name)
}

/// The image's `/etc/passwd`, one line per account, sorted by id.
pub fn passwd() -> String {
    ALL.iter()
        .map(|a| {
            format!(
                "{}:x:{}:{}:{}:{}:{SHELL}\n",
                a.name,
                a.id,
                a.gid(),
                a.what,
                a.home
            )
        })
        .collect()
}

/// The image's `/etc/group`, one group per account (nobody's is `nogroup`), sorted by id.
pub fn group() -> String {
    ALL.iter()
        .map(|a| {
            let name = if a.id == NOBODY.id { "nogroup" } else { a.name };
            format!("{name}:x:{}:\n", a.gid())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_sorted_unique_and_parse_as_colon_records() {
        let p = passwd();
        let ids: Vec<u32> = p
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                assert_eq!(f.len(), 7, "{l}");
                f[2].parse().unwrap()
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(ids, sorted, "passwd sorted by id, ids unique");
        assert!(p.starts_with("root:x:0:0:root:/root:"));
        assert!(p.contains("\nnsd:x:104:104:NSD DNS server:/nonexistent:/usr/sbin/nologin\n"));
        assert!(p.ends_with("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"));
        let g = group();
        assert_eq!(
            g,
            "root:x:0:\nbird:x:101:\n_chrony:x:102:\nknot:x:103:\nnsd:x:104:\nnogroup:x:65534:\n"
        );
        let names: std::collections::BTreeSet<_> = ALL.iter().map(|a| a.name).collect();
        assert_eq!(names.len(), ALL.len());
        assert_eq!(by_name("_chrony"), Some(CHRONY));
        assert_eq!(by_name("daemon"), None);
    }
}
