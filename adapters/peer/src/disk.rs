//! The native peer's disk tier: one file per entry, in the shared record format of
//! [`larder_core::storage::entry`] (header, metadata, body).
//!
//! Layout under the configured directory:
//!
//! ```text
//! dir/tmp/<name>.<pid>.<seq>.tmp   a record being written
//! dir/<xy>/<name>                  a complete record; <name> is EntryId::name(), <xy> its last two hex chars
//! ```
//!
//! This is plain blocking `std::fs` code: the driver calls it inside
//! `tokio::task::spawn_blocking`, sharing one `Arc<Disk>`. Memory stays bounded: a check
//! without the body reads it in chunks of [`CHUNK`], a listing reads headers and metadata
//! only.
//!
//! Crash safety comes from the write protocol, not from `fsync`: a record is written whole
//! to a temporary file and only then renamed into place, so a process crash (`kill -9`, a
//! panic, an OOM kill) leaves either no entry or a complete one, plus at most a stray temp
//! file that [`Disk::open`] and [`Disk::scan`] remove. Power loss can still leave a renamed
//! file whose data never reached the disk (zeros, a short file): the length check and the
//! checksums catch that, and the entry becomes a miss and is deleted.
//!
//! Only the fan-out folders (two lowercase hex characters) and `tmp/` are ever cleaned:
//! anything else at the top of the directory is left alone, so pointing the cache at the
//! wrong directory cannot wipe unrelated files at its top level.

use bytes::{Bytes, BytesMut};
use larder_core::CacheKey;
use larder_core::storage::entry::{self, BodyCheck, Corrupt, HEADER_LEN, Header, Meta};
use larder_core::storage::{EntryId, StorageError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How much of a body is read at once when it is only checked, not returned.
pub const CHUNK: usize = 256 * 1024;
/// The first read of a record: the header and, usually, all of the metadata.
const HEAD_READ: usize = 4096;
const TMP: &str = "tmp";
const TMP_SUFFIX: &str = ".tmp";

/// The disk tier rooted at one directory.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    tmp: PathBuf,
    pid: u32,
    /// Makes temp names unique within this process even if an id were written twice at once.
    seq: AtomicU64,
}

/// An entry read back and checked.
#[derive(Debug)]
pub struct Loaded {
    /// The metadata, checked against its checksum, still encoded (`Meta::decode`).
    pub meta: Bytes,
    /// The checked body, when it was asked for.
    pub body: Option<Bytes>,
}

/// Why [`Disk::load`] has no entry to give.
#[derive(Debug)]
pub enum LoadError {
    /// No such entry.
    Missing,
    /// The record is unusable (torn, truncated, flipped, another version, another id);
    /// the file has been deleted.
    Corrupt(Corrupt),
    /// The file could not be read (it is left in place).
    Io(io::Error),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Missing => f.write_str("no such entry"),
            LoadError::Corrupt(c) => c.fmt(f),
            LoadError::Io(e) => write!(f, "cannot read entry: {e}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// An entry's body opened for streaming a response.
#[derive(Debug)]
pub struct BodyFile {
    file: File,
    header: Header,
}

/// What reading a record's head can end in.
enum HeadError {
    Corrupt(Corrupt),
    Io(io::Error),
}

impl From<Corrupt> for HeadError {
    fn from(c: Corrupt) -> Self {
        HeadError::Corrupt(c)
    }
}

impl From<io::Error> for HeadError {
    fn from(e: io::Error) -> Self {
        // The length was checked against the header first: a short read means the file
        // shrank under us, which is as good as torn.
        if e.kind() == ErrorKind::UnexpectedEof {
            HeadError::Corrupt(Corrupt("file ends early"))
        } else {
            HeadError::Io(e)
        }
    }
}

impl Disk {
    /// Creates `dir` (and its `tmp/` subfolder) if needed and removes leftover temp files
    /// from a crashed run. Errors if the directory cannot be created or written (probed
    /// by creating and removing a file in `tmp/`).
    pub fn open(dir: &Path) -> io::Result<Disk> {
        let dir = dir.to_path_buf();
        let tmp = dir.join(TMP);
        fs::create_dir_all(&tmp)?;
        let disk = Disk {
            dir,
            tmp,
            pid: std::process::id(),
            seq: AtomicU64::new(0),
        };
        // No write of ours is under way yet: every temp file is left over.
        disk.clean_tmp(false);
        let probe = disk.tmp.join(format!("probe.{}{TMP_SUFFIX}", disk.pid));
        File::create(&probe)?.write_all(b"larder")?;
        fs::remove_file(&probe)?;
        Ok(disk)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of an entry: `dir/<last two hex chars of id.name()>/<id.name()>`.
    fn path(&self, id: EntryId) -> PathBuf {
        let name = id.name();
        self.dir.join(&name[name.len() - 2..]).join(name)
    }

    /// Writes the record (header, `meta`, `body`) to a temp file in `dir/tmp/`, then renames
    /// it into place (creating the fan-out folder when needed). Returns the record's length.
    ///
    /// No `fsync`: renaming only after the whole record is written protects against process
    /// crashes (`kill -9`); the checksums catch what power loss can tear.
    ///
    /// `ENOSPC`, `EDQUOT` and `EFBIG` (and metadata over `entry::META_MAX`, a record this
    /// tier cannot hold) are [`StorageError::Full`]; anything else (`EACCES`, `EROFS`, a
    /// missing directory ...) is [`StorageError::Unavailable`]. On any error the temp file
    /// is removed.
    pub fn write(&self, id: EntryId, meta: &[u8], body: &[u8]) -> Result<u64, StorageError> {
        if meta.len() > entry::META_MAX as usize {
            return Err(StorageError::Full);
        }
        let header = Header::of(meta, body);
        self.put(id, |f| {
            f.write_all(&header.to_bytes())?;
            f.write_all(meta)?;
            f.write_all(body)
        })
        .map_err(|e| storage_error(&e))?;
        Ok(header.record_len())
    }

    /// Replaces an entry's metadata and keeps its body, by the same temp-file-and-rename
    /// protocol as [`Disk::write`] (the body is copied in [`CHUNK`]s; its checksum moves
    /// with it unchanged, so damage is still caught on read). `Ok(None)`: the entry is not
    /// there or not sound, and there is nothing to update.
    pub fn update_meta(&self, id: EntryId, meta: &[u8]) -> Result<Option<u64>, StorageError> {
        if meta.len() > entry::META_MAX as usize {
            return Err(StorageError::Full);
        }
        let Ok(old) = File::open(self.path(id)) else {
            return Ok(None);
        };
        let Ok((header, _, _)) = read_head(&old) else {
            return Ok(None);
        };
        let new = header.with_meta(meta);
        self.put(id, |f| {
            f.write_all(&new.to_bytes())?;
            f.write_all(meta)?;
            let mut buf = vec![0u8; CHUNK];
            let (mut at, end) = (header.body_offset(), header.record_len());
            while at < end {
                let n = (end - at).min(CHUNK as u64) as usize;
                old.read_exact_at(&mut buf[..n], at)?;
                f.write_all(&buf[..n])?;
                at += n as u64;
            }
            Ok(())
        })
        .map_err(|e| storage_error(&e))?;
        Ok(Some(new.record_len()))
    }

    /// Writes a record with `fill` to a temp file, then renames it into place (creating the
    /// fan-out folder when needed). On any error the temp file is removed.
    fn put(&self, id: EntryId, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}.{}.{seq}{TMP_SUFFIX}", id.name(), self.pid));
        let written = (|| -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            fill(&mut f)?;
            drop(f);
            let path = self.path(id);
            match fs::rename(&tmp, &path) {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    fs::create_dir_all(path.parent().expect("fan-out folder"))?;
                    fs::rename(&tmp, &path)
                }
                r => r,
            }
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Removes an entry (a missing one is fine).
    pub fn delete(&self, id: EntryId) {
        if let Err(e) = fs::remove_file(self.path(id))
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(entry = %id.name(), error = %e, "cannot delete disk entry");
        }
    }

    /// Reads and checks an entry: the header, the file's length against it, the metadata
    /// checksum, that the metadata decodes and names `id`, and the body checksum. With
    /// `with_body` the whole body is returned; without it the body is read in chunks of
    /// [`CHUNK`] only to check it. A missing file is [`LoadError::Missing`]; a corrupt one
    /// is deleted and [`LoadError::Corrupt`].
    pub fn load(&self, id: EntryId, with_body: bool) -> Result<Loaded, LoadError> {
        let path = self.path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(LoadError::Missing),
            Err(e) => return Err(LoadError::Io(e)),
        };
        let checked = (|| -> Result<Loaded, HeadError> {
            let (header, meta, decoded) = read_head(&file)?;
            if decoded.id != id {
                return Err(HeadError::Corrupt(Corrupt("entry id does not match")));
            }
            let body = read_body(&file, &header, with_body)?;
            Ok(Loaded { meta, body })
        })();
        match checked {
            Ok(loaded) => Ok(loaded),
            Err(HeadError::Io(e)) => Err(LoadError::Io(e)),
            Err(HeadError::Corrupt(c)) => {
                tracing::warn!(entry = %id.name(), "{c}: deleting disk entry");
                let _ = fs::remove_file(&path);
                Err(LoadError::Corrupt(c))
            }
        }
    }

    /// Opens an entry's body for streaming a response. Checks the header only (the body is
    /// not read): a missing entry is `NotFound`, an unparsable header `InvalidData`.
    pub fn open_body(&self, id: EntryId) -> io::Result<BodyFile> {
        let file = File::open(self.path(id))?;
        let mut b = [0u8; HEADER_LEN];
        file.read_exact_at(&mut b, 0)?;
        let header = Header::parse(&b).map_err(|c| io::Error::new(ErrorKind::InvalidData, c))?;
        Ok(BodyFile { file, header })
    }

    /// Lists every complete entry: for each file, reads the header and metadata only (the
    /// header, the file's length against it, the metadata checksum, the decoded id against
    /// the file name) and calls `each(id, key, record_len)`. Corrupt and foreign files in
    /// the fan-out folders are deleted, and so are temp files not being written by this
    /// process. Returns (entries, bytes).
    pub fn scan(&self, mut each: impl FnMut(EntryId, CacheKey, u64)) -> (u64, u64) {
        let (mut entries, mut bytes, mut removed) = (0u64, 0u64, 0u64);
        let top = match fs::read_dir(&self.dir) {
            Ok(top) => top,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list disk tier");
                return (0, 0);
            }
        };
        for folder in top.flatten() {
            let name = folder.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == TMP {
                removed += self.clean_tmp(true);
                continue;
            }
            if !is_fan_out(name) || !folder.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(files) = fs::read_dir(folder.path()) else {
                continue;
            };
            for file in files.flatten() {
                if file.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let path = file.path();
                let id = file
                    .file_name()
                    .to_str()
                    .filter(|f| f.ends_with(name))
                    .and_then(EntryId::from_name);
                let Some(id) = id else {
                    // Not ours to keep: nothing else is written in a fan-out folder.
                    if fs::remove_file(&path).is_ok() {
                        removed += 1;
                    }
                    continue;
                };
                let head = File::open(&path)
                    .map_err(HeadError::Io)
                    .and_then(|f| read_head(&f))
                    .and_then(|(h, _, m)| {
                        if m.id == id {
                            Ok((h, m))
                        } else {
                            Err(HeadError::Corrupt(Corrupt("entry id does not match")))
                        }
                    });
                match head {
                    Ok((header, meta)) => {
                        entries += 1;
                        bytes += header.record_len();
                        each(id, meta.key, header.record_len());
                    }
                    Err(HeadError::Corrupt(c)) => {
                        tracing::debug!(entry = %id.name(), "{c}: deleting disk entry");
                        if fs::remove_file(&path).is_ok() {
                            removed += 1;
                        }
                    }
                    Err(HeadError::Io(e)) => {
                        // Deleted meanwhile, or unreadable: not listed, left alone.
                        if e.kind() != ErrorKind::NotFound {
                            tracing::warn!(entry = %id.name(), error = %e, "cannot read disk entry");
                        }
                    }
                }
            }
        }
        if removed > 0 {
            tracing::warn!(removed, dir = %self.dir.display(), "removed corrupt or stray files from the disk tier");
        }
        (entries, bytes)
    }

    /// Removes temp files; with `spare_ours`, not those this process may be writing now.
    /// Returns how many were removed.
    fn clean_tmp(&self, spare_ours: bool) -> u64 {
        let Ok(files) = fs::read_dir(&self.tmp) else {
            return 0;
        };
        let ours = self.pid.to_string();
        let mut removed = 0;
        for file in files.flatten() {
            let name = file.file_name();
            let name = name.to_string_lossy();
            // `<name>.<pid>.<seq>.tmp` or `probe.<pid>.tmp`: the pid is the second field.
            if spare_ours && name.split('.').nth(1) == Some(&ours) {
                continue;
            }
            if file.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(file.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

impl BodyFile {
    /// Reads up to `max` bytes of the window of `len` body bytes starting at `start`
    /// (offsets within the body). Returns `min(len, max)` bytes, so `Ok(empty)` exactly when
    /// `len` is 0; the caller advances `start` and shrinks `len` by what it got. A window
    /// outside the body is `InvalidInput`; a file shorter than its header says is
    /// `UnexpectedEof`.
    pub fn read_at(&self, start: u64, len: u64, max: usize) -> io::Result<Bytes> {
        if start
            .checked_add(len)
            .is_none_or(|end| end > self.header.body_len)
        {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "outside the stored body",
            ));
        }
        let n = len.min(max as u64) as usize;
        if n == 0 {
            return Ok(Bytes::new());
        }
        let mut buf = BytesMut::zeroed(n);
        self.file
            .read_exact_at(&mut buf, self.header.body_offset() + start)?;
        Ok(buf.freeze())
    }

    /// [`read_at`](Self::read_at) without waiting on the device: the bytes the page cache
    /// already holds (a prefix of what `read_at` would return, at least one byte), or `None`
    /// when the first of them is not cached (or the kernel cannot say), for the caller to
    /// read on a blocking thread instead. A hit served from the page cache then costs no
    /// thread hand-off, as nginx's inline `pread` does, yet a cold read never stalls the
    /// event loop.
    pub fn read_cached(&self, start: u64, len: u64, max: usize) -> Option<Bytes> {
        let n = len.min(max as u64) as usize;
        if n == 0
            || start
                .checked_add(len)
                .is_none_or(|end| end > self.header.body_len)
        {
            return None;
        }
        let mut buf = BytesMut::zeroed(n);
        let at = self.header.body_offset() + start;
        let mut got = 0;
        while got < n {
            match nowait_read(&self.file, &mut buf[got..], at + got as u64) {
                Some(0) | None => break,
                Some(k) => got += k,
            }
        }
        if got == 0 {
            return None;
        }
        buf.truncate(got);
        Some(buf.freeze())
    }

    pub fn body_len(&self) -> u64 {
        self.header.body_len
    }
}

/// Whether `preadv2(RWF_NOWAIT)` works here; cleared the first time the kernel or the
/// filesystem refuses the flag, so an unsupported system pays for that once.
static NOWAIT_WORKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// One `preadv2(RWF_NOWAIT)`: the bytes read, or `None` when it would block or failed.
#[cfg(target_os = "linux")]
fn nowait_read(file: &File, buf: &mut [u8], at: u64) -> Option<usize> {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    if !NOWAIT_WORKS.load(Ordering::Relaxed) {
        return None;
    }
    match preadv2(
        file,
        &mut [io::IoSliceMut::new(buf)],
        at,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(k) => Some(k),
        Err(Errno::AGAIN) | Err(Errno::INTR) => None,
        Err(_) => {
            NOWAIT_WORKS.store(false, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn nowait_read(_: &File, _: &mut [u8], _: u64) -> Option<usize> {
    let _ = &NOWAIT_WORKS;
    None
}

/// A fan-out folder's name: two lowercase hex characters.
fn is_fan_out(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn storage_error(e: &io::Error) -> StorageError {
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
            StorageError::Full
        }
        _ => StorageError::Unavailable,
    }
}

/// Reads and checks a record's header and metadata, and the file's length against them.
fn read_head(file: &File) -> Result<(Header, Bytes, Meta), HeadError> {
    let file_len = file.metadata()?.len();
    let first = file_len.min(HEAD_READ as u64) as usize;
    let mut buf = BytesMut::zeroed(first);
    file.read_exact_at(&mut buf, 0)?;
    let header = Header::parse(&buf)?;
    if file_len != header.record_len() {
        return Err(Corrupt("length does not match the header").into());
    }
    let body_at = header.body_offset() as usize; // <= HEADER_LEN + META_MAX
    if buf.len() < body_at {
        let have = buf.len();
        buf.resize(body_at, 0);
        file.read_exact_at(&mut buf[have..], have as u64)?;
    }
    let meta = buf.freeze().slice(HEADER_LEN..body_at);
    header.check_meta(&meta)?;
    let decoded = Meta::decode(&meta)?;
    Ok((header, meta, decoded))
}

/// Reads and checks the body (the file's length already matches the header). Returns it
/// when `keep`; otherwise reads it in chunks of [`CHUNK`] and returns `None`.
fn read_body(file: &File, header: &Header, keep: bool) -> Result<Option<Bytes>, HeadError> {
    let offset = header.body_offset();
    let mut check = BodyCheck::default();
    if keep {
        let mut body = BytesMut::zeroed(header.body_len as usize);
        file.read_exact_at(&mut body, offset)?;
        check.update(&body);
        check.finish(header)?;
        return Ok(Some(body.freeze()));
    }
    let mut buf = vec![0u8; CHUNK.min(header.body_len as usize)];
    let mut at = 0u64;
    while at < header.body_len {
        let n = (header.body_len - at).min(CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset + at)?;
        check.update(&buf[..n]);
        at += n as u64;
    }
    check.finish(header)?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::time::{Duration, SystemTime};

    /// A fresh directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(what: &str) -> Scratch {
            static N: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "larder-disk-{what}-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn meta(id: EntryId, key: &str) -> Bytes {
        let request = http::Request::get(key).body(()).unwrap().into_parts().0;
        let response = http::Response::builder()
            .status(200)
            .header("cache-control", "max-age=60")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        Meta {
            id,
            key: CacheKey::from_normalized(key),
            response_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            request,
            response,
            total: None,
        }
        .encode()
    }

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    type Listing = Vec<(EntryId, String, u64)>;

    fn listed(disk: &Disk) -> (Listing, (u64, u64)) {
        let mut all = Vec::new();
        let totals = disk.scan(|id, key, len| all.push((id, key.as_str().to_owned(), len)));
        all.sort();
        (all, totals)
    }

    /// Flips one byte of an entry's file in place.
    fn flip(disk: &Disk, id: EntryId, at: u64) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk.path(id))
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x01;
        f.write_all_at(&b, at).unwrap();
    }

    #[test]
    fn round_trip_write_load_scan_and_stream() {
        let s = Scratch::new("round");
        let disk = Disk::open(&s.0).unwrap();
        let big = body(3 * CHUNK + 17);
        let ids = [EntryId(0x1a), EntryId(0x2b1a), EntryId(u64::MAX)];
        let m0 = meta(ids[0], "http://a.test/0");
        let len0 = disk.write(ids[0], &m0, b"hello").unwrap();
        assert_eq!(len0, (HEADER_LEN + m0.len() + 5) as u64);
        let m1 = meta(ids[1], "http://a.test/1");
        let len1 = disk.write(ids[1], &m1, &big).unwrap();
        let m2 = meta(ids[2], "http://a.test/2");
        let len2 = disk.write(ids[2], &m2, b"").unwrap();
        assert_eq!(disk.path(ids[1]), s.0.join("1a").join("0000000000002b1a"));
        assert!(disk.path(ids[1]).is_file());

        let l = disk.load(ids[0], true).unwrap();
        assert_eq!(l.meta, m0);
        assert_eq!(l.body.as_deref(), Some(&b"hello"[..]));
        let l = disk.load(ids[1], true).unwrap();
        assert_eq!(l.meta, m1);
        assert_eq!(l.body.as_deref(), Some(&big[..]));
        let l = disk.load(ids[1], false).unwrap();
        assert_eq!(l.meta, m1);
        assert!(l.body.is_none());
        assert_eq!(
            disk.load(ids[2], true).unwrap().body.as_deref(),
            Some(&b""[..])
        );
        assert!(matches!(
            disk.load(EntryId(99), true),
            Err(LoadError::Missing)
        ));

        let (all, totals) = listed(&disk);
        assert_eq!(
            all,
            vec![
                (ids[0], "http://a.test/0".into(), len0),
                (ids[1], "http://a.test/1".into(), len1),
                (ids[2], "http://a.test/2".into(), len2),
            ]
        );
        assert_eq!(totals, (3, len0 + len1 + len2));

        // Streaming a window in chunks gives exactly those bytes.
        let f = disk.open_body(ids[1]).unwrap();
        assert_eq!(f.body_len(), big.len() as u64);
        let (mut start, mut len) = (1000u64, 2 * CHUNK as u64 + 5);
        let mut got = Vec::new();
        loop {
            let c = f.read_at(start, len, 64 * 1024).unwrap();
            if c.is_empty() {
                break;
            }
            assert!(c.len() <= 64 * 1024);
            start += c.len() as u64;
            len -= c.len() as u64;
            got.extend_from_slice(&c);
        }
        assert_eq!(&got[..], &big[1000..1000 + 2 * CHUNK + 5]);
        assert_eq!(
            f.read_at(big.len() as u64 - 1, 2, 10).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            disk.open_body(EntryId(99)).unwrap_err().kind(),
            ErrorKind::NotFound
        );

        // Reopening keeps entries.
        drop(disk);
        let disk = Disk::open(&s.0).unwrap();
        assert_eq!(listed(&disk).1, totals);
    }

    #[test]
    fn flipped_bytes_are_detected_and_the_file_removed() {
        let s = Scratch::new("flip");
        let disk = Disk::open(&s.0).unwrap();
        let b = body(CHUNK + 3);
        for (n, with_body) in [(1u64, true), (2, false)] {
            // A body byte, near the end (in the second chunk when checked without the body).
            let id = EntryId(n);
            let m = meta(id, "http://a.test/body");
            let len = disk.write(id, &m, &b).unwrap();
            flip(&disk, id, len - 2);
            // The head is fine: a listing does not read bodies.
            assert_eq!(listed(&disk).1.0, 1);
            assert!(matches!(
                disk.load(id, with_body),
                Err(LoadError::Corrupt(Corrupt("body checksum")))
            ));
            assert!(!disk.path(id).exists());
            assert!(matches!(disk.load(id, with_body), Err(LoadError::Missing)));
        }
        // A metadata byte.
        let id = EntryId(3);
        let m = meta(id, "http://a.test/meta");
        disk.write(id, &m, &b).unwrap();
        flip(&disk, id, HEADER_LEN as u64 + 10);
        assert!(matches!(
            disk.load(id, false),
            Err(LoadError::Corrupt(Corrupt("metadata checksum")))
        ));
        assert!(!disk.path(id).exists());
        // Same, found by a listing.
        disk.write(id, &m, &b).unwrap();
        flip(&disk, id, HEADER_LEN as u64 + 10);
        assert_eq!(listed(&disk).1, (0, 0));
        assert!(!disk.path(id).exists());
        // A header byte.
        disk.write(id, &m, &b).unwrap();
        flip(&disk, id, 17);
        assert!(matches!(disk.load(id, true), Err(LoadError::Corrupt(_))));
        assert!(!disk.path(id).exists());
    }

    #[test]
    fn a_record_under_another_id_is_corrupt() {
        let s = Scratch::new("id");
        let disk = Disk::open(&s.0).unwrap();
        disk.write(EntryId(5), &meta(EntryId(6), "http://a.test/"), b"x")
            .unwrap();
        assert!(matches!(
            disk.load(EntryId(5), true),
            Err(LoadError::Corrupt(Corrupt("entry id does not match")))
        ));
        disk.write(EntryId(5), &meta(EntryId(6), "http://a.test/"), b"x")
            .unwrap();
        assert_eq!(listed(&disk).1, (0, 0));
        assert!(!disk.path(EntryId(5)).exists());
    }

    #[test]
    fn torn_writes_are_detected_by_scan_and_load() {
        let s = Scratch::new("torn");
        let disk = Disk::open(&s.0).unwrap();
        let (a, b) = (EntryId(0x10), EntryId(0x20));
        let good = disk
            .write(a, &meta(a, "http://a.test/a"), b"keep me")
            .unwrap();
        let record = entry::encode(&meta(b, "http://a.test/b"), &body(1000));
        for cut in [0, 5, HEADER_LEN, HEADER_LEN + 20, record.len() - 1] {
            fs::create_dir_all(disk.path(b).parent().unwrap()).unwrap();
            fs::write(disk.path(b), &record[..cut]).unwrap();
            assert!(
                matches!(disk.load(b, false), Err(LoadError::Corrupt(_))),
                "load, cut at {cut}"
            );
            assert!(!disk.path(b).exists());
            fs::write(disk.path(b), &record[..cut]).unwrap();
            let (all, totals) = listed(&disk);
            assert_eq!(totals, (1, good), "scan, cut at {cut}");
            assert_eq!(all[0].0, a);
            assert!(!disk.path(b).exists());
        }
        // A record with bytes after it is just as wrong.
        let mut long = record.to_vec();
        long.push(0);
        fs::write(disk.path(b), &long).unwrap();
        assert!(matches!(disk.load(b, true), Err(LoadError::Corrupt(_))));
        // The whole record is fine.
        fs::write(disk.path(b), &record).unwrap();
        assert!(disk.load(b, true).is_ok());
    }

    #[test]
    fn foreign_and_stray_files() {
        let s = Scratch::new("stray");
        let disk = Disk::open(&s.0).unwrap();
        let id = EntryId(0xab);
        let len = disk.write(id, &meta(id, "http://a.test/"), b"x").unwrap();
        let fan = s.0.join("ab");
        fs::write(fan.join("notes.txt"), b"?").unwrap();
        fs::write(fan.join(EntryId(0xcd).name()), b"wrong folder").unwrap();
        fs::write(s.0.join("README"), b"not ours").unwrap();
        fs::create_dir_all(s.0.join("other")).unwrap();
        fs::write(s.0.join("other").join("0000000000000001"), b"x").unwrap();
        // A stray temp file of a dead process goes; one of ours may be a write under way.
        let dead = s.0.join(TMP).join("00000000000000ab.4000000000.0.tmp");
        let ours =
            s.0.join(TMP)
                .join(format!("00000000000000ab.{}.9.tmp", std::process::id()));
        fs::write(&dead, b"half").unwrap();
        fs::write(&ours, b"half").unwrap();
        assert_eq!(listed(&disk).1, (1, len));
        assert!(!fan.join("notes.txt").exists());
        assert!(!fan.join(EntryId(0xcd).name()).exists());
        assert!(!dead.exists());
        assert!(ours.exists());
        assert!(s.0.join("README").exists());
        assert!(s.0.join("other").join("0000000000000001").exists());
    }

    #[test]
    fn open_removes_leftover_temp_files() {
        let s = Scratch::new("open");
        let tmp = s.0.join("cache").join(TMP);
        fs::create_dir_all(&tmp).unwrap();
        let left = tmp.join(format!("00000000000000ab.{}.0.tmp", std::process::id()));
        fs::write(&left, b"half a record").unwrap();
        fs::write(tmp.join("other.1.2.tmp"), b"").unwrap();
        let disk = Disk::open(&s.0.join("cache")).unwrap();
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        assert_eq!(disk.dir(), s.0.join("cache"));
        // A missing directory is created, tmp/ too.
        let deep = s.0.join("a").join("b");
        Disk::open(&deep).unwrap();
        assert!(deep.join(TMP).is_dir());
        // A directory that is a file cannot be opened.
        fs::write(s.0.join("file"), b"").unwrap();
        assert!(Disk::open(&s.0.join("file")).is_err());
    }

    #[test]
    fn updating_metadata_keeps_the_body_and_its_check() {
        let s = Scratch::new("update-meta");
        let disk = Disk::open(&s.0).unwrap();
        let id = EntryId(7);
        let b = body(3 * CHUNK + 5);
        disk.write(id, &meta(id, "http://o.test/u"), &b).unwrap();
        let mut m = Meta::decode(&meta(id, "http://o.test/u")).unwrap();
        m.response
            .headers
            .insert("x-refreshed", "a longer head than before".parse().unwrap());
        let newer = m.encode();
        let len = disk.update_meta(id, &newer).unwrap().expect("updated");
        let loaded = disk.load(id, true).unwrap();
        assert_eq!(loaded.body.as_deref(), Some(&b[..]));
        assert_eq!(loaded.meta, newer);
        assert_eq!(len, (HEADER_LEN + newer.len() + b.len()) as u64);
        // Nothing to update: a missing or damaged entry.
        assert_eq!(disk.update_meta(EntryId(8), &newer).unwrap(), None);
        flip(&disk, id, 3);
        assert_eq!(disk.update_meta(id, &newer).unwrap(), None);
        assert_eq!(
            fs::read_dir(s.0.join("tmp")).unwrap().count(),
            0,
            "no temp left"
        );
    }

    #[test]
    fn deleting_a_missing_entry_is_fine() {
        let s = Scratch::new("delete");
        let disk = Disk::open(&s.0).unwrap();
        disk.delete(EntryId(7));
        let len = disk.write(EntryId(7), &meta(EntryId(7), "http://a.test/"), b"x");
        assert!(len.is_ok());
        disk.delete(EntryId(7));
        assert!(matches!(
            disk.load(EntryId(7), true),
            Err(LoadError::Missing)
        ));
        disk.delete(EntryId(7));
    }

    #[test]
    fn an_unwritable_directory_is_unavailable() {
        let s = Scratch::new("unavailable");
        let disk = Disk::open(&s.0).unwrap();
        let id = EntryId(1);
        let m = meta(id, "http://a.test/");
        disk.write(id, &m, b"x").unwrap();
        // tmp/ replaced by a regular file: temp files cannot be created (works as root too).
        fs::remove_dir_all(s.0.join(TMP)).unwrap();
        fs::write(s.0.join(TMP), b"").unwrap();
        assert_eq!(
            disk.write(EntryId(2), &m, b"x"),
            Err(StorageError::Unavailable)
        );
        // Entries already there still load.
        assert!(disk.load(id, true).is_ok());
        fs::remove_file(s.0.join(TMP)).unwrap();
        fs::create_dir(s.0.join(TMP)).unwrap();
        // A fan-out folder that is a file: the rename fails, and the temp file goes.
        fs::write(s.0.join("02"), b"").unwrap();
        assert_eq!(
            disk.write(EntryId(2), &m, b"x"),
            Err(StorageError::Unavailable)
        );
        assert_eq!(fs::read_dir(s.0.join(TMP)).unwrap().count(), 0);
        // Without permission (only effective when not root).
        fs::remove_file(s.0.join("02")).unwrap();
        fs::create_dir(s.0.join("03")).unwrap();
        fs::set_permissions(s.0.join("03"), fs::Permissions::from_mode(0o500)).unwrap();
        let r = disk.write(EntryId(3), &m, b"x");
        fs::set_permissions(s.0.join("03"), fs::Permissions::from_mode(0o755)).unwrap();
        if is_root() {
            assert!(r.is_ok());
        } else {
            assert_eq!(r, Err(StorageError::Unavailable));
        }
    }

    #[test]
    fn oversized_metadata_is_refused() {
        let s = Scratch::new("huge");
        let disk = Disk::open(&s.0).unwrap();
        let m = vec![0u8; entry::META_MAX as usize + 1];
        assert_eq!(disk.write(EntryId(1), &m, b""), Err(StorageError::Full));
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    }

    #[test]
    fn a_full_filesystem_is_full_and_earlier_entries_survive() {
        let s = Scratch::new("enospc");
        let mnt = s.0.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&mnt)
            .output();
        match mounted {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "skipping ENOSPC test: mount failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return;
            }
            Err(e) => {
                eprintln!("skipping ENOSPC test: cannot run mount: {e}");
                return;
            }
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(&mnt);

        let disk = Disk::open(&mnt).unwrap();
        let b = body(10_000);
        let mut written = Vec::new();
        let full = (1..100u64).find_map(|n| {
            let id = EntryId(n);
            match disk.write(id, &meta(id, "http://a.test/"), &b) {
                Ok(_) => {
                    written.push(id);
                    None
                }
                Err(e) => Some(e),
            }
        });
        assert_eq!(full, Some(StorageError::Full));
        assert!(!written.is_empty());
        // No temp file is left behind, and everything written before is whole.
        assert_eq!(fs::read_dir(mnt.join(TMP)).unwrap().count(), 0);
        for &id in &written {
            assert_eq!(disk.load(id, true).unwrap().body.as_deref(), Some(&b[..]));
        }
        assert_eq!(listed(&disk).1.0, written.len() as u64);
        // Space freed is space again.
        disk.delete(written[0]);
        let id = EntryId(1000);
        assert!(disk.write(id, &meta(id, "http://a.test/"), &b).is_ok());
        drop(disk);
    }

    #[test]
    fn disk_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Disk>();
        check::<BodyFile>();
    }
}
