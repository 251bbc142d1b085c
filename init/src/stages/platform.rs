//! Stage `platform`: kernel filesystems mounted and the image describes itself. The image's
//! kernel modules are loaded before the pipeline ([`load_modules`]): the data partition holding
//! the state needs its disk and filesystem drivers.

use imrs_config::image::ImageInfo;

use crate::context::Context;
use crate::log;
use crate::modules;
use crate::outcome::Outcome;
use crate::pid1::Role;

/// Loads the image's kernel modules (machine role; elsewhere only checks they are there).
/// Failures are kept for the hardware stage, which reports each as a failed check.
pub async fn load_modules(ctx: &mut Context) {
    let Ok(info) = &ctx.image else { return };
    let info: ImageInfo = info.clone();
    let root = ctx.root.clone();
    let load = ctx.role == Role::Machine;
    let t = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || {
        modules::load_all(&root, &info.kernel_release, &info.modules, load)
    })
    .await
    .unwrap_or_else(|e| modules::Loaded {
        failures: vec![modules::ModuleFailure {
            module: "*".into(),
            reason: format!("module loader crashed: {e}"),
        }],
        ..Default::default()
    });
    for f in &loaded.failures {
        log::error(format!("kernel module {}: {}", f.module, f.reason));
    }
    for m in &loaded.not_applicable {
        log::info(format!(
            "kernel module {m}: not for this machine (ENODEV: the firmware lacks what it serves)"
        ));
    }
    let slowest: Vec<String> = loaded
        .timings
        .iter()
        .take(3)
        .map(|(m, s)| {
            let name = m.rsplit('/').next().unwrap_or(m);
            format!("{name} {:.0} ms", s * 1000.0)
        })
        .collect();
    log::info(format!(
        "{} kernel modules {} in {:.2} s (slowest: {})",
        loaded.ok,
        if load {
            "loaded"
        } else {
            "present (not loaded outside the machine role)"
        },
        t.elapsed().as_secs_f64(),
        slowest.join(", ")
    ));
    ctx.module_failures = loaded.failures;
}

/// Mounts succeeded and the image describes itself. Module failures (loaded before the
/// pipeline by [`load_modules`]) are noted here and fail the hardware stage as named checks.
pub fn run(ctx: &mut Context) -> Outcome {
    if !ctx.mount_errors.is_empty() {
        return Outcome::Failed(ctx.mount_errors.join("; "));
    }
    if let Err(e) = &ctx.image {
        return Outcome::Failed(format!("no image info: {e}"));
    }
    if !ctx.module_failures.is_empty() {
        ctx.notes.push(format!(
            "{} kernel modules failed (reported by the hardware stage)",
            ctx.module_failures.len()
        ));
    }
    Outcome::Passed
}
