//! What the appliance exposes, as its init read it back from its kernel once healthy
//! (`listening: PROTO ADDR:PORT PROGRAM` and `daemon: PROGRAM pid N (TITLE) uid U gid G caps
//! C nnp 0|1 seccomp S` console lines, `init/src/exposure.rs`), checked against the site: DNS
//! (UDP and TCP 53) on the service and management addresses, BGP (TCP 179) for BIRD, nothing
//! else; every daemon under its own account, `no_new_privs`, BIRD with no capability beyond
//! the three it keeps and the DNS daemon with none beyond binding port 53.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

/// One `daemon:` line, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonIdentity {
    /// Program (its executable's name).
    pub program: String,
    /// Pid.
    pub pid: u32,
    /// The name the process gave itself.
    pub title: String,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Effective capabilities.
    pub caps: Vec<String>,
    /// `no_new_privs`.
    pub no_new_privs: bool,
}

/// Parses the text after `daemon: `.
pub fn parse_daemon(s: &str) -> Option<DaemonIdentity> {
    let (program, rest) = s.trim().split_once(" pid ")?;
    let (pid, rest) = rest.split_once(" (")?;
    let (title, rest) = rest.rsplit_once(") uid ")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // uid U gid G caps C nnp N seccomp S (after "uid ")
    if f.len() < 9 || f[1] != "gid" || f[3] != "caps" || f[5] != "nnp" {
        return None;
    }
    Some(DaemonIdentity {
        program: program.to_string(),
        pid: pid.parse().ok()?,
        title: title.to_string(),
        uid: f[0].parse().ok()?,
        gid: f[2].parse().ok()?,
        caps: match f[4] {
            "none" => Vec::new(),
            c => c.split(',').map(str::to_string).collect(),
        },
        no_new_privs: f[6] == "1",
    })
}

/// The sockets that must accept traffic, as `PROTO ADDR:PORT PROGRAM`: the DNS daemon on 53
/// (UDP and TCP) on each of `dns_addresses`, BIRD on TCP 179 on the wildcard addresses.
pub fn expected_listening(dns_addresses: &[IpAddr], dns_program: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for a in dns_addresses {
        for proto in ["tcp", "udp"] {
            out.insert(format!("{proto} {} {dns_program}", SocketAddr::new(*a, 53)));
        }
    }
    out.insert("tcp 0.0.0.0:179 bird".into());
    out.insert("tcp [::]:179 bird".into());
    out
}

/// Capabilities each program may keep.
fn allowed_caps(program: &str) -> &'static [&'static str] {
    match program {
        "bird" => &["net_bind_service", "net_broadcast", "net_admin", "net_raw"],
        "knotd" | "nsd" => &["net_bind_service"],
        _ => &[],
    }
}

/// What is wrong with the daemons (empty: all well): root, no `no_new_privs`, a capability
/// beyond the program's allowance, or none of the expected programs seen.
pub fn daemon_problems(daemons: &[DaemonIdentity], dns_program: &str) -> Vec<String> {
    let mut out = Vec::new();
    for d in daemons {
        let who = format!("{} pid {} ({})", d.program, d.pid, d.title);
        if d.uid == 0 || d.gid == 0 {
            out.push(format!("{who} runs as uid {} gid {}", d.uid, d.gid));
        }
        if !d.no_new_privs {
            out.push(format!("{who} without no_new_privs"));
        }
        let extra: Vec<&String> = d
            .caps
            .iter()
            .filter(|c| !allowed_caps(&d.program).contains(&c.as_str()))
            .collect();
        if !extra.is_empty() {
            out.push(format!("{who} keeps {extra:?}"));
        }
    }
    for want in [dns_program, "bird"] {
        if !daemons.iter().any(|d| d.program == want) {
            out.push(format!("no {want} process listed"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_lines_as_the_init_prints_them() {
        let d = parse_daemon(
            "bird pid 96 (bird) uid 101 gid 101 caps net_bind_service,net_broadcast,net_admin,\
             net_raw nnp 1 seccomp 0",
        )
        .unwrap();
        assert_eq!((d.uid, d.gid, d.pid), (101, 101, 96));
        assert_eq!(d.caps.len(), 4);
        let n = parse_daemon("nsd pid 91 (nsd: main) uid 104 gid 104 caps none nnp 1 seccomp 0")
            .unwrap();
        assert_eq!(n.title, "nsd: main");
        assert!(n.caps.is_empty() && n.no_new_privs);
        assert_eq!(
            daemon_problems(&[d.clone(), n.clone()], "nsd"),
            Vec::<String>::new()
        );
        let root = DaemonIdentity {
            uid: 0,
            no_new_privs: false,
            caps: vec!["sys_admin".into()],
            ..n
        };
        let p = daemon_problems(&[d, root], "nsd");
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("runs as uid 0"));
        assert!(p[2].contains("sys_admin"));
        assert!(parse_daemon("garbage").is_none());
    }

    #[test]
    fn expected_sockets() {
        let e = expected_listening(&["198.51.100.42".parse().unwrap()], "nsd");
        assert_eq!(
            e.into_iter().collect::<Vec<_>>(),
            [
                "tcp 0.0.0.0:179 bird",
                "tcp 198.51.100.42:53 nsd",
                "tcp [::]:179 bird",
                "udp 198.51.100.42:53 nsd"
            ]
        );
    }
}
