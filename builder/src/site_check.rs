//! `site check` beyond the rules: the daemon configs the appliance would generate from the site
//! (BIRD, NSD, Knot; the init's own generators, `imrs_init::{bgp, dns}`) are checked by the
//! daemons themselves (`bird -p`, `nsd-checkconf`, `knotc conf-check`) when they are installed
//! on this host, so a config that passes here does not fail at boot on a detail the rules miss.

use std::path::Path;
use std::process::Command;

use imrs_config::recipe::DnsImpl;
use imrs_config::site::Site;
use imrs_init::bgp::{self, BIRD_BIN, BirdOptions};
use imrs_init::dns::{DnsConfig, Hardware};
use serde::Serialize;

/// What one daemon said of its generated config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Verdict {
    /// The daemon accepted it.
    Accepted,
    /// The daemon refused it.
    Refused {
        /// Its output (last lines) or the generator's error.
        message: String,
    },
    /// The daemon is not installed here: not checked.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// One daemon's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonCheck {
    /// `bird`, `nsd` or `knot`.
    pub daemon: &'static str,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

fn run(program: &Path, args: &[String]) -> Verdict {
    if !program.exists() {
        return Verdict::Skipped {
            reason: format!("{} is not installed", program.display()),
        };
    }
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => Verdict::Accepted,
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            Verdict::Refused {
                message: format!(
                    "{} ({}): {}",
                    program.display(),
                    o.status,
                    lines[lines.len().saturating_sub(4)..].join(" | ")
                ),
            }
        }
        Err(e) => Verdict::Skipped {
            reason: format!("cannot run {}: {e}", program.display()),
        },
    }
}

/// Renders the BIRD config and the NSD and Knot configs the appliance would generate for `site`
/// and has each installed daemon check its own. `work` is a scratch folder.
pub fn check(site: &Site, work: &Path) -> Vec<DaemonCheck> {
    let mut out = Vec::new();
    let verdict = match bgp::render(site, &BirdOptions::default()) {
        Err(e) => Verdict::Refused {
            message: imrs_config::error_chain(&e),
        },
        Ok(text) => {
            let conf = work.join("bird.conf");
            match std::fs::write(&conf, text) {
                Err(e) => Verdict::Skipped {
                    reason: format!("cannot write {}: {e}", conf.display()),
                },
                Ok(()) => run(
                    Path::new(BIRD_BIN),
                    &[
                        "-p".into(),
                        "-c".into(),
                        conf.to_string_lossy().into_owned(),
                    ],
                ),
            }
        }
    };
    out.push(DaemonCheck {
        daemon: "bird",
        verdict,
    });
    // Sized as a small appliance: the sizes only scale workers and buffers.
    let hw = Hardware {
        cpus: 4,
        memory_mib: 8192,
    };
    for (daemon, implementation) in [("nsd", DnsImpl::Nsd), ("knot", DnsImpl::Knot)] {
        let run_dir = work.join(daemon);
        let cfg = DnsConfig::for_site(implementation, site, &hw, work.join("root.zone"), &run_dir);
        let verdict = match cfg.write() {
            Err(e) => Verdict::Refused {
                message: imrs_config::error_chain(&e),
            },
            Ok(()) => {
                let (program, args) = cfg.check_command();
                run(&program, &args)
            }
        };
        out.push(DaemonCheck { daemon, verdict });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_site() -> Site {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml");
        imrs_config::site::load(&path).unwrap()
    }

    #[test]
    fn the_lab_sites_configs_pass_every_installed_daemon() {
        let work = tempfile::tempdir().unwrap();
        let checks = check(&lab_site(), work.path());
        assert_eq!(checks.len(), 3);
        for c in &checks {
            assert!(
                !matches!(c.verdict, Verdict::Refused { .. }),
                "{}: {:?}",
                c.daemon,
                c.verdict
            );
            if std::env::var("CI").as_deref() == Ok("true") {
                assert_eq!(c.verdict, Verdict::Accepted, "{} under CI", c.daemon);
            }
        }
    }

    #[test]
    fn a_daemon_refusal_is_reported_with_its_words() {
        // What the rules cannot see but BIRD refuses: a config file it cannot parse. Here the
        // BIRD binary is run on a config the generator did not write.
        let work = tempfile::tempdir().unwrap();
        let conf = work.path().join("broken.conf");
        std::fs::write(&conf, "protocol bgp x { this is not bird }\n").unwrap();
        match run(
            Path::new(BIRD_BIN),
            &[
                "-p".into(),
                "-c".into(),
                conf.to_string_lossy().into_owned(),
            ],
        ) {
            Verdict::Refused { message } => assert!(message.contains("bird"), "{message}"),
            Verdict::Skipped { reason } => {
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
                eprintln!("SKIP: {reason}");
            }
            Verdict::Accepted => panic!("BIRD accepted a broken config"),
        }
    }
}
