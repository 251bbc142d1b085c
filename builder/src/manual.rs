//! `imrs-build completions SHELL` and `imrs-build manpage`: shell completion scripts
//! (clap_complete) and man pages (clap_mangen), both generated from the clap definitions in
//! [`crate::cli`], so they cannot drift from the real command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use serde_json::json;

use crate::cli::Cli;
use crate::ui::{Failure, Ui, print_ok};

/// The completion script for `shell`.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "imrs-build", &mut out);
    out
}

/// `completions SHELL`: the script on stdout (with `--json`, inside the result object).
pub fn completions(shell: clap_complete::Shell, ui: &Ui) -> Result<u8> {
    let script = completion_script(shell);
    if ui.json {
        print_ok(json!({"shell": shell.to_string(),
                        "script": String::from_utf8_lossy(&script)}))?;
    } else {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&script)
            .and_then(|()| stdout.flush())
            .context("cannot write the completion script to stdout")?;
    }
    Ok(0)
}

/// Every man page: `(file name, roff)`, the main page first, then one per subcommand at every
/// level (`imrs-build-zone-verify.1`), as clap_mangen names them.
pub fn pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect(&cmd, &mut pages)?;
    Ok(pages)
}

fn collect(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut roff = Vec::new();
    man.render(&mut roff)
        .with_context(|| format!("rendering the man page of {}", cmd.get_name()))?;
    pages.push((man.get_filename(), roff));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, pages)?;
    }
    Ok(())
}

/// `manpage [--out DIR]`: the main page on stdout, or every page written into `DIR` (each file
/// atomically).
pub fn manpages(out: Option<&Path>, ui: &Ui) -> Result<u8> {
    let pages = pages()?;
    let Some(dir) = out else {
        if ui.json {
            return Err(Failure::new(
                crate::EXIT_USAGE,
                "manpage --json needs --out DIR (the pages are roff, not JSON)",
            )
            .into());
        }
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let main = pages
            .first()
            .map(|(_, roff)| roff.as_slice())
            .unwrap_or_default();
        stdout
            .write_all(main)
            .and_then(|()| stdout.flush())
            .context("cannot write the man page to stdout")?;
        return Ok(0);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut written: Vec<PathBuf> = Vec::new();
    for (name, roff) in &pages {
        let path = dir.join(name);
        imrs_config::fsutil::write_atomic(&path, roff, 0o644)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        written.push(path);
    }
    if ui.json {
        print_ok(json!({"out": dir, "pages": written}))?;
    } else {
        ui.info(format!(
            "{} man pages written into {} (try: man -l {})",
            written.len(),
            dir.display(),
            dir.join("imrs-build.1").display()
        ));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        use clap::ValueEnum;
        for shell in clap_complete::Shell::value_variants() {
            let script = String::from_utf8(completion_script(*shell)).unwrap();
            for word in ["imrs-build", "verify", "zone", "completions", "manpage"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn one_page_per_command() {
        let pages = pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "imrs-build.1");
        for n in [
            "imrs-build-verify.1",
            "imrs-build-zone-verify.1",
            "imrs-build-site-sign.1",
            "imrs-build-home-serve.1",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let main = String::from_utf8_lossy(&pages[0].1);
        assert!(main.contains(".TH imrs-build 1"), "{main}");
        assert!(main.contains("Exit codes"), "{main}");
    }
}
