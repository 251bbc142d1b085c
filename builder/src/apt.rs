//! The host's apt, used only by `lock` to resolve Debian packages and find where each one comes
//! from: `apt-cache show` for metadata (versions, Depends, sha256, pool path), `apt-get download
//! --print-uris` for the URL apt would download an exact version from, and `apt-cache madison` for
//! the archive, suite and component that URL belongs to. `fetch` and `build` never run apt: the
//! lock records all of this. Nothing here installs anything on the host.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::process::Command;

use imrs_config::lock::{LOCK_SCHEMA, Lock, LockedPackage, Role, is_mirror_url};
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
    /// apt would take a package from a mirror or suite the recipe's `[apt]` does not allow.
    #[error(
        "{recipe}: {field}: apt would take {package} from {origin}, which {field} ({allowed}) \
         does not name; point the host's apt at an allowed source (and run `apt-get update`), or \
         allow this one in the recipe"
    )]
    NotAllowed {
        /// The recipe file.
        recipe: PathBuf,
        /// `apt.mirrors` or `apt.suites`.
        field: &'static str,
        /// What the field allows.
        allowed: String,
        /// Package and version.
        package: String,
        /// Its mirror, suite and component (`http://... bookworm/main`).
        origin: String,
    },
    /// apt's download URL for a package belongs to none of the sources apt lists for it.
    #[error(
        "{name} {version}: apt downloads it from {url}, which is under none of the archives \
         `apt-cache madison` lists for it ({sources}); only http(s) archives with a \
         suite/component layout can be locked"
    )]
    Unlocated {
        /// Package.
        name: String,
        /// Version.
        version: String,
        /// apt's URL.
        url: String,
        /// What madison listed.
        sources: String,
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

fn field<'a>(st: &'a Stanza, k: &str) -> Result<&'a str, AptError> {
    st.get(k).ok_or_else(|| AptError::Output {
        cmd: "apt-cache show".into(),
        line: format!("{} has no {k} field", st.get("Package").unwrap_or("?")),
    })
}

fn locked(st: &Stanza, role: Role, at: &Location) -> Result<LockedPackage, AptError> {
    let name = field(st, "Package")?.to_string();
    let version = field(st, "Version")?.to_string();
    let size: u64 = field(st, "Size")?.parse().map_err(|_| AptError::Output {
        cmd: "apt-cache show".into(),
        line: format!("{name}: Size: {}", st.get("Size").unwrap_or("")),
    })?;
    let sha256 = field(st, "SHA256")?.to_lowercase();
    // apt-cache show and apt-get download read the same index; say so if they ever disagree.
    if size != at.size || sha256 != at.sha256 {
        return Err(AptError::Output {
            cmd: "apt-get download --print-uris".into(),
            line: format!(
                "{name} {version}: size {} sha256 {}, but apt-cache show says size {size} sha256 \
                 {sha256}",
                at.size, at.sha256
            ),
        });
    }
    Ok(LockedPackage {
        name,
        version,
        architecture: field(st, "Architecture")?.to_string(),
        size,
        sha256,
        mirror: at.mirror.clone(),
        archive: at.archive.clone(),
        suite: at.suite.clone(),
        component: at.component.clone(),
        filename: at.filename.clone(),
        role,
    })
}

/// Resolves the recipe's packages through the host's apt into a lock: the versioned kernel
/// package and the boot loader package (their own Depends are not followed: only their files
/// are used), the userland packages
/// and their `Depends`/`Pre-Depends` closure minus `userland.exclude`, each with the mirror,
/// suite, component and pool path it is downloaded from (checked against the recipe's `[apt]`).
/// `snapshot` is the lock's snapshot timestamp (see [`snapshot_now`]).
pub fn resolve(
    recipe: &ResolvedRecipe,
    source_date_epoch: i64,
    snapshot: &str,
) -> Result<Lock, AptError> {
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
    let mut stanzas: Vec<(Stanza, Role)> = vec![(kst, Role::Kernel)];
    // The boot loader: like the kernel, only its files are used (its EFI binary); its Depends
    // are not followed.
    if let Some(b) = &r.boot {
        stanzas.push((show1(&b.package, "boot.package")?, Role::Bootloader));
    }

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
            stanzas.push((st.clone(), role));
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
    // Where each one comes from.
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (st, _) in &stanzas {
        wanted.push((
            field(st, "Package")?.to_string(),
            field(st, "Version")?.to_string(),
        ));
    }
    let locations = locate(&wanted)?;
    let mut packages = Vec::new();
    for ((st, role), at) in stanzas.iter().zip(&locations) {
        let p = locked(st, *role, at)?;
        allowed(recipe, &p)?;
        packages.push(p);
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages.dedup_by(|a, b| a.name == b.name);
    Ok(Lock {
        schema: LOCK_SCHEMA,
        source_date_epoch,
        snapshot: snapshot.to_string(),
        architecture: r.architecture.clone(),
        kernel_release,
        packages,
    })
}

/// The current UTC time as a snapshot timestamp, `YYYYMMDDThhmmssZ`.
pub fn snapshot_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string()
}

/// Checks a located package against the recipe's `apt.mirrors` and `apt.suites`.
fn allowed(recipe: &ResolvedRecipe, p: &LockedPackage) -> Result<(), AptError> {
    let apt = &recipe.recipe.apt;
    let refuse = |field: &'static str, allowed: &[String]| AptError::NotAllowed {
        recipe: recipe.path.clone(),
        field,
        allowed: allowed.join(", "),
        package: format!("{} {}", p.name, p.version),
        origin: format!("{} {}/{}", p.mirror, p.suite, p.component),
    };
    if !apt.mirrors.is_empty() && !apt.mirrors.contains(&p.mirror) {
        return Err(refuse("apt.mirrors", &apt.mirrors));
    }
    if !apt.suites.is_empty() && !apt.suites.contains(&p.suite) {
        return Err(refuse("apt.suites", &apt.suites));
    }
    Ok(())
}

/// Where a package version is downloaded from, as the lock records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Archive base URL, no trailing slash.
    pub mirror: String,
    /// Snapshot archive name: the base URL's last path segment (`debian`, `debian-security`).
    pub archive: String,
    /// Suite.
    pub suite: String,
    /// Component.
    pub component: String,
    /// Pool path under the mirror.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 apt expects.
    pub sha256: String,
}

/// One URL `apt-get download --print-uris` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// URL, percent-escapes decoded.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 apt expects.
    pub sha256: String,
}

/// One line of `apt-cache madison`: a version of a package in one archive's suite/component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Package.
    pub name: String,
    /// Version.
    pub version: String,
    /// Archive base URL, no trailing slash.
    pub base: String,
    /// Suite.
    pub suite: String,
    /// Component.
    pub component: String,
}

/// Decodes `%XX` escapes (apt escapes `+`, `~` and `:` in the URLs it prints). Invalid escapes
/// stay as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `apt-get download --print-uris` output (`'URL' FILE SIZE SHA256:HEX` per line) into
/// package name -> [`Uri`].
pub fn parse_print_uris(stdout: &str) -> BTreeMap<String, Uri> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 {
            continue;
        }
        let Some(sha256) = f[3].strip_prefix("SHA256:") else {
            continue;
        };
        let Ok(size) = f[2].parse() else {
            continue;
        };
        let url = percent_decode(f[0].trim_matches('\''));
        let name = f[1].split('_').next().unwrap_or("").to_string();
        out.insert(
            name,
            Uri {
                url,
                size,
                sha256: sha256.to_lowercase(),
            },
        );
    }
    out
}

/// Parses `apt-cache madison` output (`name | version | BASE SUITE/COMPONENT ARCH Packages`);
/// source-package lines and anything else are skipped.
pub fn parse_madison(stdout: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        let parts: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let [name, version, from] = parts[..] else {
            continue;
        };
        let f: Vec<&str> = from.split_whitespace().collect();
        let [base, dist, _arch, "Packages"] = f[..] else {
            continue;
        };
        // Old security layouts have `buster/updates/main`: the component is the last segment.
        let Some((suite, component)) = dist.rsplit_once('/') else {
            continue;
        };
        out.push(Source {
            name: name.to_string(),
            version: version.to_string(),
            base: base.trim_end_matches('/').to_string(),
            suite: suite.to_string(),
            component: component.to_string(),
        });
    }
    out
}

/// Pairs apt's download URL for `name`=`version` with the madison source it belongs to: the
/// first listed source of that version whose base URL the URL starts with.
pub fn match_source(
    name: &str,
    version: &str,
    uri: &Uri,
    sources: &[Source],
) -> Result<Location, AptError> {
    let mine: Vec<&Source> = sources
        .iter()
        .filter(|s| s.name == name && s.version == version)
        .collect();
    let found = mine.iter().find_map(|s| {
        let rest = uri.url.strip_prefix(&s.base)?.strip_prefix('/')?;
        (rest.starts_with("pool/") && is_mirror_url(&s.base)).then_some((s, rest))
    });
    let Some((s, filename)) = found else {
        return Err(AptError::Unlocated {
            name: name.to_string(),
            version: version.to_string(),
            url: uri.url.clone(),
            sources: if mine.is_empty() {
                "none".to_string()
            } else {
                mine.iter()
                    .map(|s| format!("{} {}/{}", s.base, s.suite, s.component))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    };
    Ok(Location {
        mirror: s.base.clone(),
        archive: s.base.rsplit('/').next().unwrap_or_default().to_string(),
        suite: s.suite.clone(),
        component: s.component.clone(),
        filename: filename.to_string(),
        size: uri.size,
        sha256: uri.sha256.clone(),
    })
}

/// Runs an apt command with `LC_ALL=C`; its stdout, or the first `E:` line it printed.
fn run_apt(program: &str, args: &[&str], more: &[String]) -> Result<String, AptError> {
    let cmd = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .args(more)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| AptError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if let Some(e) = stderr.lines().find_map(|l| l.strip_prefix("E: ")) {
        return Err(AptError::Output {
            cmd,
            line: e.to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Asks the host's apt where each exact version (`(name, version)`) is downloaded from, in the
/// order given.
pub fn locate(pkgs: &[(String, String)]) -> Result<Vec<Location>, AptError> {
    if pkgs.is_empty() {
        return Ok(Vec::new());
    }
    let specs: Vec<String> = pkgs.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let stdout = run_apt("apt-get", &["download", "--print-uris"], &specs)?;
    let uris = parse_print_uris(&stdout);
    let names: Vec<String> = pkgs
        .iter()
        .map(|(n, _)| n.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let stdout = run_apt("apt-cache", &["madison"], &names)?;
    let sources = parse_madison(&stdout);
    pkgs.iter()
        .map(|(name, version)| {
            let uri = uris.get(name).ok_or_else(|| AptError::Output {
                cmd: "apt-get download --print-uris".into(),
                line: format!("no URL printed for {name}={version}"),
            })?;
            match_source(name, version, uri, &sources)
        })
        .collect()
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

    const MADISON: &str = "\
     libc6 | 2.36-9+deb12u14 | http://deb.debian.org/debian bookworm/main amd64 Packages
     libc6 | 2.36-9+deb12u7 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
     glibc | 2.36-9+deb12u14 | http://deb.debian.org/debian bookworm/main Sources
linux-image-6.1.0-56-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
       old | 1.0 | http://security.debian.org/debian-security buster/updates/main amd64 Packages
";

    #[test]
    fn print_uris_and_madison_give_mirror_suite_and_pool_path() {
        let uris = parse_print_uris(
            "'http://deb.debian.org/debian/pool/main/g/glibc/libc6_2.36-9%2bdeb12u14_amd64.deb' \
             libc6_2.36-9+deb12u14_amd64.deb 2757936 SHA256:ABCD\n\
             'http://deb.debian.org/debian-security/pool/updates/main/l/linux-signed-amd64/\
             linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb' \
             linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb 70000000 SHA256:ef01\n",
        );
        assert_eq!(uris.len(), 2);
        let sources = parse_madison(MADISON);
        assert_eq!(sources.len(), 4, "{sources:?}");
        assert_eq!(sources[3].suite, "buster/updates");
        assert_eq!(sources[3].component, "main");

        let libc = match_source("libc6", "2.36-9+deb12u14", &uris["libc6"], &sources).unwrap();
        assert_eq!(libc.mirror, "http://deb.debian.org/debian");
        assert_eq!(libc.archive, "debian");
        assert_eq!(libc.suite, "bookworm");
        assert_eq!(libc.component, "main");
        assert_eq!(
            libc.filename,
            "pool/main/g/glibc/libc6_2.36-9+deb12u14_amd64.deb"
        );
        assert_eq!(libc.sha256, "abcd");
        assert_eq!(libc.size, 2757936);

        let k = "linux-image-6.1.0-56-amd64";
        let kernel = match_source(k, "6.1.192-2", &uris[k], &sources).unwrap();
        assert_eq!(kernel.mirror, "http://deb.debian.org/debian-security");
        assert_eq!(kernel.archive, "debian-security");
        assert_eq!(kernel.suite, "bookworm-security");
        assert!(kernel.filename.starts_with("pool/updates/main/l/"));

        // The security version of libc6 is not what apt downloads: no source matches.
        let e = match_source("libc6", "2.36-9+deb12u7", &uris["libc6"], &sources)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("debian-security bookworm-security/main") && e.contains("libc6_2.36"),
            "{e}"
        );
    }

    #[test]
    fn percent_escapes() {
        assert_eq!(percent_decode("a%2bb%7ec%3A%zz%"), "a+b~c:%zz%");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
