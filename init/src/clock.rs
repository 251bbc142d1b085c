//! The clock stage: a trustworthy clock before anything checks DNSSEC signatures.
//!
//! Rules, in order:
//! 1. The clock is never earlier than the image's build epoch (`source_date_epoch`). If it is
//!    (a flat RTC battery), it is set to the epoch as a floor, which only makes later checks
//!    sane: the stage still fails unless a real source then confirms the time.
//! 2. Site `ntp.nts` or `ntp.servers` given: `chronyd -q` sets the clock once from them
//!    (`/usr/sbin/chronyd` in the image; missing is a failure that says so). As the machine's
//!    init it runs as `_chrony` (chronyd keeps `CAP_SYS_TIME` only) under its own system call
//!    filter (`-F 1`: a call outside chronyd's list kills it). NTS servers (RFC 8915) are
//!    authenticated: their certificate must chain to the site's `nts_ca_pem` (chronyd's
//!    `ntstrustedcerts`, with `nosystemcert`) and carry the server's name, which the init maps
//!    to the site's address in `/etc/hosts` (the box has no resolver; the image's
//!    `nsswitch.conf` says `hosts: files`); `authselectmode require` lets no unauthenticated
//!    source set the clock. The certificates' validity is checked against the clock, except
//!    when it was behind the build time and got the floor (a flat RTC battery: the clock is
//!    known wrong, so `nocerttimecheck 1` skips the check for the first update only, as
//!    chrony documents for machines without a working RTC).
//! 3. No servers but `ntp.trust_rtc = true` (labs): the RTC time is accepted, shown on the
//!    console and recorded in the state file. Not if the RTC is behind the epoch.
//! 4. Neither: failure, no time source.

use crate::command::Failure;
use imrs_config::accounts::{Account, ROOT};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::reaper::Reaper;

/// chronyd inside the image.
pub const CHRONYD: &str = "usr/sbin/chronyd";
/// How long chronyd may take to set the clock.
pub const NTP_TIMEOUT: Duration = Duration::from_secs(90);

/// Why the clock could not be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The clock is behind the build epoch and only the RTC vouches for it.
    #[error(
        "clock {now} is behind the image build time {epoch}: set to it as a floor, but only the RTC (trust_rtc = true) vouches for the time and it is wrong"
    )]
    RtcBehind {
        /// Unix time read.
        now: i64,
        /// Build epoch.
        epoch: i64,
    },
    /// No time source configured.
    #[error(
        "no time source: the site config has no ntp.nts, no ntp.servers and trust_rtc is false"
    )]
    NoSource,
    /// NTP servers configured but no client in the image.
    #[error("site lists NTP or NTS servers but the image has no /{CHRONYD}")]
    NoChronyd,
    /// chronyd could not be started.
    #[error("/{CHRONYD}: cannot start: {0}")]
    Start(String),
    /// chronyd failed or timed out.
    #[error("chronyd -q against {servers}: {how}{output}")]
    Ntp {
        /// The servers.
        servers: String,
        /// Exit status or timeout.
        how: String,
        /// Its last output, if any.
        output: String,
    },
    /// Even after NTP the clock is behind the epoch.
    #[error("after NTP the clock reads {now}, still behind the image build time {epoch}")]
    StillBehind {
        /// Unix time read.
        now: i64,
        /// Build epoch.
        epoch: i64,
    },
    /// Setting the floor failed.
    #[error("clock_settime(CLOCK_REALTIME, {epoch})")]
    SetFloor {
        /// Build epoch.
        epoch: i64,
        /// errno.
        #[source]
        source: nix::Error,
    },
}

/// What the clock stage will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run chronyd with these arguments.
    Ntp {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// With NTS servers: the files to write before chronyd starts.
        nts: Option<NtsFiles>,
    },
    /// Accept the RTC.
    TrustRtc,
    /// Fail.
    Fail(ClockError),
}

/// What chronyd needs on disk for NTS: the site's CA and the servers' names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtsFiles {
    /// The CA file (`ntstrustedcerts`), in chronyd's own directory.
    pub ca_path: PathBuf,
    /// The site's `nts_ca_pem`.
    pub ca_pem: String,
    /// `/etc/hosts`: localhost and each NTS server's name at its address.
    pub hosts: String,
}

/// Each server's options for the one clock update: `iburst`, and one sample is enough
/// (`maxsamples 1`: the step needs an offset, not a frequency; chrony's selection still
/// requires the sources to agree) with a retry after a lost answer or, with NTS, after the key
/// exchange, a second later (`minpoll 0`), not two. A step that took 4.2 s (NTP) or 6.3 s (NTS:
/// four samples two seconds apart) takes 0.2 s or 0.5 s (`bench/clock.sh`); every server still
/// sees one request per second at most.
pub const SERVER_OPTIONS: &str = "iburst maxsamples 1 minpoll 0";

/// The CA file's name in chronyd's directory.
pub const NTS_CA_FILE: &str = "nts-ca.pem";

/// `/etc/hosts` for these NTS servers (the box resolves no names otherwise).
pub fn hosts_file(nts: &[imrs_config::site::NtsServer]) -> String {
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for n in nts {
        if n.name.parse::<IpAddr>().is_err() {
            text.push_str(&format!("{} {}\n", n.address, n.name));
        }
    }
    text
}

/// The decision, from facts alone. `run_dir`: chronyd's own directory (its pidfile);
/// `account`: the account chronyd drops to, with its system call filter on (`None`: it stays
/// root, as in tests on a build host).
pub fn plan(
    now: i64,
    epoch: i64,
    ntp: &imrs_config::site::Ntp,
    chronyd: Option<&Path>,
    run_dir: &Path,
    account: Option<Account>,
) -> Plan {
    if !ntp.servers.is_empty() || !ntp.nts.is_empty() {
        let Some(program) = chronyd else {
            return Plan::Fail(ClockError::NoChronyd);
        };
        let mut args: Vec<String> = vec![
            "-q".into(),
            "-u".into(),
            account.map_or(ROOT.name, |a| a.name).into(),
        ];
        if account.is_some() {
            args.extend(["-F".into(), "1".into()]);
        }
        args.extend([
            "-t".into(),
            NTP_TIMEOUT.as_secs().to_string(),
            format!("pidfile {}", run_dir.join("chronyd.pid").display()),
            "cmdport 0".into(),
        ]);
        args.extend(
            ntp.servers
                .iter()
                .map(|s| format!("server {s} {SERVER_OPTIONS}")),
        );
        let mut nts = None;
        if !ntp.nts.is_empty() {
            let ca_path = run_dir.join(NTS_CA_FILE);
            args.extend([
                format!("ntstrustedcerts {}", ca_path.display()),
                "nosystemcert".into(),
                "authselectmode require".into(),
            ]);
            if now < epoch {
                args.push("nocerttimecheck 1".into());
            }
            for n in &ntp.nts {
                let mut line = format!("server {} {SERVER_OPTIONS} nts", n.name);
                if n.port != imrs_config::site::NTS_KE_PORT {
                    line.push_str(&format!(" ntsport {}", n.port));
                }
                args.push(line);
            }
            nts = Some(NtsFiles {
                ca_path,
                ca_pem: ntp.nts_ca_pem.clone(),
                hosts: hosts_file(&ntp.nts),
            });
        }
        return Plan::Ntp {
            program: program.to_path_buf(),
            args,
            nts,
        };
    }
    if ntp.trust_rtc {
        if now < epoch {
            return Plan::Fail(ClockError::RtcBehind { now, epoch });
        }
        return Plan::TrustRtc;
    }
    Plan::Fail(ClockError::NoSource)
}

/// How often the clock is set again once the box serves (each wait moved by up to a tenth):
/// without it a box's clock drifts for as long as it runs (tens of ppm: minutes a year), and
/// the DNSSEC checks of every refreshed zone, signed commands' expiry and RSSAC002's UTC days
/// all read it.
pub const RESYNC_EVERY: Duration = Duration::from_secs(6 * 3600);

/// What it takes to set the clock again later as the clock stage did: the site's servers,
/// chronyd, its folder (the NTS CA is already there) and account.
#[derive(Debug, Clone)]
pub struct Keeper {
    /// The image's chronyd.
    pub chronyd: PathBuf,
    /// The site's time sources.
    pub ntp: imrs_config::site::Ntp,
    /// The image's build time (the floor).
    pub epoch: i64,
    /// chronyd's folder.
    pub run_dir: PathBuf,
    /// chronyd's account, when it drops to one.
    pub account: Option<Account>,
}

impl Keeper {
    /// Sets the clock again every `every` (spread by a tenth), for as long as the init runs,
    /// planned afresh each time (the first update's certificate-time exception never comes
    /// back once the clock is past the floor). A failure is logged and left to the next round:
    /// the box keeps the clock it has, which one missed update barely moves.
    pub async fn keep(self, reaper: Reaper, every: Duration) {
        let servers = describe(&self.ntp);
        loop {
            tokio::time::sleep(crate::jitter::spread(every, 0.1, crate::jitter::random())).await;
            let now = unix_now();
            let Plan::Ntp { program, args, nts } = plan(
                now,
                self.epoch,
                &self.ntp,
                Some(&self.chronyd),
                &self.run_dir,
                self.account,
            ) else {
                return;
            };
            let how = if nts.is_some() { "nts" } else { "ntp" };
            let (before, started) = (wall_now(), std::time::Instant::now());
            match run_ntp(&reaper, &program, &args, &servers, NTP_TIMEOUT).await {
                Ok(()) => {
                    let moved = moved_since(before, started);
                    crate::log::info(format!(
                        "clock set again by {how} (moved {moved:+.3} s); next in about {} s",
                        every.as_secs()
                    ));
                }
                Err(e) => crate::log::warn(format!(
                    "clock not set again ({e}); the box keeps its clock and tries at the next \
                     round"
                )),
            }
        }
    }
}

/// Seconds added to the system clock by the test hook `imrs.fake_time` (0 otherwise).
static FAKE_OFFSET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Test hook (never in the machine role): from now on the init's wall-clock reads start at
/// `unix` and advance with the system clock. Network namespaces cannot have their own
/// `CLOCK_REALTIME`, and the real root zone's signatures are only valid in their window.
pub fn set_fake_time(unix: i64) {
    let offset = unix - real_unix_now();
    FAKE_OFFSET.store(offset, std::sync::atomic::Ordering::Relaxed);
}

fn real_unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The wall clock every decision of the init uses (zone verification, expiry, reports).
pub fn wall_now() -> std::time::SystemTime {
    let off = FAKE_OFFSET.load(std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now();
    if off >= 0 {
        now + std::time::Duration::from_secs(off as u64)
    } else {
        now - std::time::Duration::from_secs(off.unsigned_abs())
    }
}

/// [`wall_now`] as a `jiff` timestamp.
pub fn timestamp_now() -> jiff::Timestamp {
    jiff::Timestamp::try_from(wall_now()).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// How far the wall clock moved while a step ran: the wall clock's advance since `before`
/// (a [`wall_now`] reading) less the time that passed on the monotonic clock since `started`,
/// in seconds.
pub fn moved_since(before: std::time::SystemTime, started: std::time::Instant) -> f64 {
    let wall = match wall_now().duration_since(before) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    wall - started.elapsed().as_secs_f64()
}

/// Current Unix time ([`wall_now`]).
pub fn unix_now() -> i64 {
    wall_now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sets the system clock to `epoch` (machine role only).
pub fn set_floor(epoch: i64) -> Result<(), ClockError> {
    let ts = nix::sys::time::TimeSpec::new(epoch, 0);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .map_err(|source| ClockError::SetFloor { epoch, source })
}

/// The site's time servers as the console, the errors and the reports name them:
/// `NTS nts1.example.net (192.0.2.123), ...` or plain addresses.
pub fn describe(ntp: &imrs_config::site::Ntp) -> String {
    let nts = ntp.nts.iter().map(|n| {
        if n.name.parse::<IpAddr>().is_ok() {
            format!("NTS {}", n.name)
        } else {
            format!("NTS {} ({})", n.name, n.address)
        }
    });
    let plain = ntp.servers.iter().map(|a| a.to_string());
    nts.chain(plain).collect::<Vec<_>>().join(", ")
}

/// Runs chronyd through the reaper; Ok when it exited 0. `servers`: [`describe`]'s text.
pub async fn run_ntp(
    reaper: &Reaper,
    program: &Path,
    args: &[String],
    servers: &str,
    timeout: Duration,
) -> Result<(), ClockError> {
    match crate::command::run_checked(reaper, program, args, timeout).await {
        Ok(_) => Ok(()),
        Err(Failure::Start(e)) => Err(ClockError::Start(e)),
        Err(Failure::Ended { how, tail }) => Err(ClockError::Ntp {
            servers: servers.to_string(),
            how,
            output: if tail.is_empty() {
                String::new()
            } else {
                format!(" ({tail})")
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use imrs_config::site::{Ntp, NtsServer};

    use super::*;
    use crate::reaper::tests::with_reaper;

    const EPOCH: i64 = 1_795_000_000;

    fn ntp(servers: &[&str], trust_rtc: bool) -> Ntp {
        Ntp {
            servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
            trust_rtc,
            ..Ntp::default()
        }
    }

    #[test]
    fn decisions() {
        let chrony = Path::new("/usr/sbin/chronyd");
        let run = Path::new("/run/imrs");
        let cases = [
            (
                "rtc trusted, ahead",
                EPOCH + 5,
                ntp(&[], true),
                Some(chrony),
                Plan::TrustRtc,
            ),
            (
                "rtc trusted, behind",
                EPOCH - 5,
                ntp(&[], true),
                Some(chrony),
                Plan::Fail(ClockError::RtcBehind {
                    now: EPOCH - 5,
                    epoch: EPOCH,
                }),
            ),
            (
                "nothing",
                EPOCH + 5,
                ntp(&[], false),
                Some(chrony),
                Plan::Fail(ClockError::NoSource),
            ),
            (
                "servers, no chronyd",
                EPOCH + 5,
                ntp(&["192.0.2.123"], false),
                None,
                Plan::Fail(ClockError::NoChronyd),
            ),
        ];
        for (what, now, n, c, want) in cases {
            assert_eq!(plan(now, EPOCH, &n, c, run, None), want, "{what}");
        }
        // Servers win over trust_rtc, even when behind (the floor is set first).
        let Plan::Ntp { program, args, nts } = plan(
            EPOCH - 5,
            EPOCH,
            &ntp(&["192.0.2.123", "2001:db8::123"], true),
            Some(chrony),
            run,
            None,
        ) else {
            panic!("expected NTP");
        };
        assert_eq!(program, chrony);
        assert_eq!(args[..3], ["-q", "-u", "root"]);
        assert!(!args.contains(&"-F".to_string()));
        assert!(args.contains(&"server 192.0.2.123 iburst maxsamples 1 minpoll 0".to_string()));
        assert!(args.contains(&"server 2001:db8::123 iburst maxsamples 1 minpoll 0".to_string()));
        assert_eq!(nts, None);
        assert!(
            !args
                .iter()
                .any(|a| a.contains("nts") || a.contains("authselect"))
        );
        // As the machine's init: _chrony and the system call filter.
        let Plan::Ntp { args, .. } = plan(
            EPOCH + 5,
            EPOCH,
            &ntp(&["192.0.2.123"], false),
            Some(chrony),
            run,
            Some(imrs_config::accounts::CHRONY),
        ) else {
            panic!("expected NTP");
        };
        assert_eq!(args[..5], ["-q", "-u", "_chrony", "-F", "1"]);
        assert!(args.contains(&"pidfile /run/imrs/chronyd.pid".to_string()));
    }

    fn with_nts() -> Ntp {
        Ntp {
            nts: vec![
                NtsServer {
                    name: "nts1.example.net".into(),
                    address: "192.0.2.123".parse().unwrap(),
                    port: imrs_config::site::NTS_KE_PORT,
                },
                NtsServer {
                    name: "2001:db8::123".into(),
                    address: "2001:db8::123".parse().unwrap(),
                    port: 4461,
                },
            ],
            nts_ca_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            ..Ntp::default()
        }
    }

    #[test]
    fn nts_servers_are_authenticated_by_the_sites_ca_only() {
        let chrony = Path::new("/usr/sbin/chronyd");
        let run = Path::new("/run/imrs/chrony");
        let Plan::Ntp { args, nts, .. } = plan(
            EPOCH + 5,
            EPOCH,
            &with_nts(),
            Some(chrony),
            run,
            Some(imrs_config::accounts::CHRONY),
        ) else {
            panic!("expected NTP");
        };
        let nts = nts.expect("NTS files");
        assert_eq!(nts.ca_path, run.join(NTS_CA_FILE));
        assert_eq!(nts.ca_pem, with_nts().nts_ca_pem);
        assert_eq!(
            nts.hosts, "127.0.0.1 localhost\n::1 localhost\n192.0.2.123 nts1.example.net\n",
            "a name given as an address needs no line"
        );
        let tail: Vec<&str> = args[args.len() - 5..].iter().map(|a| a.as_str()).collect();
        assert_eq!(
            tail,
            [
                "ntstrustedcerts /run/imrs/chrony/nts-ca.pem",
                "nosystemcert",
                "authselectmode require",
                "server nts1.example.net iburst maxsamples 1 minpoll 0 nts",
                "server 2001:db8::123 iburst maxsamples 1 minpoll 0 nts ntsport 4461",
            ]
        );
        assert!(!args.iter().any(|a| a.starts_with("nocerttimecheck")));
        // A clock behind the build time (got the floor): the first update skips the
        // certificates' time check, and only the first.
        let Plan::Ntp { args, .. } = plan(EPOCH - 5, EPOCH, &with_nts(), Some(chrony), run, None)
        else {
            panic!("expected NTP");
        };
        assert!(args.contains(&"nocerttimecheck 1".to_string()));
        assert_eq!(
            describe(&with_nts()),
            "NTS nts1.example.net (192.0.2.123), NTS 2001:db8::123"
        );
        assert_eq!(
            describe(&ntp(&["192.0.2.1", "2001:db8::1"], false)),
            "192.0.2.1, 2001:db8::1"
        );
        // NTS and no chronyd: the same named failure.
        assert_eq!(
            plan(EPOCH + 5, EPOCH, &with_nts(), None, run, None),
            Plan::Fail(ClockError::NoChronyd)
        );
    }

    fn fake(dir: &Path, script: &str) -> PathBuf {
        let p = dir.join("chronyd");
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn an_unstepped_clock_moved_nothing() {
        let (before, started) = (wall_now(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        assert!(moved_since(before, started).abs() < 0.02);
        // A wall clock reading from an hour ago: moved by an hour.
        let hour_ago = wall_now() - Duration::from_secs(3600);
        assert!((moved_since(hour_ago, std::time::Instant::now()) - 3600.0).abs() < 0.02);
    }

    /// The keeper runs chronyd again each round, planned afresh: no certificate-time
    /// exception once the clock is past the floor, and a failed round does not end it.
    #[test]
    fn the_keeper_sets_the_clock_again_each_round() {
        let d = tempfile::tempdir().unwrap();
        let calls = d.path().join("calls");
        let fails = d.path().join("fails");
        let chronyd = fake(
            d.path(),
            &format!(
                "echo \"$*\" >> {}\n[ -e {} ] && exit 1\nexit 0",
                calls.display(),
                fails.display()
            ),
        );
        std::fs::write(&fails, "").unwrap();
        let keeper = Keeper {
            chronyd,
            ntp: with_nts(),
            epoch: EPOCH,
            run_dir: d.path().to_path_buf(),
            account: None,
        };
        with_reaper(|reaper| async move {
            let task = tokio::spawn(keeper.keep(reaper, Duration::from_millis(100)));
            // The first rounds fail (the servers are away): the keeper goes on.
            tokio::time::sleep(Duration::from_millis(350)).await;
            std::fs::remove_file(&fails).unwrap();
            tokio::time::sleep(Duration::from_millis(350)).await;
            task.abort();
        });
        let text = std::fs::read_to_string(&calls).unwrap();
        let rounds: Vec<&str> = text.lines().collect();
        assert!(rounds.len() >= 4, "{text}");
        for r in &rounds {
            assert!(r.starts_with("-q -u root"), "{r}");
            assert!(r.contains("server nts1.example.net iburst"), "{r}");
            assert!(!r.contains("nocerttimecheck"), "{r}");
        }
    }

    #[test]
    fn chronyd_outcomes_come_through_the_reaper() {
        let d = tempfile::tempdir().unwrap();
        with_reaper(|reaper| async move {
            let servers = "192.0.2.123";
            let ok = fake(d.path(), "exit 0");
            assert_eq!(
                run_ntp(&reaper, &ok, &[], servers, Duration::from_secs(10)).await,
                Ok(())
            );
            let bad = fake(
                d.path(),
                "echo 'No suitable source for synchronisation' >&2; exit 1",
            );
            let e = run_ntp(&reaper, &bad, &[], servers, Duration::from_secs(10))
                .await
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "chronyd -q against 192.0.2.123: exit code 1 (No suitable source for synchronisation)"
            );
            let hang = fake(d.path(), "exec sleep 100");
            let e = run_ntp(&reaper, &hang, &[], servers, Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(e.to_string().contains("no answer within"), "{e}");
        });
    }
}
