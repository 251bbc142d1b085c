//! Reading Debian binary packages (`.deb`) without dpkg.
//!
//! Owns the `.deb` container format: the `ar` archive with `debian-binary` (`2.0`),
//! `control.tar.{xz,zst}` and `data.tar.{xz,zst}` (uncompressed tars are accepted; gzip is not, as
//! no Debian 12 package uses it and the builder has no deflate dependency), the deb822 `control`
//! paragraph, and the extraction of `data.tar` members into a [`Tree`](crate::tree::Tree). Member
//! paths are normalised (`./usr/bin/x` becomes `usr/bin/x`); ownership and timestamps are dropped
//! (the image normalises both); hardlinks become files sharing the same data.
//!
//! Multi-block XZ data (dpkg compresses large packages in 24 MiB blocks: 17 for the kernel) is
//! decoded block-parallel on all cores by the private `xz_blocks` module, which halves the time
//! to extract the kernel package on two cores.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tree::{self, Node, Tree, TreeError};

/// The `debian-binary` contents of every supported package.
const DEB_FORMAT: &[u8] = b"2.0\n";

/// Errors of reading a `.deb`; each names the package file and, where relevant, the member.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// The `.deb` file could not be read.
    #[error("{path}: cannot read package")]
    Read {
        /// The `.deb` file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// The `ar` container is malformed.
    #[error("{path}: malformed ar archive")]
    Ar {
        /// The `.deb` file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: io::Error,
    },
    /// A required member (`debian-binary`, `control.tar.*`, `data.tar.*`) is missing.
    #[error("{path}: no {member} member")]
    MissingMember {
        /// The `.deb` file.
        path: PathBuf,
        /// The member that is missing.
        member: &'static str,
    },
    /// `debian-binary` is not `2.0`.
    #[error("{path}: unsupported package format {version:?}")]
    Format {
        /// The `.deb` file.
        path: PathBuf,
        /// The contents of `debian-binary`.
        version: String,
    },
    /// A member uses a compression this reader does not implement.
    #[error("{path}: member {member} uses an unsupported compression")]
    Compression {
        /// The `.deb` file.
        path: PathBuf,
        /// The member name.
        member: String,
    },
    /// Decompressing or reading a tar member failed.
    #[error("{path}: cannot read {member}")]
    Tar {
        /// The `.deb` file.
        path: PathBuf,
        /// The tar member (`data.tar.xz`, or a path inside it).
        member: String,
        /// The decoder's or tar parser's complaint.
        #[source]
        source: io::Error,
    },
    /// `control.tar` has no `control` file, or it is not a valid deb822 paragraph.
    #[error("{path}: invalid control file: {reason}")]
    Control {
        /// The `.deb` file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A member path or link target is not UTF-8 or escapes the root.
    #[error("{path}: member {member:?} has an unusable path")]
    MemberPath {
        /// The `.deb` file.
        path: PathBuf,
        /// The member name, lossily decoded.
        member: String,
    },
    /// A member is of a type the image cannot hold (FIFO, block device, ...).
    #[error("{path}: member {member} has unsupported type {kind:?}")]
    MemberType {
        /// The `.deb` file.
        path: PathBuf,
        /// The member path.
        member: String,
        /// The tar entry type byte.
        kind: u8,
    },
    /// A hardlink points to a file that is not (or not yet) extracted.
    #[error("{path}: hardlink {member} points to {target}, which was not extracted")]
    HardlinkTarget {
        /// The `.deb` file.
        path: PathBuf,
        /// The hardlink's path.
        member: String,
        /// The path it links to.
        target: String,
    },
    /// Inserting a member into the tree failed (e.g. a file where a directory is needed).
    #[error("{path}: cannot place member {member}")]
    Place {
        /// The `.deb` file.
        path: PathBuf,
        /// The member path.
        member: String,
        /// The tree's complaint.
        #[source]
        source: TreeError,
    },
}

/// How a tar member of the package is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `.tar`
    None,
    /// `.tar.xz`
    Xz,
    /// `.tar.zst`
    Zstd,
}

impl Compression {
    /// The compression of member `name` with prefix `stem` (`data.tar`), if supported.
    fn of_member(name: &str, stem: &str) -> Option<Option<Compression>> {
        let rest = name.strip_prefix(stem)?;
        Some(match rest {
            "" => Some(Compression::None),
            ".xz" => Some(Compression::Xz),
            ".zst" => Some(Compression::Zstd),
            _ => None,
        })
    }
}

/// One relation of a `Depends`-style field: `libc6 (>= 2.34)`, `libssl3:any`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The package name, without architecture qualifier.
    pub name: String,
    /// The version constraint inside the parentheses (`>= 2.34`), if any.
    pub version: Option<String>,
}

/// The fields of a package's `control` paragraph, in file order of first appearance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Control {
    fields: BTreeMap<String, String>,
}

impl Control {
    /// Parses one deb822 paragraph. Field names compare case-insensitively (stored lowercase);
    /// continuation lines are joined with `\n`.
    pub fn parse(text: &str) -> Result<Control, String> {
        let mut fields = BTreeMap::new();
        let mut last: Option<String> = None;
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                if fields.is_empty() {
                    continue;
                }
                break;
            }
            if line.starts_with([' ', '\t']) {
                let key = last
                    .as_ref()
                    .ok_or(format!("line {}: continuation first", number + 1))?;
                if let Some(value) = fields.get_mut(key) {
                    let value: &mut String = value;
                    value.push('\n');
                    value.push_str(line.trim());
                }
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .ok_or(format!("line {}: no ':' in field", number + 1))?;
            let key = key.trim().to_ascii_lowercase();
            if key.is_empty() {
                return Err(format!("line {}: empty field name", number + 1));
            }
            fields.insert(key.clone(), value.trim().to_owned());
            last = Some(key);
        }
        for required in ["package", "version", "architecture"] {
            if !fields.contains_key(required) {
                return Err(format!("no {required} field"));
            }
        }
        Ok(Control { fields })
    }

    /// A field's value by case-insensitive name.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields
            .get(&field.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// `Package`.
    pub fn package(&self) -> &str {
        self.get("package").unwrap_or_default()
    }

    /// `Version`.
    pub fn version(&self) -> &str {
        self.get("version").unwrap_or_default()
    }

    /// `Architecture`.
    pub fn architecture(&self) -> &str {
        self.get("architecture").unwrap_or_default()
    }

    /// `Depends` parsed into alternatives groups (`a | b, c` is `[[a, b], [c]]`).
    pub fn depends(&self) -> Vec<Vec<Relation>> {
        parse_relations(self.get("depends").unwrap_or_default())
    }

    /// `Pre-Depends`, parsed like [`Control::depends`].
    pub fn pre_depends(&self) -> Vec<Vec<Relation>> {
        parse_relations(self.get("pre-depends").unwrap_or_default())
    }
}

/// Parses a relationship field such as `libc6 (>= 2.34), libssl3 | libssl1.1`.
pub fn parse_relations(field: &str) -> Vec<Vec<Relation>> {
    field
        .split(',')
        .filter(|group| !group.trim().is_empty())
        .map(|group| {
            group
                .split('|')
                .filter_map(|alt| {
                    let alt = alt.trim();
                    let end = alt.find([' ', '(', '[', '<', ':']).unwrap_or(alt.len());
                    let name = &alt[..end];
                    let version = alt
                        .find('(')
                        .and_then(|open| Some((open, alt[open..].find(')')? + open)))
                        .map(|(open, close)| {
                            alt[open + 1..close]
                                .split_whitespace()
                                .collect::<Vec<_>>()
                                .join(" ")
                        });
                    (!name.is_empty()).then(|| Relation {
                        name: name.to_owned(),
                        version,
                    })
                })
                .collect()
        })
        .collect()
}

/// An opened `.deb`: its control paragraph is parsed, its `data.tar` kept compressed in memory.
#[derive(Debug)]
pub struct DebArchive {
    path: PathBuf,
    control: Control,
    data_member: String,
    data_compression: Compression,
    data: Vec<u8>,
}

impl DebArchive {
    /// Reads the package at `path`, checks its format and parses its control file.
    pub fn open(path: &Path) -> Result<DebArchive, DebError> {
        let bytes = std::fs::read(path).map_err(|source| DebError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(path, &bytes)
    }

    /// Like [`DebArchive::open`] on bytes already in memory; `path` is used in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<DebArchive, DebError> {
        let ar_err = |source| DebError::Ar {
            path: path.to_owned(),
            source,
        };
        let mut archive = ar::Archive::new(bytes);
        let mut format = None;
        let mut control = None;
        let mut data = None;
        while let Some(member) = archive.next_entry() {
            let mut member = member.map_err(ar_err)?;
            let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
            let mut contents = Vec::with_capacity(member.header().size() as usize);
            member.read_to_end(&mut contents).map_err(ar_err)?;
            if contents.len() as u64 != member.header().size() {
                return Err(ar_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("member {name} is truncated"),
                )));
            }
            let unsupported = || DebError::Compression {
                path: path.to_owned(),
                member: name.clone(),
            };
            if name == "debian-binary" {
                format = Some(contents);
            } else if let Some(compression) = Compression::of_member(&name, "control.tar") {
                control = Some((name.clone(), compression.ok_or_else(unsupported)?, contents));
            } else if let Some(compression) = Compression::of_member(&name, "data.tar") {
                data = Some((name.clone(), compression.ok_or_else(unsupported)?, contents));
            }
        }
        let missing = |member| DebError::MissingMember {
            path: path.to_owned(),
            member,
        };
        let format = format.ok_or_else(|| missing("debian-binary"))?;
        if format != DEB_FORMAT {
            let version = String::from_utf8_lossy(&format).into_owned();
            return Err(DebError::Format {
                path: path.to_owned(),
                version,
            });
        }
        let (control_member, control_compression, control_bytes) =
            control.ok_or_else(|| missing("control.tar"))?;
        let (data_member, data_compression, data) = data.ok_or_else(|| missing("data.tar"))?;
        let control_text =
            read_control(path, &control_member, control_compression, &control_bytes)?;
        let control = Control::parse(&control_text).map_err(|reason| DebError::Control {
            path: path.to_owned(),
            reason,
        })?;
        Ok(DebArchive {
            path: path.to_owned(),
            control,
            data_member,
            data_compression,
            data,
        })
    }

    /// The package file this archive was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed `control` paragraph.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Extracts every `data.tar` member into a fresh tree.
    pub fn files(&self) -> Result<Tree, DebError> {
        let mut tree = Tree::new();
        self.extract_into(&mut tree, |_| true)?;
        Ok(tree)
    }

    /// Extracts the `data.tar` members whose normalised path `select` accepts into `tree`
    /// (whose symlinked directories, e.g. merged-usr links, are followed). Rejected members
    /// are decompressed but not copied. Returns the number of members inserted.
    pub fn extract_into(
        &self,
        tree: &mut Tree,
        mut select: impl FnMut(&str) -> bool,
    ) -> Result<usize, DebError> {
        let tar_err = |member: &str, source| DebError::Tar {
            path: self.path.clone(),
            member: member.to_owned(),
            source,
        };
        let mut reader: Box<dyn Read + '_> = match self.data_compression {
            Compression::None => Box::new(&self.data[..]),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&self.data[..])
                    .map_err(|e| tar_err(&self.data_member, e))?,
            ),
            Compression::Xz => {
                return crate::xz::with_reader(&self.data, |reader| {
                    self.extract_from(reader, tree, &mut select)
                });
            }
        };
        self.extract_from(&mut reader, tree, &mut select)
    }

    /// Reads `data.tar` from `reader` (to its end, so that a truncated or corrupt
    /// compressed stream is detected even after the tar's end marker).
    fn extract_from(
        &self,
        reader: &mut dyn Read,
        tree: &mut Tree,
        select: &mut dyn FnMut(&str) -> bool,
    ) -> Result<usize, DebError> {
        let tar_err = |member: &str, source| DebError::Tar {
            path: self.path.clone(),
            member: member.to_owned(),
            source,
        };
        let mut archive = tar::Archive::new(&mut *reader);
        let mut inserted = 0;
        let entries = archive
            .entries()
            .map_err(|e| tar_err(&self.data_member, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| tar_err(&self.data_member, e))?;
            let member = self.member_path(&entry.path_bytes())?;
            if member.is_empty() || !select(&member) {
                continue;
            }
            let mode = entry.header().mode().map_err(|e| tar_err(&member, e))?;
            let kind = entry.header().entry_type();
            let node = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::with_capacity(entry.size() as usize);
                    entry
                        .read_to_end(&mut data)
                        .map_err(|e| tar_err(&member, e))?;
                    Node::file(Arc::<[u8]>::from(data), mode)
                }
                tar::EntryType::Directory => Node::dir(mode),
                tar::EntryType::Symlink => {
                    let target = self.link_target(&entry, &member)?;
                    Node::symlink(target)
                }
                tar::EntryType::Link => {
                    let target = self.link_target(&entry, &member)?;
                    let target = tree::normalize(&target).map_err(|_| self.bad_path(&member))?;
                    let data = tree
                        .resolve(&target)
                        .ok()
                        .and_then(|resolved| tree.get(&resolved))
                        .and_then(|node| node.data().map(Arc::<[u8]>::from));
                    let data = data.ok_or_else(|| DebError::HardlinkTarget {
                        path: self.path.clone(),
                        member: member.clone(),
                        target,
                    })?;
                    Node::file(data, mode)
                }
                tar::EntryType::Char => {
                    let major = entry
                        .header()
                        .device_major()
                        .map_err(|e| tar_err(&member, e))?;
                    let minor = entry
                        .header()
                        .device_minor()
                        .map_err(|e| tar_err(&member, e))?;
                    Node::char_device(major.unwrap_or(0), minor.unwrap_or(0), mode)
                }
                other => {
                    return Err(DebError::MemberType {
                        path: self.path.clone(),
                        member,
                        kind: other.as_byte(),
                    });
                }
            };
            tree.insert(&member, node)
                .map_err(|source| DebError::Place {
                    path: self.path.clone(),
                    member: member.clone(),
                    source,
                })?;
            inserted += 1;
        }
        let reader = archive.into_inner();
        io::copy(reader, &mut io::sink()).map_err(|e| tar_err(&self.data_member, e))?;
        Ok(inserted)
    }

    fn bad_path(&self, member: &str) -> DebError {
        DebError::MemberPath {
            path: self.path.clone(),
            member: member.to_owned(),
        }
    }

    /// The normalised tree path of a member name such as `./usr/bin/nsd`.
    fn member_path(&self, raw: &[u8]) -> Result<String, DebError> {
        let text =
            std::str::from_utf8(raw).map_err(|_| self.bad_path(&String::from_utf8_lossy(raw)))?;
        tree::normalize(text).map_err(|_| self.bad_path(text))
    }

    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        member: &str,
    ) -> Result<String, DebError> {
        let raw = entry
            .link_name_bytes()
            .ok_or_else(|| self.bad_path(member))?;
        let target = std::str::from_utf8(&raw).map_err(|_| self.bad_path(member))?;
        Ok(target.to_owned())
    }
}

/// Decompresses `control.tar.*` and returns its `./control` file.
fn read_control(
    path: &Path,
    member: &str,
    compression: Compression,
    bytes: &[u8],
) -> Result<String, DebError> {
    let tar_err = |source| DebError::Tar {
        path: path.to_owned(),
        member: member.to_owned(),
        source,
    };
    let reader: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(bytes),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(bytes)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(bytes).map_err(tar_err)?),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let name =
            tree::normalize(&String::from_utf8_lossy(&entry.path_bytes())).unwrap_or_default();
        if name == "control" {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(tar_err)?;
            return Ok(text);
        }
    }
    Err(DebError::Control {
        path: path.to_owned(),
        reason: format!("{member} has no control file"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROL: &str = "Package: nsd\nVersion: 4.6.1-1\nArchitecture: amd64\n\
        Depends: libc6 (>= 2.34), libssl3 (>=3.0.0) | libssl1.1, adduser\n\
        Description: authoritative domain name server\n more text\n";

    /// Builds a tar from `(path, kind, data-or-link)` rows.
    fn tar_of(rows: &[(&str, tar::EntryType, &str, u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, payload, mode) in rows {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(*mode);
            header.set_path(path).unwrap();
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    header.set_link_name(payload).unwrap();
                    header.set_size(0);
                    header.set_cksum();
                    builder.append(&header, io::empty()).unwrap();
                }
                _ => {
                    header.set_size(payload.len() as u64);
                    header.set_cksum();
                    builder.append(&header, payload.as_bytes()).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        liblzma::read::XzEncoder::new(data, 6)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// A `.deb` with the given members, in the given order.
    fn deb_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = ar::Builder::new(Vec::new());
        for (name, data) in members {
            let header = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
            builder.append(&header, &data[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn sample_deb(data_name: &str, data: Vec<u8>) -> Vec<u8> {
        let control = tar_of(&[("./control", tar::EntryType::Regular, CONTROL, 0o644)]);
        let data = match data_name {
            "data.tar.xz" => xz(&data),
            "data.tar.zst" => zstd::encode_all(&data[..], 3).unwrap(),
            _ => data,
        };
        deb_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.xz", xz(&control)),
            (data_name, data),
        ])
    }

    fn sample_data() -> Vec<u8> {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        tar_of(&[
            ("./", Directory, "", 0o755),
            ("./usr/", Directory, "", 0o755),
            ("./usr/sbin/", Directory, "", 0o755),
            ("./usr/sbin/nsd", Regular, "ELF nsd", 0o755),
            ("./usr/sbin/nsd-hard", Link, "./usr/sbin/nsd", 0o755),
            ("./usr/sbin/nsd-checkconf", Symlink, "nsd", 0o777),
            ("./etc/nsd/nsd.conf", Regular, "server:\n", 0o640),
        ])
    }

    #[test]
    fn control_fields_and_relations() {
        let control = Control::parse(CONTROL).unwrap();
        assert_eq!(
            (control.package(), control.version(), control.architecture()),
            ("nsd", "4.6.1-1", "amd64")
        );
        assert_eq!(
            control.get("DESCRIPTION"),
            Some("authoritative domain name server\nmore text")
        );
        let rel = |name: &str, version: Option<&str>| Relation {
            name: name.to_owned(),
            version: version.map(str::to_owned),
        };
        assert_eq!(
            control.depends(),
            vec![
                vec![rel("libc6", Some(">= 2.34"))],
                vec![rel("libssl3", Some(">=3.0.0")), rel("libssl1.1", None)],
                vec![rel("adduser", None)],
            ]
        );
        assert!(Control::parse("Package: x\n").is_err());
        assert!(Control::parse(" cont\nPackage: x\n").is_err());
    }

    #[test]
    fn extracts_files_links_and_hardlinks_for_each_compression() {
        for name in ["data.tar.xz", "data.tar.zst", "data.tar"] {
            let bytes = sample_deb(name, sample_data());
            let deb = DebArchive::from_bytes(Path::new("t.deb"), &bytes).unwrap();
            assert_eq!(deb.control().package(), "nsd");
            let tree = deb.files().unwrap();
            let paths: Vec<&str> = tree.iter().map(|(p, _)| p.as_str()).collect();
            assert_eq!(
                paths,
                [
                    "etc",
                    "etc/nsd",
                    "etc/nsd/nsd.conf",
                    "usr",
                    "usr/sbin",
                    "usr/sbin/nsd",
                    "usr/sbin/nsd-checkconf",
                    "usr/sbin/nsd-hard"
                ],
                "{name}"
            );
            assert_eq!(
                tree.get("usr/sbin/nsd"),
                Some(&Node::file(&b"ELF nsd"[..], 0o755))
            );
            assert_eq!(tree.get("usr/sbin/nsd-hard"), tree.get("usr/sbin/nsd"));
            assert_eq!(
                tree.get("usr/sbin/nsd-checkconf"),
                Some(&Node::symlink("nsd"))
            );
            assert_eq!(tree.get("etc/nsd/nsd.conf").map(|n| n.mode), Some(0o640));
        }
    }

    #[test]
    fn selective_extraction_follows_merged_usr_links() {
        let mut tree = Tree::new();
        tree.insert("usr/lib", Node::dir(0o755)).unwrap();
        tree.insert("lib", Node::symlink("usr/lib")).unwrap();
        let data = tar_of(&[
            (
                "./lib/x86_64-linux-gnu/libc.so.6",
                tar::EntryType::Regular,
                "libc",
                0o644,
            ),
            (
                "./usr/share/doc/libc6/copyright",
                tar::EntryType::Regular,
                "text",
                0o644,
            ),
        ]);
        let deb = DebArchive::from_bytes(Path::new("libc6.deb"), &sample_deb("data.tar.xz", data))
            .unwrap();
        let n = deb
            .extract_into(&mut tree, |p| !p.starts_with("usr/share/doc"))
            .unwrap();
        assert_eq!(n, 1);
        assert!(tree.get("usr/lib/x86_64-linux-gnu/libc.so.6").is_some());
        assert!(tree.get("usr/share").is_none());
        // The hardlink target was filtered out: the error names both paths.
        let deb =
            DebArchive::from_bytes(Path::new("nsd.deb"), &sample_deb("data.tar", sample_data()))
                .unwrap();
        let err = deb
            .extract_into(&mut Tree::new(), |p| p != "usr/sbin/nsd")
            .unwrap_err();
        assert!(
            matches!(&err, DebError::HardlinkTarget { target, .. } if target == "usr/sbin/nsd"),
            "{err}"
        );
    }

    #[test]
    fn malformed_packages_name_the_file_and_member() {
        let path = Path::new("bad.deb");
        let data = xz(&sample_data());
        let no_data = deb_of(&[("debian-binary", b"2.0\n".to_vec())]);
        assert!(matches!(
            DebArchive::from_bytes(path, &no_data),
            Err(DebError::MissingMember {
                member: "debian-binary",
                ..
            }) | Err(DebError::MissingMember { .. })
        ));
        let v3 = deb_of(&[
            ("debian-binary", b"3.0\n".to_vec()),
            ("data.tar.xz", data.clone()),
        ]);
        assert!(matches!(
            DebArchive::from_bytes(path, &v3),
            Err(DebError::Format { .. })
        ));
        let gz = sample_deb("data.tar.gz", sample_data());
        let err = DebArchive::from_bytes(path, &gz).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad.deb: member data.tar.gz uses an unsupported compression"
        );
        let mut truncated = sample_deb("data.tar.xz", sample_data());
        truncated.truncate(truncated.len() - 20);
        let result = DebArchive::from_bytes(path, &truncated).and_then(|d| d.files());
        assert!(result.is_err());
        assert!(
            DebArchive::open(Path::new("/nonexistent.deb"))
                .unwrap_err()
                .to_string()
                .contains("/nonexistent.deb")
        );
    }

    /// XZ with one block per 64 KiB chunk, like dpkg's multi-threaded compressor writes.
    fn xz_multiblock(data: &[u8]) -> Vec<u8> {
        use liblzma::stream::{Action, Check, Status, Stream};
        let mut stream = Stream::new_easy_encoder(1, Check::Crc64).unwrap();
        let mut out = Vec::with_capacity(data.len() + 4096);
        let chunks: Vec<&[u8]> = data.chunks(64 << 10).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let action = if i + 1 == chunks.len() {
                Action::Finish
            } else {
                Action::FullFlush
            };
            let mut input = *chunk;
            loop {
                out.reserve(1 << 16);
                let before = stream.total_in();
                let status = stream.process_vec(input, &mut out, action).unwrap();
                input = &input[(stream.total_in() - before) as usize..];
                // Both FullFlush (block done) and Finish (stream done) end with StreamEnd.
                if status == Status::StreamEnd {
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn parallel_xz_blocks_decode_in_order_and_detect_corruption() {
        let data: Vec<u8> = (0..1_000_000u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761) >> 7).to_le_bytes())
            .collect();
        let compressed = xz_multiblock(&data);
        let mut sequential = Vec::new();
        liblzma::read::XzDecoder::new(&compressed[..])
            .read_to_end(&mut sequential)
            .unwrap();
        assert_eq!(sequential, data, "the test encoder writes a valid stream");
        assert!(
            crate::xz::block_count(&compressed) > 10,
            "one block per chunk"
        );
        let mut out = Vec::new();
        crate::xz::with_reader(&compressed, |r| r.read_to_end(&mut out)).unwrap();
        assert!(out == data, "parallel decoding differs");
        let mut corrupt = compressed.clone();
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0x55;
        let result = crate::xz::with_reader(&corrupt, |r| r.read_to_end(&mut Vec::new()));
        assert!(result.is_err());
    }
}
