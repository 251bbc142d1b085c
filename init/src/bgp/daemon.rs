//! BIRD as a supervised daemon: its private run directory (config, a root-only control socket,
//! BIRD's own `var/` for the pidfile), the
//! atomic config write checked with `bird -p` before it replaces the old file, and the command
//! line the supervisor runs.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use imrs_config::accounts::Account;

use super::{BgpError, Birdc};
use crate::privilege::make_dir;

/// The BIRD binary in the image.
pub const BIRD_BIN: &str = "/usr/sbin/bird";

/// One BIRD instance and its private run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdDaemon {
    /// The `bird` binary.
    pub bird: PathBuf,
    /// Private directory holding `bird.conf` (root's), `control/bird.ctl` (root only) and
    /// `var/bird.pid` (BIRD's).
    pub run_dir: PathBuf,
    /// The account BIRD drops to after start (`-u`/`-g`; it keeps `CAP_NET_BIND_SERVICE`,
    /// `CAP_NET_ADMIN`, `CAP_NET_RAW`); `None`: it stays the user that started it.
    pub account: Option<Account>,
}

impl BirdDaemon {
    /// BIRD from [`BIRD_BIN`] running in `run_dir`.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        BirdDaemon {
            bird: PathBuf::from(BIRD_BIN),
            run_dir: run_dir.into(),
            account: None,
        }
    }

    /// BIRD's own directory (control socket, pidfile).
    pub fn var_dir(&self) -> PathBuf {
        self.run_dir.join(crate::privilege::VAR)
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.run_dir.join("bird.conf")
    }

    /// The control socket (created by BIRD as root before it drops privileges, in the run
    /// directory's root-only `control/`: only root reaches it).
    pub fn socket(&self) -> PathBuf {
        self.run_dir
            .join(crate::privilege::CONTROL)
            .join("bird.ctl")
    }

    /// The pidfile (written after BIRD drops privileges).
    pub fn pidfile(&self) -> PathBuf {
        self.var_dir().join("bird.pid")
    }

    /// A control client for this instance.
    pub fn birdc(&self) -> Birdc {
        Birdc::new(self.socket())
    }

    /// The command line: BIRD in the foreground (`-f`) so the supervisor owns the process.
    pub fn command(&self) -> (PathBuf, Vec<String>) {
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        let mut args: Vec<String> = vec![
            "-f".into(),
            "-c".into(),
            s(self.config_path()),
            "-s".into(),
            s(self.socket()),
            "-P".into(),
            s(self.pidfile()),
        ];
        if let Some(a) = self.account {
            args.extend(["-u".into(), a.name.into(), "-g".into(), a.name.into()]);
        }
        (self.bird.clone(), args)
    }

    /// Writes `text` as the config: creates the run directory, writes a temp file, has
    /// `bird -p` check it, then renames it over the old config (fsyncing file and directory).
    /// A config BIRD rejects never replaces a good one.
    pub fn write_config(&self, text: &str) -> Result<(), BgpError> {
        self.write_config_with(text, |tmp| check_config(&self.bird, tmp))
    }

    /// [`BirdDaemon::write_config`] with the check done by `check` (given the temp file): the
    /// init runs `bird -p` through its reaper instead of `Command::output`.
    pub fn write_config_with(
        &self,
        text: &str,
        check: impl FnOnce(&Path) -> Result<(), BgpError>,
    ) -> Result<(), BgpError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BgpError::Write { path, source }
        };
        make_dir(&self.run_dir, None, 0o755).map_err(werr(&self.run_dir))?;
        let var = self.var_dir();
        make_dir(&var, self.account, 0o750).map_err(werr(&var))?;
        let control = self.run_dir.join(crate::privilege::CONTROL);
        make_dir(&control, None, 0o700).map_err(werr(&control))?;
        let target = self.config_path();
        let tmp = self.run_dir.join(".bird.conf.tmp");
        let mut f = File::create(&tmp).map_err(werr(&tmp))?;
        f.write_all(text.as_bytes()).map_err(werr(&tmp))?;
        f.sync_all().map_err(werr(&tmp))?;
        drop(f);
        if let Err(e) = check(&tmp) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &target).map_err(werr(&target))?;
        File::open(&self.run_dir)
            .and_then(|d| d.sync_all())
            .map_err(werr(&self.run_dir))
    }

    /// Asks the running BIRD to load the (already checked) config file again.
    pub fn reconfigure(&self) -> Result<(), BgpError> {
        self.birdc().command("configure").map(drop)
    }
}

/// Checks a config file with `bird -p -c FILE` (parse only, nothing is started).
pub fn check_config(bird: &Path, path: &Path) -> Result<(), BgpError> {
    let out = Command::new(bird)
        .arg("-p")
        .arg("-c")
        .arg(path)
        .output()
        .map_err(|source| BgpError::CheckSpawn {
            bird: bird.to_path_buf(),
            path: path.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if message.is_empty() {
            message = format!("exit status {}", out.status);
        }
        Err(BgpError::CheckFailed {
            path: path.to_path_buf(),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_uses_the_run_dir() {
        let d = BirdDaemon::new("/run/imrs/bird");
        let (bin, args) = d.command();
        assert_eq!(bin, Path::new("/usr/sbin/bird"));
        assert_eq!(
            args,
            [
                "-f",
                "-c",
                "/run/imrs/bird/bird.conf",
                "-s",
                "/run/imrs/bird/control/bird.ctl",
                "-P",
                "/run/imrs/bird/var/bird.pid"
            ]
        );
        let d = BirdDaemon {
            account: Some(imrs_config::accounts::BIRD),
            ..d
        };
        assert_eq!(d.command().1[7..], ["-u", "bird", "-g", "bird"]);
    }

    #[test]
    fn rejected_config_never_replaces_the_good_one() {
        if !Path::new(BIRD_BIN).exists() {
            eprintln!("skip: {BIRD_BIN} not installed");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs bird"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = BirdDaemon::new(dir.path());
        // In imrs-init's unit-test process the reaper's tests call waitpid(-1), which can take
        // `bird -p`'s exit status from `Command::output` (the init itself checks through its
        // reaper): a lost status is retried, a verdict is not.
        let write = |text: &str| {
            let mut r = d.write_config(text);
            for _ in 0..5 {
                if !matches!(r, Err(BgpError::CheckSpawn { .. })) {
                    break;
                }
                r = d.write_config(text);
            }
            r
        };
        write("router id 192.0.2.10;\nprotocol device {}\n").unwrap();
        let err = write("router id 192.0.2.10;\nprotocol nonsense {}\n");
        assert!(matches!(err, Err(BgpError::CheckFailed { .. })), "{err:?}");
        let kept = fs::read_to_string(d.config_path()).unwrap();
        assert!(kept.contains("protocol device {}"));
        assert!(!dir.path().join(".bird.conf.tmp").exists());
    }
}
