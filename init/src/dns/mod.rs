//! DNS service: NSD or Knot DNS (the recipe's choice) serving `.` from the verified root zone file.
//!
//! [`DnsConfig`] is everything the daemon needs (instance name, listen addresses, zone file, run
//! directory, workers from the hardware, rate limiting); [`DnsConfig::write`] writes the daemon's
//! config atomically into its private run directory, [`DnsConfig::command`] is the command line
//! the supervisor runs, and [`DnsConfig::reload`] makes the running daemon load a new verified
//! zone without dropping queries (both daemons load the new zone beside the old one and switch).
//!
//! Both renderings share one policy: authoritative only (neither daemon recurses), no zone
//! transfers to anyone (NSD: no `provide-xfr`; Knot: no ACL), NSID and `hostname.bind` /
//! `id.server` CH TXT answer the instance name (docs/facts.md, Service expectations), the version is
//! hidden, and the zone file is never written back.
//!
//! - [`nsd`] and [`knot`]: the two renderings.
//! - [`probe`]: the readiness probe (`. SOA` over UDP/TCP, AA, serial, NSID).

pub mod knot;
pub mod nsd;
pub mod probe;

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use imrs_config::accounts::Account;
use imrs_config::recipe::DnsImpl;
use imrs_config::site::Site;

/// Everything that can fail while configuring or controlling the DNS daemon.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A value cannot be written into the daemon's config safely.
    #[error("{daemon}: refusing {field} = {value:?}: {rule}")]
    Refused {
        /// `nsd` or `knot`.
        daemon: DnsImpl,
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// The rule.
        rule: &'static str,
    },
    /// Writing the config or creating a directory failed.
    #[error("{daemon}: cannot write {path}")]
    Write {
        /// `nsd` or `knot`.
        daemon: DnsImpl,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A control tool (`nsd-control`, `knotc`, a config checker) could not be run.
    #[error("{daemon}: cannot run {program}")]
    Spawn {
        /// `nsd` or `knot`.
        daemon: DnsImpl,
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A control tool ran and failed.
    #[error("{daemon}: {program} {args} failed: {message}")]
    Control {
        /// `nsd` or `knot`.
        daemon: DnsImpl,
        /// The program.
        program: PathBuf,
        /// Its arguments, space-separated.
        args: String,
        /// Its output.
        message: String,
    },
}

/// The hardware facts the daemon is sized from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardware {
    /// Online CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl Hardware {
    /// Reads the CPU count from the scheduler and `MemTotal` from `<proc>/meminfo`.
    pub fn detect(proc: &Path) -> Hardware {
        let cpus = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let memory_mib = fs::read_to_string(proc.join("meminfo"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        Hardware { cpus, memory_mib }
    }

    /// Query workers: one per CPU, at least one.
    pub fn workers(&self) -> u32 {
        self.cpus.max(1)
    }

    /// Socket buffer size in bytes: 8 MiB per socket on machines with 4 GiB or more (absorbs
    /// bursts at 10x peak), 1 MiB otherwise.
    pub fn socket_buffer(&self) -> u32 {
        if self.memory_mib >= 4096 {
            8 << 20
        } else {
            1 << 20
        }
    }
}

/// Response rate limiting (the site's `[dns.rrl]`; off unless set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Responses per second per source netblock.
    pub responses_per_second: u32,
    /// Every `slip`-th limited response is sent truncated (0: none).
    pub slip: u32,
    /// IPv4 netblock prefix length (NSD; Knot 3.2 uses /24 itself).
    pub ipv4_prefix_length: u8,
    /// IPv6 netblock prefix length (NSD; Knot 3.2 uses /56 itself).
    pub ipv6_prefix_length: u8,
}

impl From<imrs_config::site::Rrl> for RateLimit {
    fn from(r: imrs_config::site::Rrl) -> RateLimit {
        RateLimit {
            responses_per_second: r.responses_per_second,
            slip: r.slip,
            ipv4_prefix_length: r.ipv4_prefix_length,
            ipv6_prefix_length: r.ipv6_prefix_length,
        }
    }
}

/// The configuration of one DNS daemon instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// NSD or Knot.
    pub implementation: DnsImpl,
    /// Instance name: NSID, `hostname.bind`, `id.server`.
    pub instance: String,
    /// Addresses to answer on (service addresses first, then management addresses).
    pub listen: Vec<IpAddr>,
    /// Port (53 in production).
    pub port: u16,
    /// The verified root zone file served as `.`.
    pub zone_file: PathBuf,
    /// Private directory: config, pidfile, control socket, databases.
    pub run_dir: PathBuf,
    /// Query workers (NSD `server-count`, Knot `udp-workers`/`tcp-workers`).
    pub workers: u32,
    /// Socket buffer size in bytes (NSD; Knot uses the kernel defaults).
    pub socket_buffer: u32,
    /// Maximum concurrent TCP connections (per NSD server process; Knot in total).
    pub tcp_clients: u32,
    /// Response rate limiting, `None` to disable.
    pub rate_limit: Option<RateLimit>,
    /// The account the daemon drops to after binding its sockets (NSD `username`, Knot
    /// `user`); `None`: it keeps the user that started it (root in tests on a build host).
    pub account: Option<Account>,
    /// NSD only: chroot into [`DnsConfig::run_dir`], which must then hold the zone file and the
    /// dnstap socket (the init bind-mounts them there in the daemon's mount namespace).
    pub chroot: bool,
    /// Directory holding the daemon and its control tool.
    pub sbin: PathBuf,
    /// Serve the zone. `false` renders the config without it: an expired zone is no longer
    /// served (the daemon answers REFUSED for `.`) until a fresh one is verified.
    pub serve_zone: bool,
    /// Unix socket the daemon writes dnstap to (authoritative queries and responses, for the
    /// RSSAC002 collector, [`crate::telemetry`]); `None`: no dnstap.
    pub dnstap: Option<PathBuf>,
}

impl DnsConfig {
    /// The configuration for a site: the service addresses and every management address on
    /// port 53, workers and buffers from the hardware, rate limiting as the site says (off by
    /// default).
    pub fn for_site(
        implementation: DnsImpl,
        site: &Site,
        hw: &Hardware,
        zone_file: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
    ) -> DnsConfig {
        DnsConfig {
            implementation,
            instance: site.instance.clone(),
            listen: site.dns_addresses(),
            port: 53,
            zone_file: zone_file.into(),
            run_dir: run_dir.into(),
            workers: hw.workers(),
            socket_buffer: hw.socket_buffer(),
            tcp_clients: 1000,
            rate_limit: site.dns.rrl.map(RateLimit::from),
            account: None,
            chroot: false,
            sbin: PathBuf::from("/usr/sbin"),
            serve_zone: true,
            dnstap: None,
        }
    }

    /// The config file in the run directory.
    pub fn config_path(&self) -> PathBuf {
        self.run_dir.join(match self.implementation {
            DnsImpl::Nsd => "nsd.conf",
            DnsImpl::Knot => "knot.conf",
        })
    }

    /// The daemon's own directory inside the run directory (pidfile, control socket, state):
    /// the only place it may write, owned by its account.
    pub fn var_dir(&self) -> PathBuf {
        self.run_dir.join(crate::privilege::VAR)
    }

    /// The control socket: NSD creates it as root before dropping privileges, in the run
    /// directory's root-only `control/`; Knot binds it afterwards, in its own `var/`.
    pub fn control_socket(&self) -> PathBuf {
        match self.implementation {
            DnsImpl::Nsd => self.run_dir.join(crate::privilege::CONTROL).join("nsd.ctl"),
            DnsImpl::Knot => self.var_dir().join("knot.sock"),
        }
    }

    /// The pidfile in the daemon's own directory.
    pub fn pidfile(&self) -> PathBuf {
        self.var_dir().join(match self.implementation {
            DnsImpl::Nsd => "nsd.pid",
            DnsImpl::Knot => "knot.pid",
        })
    }

    /// Renders the daemon's config file.
    pub fn render(&self) -> Result<String, DnsError> {
        self.check_values()?;
        Ok(match self.implementation {
            DnsImpl::Nsd => nsd::render(self),
            DnsImpl::Knot => knot::render(self),
        })
    }

    fn check_values(&self) -> Result<(), DnsError> {
        let refuse = |field, value: String, rule| DnsError::Refused {
            daemon: self.implementation,
            field,
            value,
            rule,
        };
        let name_ok = !self.instance.is_empty()
            && self.instance.len() <= 253
            && self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !name_ok {
            return Err(refuse("instance", self.instance.clone(), "a DNS host name"));
        }
        let dnstap = self.dnstap.as_ref().map(|p| ("dnstap", p));
        for (field, p) in [("zone_file", &self.zone_file), ("run_dir", &self.run_dir)]
            .into_iter()
            .chain(dnstap)
        {
            let s = p.to_string_lossy();
            if !p.is_absolute() || s.contains(['"', '\n', '\\', '#']) {
                return Err(refuse(
                    field,
                    s.into_owned(),
                    "an absolute path without quotes, '#', backslashes or newlines",
                ));
            }
        }
        if let Some(a) = &self.account
            && (a.name.is_empty()
                || !a
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)))
        {
            return Err(refuse("account", a.name.to_string(), "an account name"));
        }
        if self.chroot {
            if self.implementation != DnsImpl::Nsd {
                return Err(refuse("chroot", "yes".into(), "NSD only"));
            }
            let dnstap = self.dnstap.as_ref().map(|p| ("dnstap", p));
            for (field, p) in [("zone_file", &self.zone_file)].into_iter().chain(dnstap) {
                if !p.starts_with(&self.run_dir) || p == &self.run_dir {
                    return Err(refuse(
                        field,
                        p.to_string_lossy().into_owned(),
                        "inside the run directory NSD chroots into",
                    ));
                }
            }
        }
        if self.listen.is_empty() {
            return Err(refuse("listen", String::new(), "at least one address"));
        }
        Ok(())
    }

    /// Creates the run directory (root's, `0755`) and the daemon's own `var/` in it (its
    /// account's, `0750`, with Knot's database directory), renders the config and writes it
    /// atomically (temp file, fsync, rename, fsync directory; root's, `0644`).
    pub fn write(&self) -> Result<(), DnsError> {
        let text = self.render()?;
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            let daemon = self.implementation;
            move |source| DnsError::Write {
                daemon,
                path,
                source,
            }
        };
        crate::privilege::make_dir(&self.run_dir, None, 0o755).map_err(werr(&self.run_dir))?;
        let var = self.var_dir();
        crate::privilege::make_dir(&var, self.account, 0o750).map_err(werr(&var))?;
        match self.implementation {
            DnsImpl::Knot => {
                let db = knot::storage(self);
                crate::privilege::make_dir(&db, self.account, 0o750).map_err(werr(&db))?;
            }
            DnsImpl::Nsd => {
                let control = self.run_dir.join(crate::privilege::CONTROL);
                crate::privilege::make_dir(&control, None, 0o700).map_err(werr(&control))?;
            }
        }
        let target = self.config_path();
        imrs_config::fsutil::write_atomic(&target, text.as_bytes(), 0o644).map_err(werr(&target))
    }

    /// The daemon's command line, in the foreground so the supervisor owns the process.
    pub fn command(&self) -> (PathBuf, Vec<String>) {
        let conf = self.config_path().to_string_lossy().into_owned();
        match self.implementation {
            DnsImpl::Nsd => (self.sbin.join("nsd"), vec!["-d".into(), "-c".into(), conf]),
            DnsImpl::Knot => (self.sbin.join("knotd"), vec!["-c".into(), conf]),
        }
    }

    /// The command that makes the running daemon load the zone file again. The daemon keeps
    /// answering from the old zone until the new one is loaded.
    pub fn reload_command(&self) -> (PathBuf, Vec<String>) {
        match self.implementation {
            DnsImpl::Nsd => (
                self.sbin.join("nsd-control"),
                vec![
                    "-c".into(),
                    self.config_path().to_string_lossy().into_owned(),
                    "reload".into(),
                    ".".into(),
                ],
            ),
            DnsImpl::Knot => (
                self.sbin.join("knotc"),
                vec![
                    "-c".into(),
                    self.config_path().to_string_lossy().into_owned(),
                    "-b".into(),
                    "zone-reload".into(),
                    ".".into(),
                ],
            ),
        }
    }

    /// The command that makes the running daemon apply the rewritten config (zones added or
    /// removed), keeping its sockets: NSD `reconfig`, Knot `reload`.
    pub fn reconfig_command(&self) -> (PathBuf, Vec<String>) {
        let conf = self.config_path().to_string_lossy().into_owned();
        match self.implementation {
            DnsImpl::Nsd => (
                self.sbin.join("nsd-control"),
                vec!["-c".into(), conf, "reconfig".into()],
            ),
            DnsImpl::Knot => (
                self.sbin.join("knotc"),
                vec!["-c".into(), conf, "-b".into(), "reload".into()],
            ),
        }
    }

    /// The command that checks the written config without starting anything.
    pub fn check_command(&self) -> (PathBuf, Vec<String>) {
        let conf = self.config_path().to_string_lossy().into_owned();
        match self.implementation {
            DnsImpl::Nsd => (self.sbin.join("nsd-checkconf"), vec![conf]),
            DnsImpl::Knot => (
                self.sbin.join("knotc"),
                vec!["-c".into(), conf, "conf-check".into()],
            ),
        }
    }

    /// Makes the running daemon load a new verified zone from [`DnsConfig::zone_file`] (which
    /// the zone pipeline has replaced atomically) without dropping queries.
    pub fn reload(&self) -> Result<(), DnsError> {
        self.run(self.reload_command())
    }

    /// Checks the written config with the daemon's own checker.
    pub fn check(&self) -> Result<(), DnsError> {
        self.run(self.check_command())
    }

    fn run(&self, (program, args): (PathBuf, Vec<String>)) -> Result<(), DnsError> {
        let out = Command::new(&program)
            .args(&args)
            .output()
            .map_err(|source| DnsError::Spawn {
                daemon: self.implementation,
                program: program.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !stdout.trim().is_empty() {
            message = format!("{message} {}", stdout.trim());
        }
        Err(DnsError::Control {
            daemon: self.implementation,
            program,
            args: args.join(" "),
            message: format!("{} ({})", message.trim(), out.status),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn lab_site() -> Site {
        let text = include_str!("../../../images/sites/lab.toml");
        imrs_config::site::parse(Path::new("lab.toml"), text).unwrap()
    }

    pub(crate) fn config(imp: DnsImpl) -> DnsConfig {
        DnsConfig::for_site(
            imp,
            &lab_site(),
            &Hardware {
                cpus: 4,
                memory_mib: 8192,
            },
            "/run/imrs/zone/root.zone",
            "/run/imrs/dns",
        )
    }

    #[test]
    fn site_addresses_and_hardware_sizing() {
        let c = config(DnsImpl::Nsd);
        let listen: Vec<String> = c.listen.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            listen,
            [
                "198.51.100.42",
                "2001:db8:42::42",
                "192.0.2.10",
                "2001:db8:1::10"
            ]
        );
        assert_eq!(c.workers, 4);
        assert_eq!(c.socket_buffer, 8 << 20);
        let small = Hardware {
            cpus: 0,
            memory_mib: 1024,
        };
        assert_eq!(small.workers(), 1);
        assert_eq!(small.socket_buffer(), 1 << 20);
    }

    #[test]
    fn site_rrl_reaches_both_daemons_and_passes_their_checks() {
        let text = format!(
            "{}\n[dns.rrl]\nresponses_per_second = 150\nslip = 3\nipv4_prefix_length = 28\n\
             ipv6_prefix_length = 48\n",
            include_str!("../../../images/sites/lab.toml")
        );
        let site = imrs_config::site::parse(Path::new("lab.toml"), &text).unwrap();
        let hw = Hardware {
            cpus: 2,
            memory_mib: 2048,
        };
        // Off unless the site sets it.
        let off = DnsConfig::for_site(DnsImpl::Nsd, &lab_site(), &hw, "/z", "/run/x");
        assert_eq!(off.rate_limit, None);
        assert!(off.render().unwrap().contains("    rrl-ratelimit: 0\n"));
        let dir = tempfile::tempdir().unwrap();
        for (imp, want, checker) in [
            (
                DnsImpl::Nsd,
                "    rrl-ratelimit: 150\n    rrl-slip: 3\n    rrl-ipv4-prefix-length: 28\n    \
                 rrl-ipv6-prefix-length: 48\n",
                "/usr/sbin/nsd-checkconf",
            ),
            (
                DnsImpl::Knot,
                "mod-rrl:\n  - id: default\n    rate-limit: 150\n    slip: 3\n",
                "/usr/sbin/knotc",
            ),
        ] {
            let run = dir.path().join(imp.to_string());
            let c = DnsConfig::for_site(imp, &site, &hw, "/nonexistent/root.zone", &run);
            assert_eq!(
                c.rate_limit,
                Some(RateLimit {
                    responses_per_second: 150,
                    slip: 3,
                    ipv4_prefix_length: 28,
                    ipv6_prefix_length: 48
                })
            );
            assert!(c.render().unwrap().contains(want), "{imp}");
            if !Path::new(checker).exists() {
                eprintln!("skip: {checker} not installed");
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI needs {checker}"
                );
                continue;
            }
            c.write().unwrap();
            // The reaper's tests in this process may take the checker's exit status
            // (waitpid(-1)): a lost status is retried, a verdict is not.
            let mut r = c.check();
            for _ in 0..5 {
                if !matches!(r, Err(DnsError::Spawn { .. })) {
                    break;
                }
                r = c.check();
            }
            r.unwrap_or_else(|e| panic!("{imp}: {e}"));
        }
    }

    #[test]
    fn unsafe_values_are_refused() {
        for imp in [DnsImpl::Nsd, DnsImpl::Knot] {
            let mut c = config(imp);
            c.instance = "a\"b".into();
            assert!(matches!(
                c.render(),
                Err(DnsError::Refused {
                    field: "instance",
                    ..
                })
            ));
            let mut c = config(imp);
            c.zone_file = "relative/root.zone".into();
            assert!(matches!(
                c.render(),
                Err(DnsError::Refused {
                    field: "zone_file",
                    ..
                })
            ));
            let mut c = config(imp);
            c.run_dir = "/run/x\"\nremote-control:".into();
            assert!(matches!(
                c.render(),
                Err(DnsError::Refused {
                    field: "run_dir",
                    ..
                })
            ));
        }
    }

    #[test]
    fn commands() {
        let n = config(DnsImpl::Nsd);
        assert_eq!(
            n.command(),
            (
                PathBuf::from("/usr/sbin/nsd"),
                vec!["-d".into(), "-c".into(), "/run/imrs/dns/nsd.conf".into()]
            )
        );
        assert_eq!(n.reload_command().1[2..], ["reload", "."]);
        let k = config(DnsImpl::Knot);
        assert_eq!(k.command().0, Path::new("/usr/sbin/knotd"));
        assert_eq!(
            k.reload_command().1,
            ["-c", "/run/imrs/dns/knot.conf", "-b", "zone-reload", "."]
        );
    }

    #[test]
    fn write_is_atomic_and_creates_dirs() {
        let dir = tempfile::tempdir().unwrap();
        for imp in [DnsImpl::Nsd, DnsImpl::Knot] {
            let mut c = config(imp);
            c.run_dir = dir.path().join(imp.to_string());
            c.write().unwrap();
            let text = fs::read_to_string(c.config_path()).unwrap();
            assert_eq!(text, c.render().unwrap());
            assert!(!c.run_dir.join(".config.tmp").exists());
            if imp == DnsImpl::Knot {
                assert!(knot::storage(&c).is_dir());
            }
        }
    }
}
