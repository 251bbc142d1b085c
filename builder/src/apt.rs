//! The host's apt, used to resolve and locate Debian packages: `apt-cache show` for package
//! metadata (versions, Depends, sha256, pool path) and `apt-get download --print-uris` for the
//! mirror URL of an exact version. Nothing here installs anything on the host.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Command;

use imrs_config::lock::{LOCK_SCHEMA, Lock, LockedPackage, Role};
use imrs_config::recipe::ResolvedRecipe;

/// Resolving or locating packages failed.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// An apt command could not be started.
    #[error("cannot run {cmd}")]
    Spawn {
        /// The command.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A package named by the recipe (or needed by one) is unknown to apt.
    #[error(
        "package {name} (needed by {needed_by}) is not known to apt; run `apt-get update`, or add it \
         to userland.exclude if the image has no use for it"
    )]
    Unknown {
        /// Package.
        name: String,
        /// Who needs it.
        needed_by: String,
    },
    /// A locked version is no longer on the configured mirror.
    #[error(
        "{name} {version} is no longer on the apt mirror (Debian drops superseded versions); \
         re-lock with `imrs-build lock RECIPE` or fetch it from a snapshot archive with \
         `--snapshot URL` (or `apt.snapshot` in the recipe), e.g. \
         https://snapshot.debian.org/archive/debian/<YYYYMMDDThhmmssZ>"
    )]
    Gone {
        /// Package.
        name: String,
        /// Version.
        version: String,
    },
    /// apt printed something we do not understand.
    #[error("unexpected output from {cmd}: {line}")]
    Output {
        /// Command.
        cmd: String,
        /// The line.
        line: String,
    },
    /// The kernel package does not depend on a versioned linux-image package.
    #[error("{meta} does not point to a versioned linux-image-* package")]
    KernelMeta {
        /// The meta package.
        meta: String,
    },
}

/// One `apt-cache show` stanza, the fields we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    /// Fields in order of appearance (multi-line values joined with '\n').
    pub fields: BTreeMap<String, String>,
}

impl Stanza {
    /// A field's value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(String::as_str)
    }
}

/// Parses deb822 text (`Key: value`, continuation lines start with a space, blank line ends a
/// stanza).
pub fn parse_deb822(text: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut cur = Stanza::default();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(k) = &last
                && let Some(v) = cur.fields.get_mut(k)
            {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.fields.insert(k.to_string(), v.trim().to_string());
            last = Some(k.to_string());
        }
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    out
}

/// Runs `apt-cache show --no-all-versions` for `names`; names apt does not know are absent from
/// the result (virtual or unknown packages).
pub fn show(names: &[String]) -> Result<BTreeMap<String, Stanza>, AptError> {
    let mut out = BTreeMap::new();
    if names.is_empty() {
        return Ok(out);
    }
    let cmd = "apt-cache show --no-all-versions";
    let output = Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(names)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| AptError::Spawn {
            cmd: cmd.into(),
            source,
        })?;
    for st in parse_deb822(&String::from_utf8_lossy(&output.stdout)) {
        if let Some(p) = st.get("Package") {
            out.insert(p.to_string(), st);
        }
    }
    Ok(out)
}

/// Splits a Depends field into groups of alternatives, package names only (versions and
/// architecture qualifiers dropped).
pub fn depends_groups(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|g| {
            g.split('|')
                .filter_map(|alt| {
                    let name = alt.split_whitespace().next()?;
                    let name = name.split(':').next().unwrap_or(name);
                    Some(name.to_string())
                })
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

fn locked(st: &Stanza, role: Role) -> Result<LockedPackage, AptError> {
    let field = |k: &str| {
        st.get(k)
            .map(str::to_string)
            .ok_or_else(|| AptError::Output {
                cmd: "apt-cache show".into(),
                line: format!("{} has no {k} field", st.get("Package").unwrap_or("?")),
            })
    };
    Ok(LockedPackage {
        name: field("Package")?,
        version: field("Version")?,
        architecture: field("Architecture")?,
        size: field("Size")?.parse().map_err(|_| AptError::Output {
            cmd: "apt-cache show".into(),
            line: format!("Size: {}", st.get("Size").unwrap_or("")),
        })?,
        sha256: field("SHA256")?.to_lowercase(),
        filename: field("Filename")?,
        role,
    })
}

/// Resolves the recipe's packages through the host's apt into a lock: the versioned kernel
/// package (its own Depends are not followed: only its files are used), the userland packages
/// and their `Depends`/`Pre-Depends` closure minus `userland.exclude`.
pub fn resolve(recipe: &ResolvedRecipe, source_date_epoch: i64) -> Result<Lock, AptError> {
    let r = &recipe.recipe;
    let exclude: BTreeSet<&str> = r.userland.exclude.iter().map(String::as_str).collect();

    // Kernel: follow a meta package (linux-image-amd64) to the versioned image it depends on.
    let show1 = |name: &str, needed_by: &str| -> Result<Stanza, AptError> {
        show(&[name.to_string()])?
            .remove(name)
            .ok_or_else(|| AptError::Unknown {
                name: name.to_string(),
                needed_by: needed_by.to_string(),
            })
    };
    let is_versioned = |n: &str| {
        n.strip_prefix("linux-image-")
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
    };
    let mut kernel_name = r.kernel.package.clone();
    let mut kst = show1(&kernel_name, "kernel.package")?;
    if !is_versioned(&kernel_name) {
        kernel_name = kst
            .get("Depends")
            .map(depends_groups)
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .find(|n| is_versioned(n))
            .ok_or_else(|| AptError::KernelMeta {
                meta: r.kernel.package.clone(),
            })?;
        kst = show1(&kernel_name, &r.kernel.package)?;
    }
    let kernel_release = kernel_name
        .strip_prefix("linux-image-")
        .unwrap_or(&kernel_name)
        .trim_end_matches("-unsigned")
        .to_string();
    let mut packages = vec![locked(&kst, Role::Kernel)?];

    // Userland closure, breadth first, one apt-cache call per level.
    let mut chosen: BTreeMap<String, Role> = BTreeMap::new();
    let mut queue: VecDeque<(String, String)> = r
        .userland
        .packages
        .iter()
        .map(|p| (p.clone(), "userland.packages".to_string()))
        .collect();
    let mut known: BTreeMap<String, Stanza> = BTreeMap::new();
    let mut missing: BTreeSet<String> = BTreeSet::new();
    let mut first = true;
    while !queue.is_empty() {
        let level: Vec<(String, String)> = queue.drain(..).collect();
        let role = if first {
            Role::Userland
        } else {
            Role::Dependency
        };
        first = false;
        let mut next: Vec<(Vec<String>, String)> = Vec::new();
        for (name, needed_by) in level {
            if chosen.contains_key(&name) {
                continue;
            }
            let st = known.get(&name).ok_or_else(|| AptError::Unknown {
                name: name.clone(),
                needed_by: needed_by.clone(),
            });
            let st = match st {
                Ok(s) => s.clone(),
                Err(_) => {
                    let mut got = show(std::slice::from_ref(&name))?;
                    got.remove(&name).ok_or(AptError::Unknown {
                        name: name.clone(),
                        needed_by,
                    })?
                }
            };
            chosen.insert(name.clone(), role);
            packages.push(locked(&st, role)?);
            for field in ["Pre-Depends", "Depends"] {
                for g in st.get(field).map(depends_groups).unwrap_or_default() {
                    next.push((g, name.clone()));
                }
            }
        }
        // Look up every alternative of the next level in one call.
        let want: Vec<String> = next
            .iter()
            .flat_map(|(g, _)| g.iter().cloned())
            .filter(|n| {
                !known.contains_key(n) && !missing.contains(n) && !exclude.contains(n.as_str())
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let got = show(&want)?;
        for n in want {
            if !got.contains_key(&n) {
                missing.insert(n);
            }
        }
        known.extend(got);
        for (group, needed_by) in next {
            if group
                .iter()
                .any(|n| exclude.contains(n.as_str()) || chosen.contains_key(n))
            {
                continue;
            }
            match group.iter().find(|n| known.contains_key(*n)) {
                Some(n) => queue.push_back((n.clone(), needed_by)),
                None => {
                    return Err(AptError::Unknown {
                        name: group.join(" | "),
                        needed_by,
                    });
                }
            }
        }
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages.dedup_by(|a, b| a.name == b.name);
    Ok(Lock {
        schema: LOCK_SCHEMA,
        source_date_epoch,
        architecture: r.architecture.clone(),
        kernel_release,
        packages,
    })
}

/// Where the host's apt would download a package version from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// URL.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 apt expects.
    pub sha256: String,
}

/// Asks the host's apt where each exact version lives. A version that has left the mirror is
/// [`AptError::Gone`].
pub fn print_uris(pkgs: &[&LockedPackage]) -> Result<BTreeMap<String, Uri>, AptError> {
    let mut out = BTreeMap::new();
    if pkgs.is_empty() {
        return Ok(out);
    }
    let cmd = "apt-get download --print-uris";
    let output = Command::new("apt-get")
        .args(["download", "--print-uris"])
        .args(pkgs.iter().map(|p| format!("{}={}", p.name, p.version)))
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| AptError::Spawn {
            cmd: cmd.into(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines() {
        // E: Version '2.0.11-1' for 'bird2' was not found
        if let Some(rest) = line.strip_prefix("E: Version '") {
            let mut parts = rest.split('\'');
            let version = parts.next().unwrap_or("").to_string();
            let name = parts.nth(1).unwrap_or("").to_string();
            return Err(AptError::Gone { name, version });
        }
        if let Some(rest) = line.strip_prefix("E: ") {
            return Err(AptError::Output {
                cmd: cmd.into(),
                line: rest.to_string(),
            });
        }
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 {
            continue;
        }
        let url = f[0].trim_matches('\'').to_string();
        let fname = f[1];
        let size = f[2].parse().unwrap_or(0);
        let sha256 = f[3].strip_prefix("SHA256:").unwrap_or("").to_lowercase();
        let name = fname.split('_').next().unwrap_or("").to_string();
        out.insert(name, Uri { url, size, sha256 });
    }
    for p in pkgs {
        if !out.contains_key(&p.name) {
            return Err(AptError::Gone {
                name: p.name.clone(),
                version: p.version.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_and_depends() {
        let text =
            "Package: a\nVersion: 1\nDepends: b (>= 1) | c, d:any,\n e\n\nPackage: f\nVersion: 2\n";
        let st = parse_deb822(text);
        assert_eq!(st.len(), 2);
        assert_eq!(st[1].get("Package"), Some("f"));
        let g = depends_groups(st[0].get("Depends").unwrap());
        assert_eq!(
            g,
            vec![
                vec!["b".to_string(), "c".into()],
                vec!["d".into()],
                vec!["e".into()]
            ]
        );
    }
}
