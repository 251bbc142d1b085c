//! Stage `clock`: a trustworthy clock before anything checks a signature window. The image's
//! build time is a floor; then NTS or NTP (`chronyd -q` against the site's servers) or, on a
//! lab site with `trust_rtc = true`, the RTC ([`crate::clock`]). Set from servers, the clock is
//! kept: the steady stage starts the [`clock::Keeper`] this stage leaves.

use crate::clock;
use crate::context::Context;
use crate::log;
use crate::outcome::Outcome;
use crate::pid1::Role;

/// Sets or confirms the clock.
pub async fn run(ctx: &mut Context) -> Outcome {
    let (Ok(info), Some(site)) = (&ctx.image, &ctx.site) else {
        return Outcome::Failed("no image info or site config".into());
    };
    let epoch = info.source_date_epoch;
    let now = clock::unix_now();
    if now < epoch {
        let msg = format!("clock {now} is behind the image build time {epoch}");
        if ctx.role == Role::Machine {
            match clock::set_floor(epoch) {
                Ok(()) => log::warn(format!("{msg}: set to it as a floor")),
                Err(e) => log::error(log::chain(&e)),
            }
        } else {
            log::warn(format!("{msg}: not set outside the machine role"));
        }
        ctx.notes.push(format!("{msg}: floor applied"));
    }
    let chronyd = ctx.root.join(clock::CHRONYD);
    let chronyd = chronyd.exists().then_some(chronyd);
    // chronyd's own directory (its pidfile), its account's when it drops to one.
    let account = crate::privilege::enabled(ctx.role).then_some(imrs_config::accounts::CHRONY);
    let run_dir = ctx.root.join("run/imrs/chrony");
    if let Err(e) = crate::privilege::make_dir(&run_dir, account, 0o750) {
        return Outcome::Failed(format!("{}: {e}", run_dir.display()));
    }
    match clock::plan(now, epoch, &site.ntp, chronyd.as_deref(), &run_dir, account) {
        clock::Plan::Fail(e) => Outcome::Failed(e.to_string()),
        clock::Plan::TrustRtc => {
            let msg = format!(
                "clock {now} taken from the RTC without confirmation: trust_rtc = true (LAB)"
            );
            log::warn(&msg);
            ctx.notes.push(msg);
            ctx.clock_source = "rtc (trust_rtc = true, lab)".into();
            Outcome::Passed
        }
        clock::Plan::Ntp { program, args, nts } => {
            let servers = clock::describe(&site.ntp);
            if let Some(files) = &nts
                && let Err(e) = write_nts_files(ctx, files)
            {
                return Outcome::Failed(e);
            }
            log::info(format!(
                "setting the clock from {} ({servers})",
                if nts.is_some() { "NTS" } else { "NTP" }
            ));
            let (before, started) = (clock::wall_now(), std::time::Instant::now());
            match clock::run_ntp(&ctx.reaper, &program, &args, &servers, clock::NTP_TIMEOUT).await {
                Err(e) => Outcome::Failed(e.to_string()),
                Ok(()) => {
                    let after = clock::unix_now();
                    if after < epoch {
                        return Outcome::Failed(
                            clock::ClockError::StillBehind { now: after, epoch }.to_string(),
                        );
                    }
                    let how = if nts.is_some() { "nts" } else { "ntp" };
                    // How far chronyd moved the clock (its own run time taken out).
                    let moved = clock::moved_since(before, started);
                    log::info(format!(
                        "clock set by {how}: {} (moved {moved:+.3} s)",
                        clock::timestamp_now()
                    ));
                    ctx.notes.push(format!("clock set by {how}: {after}"));
                    ctx.clock_source = format!("{how} ({servers})");
                    ctx.serving.clock_keeper = Some(clock::Keeper {
                        chronyd: program,
                        ntp: site.ntp.clone(),
                        epoch,
                        run_dir,
                        account,
                    });
                    Outcome::Passed
                }
            }
        }
    }
}

/// The site's CA where chronyd reads it (a public certificate: mode 0644) and, on the machine,
/// the NTS servers' names in `/etc/hosts`. Outside the machine role the host's `/etc/hosts` is
/// not ours to write: the names must resolve there already.
fn write_nts_files(ctx: &Context, files: &clock::NtsFiles) -> Result<(), String> {
    imrs_config::fsutil::write_atomic(&files.ca_path, files.ca_pem.as_bytes(), 0o644)
        .map_err(|e| format!("{}: {e}", files.ca_path.display()))?;
    if ctx.role == Role::Machine {
        let hosts = ctx.root.join("etc/hosts");
        imrs_config::fsutil::write_atomic(&hosts, files.hosts.as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", hosts.display()))?;
    } else {
        log::warn("NTS server names: /etc/hosts not written outside the machine role");
    }
    Ok(())
}
