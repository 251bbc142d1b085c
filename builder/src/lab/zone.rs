//! The lab's root zone and the guest's clock (`imrs-build lab --zone bundled|FILE|live`).
//!
//! | `--zone` | the transfer server serves | the guest's clock at power-on |
//! |---|---|---|
//! | `bundled` (default) | the repository's real root zone 2026073102 (`testdata/rootzone`, found in the workspace) | pinned: [`BUNDLED_CLOCK`], inside its signature window |
//! | `FILE` | the zone in FILE | inside every signature's window: an hour after the latest inception (or the image's build time, if later) |
//! | `live` | the current root zone, transferred from ICANN's transfer servers ([`ICANN_XFR_SERVERS`]) | the host's real time |
//!
//! The zone is obtained first ([`obtain`]: before the image is built or anything is started, so
//! a missing file or an unreachable transfer server fails fast and leaves nothing behind), then
//! verified with imrs-zone (ZONEMD + DNSSEC) against the trust anchors inside the image, at the
//! guest's clock, and written as plain text into the work folder for NSD ([`prepare`]). The
//! guest's clock must not be earlier than the image's build time (the init's clock floor).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use imrs_config::image::{ANCHORS_PATH, IMAGE_INFO_PATH, ImageInfo};
use imrs_config::imrs::ICANN_XFR_SERVERS;
use imrs_zone::{AxfrConfig, Timestamp, TrustAnchors, Zone};

use crate::workspace::{NotFound, Workspace};

/// The bundled zone's file name in the root zone data folder.
pub const BUNDLED_FILE: &str = "root.zone.2026073102";
/// The bundled zone's serial.
pub const BUNDLED_SERIAL: u32 = 2026073102;
/// The guest's clock with the bundled zone: 2026-08-01T00:00:00Z, inside the zone's signature
/// window (2026-07-31T19:00Z .. 2026-08-13T20:00Z, testdata/rootzone/README.md) and after the
/// lab images' SOURCE_DATE_EPOCH (2026-07-31T00:00Z).
pub const BUNDLED_CLOCK: i64 = 1_785_542_400;
/// With a zone FILE, the guest's clock starts this long after the latest signature inception
/// (or the image's build time).
pub const FILE_CLOCK_MARGIN: Duration = Duration::from_secs(3600);

/// Which zone the lab serves (`--zone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneChoice {
    /// The repository's real root zone with the pinned clock.
    Bundled,
    /// The current root zone from ICANN's transfer servers, with the real time.
    Live,
    /// A zone file given by the user, with a clock inside its signatures' windows.
    File(PathBuf),
}

impl FromStr for ZoneChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("empty; expected bundled, live or a zone file".into()),
            "bundled" => Ok(ZoneChoice::Bundled),
            "live" => Ok(ZoneChoice::Live),
            path => Ok(ZoneChoice::File(PathBuf::from(path))),
        }
    }
}

impl std::fmt::Display for ZoneChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZoneChoice::Bundled => f.write_str("bundled"),
            ZoneChoice::Live => f.write_str("live"),
            ZoneChoice::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The guest's real-time clock at power-on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestClock {
    /// A fixed time (UTC).
    Fixed(Timestamp),
    /// The host's clock.
    Host,
}

impl GuestClock {
    /// QEMU's `-rtc base=` value.
    pub fn qemu_base(&self) -> String {
        match self {
            GuestClock::Fixed(t) => t.strftime("%Y-%m-%dT%H:%M:%S").to_string(),
            GuestClock::Host => "utc".into(),
        }
    }
}

impl std::fmt::Display for GuestClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestClock::Fixed(t) => write!(f, "{t} (pinned)"),
            GuestClock::Host => f.write_str("the host's real time"),
        }
    }
}

/// A zone obtained but not yet verified.
#[derive(Debug)]
pub struct Obtained {
    /// The zone.
    pub zone: Zone,
    /// Where it came from (a path or `axfr://ADDR`).
    pub source: String,
    /// What was asked for.
    pub choice: ZoneChoice,
}

/// The zone the lab serves, verified, and the guest's clock.
#[derive(Debug, Clone)]
pub struct LabZone {
    /// The plain zone file NSD serves (in the work folder).
    pub file: PathBuf,
    /// Its SOA serial.
    pub serial: u32,
    /// Where it came from.
    pub source: String,
    /// The guest's clock.
    pub clock: GuestClock,
    /// The time it was verified at (the clock's value, or now).
    pub verified_at: Timestamp,
}

/// The bundled zone file in the workspace, or why there is none.
pub fn bundled_path(ws: Result<&Workspace, &NotFound>) -> Result<PathBuf> {
    let ws = ws.map_err(|e| {
        anyhow::anyhow!(
            "--zone bundled (the default) reads the real root zone from the imrs repository \
             (testdata/rootzone/{BUNDLED_FILE}), but {e}; run inside a checkout (or give a recipe \
             or image folder inside one), or pass --zone FILE or --zone live"
        )
    })?;
    let p = ws.rootzone_data().join(BUNDLED_FILE);
    if !p.is_file() {
        bail!(
            "{}: the bundled root zone is missing from the workspace {} (testdata/rootzone/README.md \
             names it); pass --zone FILE or --zone live",
            p.display(),
            ws.root().display()
        );
    }
    Ok(p)
}

/// ICANN's transfer servers, in the order [`live`] tries them, with their names.
pub fn live_servers() -> Vec<(&'static str, std::net::SocketAddr)> {
    ICANN_XFR_SERVERS
        .iter()
        .flat_map(|s| s.socket_addrs().map(|a| (s.name, a)))
        .collect()
}

/// Transfers the current root zone from ICANN's transfer servers (not verified yet).
pub fn live(connect_timeout: Duration) -> Result<Obtained> {
    let servers = live_servers();
    let config = AxfrConfig {
        servers: servers.iter().map(|(_, a)| *a).collect(),
        connect_timeout,
        ..AxfrConfig::default()
    };
    let mut names: Vec<&str> = servers.iter().map(|(n, _)| *n).collect();
    names.dedup();
    let t = imrs_zone::axfr::transfer(&config).map_err(|e| {
        anyhow::anyhow!(
            "--zone live: no root zone from ICANN's transfer servers {}: {e}; --zone live needs \
             a route to them (without one, use --zone bundled or --zone FILE)",
            names.join(" and ")
        )
    })?;
    Ok(Obtained {
        zone: t.zone,
        source: format!("axfr://{}", t.server),
        choice: ZoneChoice::Live,
    })
}

/// Obtains the zone `choice` names: reads the bundled zone or FILE, or transfers the live one.
/// Nothing is started and nothing is written: a failure here leaves nothing behind.
pub fn obtain(choice: &ZoneChoice, ws: Result<&Workspace, &NotFound>) -> Result<Obtained> {
    let load = |p: &Path| -> Result<Obtained> {
        let zone =
            Zone::load(p).with_context(|| format!("{}: cannot load the zone", p.display()))?;
        Ok(Obtained {
            zone,
            source: p.display().to_string(),
            choice: choice.clone(),
        })
    };
    match choice {
        ZoneChoice::Bundled => load(&bundled_path(ws)?),
        ZoneChoice::File(p) => load(p),
        ZoneChoice::Live => live(Duration::from_secs(5)),
    }
}

/// What the image tells the lab: the trust anchors the guest verifies zones with, and its build
/// time (the guest's clock floor).
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// The image's `/etc/imrs/root-anchors.xml`.
    pub anchors: TrustAnchors,
    /// The image's SOURCE_DATE_EPOCH.
    pub source_date_epoch: i64,
    /// The image's DNS daemon.
    pub dns: imrs_config::recipe::DnsImpl,
}

/// Reads the anchors and the build time from the image's initramfs.
pub fn image_facts(image: &Path) -> Result<ImageFacts> {
    let initramfs = image.join(crate::image_dir::INITRAMFS);
    let entries = crate::verify::read_initramfs(&initramfs)
        .with_context(|| format!("reading {}", initramfs.display()))?;
    let find = |path: &str| {
        let name = path.trim_start_matches('/');
        entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.data.as_slice())
            .ok_or_else(|| anyhow::anyhow!("{}: has no {path}", initramfs.display()))
    };
    let xml = String::from_utf8_lossy(find(ANCHORS_PATH)?).into_owned();
    let anchors = TrustAnchors::parse(&xml)
        .with_context(|| format!("{}: {ANCHORS_PATH}", initramfs.display()))?;
    let info: ImageInfo = serde_json::from_slice(find(IMAGE_INFO_PATH)?)
        .with_context(|| format!("{}: {IMAGE_INFO_PATH}", initramfs.display()))?;
    Ok(ImageFacts {
        anchors,
        source_date_epoch: info.source_date_epoch,
        dns: info.dns,
    })
}

/// The guest's clock for a zone FILE: [`FILE_CLOCK_MARGIN`] after the latest signature inception
/// or the image's build time, whichever is later; it and `budget` more (the boots) must end
/// before the earliest signature expiration.
pub fn clock_for_file(
    zone: &Zone,
    source: &str,
    epoch: Timestamp,
    budget: Duration,
) -> Result<Timestamp> {
    let w = imrs_zone::dnssec::signature_window(zone, Timestamp::now())
        .ok_or_else(|| anyhow::anyhow!("{source}: the zone has no RRSIG to set the clock by"))?;
    let start = w.latest_inception.max(epoch);
    let clock = start + FILE_CLOCK_MARGIN;
    let need = clock + budget;
    if need > w.earliest_expiration {
        bail!(
            "{source}: no guest clock fits: it must lie after every signature's inception \
             (latest {}) and the image's build time ({epoch}), and {} s of boots must end before \
             the first signature expires ({}); use a zone signed after the image's build time, \
             or --zone live",
            w.latest_inception,
            budget.as_secs(),
            w.earliest_expiration
        );
    }
    Ok(clock)
}

/// Chooses the guest's clock for `got`, verifies the zone against the image's anchors at that
/// time, and writes it as plain text to `dir/root.zone` for NSD. `budget` is how long the
/// scenario's boots may take.
pub fn prepare(got: Obtained, facts: &ImageFacts, dir: &Path, budget: Duration) -> Result<LabZone> {
    let epoch = Timestamp::from_second(facts.source_date_epoch).with_context(|| {
        format!(
            "the image's SOURCE_DATE_EPOCH {} is not a time",
            facts.source_date_epoch
        )
    })?;
    let (clock, at) = match &got.choice {
        ZoneChoice::Bundled => {
            let t = Timestamp::from_second(BUNDLED_CLOCK).context("the bundled clock")?;
            if t < epoch {
                bail!(
                    "the image was built at {epoch} (SOURCE_DATE_EPOCH), after the bundled \
                     zone's pinned clock {t}: the guest would refuse its clock; use --zone live \
                     or a newer --zone FILE"
                );
            }
            (GuestClock::Fixed(t), t)
        }
        ZoneChoice::File(_) => {
            let t = clock_for_file(&got.zone, &got.source, epoch, budget)?;
            (GuestClock::Fixed(t), t)
        }
        ZoneChoice::Live => (GuestClock::Host, Timestamp::now()),
    };
    let v = imrs_zone::verify(&got.zone, &facts.anchors, at);
    if let Err(e) = v.proof() {
        return Err(anyhow::Error::new(e).context(format!(
            "{}: the zone does not verify at {at} against the image's trust anchors; the lab \
             serves only a zone the appliance would accept",
            got.source
        )));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
    let file = dir.join("root.zone");
    let mut text = Vec::with_capacity(got.zone.len() * 100);
    got.zone
        .write_text(&mut text)
        .context("formatting the zone")?;
    imrs_config::fsutil::write_atomic(&file, &text, 0o644)
        .with_context(|| format!("{}: cannot write", file.display()))?;
    Ok(LabZone {
        file,
        serial: got.zone.serial(),
        source: got.source,
        clock,
        verified_at: at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled() -> PathBuf {
        crate::workspace::this_checkout().join("testdata/rootzone/root.zone.2026073102")
    }

    fn anchors() -> TrustAnchors {
        TrustAnchors::load(&crate::workspace::this_checkout().join("images/files/root-anchors.xml"))
            .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn zone_choice_parses() {
        assert_eq!("bundled".parse::<ZoneChoice>(), Ok(ZoneChoice::Bundled));
        assert_eq!("live".parse::<ZoneChoice>(), Ok(ZoneChoice::Live));
        assert_eq!(
            "./live".parse::<ZoneChoice>(),
            Ok(ZoneChoice::File("./live".into()))
        );
        assert!("".parse::<ZoneChoice>().is_err());
    }

    #[test]
    fn qemu_clock_values() {
        assert_eq!(
            GuestClock::Fixed(Timestamp::from_second(BUNDLED_CLOCK).unwrap()).qemu_base(),
            "2026-08-01T00:00:00"
        );
        assert_eq!(GuestClock::Host.qemu_base(), "utc");
    }

    #[test]
    fn live_tries_both_servers_on_both_families() {
        let s = live_servers();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].0, "lax.xfr.dns.icann.org");
        assert_eq!(s[3].0, "iad.xfr.dns.icann.org");
        assert!(s.iter().all(|(_, a)| a.port() == 53));
    }

    /// The bundled zone, given as a FILE: verified at a clock derived from its signatures (an
    /// hour after the latest inception, 2026-07-31T19:00Z), written as plain text that loads
    /// back to the same records; the bundled choice uses the pinned clock, inside the window.
    #[test]
    fn file_and_bundled_clocks_verify_the_real_zone() {
        let t = tempfile::tempdir().unwrap();
        let facts = ImageFacts {
            anchors: anchors(),
            source_date_epoch: 1_785_456_000,
            dns: imrs_config::recipe::DnsImpl::Nsd,
        };
        let budget = Duration::from_secs(1200);
        let got = obtain(
            &ZoneChoice::File(bundled()),
            Err(&NotFound { searched: vec![] }),
        )
        .unwrap();
        let records = got.zone.len();
        let z = prepare(got, &facts, &t.path().join("file"), budget).unwrap();
        assert_eq!(z.serial, BUNDLED_SERIAL);
        assert_eq!(z.clock, GuestClock::Fixed(ts("2026-07-31T20:00:00Z")));
        assert_eq!(Zone::load(&z.file).unwrap().len(), records);

        let ws = crate::workspace::find_from(&crate::workspace::this_checkout()).unwrap();
        let got = obtain(&ZoneChoice::Bundled, Ok(&ws)).unwrap();
        let z = prepare(got, &facts, &t.path().join("bundled"), budget).unwrap();
        assert_eq!(
            z.clock,
            GuestClock::Fixed(Timestamp::from_second(BUNDLED_CLOCK).unwrap())
        );
        assert_eq!(z.clock.qemu_base(), "2026-08-01T00:00:00");
    }

    #[test]
    fn clock_follows_the_build_time_and_refuses_expired_windows() {
        let zone = Zone::load(&bundled()).unwrap();
        let b = Duration::from_secs(1200);
        // Built after the latest inception: an hour after the build.
        assert_eq!(
            clock_for_file(&zone, "z", ts("2026-08-02T00:00:00Z"), b).unwrap(),
            ts("2026-08-02T01:00:00Z")
        );
        // Built after the signatures expire (2026-08-13T20:00Z): no clock fits.
        let e = clock_for_file(&zone, "z", ts("2026-08-13T19:00:00Z"), b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no guest clock fits"), "{e}");
        assert!(e.contains("2026-08-13T20:00:00Z"), "{e}");
    }

    #[test]
    fn bundled_is_refused_for_an_image_built_after_its_clock() {
        let got = obtain(
            &ZoneChoice::File(bundled()),
            Err(&NotFound { searched: vec![] }),
        )
        .unwrap();
        let got = Obtained {
            choice: ZoneChoice::Bundled,
            ..got
        };
        let facts = ImageFacts {
            anchors: anchors(),
            source_date_epoch: BUNDLED_CLOCK + 1,
            dns: imrs_config::recipe::DnsImpl::Nsd,
        };
        let t = tempfile::tempdir().unwrap();
        let e = prepare(got, &facts, t.path(), Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(e.contains("after the bundled zone's pinned clock"), "{e}");
        assert!(!t.path().join("root.zone").exists());
    }

    #[test]
    fn a_zone_that_does_not_verify_is_not_served() {
        let text = std::fs::read_to_string(bundled()).unwrap();
        let (tampered, _) = super::super::xfr::tamper(&text).unwrap();
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("tampered.zone");
        std::fs::write(&p, tampered).unwrap();
        let got = obtain(
            &ZoneChoice::File(p.clone()),
            Err(&NotFound { searched: vec![] }),
        )
        .unwrap();
        let facts = ImageFacts {
            anchors: anchors(),
            source_date_epoch: 1_785_456_000,
            dns: imrs_config::recipe::DnsImpl::Nsd,
        };
        let e = format!(
            "{:#}",
            prepare(got, &facts, &t.path().join("out"), Duration::from_secs(60)).unwrap_err()
        );
        assert!(e.contains("does not verify"), "{e}");
        assert!(e.contains("ZONEMD"), "{e}");
        assert!(!t.path().join("out/root.zone").exists());
    }

    #[test]
    fn missing_inputs_are_named() {
        let nf = NotFound {
            searched: vec![PathBuf::from("/nowhere")],
        };
        let e = obtain(&ZoneChoice::Bundled, Err(&nf))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--zone FILE or --zone live"), "{e}");
        assert!(e.contains("/nowhere"), "{e}");
        let e = format!(
            "{:#}",
            obtain(&ZoneChoice::File("/nonexistent/z".into()), Err(&nf)).unwrap_err()
        );
        assert!(e.contains("/nonexistent/z: cannot load the zone"), "{e}");
    }
}
