//! Turning OCI image layers and build-context archives into directories on the host.
//!
//! The archives come from the network and are unpacked by root on the host, so an archive must
//! never be able to reach outside the directory it is unpacked into. The invariants that ensure it:
//!
//! - Every path an entry names (its own path, a hardlink target, a whiteout target) is resolved
//!   with [`resolve_in_root`], which follows symlinks the way a chroot at the root would: absolute
//!   targets are re-rooted and `..` stops at the root. A symlink planted by a lower layer or an
//!   earlier entry (`etc -> /`, `x -> ../../..`) therefore redirects a write *within* the root, never
//!   onto the host. This is what `docker load` does too (it unpacks inside a chroot).
//! - The last component of an entry is never followed: an entry replaces whatever is at its path
//!   (a symlink included) and never writes through it. Files are created with `O_CREAT|O_EXCL`
//!   after removing the old path, metadata is set with `lchown`, `lsetxattr` and
//!   `utimensat(AT_SYMLINK_NOFOLLOW)`, and `chmod` is only used on a path just checked not to be a
//!   symlink. `std::fs::canonicalize` (which follows host symlinks) is never used.
//! - Unpacking is single-threaded and nothing else writes into the root meanwhile, so a path
//!   resolved just before an operation is still the path operated on. Work deferred to the end of
//!   a layer (directory mtimes) resolves its path again and is skipped if the tree changed under it.
//! - Nothing panics on any input: a malformed or refused entry is a [`LayerError`] naming it. After
//!   an error the target directory is in an unspecified (but still contained) state; callers build
//!   into a scratch directory and discard it.

use nix::errno::Errno;
use nix::sys::stat::{Mode, UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use tar::EntryType;

/// How many symlinks one resolution may follow, as Linux (`MAXSYMLINKS`).
const MAX_SYMLINKS: u32 = 40;
/// `dir/.wh.NAME` deletes `dir/NAME` from the layers below.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// `dir/.wh..wh..opq` hides everything the layers below have in `dir`.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.*` names are AUFS bookkeeping (`.wh..wh.plnk`, ...), never content.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
/// PAX records carrying extended attributes, as GNU tar and Docker write them.
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// What applying an archive did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Archive entries read, whatever became of them.
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteouts and opaque markers applied (layers only).
    pub whiteouts: u64,
    /// Entries left out: device nodes (the sandbox runtime provides `/dev`) and entry types that
    /// mean nothing on disk (PAX global headers, ...).
    pub skipped: u64,
}

/// Why an archive could not be applied. Each variant names the archive, entry or path concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The archive could not be opened, decompressed or parsed.
    #[error("reading archive {}: {source}", archive.display())]
    Archive { archive: PathBuf, source: io::Error },
    /// An entry was refused: unsafe name, malformed whiteout, hardlink to a directory, ...
    #[error("archive entry {entry:?} refused: {reason}")]
    Rejected { entry: String, reason: String },
    /// Applying an entry failed; `source` says where and why.
    #[error("archive entry {entry:?}: {source}")]
    Entry {
        entry: String,
        source: Box<LayerError>,
    },
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: String,
        path: PathBuf,
        source: io::Error,
    },
    /// A path could not be resolved inside the root (symlink loop, empty symlink).
    #[error("resolving {} under {}: {reason}", path.display(), root.display())]
    Resolve {
        root: PathBuf,
        path: PathBuf,
        reason: String,
    },
}

fn io_err(op: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> LayerError {
    let op = op.into();
    let path = path.to_owned();
    move |source| LayerError::Io { op, path, source }
}

fn archive_err(archive: &Path) -> impl FnOnce(io::Error) -> LayerError {
    let archive = archive.to_owned();
    move |source| LayerError::Archive { archive, source }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Applies one OCI/Docker image layer (a tar, gzip- or zstd-compressed or not; detect by magic bytes,
/// not only by media type) onto `root`, a directory holding the layers below it already flattened.
///
/// Whiteouts (`.wh.NAME`, `.wh..wh..opq`) only hide what the layers below had: what this layer
/// itself writes survives them, whatever the tar order. `root` is created if missing.
pub fn apply_layer(blob: &Path, root: &Path) -> Result<LayerStats, LayerError> {
    fs::create_dir_all(root).map_err(io_err("creating", root))?;
    let mut unpacker = Unpacker::new(root, Flavor::Layer);
    unpacker.run(blob)?;
    unpacker.finish()
}

/// Extracts a plain archive (tar, optionally gzip) into `dir` with no whiteout interpretation:
/// used for build-context uploads. An entry whose path is absolute or contains `..`, or a hardlink whose
/// target does, is REJECTED with an error naming the entry (the archive is refused, nothing outside
/// `dir` is touched). Symlinks are created as they are (their targets are data, not followed).
///
/// The whole archive is checked before anything is written, so a refused archive leaves `dir` as
/// it was. Later entries that go through a symlink of the archive are re-rooted at `dir` like
/// layer entries are. zstd archives are accepted too.
pub fn extract_archive(archive: &Path, dir: &Path) -> Result<LayerStats, LayerError> {
    check_archive(archive)?;
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut unpacker = Unpacker::new(dir, Flavor::Plain);
    unpacker.run(archive)?;
    unpacker.finish()
}

/// Resolves `path` (relative or absolute, interpreted as inside `root`) the way a chroot at `root`
/// would: every symlink met along the way is followed *within* `root` (absolute link targets are
/// re-rooted at `root`, `..` never climbs above `root`), at most 40 links. The last component is not
/// followed when `follow_last` is false. The result is always inside `root`. Use this for every
/// host-side write into an untrusted root filesystem.
///
/// Components that do not exist (yet) are kept as they are, so the result may name a path to be
/// created. Every existing component of the result but the last (when `follow_last` is false) is
/// a real directory or non-directory, never a symlink, so using the result does not follow any
/// host symlink except through a change made after the call.
pub fn resolve_in_root(root: &Path, path: &Path, follow_last: bool) -> Result<PathBuf, LayerError> {
    Ok(root.join(resolve_rel(root, path, follow_last)?))
}

/// [`resolve_in_root`], returning the path relative to `root` (only normal components).
fn resolve_rel(root: &Path, path: &Path, follow_last: bool) -> Result<PathBuf, LayerError> {
    // Components still to walk, front first; a followed symlink pushes its target's in front.
    let mut pending: VecDeque<OsString> = path_steps(path).collect();
    let mut resolved = PathBuf::new();
    let mut links = 0u32;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            // Lexical on the resolved (symlink-free) prefix, so this is the physical parent;
            // `pop` on the empty path is a no-op: `..` at the root stays at the root.
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        let host = root.join(&candidate);
        let last = pending.is_empty();
        let is_link = match fs::symlink_metadata(&host) {
            Ok(meta) => meta.file_type().is_symlink(),
            // Not there (yet): nothing to follow; the caller may be about to create it.
            Err(e) if is_missing(&e) => false,
            Err(e) => return Err(io_err("inspecting", &host)(e)),
        };
        if !is_link || (last && !follow_last) {
            resolved = candidate;
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(LayerError::Resolve {
                root: root.to_owned(),
                path: path.to_owned(),
                reason: format!("more than {MAX_SYMLINKS} symbolic links (a loop?)"),
            });
        }
        let target = fs::read_link(&host).map_err(io_err("reading symlink", &host))?;
        if target.as_os_str().is_empty() {
            return Err(LayerError::Resolve {
                root: root.to_owned(),
                path: path.to_owned(),
                reason: format!("symlink {} is empty", candidate.display()),
            });
        }
        if target.has_root() {
            // Re-rooted: `/x` means `<root>/x`.
            resolved.clear();
        }
        let steps: Vec<OsString> = path_steps(&target).collect();
        for step in steps.into_iter().rev() {
            pending.push_front(step);
        }
    }
    Ok(resolved)
}

/// The normal and `..` components of `path`; `/` and `.` say nothing inside a root.
fn path_steps(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// A layer entry's name made relative: `/` and `./` dropped, `..` applied lexically, never above
/// the root (what a chroot would make of the name before looking at the filesystem).
fn normalize_lenient(raw: &[u8]) -> PathBuf {
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(name) => parts.push(name),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    parts.iter().collect()
}

/// A build-context entry's name made relative; absolute names and `..` are refused, as a build
/// context has no business naming anything outside itself.
fn normalize_strict(raw: &[u8]) -> Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(name) => rel.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("the path is absolute"),
            Component::ParentDir => return Err("the path contains a `..` component"),
        }
    }
    Ok(rel)
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Opens an archive, undoing gzip or zstd compression, recognised by magic bytes (media types
/// lie, and Docker's own `docker save` layers are plain tars under a gzip media type).
fn open_archive(archive: &Path) -> Result<Box<dyn Read>, LayerError> {
    let mut file = File::open(archive).map_err(archive_err(archive))?;
    let mut magic = [0u8; 6];
    let mut len = 0;
    while len < magic.len() {
        match file.read(&mut magic[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(archive_err(archive)(e)),
        }
    }
    file.seek(SeekFrom::Start(0))
        .map_err(archive_err(archive))?;
    let magic = &magic[..len];
    let reader = io::BufReader::new(file);
    if magic.starts_with(&[0x1f, 0x8b]) {
        // Multi-member: concatenated gzip streams are one valid gzip file.
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder =
            zstd::stream::read::Decoder::with_buffer(reader).map_err(archive_err(archive))?;
        Ok(Box::new(decoder))
    } else if magic.starts_with(b"\xfd7zXZ\0") || magic.starts_with(b"BZh") {
        Err(archive_err(archive)(io::Error::new(
            io::ErrorKind::InvalidData,
            "xz and bzip2 archives are not supported (use gzip or zstd)",
        )))
    } else {
        Ok(Box::new(reader))
    }
}

/// The refusal pass of [`extract_archive`], on its own: reads the whole archive and rejects it as
/// `extract_archive` would (an absolute or `..` name or hardlink target), writing nothing.
pub fn check_archive(archive: &Path) -> Result<(), LayerError> {
    let mut tar = tar::Archive::new(open_archive(archive)?);
    let entries = tar.entries().map_err(archive_err(archive))?;
    for entry in entries {
        let entry = entry.map_err(archive_err(archive))?;
        let name = entry.path_bytes();
        normalize_strict(&name).map_err(|reason| LayerError::Rejected {
            entry: lossy(&name),
            reason: reason.to_owned(),
        })?;
        if entry.header().entry_type().is_hard_link() {
            let target = entry.link_name_bytes().unwrap_or_default();
            normalize_strict(&target).map_err(|reason| LayerError::Rejected {
                entry: lossy(&name),
                reason: format!("hardlink target {:?}: {reason}", lossy(&target)),
            })?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// An image layer: lenient names, whiteouts.
    Layer,
    /// A build context: strict names, `.wh.*` are ordinary files.
    Plain,
}

/// The metadata an entry asks for.
struct Meta {
    uid: u32,
    gid: u32,
    /// Permission bits including setuid/setgid/sticky.
    mode: u32,
    /// Seconds and nanoseconds since the epoch.
    mtime: (i64, i64),
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, String> {
        let header = entry.header();
        // Numeric ids, never names: the host's /etc/passwd says nothing about the image's users.
        // (The tar crate already applies PAX `uid`/`gid` records to the header.)
        let uid = header.uid().map_err(|e| format!("bad uid: {e}"))?;
        let gid = header.gid().map_err(|e| format!("bad gid: {e}"))?;
        let uid = u32::try_from(uid).map_err(|_| format!("uid {uid} out of range"))?;
        let gid = u32::try_from(gid).map_err(|_| format!("gid {gid} out of range"))?;
        let mode = header.mode().map_err(|e| format!("bad mode: {e}"))? & 0o7777;
        let seconds = header.mtime().map_err(|e| format!("bad mtime: {e}"))?;
        let mut mtime = (i64::try_from(seconds).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        if let Some(records) = entry
            .pax_extensions()
            .map_err(|e| format!("bad PAX header: {e}"))?
        {
            for record in records {
                let record = record.map_err(|e| format!("bad PAX record: {e}"))?;
                let key = record.key_bytes();
                if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    xattrs.push((
                        OsStr::from_bytes(name).to_owned(),
                        record.value_bytes().to_vec(),
                    ));
                } else if key == b"mtime" {
                    match parse_pax_time(record.value_bytes()) {
                        Some(t) => mtime = t,
                        None => tracing::debug!(
                            value = %lossy(record.value_bytes()),
                            "ignoring unparsable PAX mtime"
                        ),
                    }
                }
            }
        }
        Ok(Meta {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }
}

/// A PAX time (`1700000000.123456789`, `-1.5`) as seconds and nanoseconds (0..1e9).
fn parse_pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let negative = whole.starts_with('-');
    let seconds: i64 = whole.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10i64.pow(8 - i as u32);
    }
    if negative && nanos > 0 {
        Some((seconds.checked_sub(1)?, 1_000_000_000 - nanos))
    } else {
        Some((seconds, nanos))
    }
}

/// Applies the entries of one archive onto a root.
struct Unpacker<'a> {
    root: &'a Path,
    flavor: Flavor,
    /// Every path (relative to the root, resolved) this archive wrote, with all its ancestors:
    /// whiteouts and opaque markers hide lower layers only, so they must spare these.
    touched: HashSet<PathBuf>,
    /// Directory mtimes, set at the end: creating their children would change them again.
    dir_times: Vec<(PathBuf, (i64, i64))>,
    stats: LayerStats,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, flavor: Flavor) -> Self {
        Unpacker {
            root,
            flavor,
            touched: HashSet::new(),
            dir_times: Vec::new(),
            stats: LayerStats::default(),
        }
    }

    fn run(&mut self, archive: &Path) -> Result<(), LayerError> {
        let mut tar = tar::Archive::new(open_archive(archive)?);
        let entries = tar.entries().map_err(archive_err(archive))?;
        for entry in entries {
            let mut entry = entry.map_err(archive_err(archive))?;
            self.stats.entries += 1;
            let name = lossy(&entry.path_bytes());
            self.apply(archive, &mut entry).map_err(|e| match e {
                e @ (LayerError::Rejected { .. } | LayerError::Entry { .. }) => e,
                other => LayerError::Entry {
                    entry: name,
                    source: Box::new(other),
                },
            })?;
        }
        Ok(())
    }

    fn finish(self) -> Result<LayerStats, LayerError> {
        for (rel, mtime) in &self.dir_times {
            // Later entries may have replaced the directory, or one of its parents, by a symlink:
            // only touch it if it still resolves to itself and still is a directory.
            match resolve_rel(self.root, rel, false) {
                Ok(again) if again == *rel => {}
                _ => continue,
            }
            let host = self.root.join(rel);
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.is_dir() => set_mtime(&host, *mtime)?,
                _ => continue,
            }
        }
        Ok(self.stats)
    }

    fn reject(name: &[u8], reason: impl Into<String>) -> LayerError {
        LayerError::Rejected {
            entry: lossy(name),
            reason: reason.into(),
        }
    }

    fn apply<R: Read>(
        &mut self,
        archive: &Path,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
        let raw = entry.path_bytes().into_owned();
        let rel = match self.flavor {
            Flavor::Layer => normalize_lenient(&raw),
            Flavor::Plain => normalize_strict(&raw).map_err(|r| Self::reject(&raw, r))?,
        };
        let mut kind = entry.header().entry_type();
        // Pre-POSIX tars mark directories by a trailing slash on a regular entry.
        if kind == EntryType::Regular && raw.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        match kind {
            EntryType::Char | EntryType::Block => {
                // Not fatal: images carry /dev nodes, but the sandbox runtime provides /dev.
                tracing::debug!(entry = %lossy(&raw), "skipping device node");
                self.stats.skipped += 1;
                return Ok(());
            }
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Fifo => {}
            other => {
                tracing::debug!(entry = %lossy(&raw), kind = ?other, "skipping entry type");
                self.stats.skipped += 1;
                return Ok(());
            }
        }

        if self.flavor == Flavor::Layer
            && let Some(base) = rel.file_name()
            && base.as_bytes().starts_with(WHITEOUT_PREFIX)
        {
            return self.whiteout(&raw, &rel, base.as_bytes());
        }

        let meta = Meta::read(entry).map_err(|r| Self::reject(&raw, r))?;

        if rel.as_os_str().is_empty() {
            // The entry names the root itself (`./`): its metadata is the root's.
            if kind != EntryType::Directory {
                return Err(Self::reject(
                    &raw,
                    "names the root directory but is not one",
                ));
            }
            self.dir_meta(Path::new(""), &meta)?;
            return Ok(());
        }

        // Parents followed within the root, the entry's own name not followed.
        let target = resolve_rel(self.root, &rel, false)?;
        if let Some(parent) = target.parent() {
            self.ensure_dirs(parent)?;
        }
        let host = self.root.join(&target);

        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&host) {
                    // A directory over a directory merges: children stay, metadata is replaced.
                    Ok(existing) if existing.is_dir() => {}
                    Ok(existing) => {
                        remove(&host, &existing)?;
                        make_dir(&host)?;
                    }
                    Err(e) if is_missing(&e) => make_dir(&host)?,
                    Err(e) => return Err(io_err("inspecting", &host)(e)),
                }
                self.dir_meta(&target, &meta)?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| Self::reject(&raw, "symlink without a target"))?
                    .into_owned();
                clear(&host)?;
                // The target is data for the sandbox's eyes; it is never followed here.
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &host)
                    .map_err(io_err("creating symlink", &host))?;
                lchown(&host, &meta)?;
                set_xattrs(&host, &meta.xattrs)?;
                set_mtime(&host, meta.mtime)?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| Self::reject(&raw, "hardlink without a target"))?
                    .into_owned();
                let link_rel = match self.flavor {
                    Flavor::Layer => normalize_lenient(&link),
                    Flavor::Plain => normalize_strict(&link).map_err(|r| {
                        Self::reject(&raw, format!("hardlink target {:?}: {r}", lossy(&link)))
                    })?,
                };
                if link_rel.as_os_str().is_empty() {
                    return Err(Self::reject(&raw, "hardlink to the root directory"));
                }
                // link(2) does not follow a symlink at the target: neither does the resolution.
                let source = self.root.join(resolve_rel(self.root, &link_rel, false)?);
                match fs::symlink_metadata(&source) {
                    Ok(existing) if existing.is_dir() => {
                        return Err(Self::reject(
                            &raw,
                            format!("hardlink to directory {:?}", lossy(&link)),
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err(Self::reject(
                            &raw,
                            format!("hardlink target {:?}: {e}", lossy(&link)),
                        ));
                    }
                }
                if source == host {
                    // A link to itself: already there.
                    self.touch(&target);
                    return Ok(());
                }
                clear(&host)?;
                // `std::fs::hard_link` is linkat(2) without AT_SYMLINK_FOLLOW. The inode's metadata
                // is the target's: the link entry's header does not change it.
                fs::hard_link(&source, &host)
                    .map_err(io_err(format!("linking to {} at", source.display()), &host))?;
            }
            EntryType::Fifo => {
                clear(&host)?;
                nix::unistd::mkfifo(&host, Mode::from_bits_truncate(0o600))
                    .map_err(|e| io_err("creating fifo", &host)(io::Error::from(e)))?;
                lchown(&host, &meta)?;
                // chmod(2) follows symlinks, but this path was just made a fifo.
                fs::set_permissions(&host, Permissions::from_mode(meta.mode))
                    .map_err(io_err("setting the mode of", &host))?;
                set_xattrs(&host, &meta.xattrs)?;
                set_mtime(&host, meta.mtime)?;
            }
            _ => {
                clear(&host)?;
                self.write_file(archive, entry, &host, &meta)?;
            }
        }
        self.touch(&target);
        Ok(())
    }

    /// Creates a regular file with the entry's content and metadata.
    fn write_file<R: Read>(
        &mut self,
        archive: &Path,
        entry: &mut tar::Entry<'_, R>,
        host: &Path,
        meta: &Meta,
    ) -> Result<(), LayerError> {
        // O_EXCL: never reuse (or write through) what was there, clear() removed it.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(host)
            .map_err(io_err("creating", host))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(archive_err(archive)(e)),
            };
            file.write_all(&buf[..n]).map_err(io_err("writing", host))?;
            self.stats.bytes += n as u64;
        }
        // Owner before mode: chown clears setuid/setgid.
        std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
            .map_err(io_err("changing the owner of", host))?;
        file.set_permissions(Permissions::from_mode(meta.mode))
            .map_err(io_err("setting the mode of", host))?;
        // After chown, which would clear `security.capability`.
        set_xattrs(host, &meta.xattrs)?;
        drop(file);
        set_mtime(host, meta.mtime)
    }

    /// Owner, mode and xattrs of the directory at `rel` (just checked to be one); mtime deferred.
    fn dir_meta(&mut self, rel: &Path, meta: &Meta) -> Result<(), LayerError> {
        let host = self.root.join(rel);
        lchown(&host, meta)?;
        fs::set_permissions(&host, Permissions::from_mode(meta.mode))
            .map_err(io_err("setting the mode of", &host))?;
        set_xattrs(&host, &meta.xattrs)?;
        self.dir_times.push((rel.to_owned(), meta.mtime));
        Ok(())
    }

    /// Creates the missing directories of `rel` (resolved, so symlink-free), mode 0755.
    fn ensure_dirs(&mut self, rel: &Path) -> Result<(), LayerError> {
        let mut host = self.root.to_path_buf();
        let mut walked = PathBuf::new();
        for component in rel.components() {
            host.push(component);
            walked.push(component);
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.is_dir() => {}
                // A file, or (impossible after resolution) a symlink: refuse rather than follow.
                Ok(_) => {
                    return Err(io_err("creating a parent directory at", &host)(
                        io::Error::from(io::ErrorKind::NotADirectory),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    make_dir(&host)?;
                    fs::set_permissions(&host, Permissions::from_mode(0o755))
                        .map_err(io_err("setting the mode of", &host))?;
                    self.touch(&walked);
                }
                Err(e) => return Err(io_err("inspecting", &host)(e)),
            }
        }
        Ok(())
    }

    /// Records that this archive wrote `rel` (and so, implicitly, its ancestors).
    fn touch(&mut self, rel: &Path) {
        for ancestor in rel.ancestors() {
            if !self.touched.insert(ancestor.to_owned()) {
                // Its ancestors were recorded with it.
                break;
            }
        }
    }

    fn whiteout(&mut self, raw: &[u8], rel: &Path, base: &[u8]) -> Result<(), LayerError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if base == OPAQUE_MARKER {
            self.stats.whiteouts += 1;
            let dir = resolve_rel(self.root, parent, true)?;
            let host = self.root.join(&dir);
            let children = match fs::read_dir(&host) {
                Ok(children) => children,
                // Nothing below to hide.
                Err(e) if is_missing(&e) => return Ok(()),
                Err(e) => return Err(io_err("listing", &host)(e)),
            };
            let mut start = Vec::new();
            for child in children {
                let child = child.map_err(io_err("listing", &host))?;
                start.push(dir.join(child.file_name()));
            }
            return self.hide_lower(start);
        }
        if base.starts_with(AUFS_META_PREFIX) {
            tracing::debug!(entry = %lossy(raw), "skipping AUFS metadata");
            self.stats.skipped += 1;
            return Ok(());
        }
        let name = &base[WHITEOUT_PREFIX.len()..];
        if name.is_empty() || name == b"." || name == b".." {
            return Err(Self::reject(raw, "whiteout without a name"));
        }
        self.stats.whiteouts += 1;
        let target = resolve_rel(self.root, &parent.join(OsStr::from_bytes(name)), false)?;
        self.hide_lower(vec![target])
    }

    /// Removes the paths `start` (relative, resolved) as far as they come from lower layers: a
    /// path this archive wrote stays, and if it is a directory only its lower children go.
    fn hide_lower(&mut self, start: Vec<PathBuf>) -> Result<(), LayerError> {
        // Iterative: layer trees can be deep.
        let mut stack = start;
        while let Some(rel) = stack.pop() {
            let host = self.root.join(&rel);
            let meta = match fs::symlink_metadata(&host) {
                Ok(meta) => meta,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(io_err("inspecting", &host)(e)),
            };
            if !self.touched.contains(&rel) {
                remove(&host, &meta)?;
            } else if meta.is_dir() {
                for child in fs::read_dir(&host).map_err(io_err("listing", &host))? {
                    let child = child.map_err(io_err("listing", &host))?;
                    stack.push(rel.join(child.file_name()));
                }
            }
        }
        Ok(())
    }
}

/// Removes whatever is at `host` (a resolved path) so an entry of another kind can take its place.
fn clear(host: &Path) -> Result<(), LayerError> {
    match fs::symlink_metadata(host) {
        Ok(meta) => remove(host, &meta),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(io_err("inspecting", host)(e)),
    }
}

/// Removes `host`, described by its `lstat` `meta`; a symlink goes, never what it points to.
fn remove(host: &Path, meta: &Metadata) -> Result<(), LayerError> {
    if meta.is_dir() {
        // Does not follow symlinks inside the tree.
        fs::remove_dir_all(host).map_err(io_err("removing", host))
    } else {
        fs::remove_file(host).map_err(io_err("removing", host))
    }
}

fn make_dir(host: &Path) -> Result<(), LayerError> {
    // 0700 until the entry's own mode is applied.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(host)
        .map_err(io_err("creating directory", host))
}

fn lchown(host: &Path, meta: &Meta) -> Result<(), LayerError> {
    std::os::unix::fs::lchown(host, Some(meta.uid), Some(meta.gid))
        .map_err(io_err("changing the owner of", host))
}

/// Sets `host`'s xattrs without following a symlink there. Unsupported (EOPNOTSUPP) and refused
/// (EPERM, e.g. `user.*` on a symlink) attributes are dropped, as Docker does.
fn set_xattrs(host: &Path, xattrs: &[(OsString, Vec<u8>)]) -> Result<(), LayerError> {
    for (name, value) in xattrs {
        if let Err(e) = xattr::set(host, name, value) {
            let code = e.raw_os_error();
            if code == Some(Errno::EOPNOTSUPP as i32) || code == Some(Errno::EPERM as i32) {
                tracing::debug!(path = %host.display(), xattr = ?name, error = %e, "dropping xattr");
                continue;
            }
            return Err(io_err(
                format!("setting extended attribute {} on", name.to_string_lossy()),
                host,
            )(e));
        }
    }
    Ok(())
}

/// Sets atime and mtime of `host` itself, a symlink included.
fn set_mtime(host: &Path, (seconds, nanos): (i64, i64)) -> Result<(), LayerError> {
    let time = TimeSpec::new(seconds, nanos);
    utimensat(
        nix::fcntl::AT_FDCWD,
        host,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err("setting the times of", host)(io::Error::from(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    const MTIME: u64 = 1_600_000_000;

    /// Builds test archives, including the hostile names `tar::Builder` would refuse to write.
    struct Tar {
        builder: tar::Builder<Vec<u8>>,
    }

    impl Tar {
        fn new() -> Self {
            Tar {
                builder: tar::Builder::new(Vec::new()),
            }
        }

        #[allow(clippy::too_many_arguments)]
        fn entry(
            &mut self,
            kind: EntryType,
            name: &str,
            link: Option<&str>,
            data: &[u8],
            mode: u32,
            owner: (u64, u64),
            pax: &[(&str, &[u8])],
        ) -> &mut Self {
            let mut records: Vec<(&str, &[u8])> = pax.to_vec();
            // Names are written raw (`..` and absolute included); PAX for the long ones.
            if name.len() >= 100 {
                records.push(("path", name.as_bytes()));
            }
            if let Some(link) = link.filter(|l| l.len() >= 100) {
                records.push(("linkpath", link.as_bytes()));
            }
            if !records.is_empty() {
                self.builder.append_pax_extensions(records).unwrap();
            }
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(kind);
            let old = header.as_old_mut();
            let n = name.len().min(99);
            old.name[..n].copy_from_slice(&name.as_bytes()[..n]);
            if let Some(link) = link {
                let n = link.len().min(99);
                old.linkname[..n].copy_from_slice(&link.as_bytes()[..n]);
            }
            header.set_size(data.len() as u64);
            header.set_mode(mode);
            header.set_uid(owner.0);
            header.set_gid(owner.1);
            header.set_mtime(MTIME);
            header.set_cksum();
            self.builder.append(&header, data).unwrap();
            self
        }

        fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.entry(EntryType::Regular, name, None, data, 0o644, (0, 0), &[])
        }

        fn dir(&mut self, name: &str) -> &mut Self {
            self.entry(EntryType::Directory, name, None, b"", 0o755, (0, 0), &[])
        }

        fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            let kind = EntryType::Symlink;
            self.entry(kind, name, Some(target), b"", 0o777, (0, 0), &[])
        }

        fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.entry(EntryType::Link, name, Some(target), b"", 0o644, (0, 0), &[])
        }

        fn bytes(&mut self) -> Vec<u8> {
            let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
            builder.into_inner().unwrap()
        }

        /// Writes the archive next to the roots and returns its path.
        fn save(&mut self, dir: &Path, name: &str) -> PathBuf {
            let path = dir.join(name);
            fs::write(&path, self.bytes()).unwrap();
            path
        }
    }

    fn apply(dir: &Path, root: &Path, tar: &mut Tar) -> Result<LayerStats, LayerError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let blob = tar.save(dir, &format!("layer-{n}.tar"));
        apply_layer(&blob, root)
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    fn exists(path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }

    #[test]
    fn plain_entries_modes_and_owners() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let mut tar = Tar::new();
        tar.entry(EntryType::Directory, "./", None, b"", 0o755, (0, 0), &[])
            .entry(
                EntryType::Directory,
                "home/user/",
                None,
                b"",
                0o750,
                (1000, 1000),
                &[],
            )
            .entry(
                EntryType::Regular,
                "home/user/notes",
                None,
                b"hello",
                0o640,
                (1000, 1001),
                &[],
            )
            .entry(
                EntryType::Regular,
                "/usr/bin/su",
                None,
                b"su",
                0o4755,
                (0, 0),
                &[],
            )
            .entry(
                EntryType::Directory,
                "./tmp",
                None,
                b"",
                0o1777,
                (0, 0),
                &[],
            )
            .entry(
                EntryType::Symlink,
                "bin",
                Some("usr/bin"),
                b"",
                0o777,
                (5, 6),
                &[],
            )
            .entry(EntryType::Fifo, "run/fifo", None, b"", 0o620, (7, 8), &[])
            .entry(EntryType::Char, "dev/null", None, b"", 0o666, (0, 0), &[])
            .entry(
                EntryType::Regular,
                "a/../b",
                None,
                b"b",
                0o2755,
                (0, 50),
                &[],
            )
            .entry(
                EntryType::Regular,
                "../../c",
                None,
                b"c",
                0o600,
                (0, 0),
                &[],
            )
            .entry(
                EntryType::Regular,
                "old/style/",
                None,
                b"",
                0o711,
                (0, 0),
                &[],
            );
        let stats = apply(tmp.path(), &root, &mut tar).unwrap();
        assert_eq!(stats.entries, 11);
        assert_eq!(stats.bytes, 5 + 2 + 1 + 1);
        assert_eq!(stats.skipped, 1);

        let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(meta("").mode() & 0o7777, 0o755);
        let home = meta("home/user");
        assert!(home.is_dir());
        assert_eq!(
            (home.mode() & 0o7777, home.uid(), home.gid()),
            (0o750, 1000, 1000)
        );
        // Set after its child was created, so still the header's.
        assert_eq!(home.mtime(), MTIME as i64);
        assert_eq!(
            meta("home").mode() & 0o7777,
            0o755,
            "implicit parents are 0755"
        );
        let notes = meta("home/user/notes");
        assert_eq!(
            (notes.mode() & 0o7777, notes.uid(), notes.gid()),
            (0o640, 1000, 1001)
        );
        assert_eq!(notes.mtime(), MTIME as i64);
        assert_eq!(read(&root.join("home/user/notes")), "hello");
        assert_eq!(meta("usr/bin/su").mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(meta("tmp").mode() & 0o7777, 0o1777, "sticky kept");
        let bin = meta("bin");
        assert!(bin.file_type().is_symlink());
        assert_eq!((bin.uid(), bin.gid()), (5, 6), "lchown, not chown");
        assert_eq!(
            fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        let fifo = meta("run/fifo");
        assert!(fifo.file_type().is_fifo());
        assert_eq!(
            (fifo.mode() & 0o7777, fifo.uid(), fifo.gid()),
            (0o620, 7, 8)
        );
        assert!(!exists(&root.join("dev/null")), "devices are skipped");
        let b = meta("b");
        assert_eq!((b.mode() & 0o7777, b.gid()), (0o2755, 50), "setgid kept");
        assert_eq!(read(&root.join("c")), "c", "`..` stops at the root");
        assert!(meta("old/style").is_dir());
        assert!(!exists(&tmp.path().join("c")));
    }

    #[test]
    fn gzip_and_zstd_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = Tar::new()
            .dir("etc")
            .file("etc/os-release", b"ID=kiln\n")
            .bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for (name, bytes) in [("plain.tar", &tar), ("l.tar.gz", &gz), ("l.tar.zst", &zst)] {
            let blob = tmp.path().join(name);
            fs::write(&blob, bytes).unwrap();
            let root = tmp.path().join(format!("root-{name}"));
            let stats = apply_layer(&blob, &root).unwrap();
            assert_eq!((stats.entries, stats.bytes), (2, 8), "{name}");
            assert_eq!(read(&root.join("etc/os-release")), "ID=kiln\n", "{name}");
        }
        // Truncated compressed streams are errors, not panics or silent partial layers.
        let blob = tmp.path().join("cut.tar.gz");
        fs::write(&blob, &gz[..gz.len() / 2]).unwrap();
        assert!(apply_layer(&blob, &tmp.path().join("cut")).is_err());
        let blob = tmp.path().join("l.tar.xz");
        fs::write(&blob, b"\xfd7zXZ\0rest").unwrap();
        let err = apply_layer(&blob, &tmp.path().join("xz")).unwrap_err();
        assert!(err.to_string().contains("xz"), "{err}");
    }

    #[test]
    fn whiteouts_delete_lower_files_and_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let mut lower = Tar::new();
        lower
            .file("etc/keep", b"k")
            .file("etc/gone", b"g")
            .file("var/cache/a/b", b"b")
            .file("var/cache/c", b"c")
            .symlink("var/link", "/etc");
        apply(tmp.path(), &root, &mut lower).unwrap();
        let mut upper = Tar::new();
        upper
            .file("etc/.wh.gone", b"")
            .file("var/.wh.cache", b"")
            // A symlink is whited out itself, not what it points to.
            .file("var/.wh.link", b"")
            .file("var/.wh.never-existed", b"")
            .file(".wh..wh.plnk", b"");
        let stats = apply(tmp.path(), &root, &mut upper).unwrap();
        assert_eq!((stats.whiteouts, stats.skipped), (4, 1));
        assert!(exists(&root.join("etc/keep")));
        assert!(!exists(&root.join("etc/gone")));
        assert!(!exists(&root.join("var/cache")));
        assert!(!exists(&root.join("var/link")));
        assert!(exists(&root.join("etc")), "not followed");
        assert!(!exists(&root.join("etc/.wh.gone")), "never materialized");
        assert!(!exists(&root.join(".wh..wh.plnk")));
    }

    #[test]
    fn whiteout_spares_what_the_same_layer_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        apply(tmp.path(), &root, Tar::new().file("d/old", b"o")).unwrap();
        // Out of spec order: the whiteout comes after the same layer's own entries.
        apply(
            tmp.path(),
            &root,
            Tar::new().file("d/new", b"n").file(".wh.d", b""),
        )
        .unwrap();
        assert!(exists(&root.join("d/new")));
        assert!(!exists(&root.join("d/old")));
    }

    fn opaque_case(marker_first: bool) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let mut lower = Tar::new();
        lower
            .file("d/old", b"o")
            .file("d/sub/old", b"o")
            .file("d/sub/deeper/old", b"o")
            .file("other/stays", b"s");
        apply(tmp.path(), &root, &mut lower).unwrap();
        let mut upper = Tar::new();
        if marker_first {
            upper.file("d/.wh..wh..opq", b"");
        }
        upper.dir("d").file("d/new", b"n").file("d/sub/new", b"n");
        if !marker_first {
            upper.file("d/.wh..wh..opq", b"");
        }
        apply(tmp.path(), &root, &mut upper).unwrap();
        let label = if marker_first {
            "marker first"
        } else {
            "marker last"
        };
        assert_eq!(read(&root.join("d/new")), "n", "{label}");
        assert_eq!(read(&root.join("d/sub/new")), "n", "{label}");
        assert!(!exists(&root.join("d/old")), "{label}");
        assert!(!exists(&root.join("d/sub/old")), "{label}");
        assert!(!exists(&root.join("d/sub/deeper")), "{label}");
        assert!(exists(&root.join("other/stays")), "{label}");
        assert!(!exists(&root.join("d/.wh..wh..opq")), "{label}");
    }

    #[test]
    fn opaque_marker_before_new_entries() {
        opaque_case(true);
    }

    #[test]
    fn opaque_marker_after_new_entries() {
        opaque_case(false);
    }

    #[test]
    fn hardlink_to_a_lower_layer_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        apply(
            tmp.path(),
            &root,
            Tar::new().file("usr/lib/libx.so", b"elf"),
        )
        .unwrap();
        apply(
            tmp.path(),
            &root,
            Tar::new()
                .hardlink("usr/lib/libx.so.1", "usr/lib/libx.so")
                .hardlink("bin/abs", "/usr/lib/libx.so")
                .symlink("ln", "usr/lib/libx.so")
                // A hardlink to a symlink links the symlink.
                .hardlink("ln2", "ln"),
        )
        .unwrap();
        let ino = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().ino();
        assert_eq!(ino("usr/lib/libx.so.1"), ino("usr/lib/libx.so"));
        assert_eq!(ino("bin/abs"), ino("usr/lib/libx.so"));
        assert_eq!(ino("ln2"), ino("ln"));
        assert_eq!(
            fs::symlink_metadata(root.join("usr/lib/libx.so"))
                .unwrap()
                .nlink(),
            3
        );

        let err = apply(tmp.path(), &root, Tar::new().hardlink("x", "missing")).unwrap_err();
        assert!(
            matches!(&err, LayerError::Rejected { entry, .. } if entry == "x"),
            "{err}"
        );
        let err = apply(tmp.path(), &root, Tar::new().hardlink("y", "usr")).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
    }

    #[test]
    fn entries_replace_other_kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        apply(
            tmp.path(),
            &root,
            Tar::new()
                .file("dir-to-file/child", b"c")
                .file("file-to-dir", b"f")
                .dir("real")
                .symlink("link-to-dir", "real")
                .file("file-to-link", b"f")
                .file("merge/lower", b"l")
                .file("hard", b"shared")
                .hardlink("hard2", "hard"),
        )
        .unwrap();
        apply(
            tmp.path(),
            &root,
            Tar::new()
                .file("dir-to-file", b"now a file")
                .dir("file-to-dir")
                .dir("link-to-dir")
                .symlink("file-to-link", "/nowhere")
                .entry(EntryType::Directory, "merge", None, b"", 0o700, (3, 4), &[])
                .file("merge/upper", b"u")
                .file("hard", b"replaced"),
        )
        .unwrap();
        assert_eq!(read(&root.join("dir-to-file")), "now a file");
        assert!(
            fs::symlink_metadata(root.join("file-to-dir"))
                .unwrap()
                .is_dir()
        );
        assert!(
            fs::symlink_metadata(root.join("link-to-dir"))
                .unwrap()
                .is_dir()
        );
        assert!(
            exists(&root.join("real")),
            "the symlink went, not its target"
        );
        let link = fs::symlink_metadata(root.join("file-to-link")).unwrap();
        assert!(link.file_type().is_symlink());
        let merge = fs::metadata(root.join("merge")).unwrap();
        assert_eq!(
            (merge.mode() & 0o7777, merge.uid(), merge.gid()),
            (0o700, 3, 4)
        );
        assert!(exists(&root.join("merge/lower")) && exists(&root.join("merge/upper")));
        assert_eq!(read(&root.join("hard")), "replaced");
        assert_eq!(
            read(&root.join("hard2")),
            "shared",
            "other links keep the old inode"
        );
    }

    /// Escapes through symlinks are re-rooted, as in a chroot: each write below lands inside the
    /// root at the path the symlink names relative to the root, and nothing beside it changes.
    #[test]
    fn symlink_escapes_stay_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let sentinel = tmp.path().join("sentinel");
        fs::create_dir(&sentinel).unwrap();
        fs::write(sentinel.join("keep"), "host").unwrap();
        // The host path an escaping write would reach, as seen from `/`.
        let host = sentinel
            .strip_prefix("/")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();

        let mut lower = Tar::new();
        lower
            .symlink("evil", "/")
            .symlink("up", "../../../../../../../..")
            .symlink("side", "../sentinel")
            .file("etc/passwd", b"root:inside");
        apply(tmp.path(), &root, &mut lower).unwrap();

        let mut upper = Tar::new();
        upper
            .file(&format!("evil/{host}/via-evil"), b"x")
            .file(&format!("up/{host}/via-up"), b"x")
            .file("side/via-side", b"x")
            .file("evil/tmp/x", b"x")
            .file("up/x", b"x")
            .hardlink("pw", "evil/etc/passwd")
            .hardlink("pw2", &format!("up/{}", "etc/passwd"))
            .file(&format!("evil/{host}/.wh.keep"), b"")
            .file("side/.wh.keep", b"")
            .file("evil/.wh.etc", b"");
        apply(tmp.path(), &root, &mut upper).unwrap();

        // Nothing beside the root was created or deleted.
        let mut beside: Vec<_> = fs::read_dir(&sentinel)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        beside.sort();
        assert_eq!(beside, vec![OsString::from("keep")]);
        assert_eq!(read(&sentinel.join("keep")), "host");
        let mut top: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with("layer-"))
            .collect();
        top.sort();
        assert_eq!(top, ["root", "sentinel"]);
        assert!(Path::new("/etc/passwd").exists());

        // Instead, each write landed at its re-rooted path inside the root.
        assert_eq!(read(&root.join(&host).join("via-evil")), "x");
        assert_eq!(read(&root.join(&host).join("via-up")), "x");
        assert_eq!(read(&root.join("sentinel/via-side")), "x");
        assert_eq!(read(&root.join("tmp/x")), "x");
        assert_eq!(read(&root.join("x")), "x");
        // The hardlinks point at the root's /etc/passwd, not the host's.
        assert_eq!(read(&root.join("pw")), "root:inside");
        assert_eq!(read(&root.join("pw2")), "root:inside");
        // `evil/.wh.etc` deleted the root's own /etc.
        assert!(!exists(&root.join("etc")));
        // The links themselves are untouched data.
        assert_eq!(fs::read_link(root.join("evil")).unwrap(), Path::new("/"));
    }

    #[test]
    fn extract_archive_refuses_parent_and_absolute_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ctx");
        let outside = tmp.path().join("abs-escape");
        let cases = [
            ("../x".to_owned(), None),
            ("a/../../x".to_owned(), None),
            (outside.to_str().unwrap().to_owned(), None),
            ("link".to_owned(), Some("../../etc/passwd")),
            ("link2".to_owned(), Some("/etc/passwd")),
        ];
        for (name, link) in cases {
            let mut tar = Tar::new();
            tar.file("fine", b"ok");
            match link {
                Some(target) => tar.hardlink(&name, target),
                None => tar.file(&name, b"bad"),
            };
            let archive = tar.save(tmp.path(), "ctx.tar");
            let err = extract_archive(&archive, &dir).unwrap_err();
            match &err {
                LayerError::Rejected { entry, .. } => assert_eq!(entry, &name),
                other => panic!("{name}: {other}"),
            }
            assert!(err.to_string().contains(&name), "{err}");
            assert!(!exists(&dir), "nothing written for {name}");
            assert!(!exists(&tmp.path().join("x")) && !exists(&outside));
        }
    }

    #[test]
    fn extract_archive_keeps_symlinks_and_whiteout_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ctx");
        let tar = Tar::new()
            .file("./src/main.py", b"print(1)")
            .symlink("link", "/etc")
            .symlink("up", "../..")
            .file("link/passwd", b"mine")
            .file("up/escape", b"mine")
            .file(".wh.not-a-whiteout", b"data")
            .hardlink("copy", "src/main.py")
            .bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let archive = tmp.path().join("ctx.tar.gz");
        fs::write(&archive, gz.finish().unwrap()).unwrap();
        let stats = extract_archive(&archive, &dir).unwrap();
        assert_eq!(stats.entries, 7);
        assert_eq!(read(&dir.join("src/main.py")), "print(1)");
        assert_eq!(fs::read_link(dir.join("link")).unwrap(), Path::new("/etc"));
        assert_eq!(read(&dir.join("etc/passwd")), "mine", "re-rooted");
        assert_eq!(read(&dir.join("escape")), "mine", "re-rooted");
        assert!(!exists(&tmp.path().join("escape")));
        assert_eq!(read(&dir.join(".wh.not-a-whiteout")), "data");
        assert_eq!(read(&dir.join("copy")), "print(1)");
    }

    #[test]
    fn xattrs_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let probe = tmp.path().join("probe");
        fs::write(&probe, "").unwrap();
        if let Err(e) = xattr::set(&probe, "user.kiln-probe", b"1") {
            eprintln!("skipping: the test filesystem has no user xattrs ({e})");
            return;
        }
        let root = tmp.path().join("root");
        let xattrs: &[(&str, &[u8])] = &[("SCHILY.xattr.user.kiln", b"fired")];
        apply(
            tmp.path(),
            &root,
            Tar::new()
                .entry(
                    EntryType::Regular,
                    "bin/tool",
                    None,
                    b"x",
                    0o755,
                    (0, 0),
                    xattrs,
                )
                .entry(
                    EntryType::Directory,
                    "data",
                    None,
                    b"",
                    0o755,
                    (0, 0),
                    xattrs,
                )
                // user.* is refused on symlinks (EPERM): dropped, not fatal.
                .entry(
                    EntryType::Symlink,
                    "ln",
                    Some("bin"),
                    b"",
                    0o777,
                    (0, 0),
                    xattrs,
                ),
        )
        .unwrap();
        for path in ["bin/tool", "data"] {
            let value = xattr::get(root.join(path), "user.kiln").unwrap();
            assert_eq!(value.as_deref(), Some(&b"fired"[..]), "{path}");
        }
    }

    #[test]
    fn pax_times_and_long_names() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let long = format!("{}/file", "d".repeat(150));
        apply(
            tmp.path(),
            &root,
            Tar::new().entry(
                EntryType::Regular,
                &long,
                None,
                b"x",
                0o644,
                (0, 0),
                &[("mtime", b"1700000000.25")],
            ),
        )
        .unwrap();
        let meta = fs::metadata(root.join(&long)).unwrap();
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (1_700_000_000, 250_000_000)
        );
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    #[test]
    fn malformed_archives_are_errors_not_panics() {
        let tmp = tempfile::tempdir().unwrap();
        let good = Tar::new()
            .dir("a")
            .file("a/b", &[7u8; 3000])
            .symlink("a/c", "/x")
            .hardlink("a/d", "a/b")
            .bytes();
        let mut variants = vec![b"not a tar at all".to_vec(), Vec::new()];
        for cut in (0..good.len()).step_by(331) {
            variants.push(good[..cut].to_vec());
        }
        for at in (0..good.len().min(4096)).step_by(97) {
            let mut bad = good.clone();
            bad[at] ^= 0x5a;
            variants.push(bad);
        }
        for (i, bytes) in variants.iter().enumerate() {
            let blob = tmp.path().join(format!("bad-{i}"));
            fs::write(&blob, bytes).unwrap();
            let _ = apply_layer(&blob, &tmp.path().join(format!("root-{i}")));
            let _ = extract_archive(&blob, &tmp.path().join(format!("ctx-{i}")));
        }
        let err = apply(
            tmp.path(),
            &tmp.path().join("r"),
            Tar::new().file(".", b"not a dir"),
        )
        .unwrap_err();
        assert!(matches!(err, LayerError::Rejected { .. }), "{err}");
    }

    #[test]
    fn resolve_in_root_table() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::create_dir_all(root.join("sub2")).unwrap();
        fs::create_dir_all(root.join("sub")).unwrap();
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).unwrap();
        };
        link("/etc", "abs");
        link("../../../..", "rel");
        link("abs/x", "chain");
        link("loop2", "loop1");
        link("loop1", "loop2");
        link("self", "self");
        link("..", "dotdot");
        link("../sub2", "sub/inner");
        link("usr/lib", "lib");
        // A chain of exactly 40 links resolves, 41 do not.
        for i in 0..41 {
            link(&format!("c{}", i + 1), &format!("c{i}"));
        }
        fs::create_dir(root.join("c41")).unwrap();

        let ok: &[(&str, bool, &str)] = &[
            ("", true, ""),
            ("/", true, ""),
            ("abs", true, "etc"),
            ("abs", false, "abs"),
            ("/abs/passwd", true, "etc/passwd"),
            ("abs/passwd", false, "etc/passwd"),
            ("rel", true, ""),
            ("rel", false, "rel"),
            ("rel/x", false, "x"),
            ("rel/../../x", true, "x"),
            ("../../x", false, "x"),
            ("chain", true, "etc/x"),
            ("chain", false, "chain"),
            ("dotdot/dotdot/etc", true, "etc"),
            ("sub/inner/f", true, "sub2/f"),
            ("lib/../bin", true, "usr/bin"),
            ("missing/../abs/y", false, "etc/y"),
            ("missing/deeper/z", false, "missing/deeper/z"),
            ("etc/./x/../y", false, "etc/y"),
            ("loop1", false, "loop1"),
            ("c1", true, "c41"),
        ];
        for (path, follow, want) in ok {
            let got = resolve_in_root(&root, Path::new(path), *follow)
                .unwrap_or_else(|e| panic!("{path} {follow}: {e}"));
            assert_eq!(got, root.join(want), "{path} follow_last={follow}");
            assert!(got.starts_with(&root));
        }
        let errors: &[(&str, bool)] = &[
            ("loop1", true),
            ("loop1/x", false),
            ("self/x", false),
            ("c0", true),
            ("c0/x", false),
        ];
        for (path, follow) in errors {
            let result = resolve_in_root(&root, Path::new(path), *follow);
            assert!(
                matches!(result, Err(LayerError::Resolve { .. })),
                "{path} follow_last={follow}: {result:?}"
            );
        }
    }
}
