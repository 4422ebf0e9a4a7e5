//! The warm-start cache: the values of snapshot files, by the git blob that
//! holds them, so a restarted process reads one small age file instead of
//! opening every SOPS file of the last snapshot (about 0.8 ms each on one core).
//!
//! Why it is safe to trust:
//! - an entry maps a blob id (the SHA-1 of the file's bytes) to the values
//!   that file holds. credsync writes an entry only for a file it has just
//!   sealed from those values, or opened as its own (its last signed commit
//!   holds it), so an entry is right for as long as the blob exists: no
//!   commit, pull or rollback can make it stale, and a file whose blob is
//!   not in the cache is opened the slow way, if it is credsync's at all;
//! - segments are binary age files for the snapshot's own recipients,
//!   written 0600 under `.git/credsync/` (never committed or pushed): whoever
//!   can read them can read the snapshot files already, and whoever can
//!   write them can write the pod's disk, which is credsync's own trust
//!   boundary (push access to the remote gives no way in). Segments of
//!   version 1, written before files were told apart by signature, may
//!   hold a pushed file's values: they are dropped;
//! - a segment that cannot be opened (another identity, damage) is dropped,
//!   never half-read: age authenticates every chunk.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use git2::Oid;
use sops_age::{Identities, Recipients};
use zeroize::Zeroizing;

use crate::secret::SecretValue;
use crate::source::ItemId;

/// What the first line of every segment says; another version is dropped.
const MAGIC: &[u8] = b"credsync-warm 2\n";
/// Past this many segments, a write folds them into one.
pub(super) const COMPACT_AT: usize = 32;

/// The values one snapshot file holds: the item each key came from and its value.
pub(super) type FileValues = Vec<(ItemId, SecretValue)>;

/// The segments of one cluster's cache.
pub(super) struct WarmCache {
    dir: PathBuf,
}

/// What a read of every segment found for the blobs asked about.
#[derive(Default)]
pub(super) struct CacheRead {
    pub(super) entries: HashMap<Oid, FileValues>,
    /// The segment files read (or found unusable): what a compaction replaces.
    pub(super) segments: Vec<PathBuf>,
    /// Entries for blobs no longer in the snapshot, or unusable segments.
    pub(super) stale: bool,
}

impl WarmCache {
    pub(super) fn new(git_dir: &Path, cluster: &str) -> Self {
        Self {
            dir: git_dir.join("credsync").join("warm").join(cluster),
        }
    }

    /// Writes `entries` as a new segment (one age file, written whole and
    /// renamed into place, so a reader never sees half of one).
    pub(super) fn add(
        &self,
        entries: &[(Oid, &FileValues)],
        recipients: &Recipients,
    ) -> Result<PathBuf, WarmError> {
        let mut segment = Segment::default();
        for (oid, values) in entries {
            segment.push(*oid, values);
        }
        self.add_segment(segment, recipients)
    }

    /// Writes `segment` as a new segment file.
    pub(super) fn add_segment(
        &self,
        segment: Segment,
        recipients: &Recipients,
    ) -> Result<PathBuf, WarmError> {
        let sealed = sops_age::seal_bytes(&segment.plain, recipients).map_err(WarmError::Seal)?;
        drop(segment);
        create_private_dir(&self.dir).map_err(|e| WarmError::Io {
            path: self.dir.clone(),
            source: e,
        })?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{stamp:024}-{}.age", std::process::id());
        let path = self.dir.join(&name);
        let temporary = self.dir.join(format!(".{name}.tmp"));
        if let Err(e) = write_private(&temporary, &sealed) {
            let _ = std::fs::remove_file(&temporary);
            return Err(WarmError::Io {
                path: temporary,
                source: e,
            });
        }
        std::fs::rename(&temporary, &path).map_err(|e| WarmError::Io {
            path: path.clone(),
            source: e,
        })?;
        Ok(path)
    }

    /// The segment files, oldest first.
    pub(super) fn segments(&self) -> Vec<PathBuf> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "age"))
            .collect();
        out.sort();
        out
    }

    /// Reads every segment and keeps the entries of the blobs in `live`.
    pub(super) fn read(&self, live: &HashSet<Oid>, identities: &Identities) -> CacheRead {
        let mut read = CacheRead::default();
        for path in self.segments() {
            let opened = std::fs::read(&path)
                .map_err(SegmentError::Read)
                .and_then(|bytes| {
                    sops_age::open_bytes(&bytes, identities).map_err(SegmentError::Open)
                })
                .and_then(|plain| decode(&plain, live, &mut read.entries));
            match opened {
                Ok(dead) => read.stale |= dead > 0,
                Err(reason) => {
                    let reason = crate::errors::Chain(&reason);
                    tracing::warn!(segment = %path.display(), %reason, "warm-start cache segment unusable; it is dropped");
                    read.stale = true;
                }
            }
            read.segments.push(path);
        }
        read
    }

    /// Replaces `old` segments by one holding `entries`.
    pub(super) fn replace(
        &self,
        entries: &[(Oid, &FileValues)],
        recipients: &Recipients,
        old: &[PathBuf],
    ) -> Result<(), WarmError> {
        if !entries.is_empty() {
            self.add(entries, recipients)?;
        }
        for path in old {
            if let Err(e) = std::fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(WarmError::Io {
                    path: path.clone(),
                    source: e,
                });
            }
        }
        Ok(())
    }
}

/// Why a segment cannot be used: it is dropped whole, never half-read.
#[derive(Debug, thiserror::Error)]
pub(super) enum SegmentError {
    #[error("reading it")]
    Read(#[source] std::io::Error),
    #[error("opening it")]
    Open(#[source] sops_age::SopsError),
    #[error("{0}")]
    Malformed(&'static str),
}

/// Why the cache could not be written; the snapshot itself is not affected.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("encrypting the warm-start cache")]
    Seal(#[source] sops_age::SopsError),
    #[error(
        "writing the warm-start cache {} (check the snapshot repository's disk and permissions)",
        path.display()
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `MAGIC`, then per blob: its 20-byte id, the number of keys, and per key
/// the item name, version and value, each prefixed by its length (u32 LE).
/// A segment's plaintext, encoded file by file as a commit writes them:
/// holding every file's values as items until the commit ends took twice
/// the bytes (at 100,000 items, 17 MiB of copies).
pub(super) struct Segment {
    plain: Zeroizing<Vec<u8>>,
    files: usize,
}

impl Default for Segment {
    fn default() -> Self {
        Self {
            plain: Zeroizing::new(MAGIC.to_vec()),
            files: 0,
        }
    }
}

impl Segment {
    /// Adds the values of the file stored as blob `oid`.
    pub(super) fn push(&mut self, oid: Oid, values: &FileValues) {
        let size = 24
            + values
                .iter()
                .map(|(id, v)| 12 + id.name.len() + id.version.len() + v.expose().len())
                .sum::<usize>();
        // Grown by hand: a Vec growing itself frees its old buffer
        // without zeroing it, and that buffer holds values.
        if self.plain.capacity() - self.plain.len() < size {
            let mut grown = Zeroizing::new(Vec::with_capacity(
                (self.plain.len() + size).max(self.plain.capacity() * 2),
            ));
            grown.extend_from_slice(&self.plain);
            self.plain = grown;
        }
        let out = &mut self.plain;
        out.extend_from_slice(oid.as_bytes());
        put_len(out, values.len());
        for (id, value) in values {
            for part in [id.name.as_bytes(), id.version.as_bytes(), value.expose()] {
                put_len(out, part.len());
                out.extend_from_slice(part);
            }
        }
        self.files += 1;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.files == 0
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Values are at most 1 MiB (a Secret's limit); names far less.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

/// Adds the entries of blobs in `live` to `into`; returns how many entries
/// were for other blobs. A malformed segment is an error, and nothing of
/// it is kept.
fn decode(
    plain: &[u8],
    live: &HashSet<Oid>,
    into: &mut HashMap<Oid, FileValues>,
) -> Result<usize, SegmentError> {
    let mut input = plain.strip_prefix(MAGIC).ok_or(SegmentError::Malformed(
        "not a credsync warm-start segment of this version",
    ))?;
    let mut found = Vec::new();
    let mut dead = 0;
    while !input.is_empty() {
        let oid = Oid::from_bytes(take(&mut input, 20)?)
            .map_err(|_| SegmentError::Malformed("a blob id is damaged"))?;
        let count = take_len(&mut input)?;
        // Each key takes at least 12 bytes: a bigger count is damage.
        if count > input.len() / 12 {
            return Err(SegmentError::Malformed("a key count runs past the end"));
        }
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let name = take_text(&mut input)?;
            let version = take_text(&mut input)?;
            let n = take_len(&mut input)?;
            let value = SecretValue::new(take(&mut input, n)?.to_vec());
            values.push((ItemId { name, version }, value));
        }
        if live.contains(&oid) {
            found.push((oid, values));
        } else {
            dead += 1;
        }
    }
    into.extend(found);
    Ok(dead)
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], SegmentError> {
    if input.len() < n {
        return Err(SegmentError::Malformed(
            "the segment ends in the middle of an entry",
        ));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn take_len(input: &mut &[u8]) -> Result<usize, SegmentError> {
    let bytes = take(input, 4)?;
    let mut le = [0u8; 4];
    le.copy_from_slice(bytes);
    usize::try_from(u32::from_le_bytes(le))
        .map_err(|_| SegmentError::Malformed("a length does not fit this machine"))
}

fn take_text(input: &mut &[u8]) -> Result<String, SegmentError> {
    let n = take_len(input)?;
    String::from_utf8(take(input, n)?.to_vec())
        .map_err(|_| SegmentError::Malformed("an item name is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, version: &str) -> ItemId {
        ItemId {
            name: name.to_owned(),
            version: version.to_owned(),
        }
    }

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    fn encode(entries: &[(Oid, &FileValues)]) -> Zeroizing<Vec<u8>> {
        let mut segment = Segment::default();
        for (oid, values) in entries {
            segment.push(*oid, values);
        }
        segment.plain
    }

    #[test]
    fn decodes_what_it_encodes_and_keeps_only_live_blobs() {
        let a: FileValues = vec![
            (
                id("app.db", "0000000000000000001"),
                SecretValue::new(b"s3cret".to_vec()),
            ),
            (id("arn:x#k@y", "v-1"), SecretValue::new(Vec::new())),
        ];
        let b: FileValues = vec![(id("other", "2"), SecretValue::new(vec![0, 255, 10]))];
        let plain = encode(&[(oid(1), &a), (oid(2), &b)]);
        let mut out = HashMap::new();
        let dead = decode(&plain, &HashSet::from([oid(1)]), &mut out).unwrap();
        assert_eq!(dead, 1);
        assert_eq!(out.len(), 1);
        let got = &out[&oid(1)];
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, a[0].0);
        assert_eq!(got[0].1.expose(), b"s3cret");
        assert_eq!(got[1].0, id("arn:x#k@y", "v-1"));
        assert!(got[1].1.expose().is_empty());
    }

    #[test]
    fn a_segment_grown_file_by_file_decodes_whole() {
        let mut segment = Segment::default();
        let mut live = HashSet::new();
        for n in 0..200u8 {
            let value = SecretValue::new(vec![n; usize::from(n) * 7]);
            segment.push(oid(n), &vec![(id("ns/app/k", &n.to_string()), value)]);
            live.insert(oid(n));
        }
        let mut out = HashMap::new();
        assert_eq!(decode(&segment.plain, &live, &mut out).unwrap(), 0);
        assert_eq!(out.len(), 200);
        assert_eq!(out[&oid(199)][0].1.expose(), vec![199; 199 * 7].as_slice());
        assert_eq!(out[&oid(3)][0].0, id("ns/app/k", "3"));
    }

    #[test]
    fn a_damaged_segment_gives_nothing() {
        let a: FileValues = vec![(id("n", "1"), SecretValue::new(b"v".to_vec()))];
        let plain = encode(&[(oid(1), &a), (oid(2), &a)]);
        let live = HashSet::from([oid(1), oid(2)]);
        for cut in [MAGIC.len() + 3, plain.len() - 1] {
            let mut out = HashMap::new();
            assert!(
                decode(&plain[..cut], &live, &mut out).is_err(),
                "cut at {cut}"
            );
            assert!(out.is_empty());
        }
        let mut out = HashMap::new();
        assert!(decode(b"credsync-warm 9\n", &live, &mut out).is_err());
        // Version 1 segments predate signed snapshots: never read.
        assert!(decode(b"credsync-warm 1\n", &live, &mut out).is_err());
        let mut huge = plain[..MAGIC.len() + 20].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge, &live, &mut out).is_err());
    }
}
