//! The on-disk image of a store: snapshots and append logs in one directory.
//!
//! Files: `snapshot-<gen>` holds the whole store as of the start of generation `gen`;
//! `log-<gen>` holds every accepted put of that generation, appended before the put returns.
//! Both are sequences of frames: `len: u32 LE`, `crc32(payload): u32 LE`, `payload`. A payload is
//! a kind byte and its body: `3` = a record with the time until which its sequence is
//! remembered (`retain_until_ms: u64 LE`, then the record's protobuf encoding); `2` = a
//! remembered sequence (`seq: u64 LE`, `retain_until_ms: u64 LE`, the owner's key type code and
//! key length (one byte each) and key bytes, then the record key's bytes); `4` = a log's mark
//! (`nonce: [u8; 16]`, `flushed: u64 LE`, below); `1` = a record alone, as written before kind 3
//! (read only: its retention is recomputed from the restart time, which only remembers longer).
//! A binary older than a kind refuses to open a directory written by a newer one ("unknown entry
//! kind 4"): the format moves forward only.
//!
//! Opening reads the newest snapshot and replays the logs of its generation and later; replay is
//! idempotent, so a log entry that the snapshot already holds is harmless. A snapshot is written
//! to a temporary file, synced and renamed, so it is whole or absent, and any bad frame in it is
//! damage.
//!
//! A log may end in damage that no put was promised past:
//! - A killed process leaves a prefix of what it wrote: the last frame may be cut off by the end
//!   of the file.
//! - A power cut leaves what was flushed (`fdatasync`) whole, and after it anything: frames cut
//!   off, zeros (ext4 and XFS can leave the file longer than what reached the disk), and, as
//!   pages reach the disk in any order, whole frames after a frame that did not.
//!
//! So a log says how far it was flushed. Its first frame is a mark holding a random nonce
//! (synced when the log is made); after each flush, the next append is preceded by a mark
//! with the same nonce and the number of the file's bytes that flush covered, and a store that
//! closes adds one after its last flush. Flushes are `Durability::Fsync`'s group commits, or,
//! with `Durability::WriteThrough`, the sync thread's lazy ones (at most every 5 s while puts
//! come; `crate::sync`). Damage at byte `B` is [`StoreError::Corrupt`] when a whole mark with
//! the log's nonce after it says a flush covered `B`. Otherwise the read stops at `B`, and the
//! store starts: a power cut can only have touched bytes that no flush covered. So bit rot in
//! the last few seconds of writes before a power cut (or before a kill, where no later mark
//! was written) reads as a tear too. The nonce never leaves the node, so a value holding
//! frames of this format (anyone's bytes) cannot pass for a mark. When bytes other than zeros
//! follow the damaged frame, the store keeps a copy of the log (`Store::open`). A log without a
//! first mark (written before marks, or whose first frame is damaged) keeps the older rule:
//! damage with a whole frame anywhere after it is corruption.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dkvs_account::{KeyType, PublicKey};
use dkvs_record::{Key, Record};

use crate::StoreError;

/// A record, as written before version 0.2: its retention is recomputed at restore.
pub(crate) const KIND_RECORD: u8 = 1;
pub(crate) const KIND_GONE: u8 = 2;
/// A record with the time until which its sequence is remembered (u64 LE, then the record).
pub(crate) const KIND_HELD: u8 = 3;
/// How far a log was flushed: the log's nonce, then a count of its bytes (u64 LE).
const KIND_MARK: u8 = 4;
const NONCE_LEN: usize = 16;
const MARK_PAYLOAD: usize = 1 + NONCE_LEN + 8;
/// The bytes of a mark's frame.
const MARK_FRAME: usize = FRAME_HEADER + MARK_PAYLOAD;
const FRAME_HEADER: usize = 8;
/// No payload is larger: a held record's (its kind, its retention, its encoding). A length
/// beyond it (or 0) is a bad frame; one within it that runs past the end of the file is a
/// frame cut off. Either is damage, read as the module's doc says.
const MAX_PAYLOAD: usize = 1 + 8 + dkvs_record::MAX_ENCODED_LEN;

/// One entry read back from disk.
pub(crate) enum Entry {
    /// A record, with its retention where the file has it.
    Record(Box<Record>, Option<u64>),
    Gone {
        key: Key,
        seq: u64,
        retain_until_ms: u64,
        owner: PublicKey,
    },
}

pub(crate) fn frame(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let mut payload_crc = crc32fast::Hasher::new();
    payload_crc.update(&[kind]);
    payload_crc.update(body);
    out.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    out.extend_from_slice(&payload_crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
}

/// Appends a mark: the first `flushed` bytes of the log with `nonce` were flushed before it.
fn mark(out: &mut Vec<u8>, nonce: &[u8; NONCE_LEN], flushed: u64) {
    let mut body = [0u8; NONCE_LEN + 8];
    body[..NONCE_LEN].copy_from_slice(nonce);
    body[NONCE_LEN..].copy_from_slice(&flushed.to_le_bytes());
    frame(out, KIND_MARK, &body);
}

pub(crate) fn held_body(record: &Record, retain_until_ms: u64) -> Vec<u8> {
    let encoded = record.encode();
    let mut body = Vec::with_capacity(8 + encoded.len());
    body.extend_from_slice(&retain_until_ms.to_le_bytes());
    body.extend_from_slice(&encoded);
    body
}

pub(crate) fn gone_body(key: &Key, seq: u64, retain_until_ms: u64, owner: &PublicKey) -> Vec<u8> {
    let owner_bytes = owner.as_bytes();
    let mut body = Vec::with_capacity(18 + owner_bytes.len() + key.as_str().len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&retain_until_ms.to_le_bytes());
    body.push(owner.key_type().code());
    // A public key is at most 33 bytes.
    body.push(owner_bytes.len() as u8);
    body.extend_from_slice(owner_bytes);
    body.extend_from_slice(key.as_str().as_bytes());
    body
}

/// One entry of the store's own files; `None` for a record whose key a newer version of the
/// key rules refuses (it was valid when it was stored, and is dropped, not a reason to refuse
/// to start).
fn parse_payload(payload: &[u8]) -> Result<Option<Entry>, String> {
    let (&kind, body) = payload.split_first().ok_or("empty payload")?;
    match kind {
        KIND_RECORD => match Record::decode(body) {
            Ok(record) => Ok(Some(Entry::Record(Box::new(record), None))),
            Err(dkvs_record::DecodeError::Key(e)) if e.is_look_alike() => Ok(None),
            Err(e) => Err(e.to_string()),
        },
        KIND_HELD => {
            let (retain, record) = body.split_at_checked(8).ok_or("truncated held record")?;
            let retain = u64::from_le_bytes(retain.try_into().map_err(|_| "truncated")?);
            match Record::decode(record) {
                Ok(record) => Ok(Some(Entry::Record(Box::new(record), Some(retain)))),
                Err(dkvs_record::DecodeError::Key(e)) if e.is_look_alike() => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }
        KIND_GONE => {
            if body.len() < 18 {
                return Err(format!("remembered-sequence entry is {} bytes", body.len()));
            }
            let u64_at = |at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&body[at..at + 8]);
                u64::from_le_bytes(b)
            };
            let key_type = KeyType::from_code(u32::from(body[16])).map_err(|e| e.to_string())?;
            let owner_end = 18 + usize::from(body[17]);
            let owner_bytes = body.get(18..owner_end).ok_or("truncated owner")?;
            let owner = PublicKey::from_bytes(key_type, owner_bytes).map_err(|e| e.to_string())?;
            let key = match Key::from_bytes(&body[owner_end..]) {
                Ok(key) => key,
                Err(e) if e.is_look_alike() => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            Ok(Some(Entry::Gone { key, seq: u64_at(0), retain_until_ms: u64_at(8), owner }))
        }
        other => Err(format!("unknown entry kind {other}")),
    }
}

/// The frame at the start of some bytes, read as far as they go.
enum Frame<'a> {
    /// Whole, its checksum matching: the payload.
    Whole(&'a [u8]),
    /// Cut off by the end of the bytes, as far as it goes.
    CutOff,
    /// A length no frame has, or a checksum that does not match.
    Bad(String),
}

fn frame_at(bytes: &[u8]) -> Frame<'_> {
    let Some(header) = bytes.get(..FRAME_HEADER) else { return Frame::CutOff };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_PAYLOAD {
        return Frame::Bad(format!("frame length {len}"));
    }
    let Some(payload) = bytes.get(FRAME_HEADER..FRAME_HEADER + len) else { return Frame::CutOff };
    if crc32fast::hash(payload) != crc {
        return Frame::Bad("checksum mismatch".into());
    }
    Frame::Whole(payload)
}

/// The older rule, for a log without a nonce: a damaged frame at the start of `rest` is a torn
/// tail only when no whole, checksummed frame begins anywhere after its start. (A value holding
/// frames of this format in the part of a torn frame that was written makes this corruption.)
fn no_whole_frame_after(rest: &[u8]) -> bool {
    let end = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    !(1..end).any(|offset| matches!(frame_at(&rest[offset..]), Frame::Whole(_)))
}

/// The count of bytes a flush covered, from the first whole mark with `nonce` after byte `at`
/// of `bytes` that says a flush covered `at`.
fn flushed_past(bytes: &[u8], at: usize, nonce: &[u8; NONCE_LEN]) -> Option<u64> {
    let last = bytes.len().checked_sub(MARK_FRAME)?;
    (at + 1..=last).find_map(|y| {
        let candidate = &bytes[y..y + MARK_FRAME];
        if candidate[..4] != (MARK_PAYLOAD as u32).to_le_bytes()
            || candidate[FRAME_HEADER] != KIND_MARK
            || candidate[FRAME_HEADER + 1..FRAME_HEADER + 1 + NONCE_LEN] != nonce[..]
        {
            return None;
        }
        let Frame::Whole(payload) = frame_at(candidate) else { return None };
        let flushed = u64::from_le_bytes(payload[1 + NONCE_LEN..].try_into().ok()?);
        (flushed > at as u64).then_some(flushed)
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| StoreError::Io { path: path.to_owned(), source })?;
    Ok(bytes)
}

/// One entry of a file, or `None` (with a warning) for a record whose key this version refuses.
fn entry_at(path: &Path, at: usize, payload: &[u8]) -> Result<Option<Entry>, StoreError> {
    let damage = |reason| StoreError::Corrupt { path: path.to_owned(), offset: at as u64, reason };
    let entry = parse_payload(payload).map_err(damage)?;
    if entry.is_none() {
        tracing::warn!(
            file = %path.display(),
            offset = at,
            "skipped a record whose key this version refuses (an invisible character, not NFC, \
             or an account id written otherwise than as its one id)"
        );
    }
    Ok(entry)
}

/// Reads a snapshot: every frame must be whole.
pub(crate) fn read_snapshot(path: &Path) -> Result<Vec<Entry>, StoreError> {
    let bytes = read_bytes(path)?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let reason = match frame_at(&bytes[at..]) {
            Frame::Whole(payload) => {
                entries.extend(entry_at(path, at, payload)?);
                at += FRAME_HEADER + payload.len();
                continue;
            }
            Frame::CutOff => "truncated frame".to_owned(),
            Frame::Bad(reason) => reason,
        };
        return Err(StoreError::Corrupt { path: path.to_owned(), offset: at as u64, reason });
    }
    Ok(entries)
}

/// A log read back.
pub(crate) struct LogRead {
    pub(crate) entries: Vec<Entry>,
    /// The bytes read; those after them were dropped.
    pub(crate) good: u64,
    /// Why bytes were dropped, when they were more than what a killed process leaves (a last
    /// frame cut off by the end of the file) or a power cut's zeros.
    pub(crate) damage: Option<String>,
}

/// Reads a log, up to damage that no flush covered (the module's doc).
pub(crate) fn read_log(path: &Path) -> Result<LogRead, StoreError> {
    let bytes = read_bytes(path)?;
    let mut entries = Vec::new();
    let mut nonce = None;
    let mut at = 0usize;
    while at < bytes.len() {
        let reason = match frame_at(&bytes[at..]) {
            Frame::Whole(payload) => {
                if payload[0] != KIND_MARK {
                    entries.extend(entry_at(path, at, payload)?);
                } else if at == 0 && payload.len() == MARK_PAYLOAD {
                    nonce = payload[1..1 + NONCE_LEN].try_into().ok();
                }
                // (A later mark only tells a read of damage before it how far was flushed.)
                at += FRAME_HEADER + payload.len();
                continue;
            }
            Frame::CutOff => None,
            Frame::Bad(reason) => Some(reason),
        };
        let damage = |reason: String| StoreError::Corrupt {
            path: path.to_owned(),
            offset: at as u64,
            reason,
        };
        match (&nonce, &reason) {
            (Some(nonce), _) => {
                if let Some(flushed) = flushed_past(&bytes, at, nonce) {
                    let what = reason.as_deref().unwrap_or("a frame cut off");
                    return Err(damage(format!(
                        "{what}, where a flush had covered the first {flushed} bytes"
                    )));
                }
            }
            (None, Some(reason)) if !no_whole_frame_after(&bytes[at..]) => {
                return Err(damage(reason.clone()));
            }
            (None, _) => {}
        }
        // Bytes other than zeros after the damaged frame (its length, where it has one that
        // fits, else its header) are frames that were dropped: worth a copy. (A length that
        // the damage itself changed can hide them: a frame cut off by the end of the file, or
        // one made longer, is not looked past.)
        let len =
            bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
        let len = len as usize;
        let after = if (1..=MAX_PAYLOAD).contains(&len) { len } else { 0 };
        let beyond = bytes.get(at + FRAME_HEADER + after..).unwrap_or_default();
        let damage = reason
            .filter(|_| beyond.iter().any(|&b| b != 0))
            .map(|reason| format!("{reason} at byte {at}"));
        return Ok(LogRead { entries, good: at as u64, damage });
    }
    Ok(LogRead { entries, good: at as u64, damage: None })
}

/// The generations present in `dir`: (snapshots, logs), each sorted ascending.
pub(crate) fn generations(dir: &Path) -> Result<(Vec<u64>, Vec<u64>), StoreError> {
    let io_err = |source| StoreError::Io { path: dir.to_owned(), source };
    let mut snapshots = Vec::new();
    let mut logs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let name = entry.map_err(io_err)?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(g) = name.strip_prefix("snapshot-").and_then(|g| g.parse().ok()) {
            snapshots.push(g);
        } else if let Some(g) = name.strip_prefix("log-").and_then(|g| g.parse().ok()) {
            logs.push(g);
        }
    }
    snapshots.sort_unstable();
    logs.sort_unstable();
    Ok((snapshots, logs))
}

pub(crate) fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot-{generation:020}"))
}

pub(crate) fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log-{generation:020}"))
}

/// Writes a snapshot atomically: temporary file, sync, rename, sync the directory.
/// Writes the snapshot of `generation`: `fill` writes its frames, a piece at a time (the store
/// writes one shard at a time, so a snapshot never sits whole in memory), to a temporary file
/// that is synced and then renamed.
pub(crate) fn write_snapshot(
    dir: &Path,
    generation: u64,
    fill: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> Result<(), StoreError> {
    let path = snapshot_path(dir, generation);
    let tmp = dir.join(format!("snapshot-{generation:020}.tmp"));
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| StoreError::Io { path: p, source }
    };
    let mut out = io::BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
    fill(&mut out).map_err(io_err(&tmp))?;
    let file = out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io { path: dir.to_owned(), source })
}

/// Removes snapshots and logs older than `generation`, and stray temporary files.
pub(crate) fn remove_older(dir: &Path, generation: u64) -> Result<(), StoreError> {
    let (snapshots, logs) = generations(dir)?;
    let old_snapshots =
        snapshots.into_iter().filter(|&g| g < generation).map(|g| snapshot_path(dir, g));
    let old_logs = logs.into_iter().filter(|&g| g < generation).map(|g| log_path(dir, g));
    for path in old_snapshots.chain(old_logs) {
        fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
    }
    // A snapshot still in its temporary file was being written when the process died (one
    // compaction runs at a time, and this generation's is already renamed): it is garbage.
    let io_err = |source| StoreError::Io { path: dir.to_owned(), source };
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let stray = path.file_name().and_then(|n| n.to_str()).is_some_and(|name| {
            name.strip_prefix("snapshot-")
                .and_then(|rest| rest.strip_suffix(".tmp"))
                .and_then(|g| g.parse::<u64>().ok())
                .is_some_and(|g| g < generation)
        });
        if stray {
            fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
        }
    }
    Ok(())
}

/// The append log of the current generation.
pub(crate) struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) generation: u64,
    pub(crate) path: PathBuf,
    file: Arc<File>,
    /// Bytes in this generation's file.
    pub(crate) len: u64,
    /// Bytes appended since the store was opened, across generations (see `crate::sync`).
    pub(crate) written: u64,
    /// Why, once a failed write could not be cut off or a flush failed: nothing more may be
    /// appended, to this log or to the next generation's.
    broken: Option<String>,
    /// Files of older generations that the sync thread has yet to flush (`crate::sync`).
    retired: Vec<Arc<File>>,
    /// This file's marks' nonce (the module's doc).
    nonce: [u8; NONCE_LEN],
    /// This file's bytes that a flush covered, and those its last mark said were.
    flushed: u64,
    marked: u64,
}

impl Log {
    /// Creates the log of `generation`: its first frame, a mark with a new nonce, is synced
    /// before this returns. Its bytes count as written (`switch_to` adds them to the count
    /// before it).
    pub(crate) fn create(dir: &Path, generation: u64) -> Result<Log, StoreError> {
        let path = log_path(dir, generation);
        let io_err = |source| StoreError::Io { path: path.clone(), source };
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| io_err(io::Error::other(e)))?;
        let mut first = Vec::with_capacity(MARK_FRAME);
        mark(&mut first, &nonce, 0);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(&first)?;
                f.sync_data()?;
                // Append mode: after a failed write is cut off below, the next write lands
                // right after the last good frame.
                drop(f);
                OpenOptions::new().append(true).open(&path)
            })
            .map_err(io_err)?;
        sync_dir(dir)?;
        let file = Arc::new(file);
        Ok(Log {
            dir: dir.to_owned(),
            generation,
            path,
            file,
            len: MARK_FRAME as u64,
            written: MARK_FRAME as u64,
            broken: None,
            retired: Vec::new(),
            nonce,
            // The first mark is synced; a later one says more.
            flushed: MARK_FRAME as u64,
            marked: MARK_FRAME as u64,
        })
    }

    /// Appends one frame, after a mark if a flush covered more of this file since the last
    /// one; when this returns `Ok`, the operating system has the bytes (a flush is the
    /// syncer's business, `crate::sync`).
    pub(crate) fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(io::Error::other(format!("the log is unusable since {why}")));
        }
        let with_mark;
        let bytes = if self.flushed > self.marked {
            let mut both = Vec::with_capacity(MARK_FRAME + frame.len());
            mark(&mut both, &self.nonce, self.flushed);
            both.extend_from_slice(frame);
            with_mark = both;
            &with_mark[..]
        } else {
            frame
        };
        match (&*self.file).write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.written += bytes.len() as u64;
                self.marked = self.flushed;
                Ok(())
            }
            Err(e) => {
                // A partial frame would read as damage once later frames follow it: cut it off.
                // If even that fails, the frame stays a torn tail only if nothing follows, so
                // the caller must stop using this log (the store refuses further puts).
                if let Err(cut) = self.file.set_len(self.len) {
                    self.broken = Some(format!("a failed write could not be cut off ({e}; {cut})"));
                }
                Err(e)
            }
        }
    }

    /// Appends a mark if a flush covered more of this file than the last one said (a closing
    /// store's, after its last flush); a failure changes nothing that was promised.
    pub(crate) fn mark_flushed(&mut self) {
        let _ = self.append(&[]);
    }

    /// A flush of this log's file (and the retired ones) covered everything written up to
    /// `position` (a count of [`Log::written`]); the next append's mark will say so.
    pub(crate) fn note_flushed(&mut self, position: u64) {
        let start = self.written - self.len;
        if position > start {
            self.flushed = self.flushed.max((position - start).min(self.len));
        }
    }

    /// The file, for a flush without the log's lock.
    pub(crate) fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Refuses every later append.
    pub(crate) fn break_off(&mut self, why: String) {
        self.broken.get_or_insert(why);
    }

    /// Puts `next` (a new, empty log of the next generation) in this one's place and returns
    /// the old one. The count of bytes written and a refusal to append carry over; with
    /// `flush_later`, the old file joins the files the sync thread flushes next.
    pub(crate) fn switch_to(&mut self, mut next: Log, flush_later: bool) -> Log {
        next.written = self.written + next.len;
        next.broken = self.broken.clone();
        next.retired = std::mem::take(&mut self.retired);
        if flush_later {
            next.retired.push(Arc::clone(&self.file));
        }
        std::mem::replace(self, next)
    }

    /// The retired files not flushed yet, for a flush.
    pub(crate) fn take_retired(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.retired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_record_whose_key_a_newer_rule_refuses_is_skipped_not_fatal() {
        use dkvs_account::{KeyType, Keypair};
        let owner = Keypair::generate(KeyType::Ed25519);
        let ok = dkvs_record::Draft::new(
            Key::new("/names/abXYZc").expect("key"),
            b"v".to_vec(),
            1,
            60_000,
        )
        .sign(&owner)
        .expect("signed");
        let mut old = ok.encode();
        // The same record as an older version stored it: a zero-width space in its key (same
        // length, so the protobuf stays well formed).
        let at = old.windows(3).position(|w| w == b"XYZ").expect("key bytes");
        old[at..at + 3].copy_from_slice("\u{200B}".as_bytes());
        skipped_then_kept(&old, &ok);
    }

    /// A log of `old` (a record whose key a newer rule refuses), then `ok`, reads as `ok`
    /// alone, to its end.
    fn skipped_then_kept(old: &[u8], ok: &Record) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log-00000000000000000001");
        let mut bytes = Vec::new();
        frame(&mut bytes, KIND_RECORD, old);
        frame(&mut bytes, KIND_RECORD, &ok.encode());
        std::fs::write(&path, &bytes).expect("write");
        let read = read_log(&path).expect("reads");
        assert_eq!(read.entries.len(), 1, "the refused key is skipped, the next record kept");
        assert_eq!(read.good, bytes.len() as u64);
    }

    #[test]
    fn a_stored_record_under_an_account_id_written_otherwise_is_skipped_not_fatal() {
        use bech32::primitives::iter::{ByteIterExt as _, Fe32IterExt as _};
        // A record stored before ids had to be canonical: its key's first segment is the
        // owner's id with the bits past the key's last byte set (the same length, so the
        // protobuf stays well formed).
        let owner = dkvs_account::Keypair::generate(KeyType::Ed25519);
        let id = owner.account_id().to_string();
        let ok = dkvs_record::Draft::new(
            Key::scoped(&owner.account_id(), "x").expect("key"),
            b"v".to_vec(),
            1,
            60_000,
        )
        .sign(&owner)
        .expect("signed");
        let mut fes: Vec<bech32::Fe32> =
            owner.public().as_bytes().iter().copied().bytes_to_fes().collect();
        let last = fes.len() - 1;
        fes[last] = bech32::Fe32::try_from(fes[last].to_u8() | 0b1111).expect("5 bits");
        let hrp = bech32::Hrp::parse("ed").expect("hrp");
        let other: String =
            fes.into_iter().with_checksum::<bech32::Bech32m>(&hrp).chars().collect();
        assert_eq!(other.len(), id.len());
        let mut old = ok.encode();
        let at = old.windows(id.len()).position(|w| w == id.as_bytes()).expect("key bytes");
        old[at..at + id.len()].copy_from_slice(other.as_bytes());
        skipped_then_kept(&old, &ok);
    }

    // The next two: logs without a first mark (written before marks) keep the older rule.
    #[test]
    fn a_length_no_payload_has_is_damage_though_it_runs_past_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log-00000000000000000001");
        let mut bytes = Vec::new();
        for i in 0..3u8 {
            frame(&mut bytes, KIND_GONE, &[i; 40]);
        }
        // Bit 15 of the first frame's length flipped: 32 KiB, past the end of the file and
        // longer than any payload, so not a torn tail: the frames after it were acknowledged.
        bytes[1] ^= 0x80;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(read_log(&path), Err(StoreError::Corrupt { offset: 0, .. })));
    }

    #[test]
    fn damage_followed_by_whole_frames_is_corruption_even_before_zeros() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log-00000000000000000001");
        let mut bytes = Vec::new();
        for i in 0..3u8 {
            frame(&mut bytes, KIND_GONE, &[i; 40]);
        }
        // The first frame's length flipped to reach into a zero tail: the frames after it
        // were acknowledged, so this is damage, not a torn tail.
        bytes[1] ^= 0x01;
        bytes.extend_from_slice(&[0u8; 1024]);
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(read_log(&path), Err(StoreError::Corrupt { offset: 0, .. })));
    }

    /// A log with marks of `nonce`: its first mark, then `frames` (a mark where `None`, saying
    /// every byte before it was flushed); the offsets where each frame starts.
    fn marked_log(nonce: &[u8; NONCE_LEN], frames: &[Option<u8>]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        mark(&mut bytes, nonce, 0);
        let mut starts = Vec::new();
        for frame_of in frames {
            starts.push(bytes.len());
            match frame_of {
                Some(i) => {
                    let owner = dkvs_account::Keypair::generate(KeyType::Ed25519);
                    let owner = owner.public();
                    let key = Key::new(format!("/names/n{i}")).expect("key");
                    frame(&mut bytes, KIND_GONE, &gone_body(&key, 1, 0, owner));
                }
                None => {
                    let flushed = bytes.len() as u64;
                    mark(&mut bytes, nonce, flushed);
                }
            }
        }
        (bytes, starts)
    }

    fn read_bytes_as_log(bytes: &[u8]) -> Result<LogRead, StoreError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log-00000000000000000001");
        std::fs::write(&path, bytes).expect("write");
        read_log(&path)
    }

    #[test]
    fn damage_a_flush_covered_is_corruption_damage_after_the_last_flush_is_a_tear() {
        let nonce = [7u8; NONCE_LEN];
        // Two frames, a flush, a third and a fourth that no flush covered.
        let (bytes, at) = marked_log(&nonce, &[Some(1), Some(2), None, Some(3), Some(4)]);

        // A flushed frame damaged (its checksum, then its length past the end of the file):
        // the mark after it says a put was acknowledged past it.
        for (byte, flip) in [(at[1] + 20, 0xff), (at[1] + 1, 0x20)] {
            let mut damaged = bytes.clone();
            damaged[byte] ^= flip;
            let read = read_bytes_as_log(&damaged);
            let Err(StoreError::Corrupt { offset, reason, .. }) = read else {
                panic!("damage a flush covered must be corruption");
            };
            assert_eq!(offset, at[1] as u64);
            assert!(reason.contains("a flush had covered"), "{reason}");
        }

        // The third frame's page never reached the disk, the fourth's did (pages are written
        // in any order): a power cut's tear, and the read stops before it.
        let mut torn = bytes.clone();
        torn[at[3]..at[4]].fill(0);
        let read = read_bytes_as_log(&torn).expect("a tear after the last flush is no damage");
        assert_eq!((read.entries.len(), read.good), (2, at[3] as u64));
        assert!(read.damage.is_some(), "whole frames were dropped: a copy is kept");

        // The same with only zeros after the tear, or a last frame cut off: nothing to keep.
        let read = read_bytes_as_log(&torn[..at[4]]).expect("zeros");
        assert_eq!((read.entries.len(), read.good, read.damage), (2, at[3] as u64, None));
        let read = read_bytes_as_log(&bytes[..bytes.len() - 5]).expect("cut off");
        assert_eq!((read.entries.len(), read.good, read.damage), (3, at[4] as u64, None));
    }

    #[test]
    fn a_mark_says_the_bytes_before_it_were_flushed_not_the_frame_at_its_count() {
        // Group commit: the second frame was appended while a flush covering only the first
        // ran; the mark before the third says so. A power cut that lost the second frame's
        // page is a tear, not damage a flush covered.
        let nonce = [7u8; NONCE_LEN];
        let (mut bytes, at) = marked_log(&nonce, &[Some(1), Some(2)]);
        mark(&mut bytes, &nonce, at[1] as u64);
        let (more, _) = marked_log(&nonce, &[Some(3)]);
        bytes.extend_from_slice(&more[MARK_FRAME..]);
        bytes[at[1]..at[1] + FRAME_HEADER].fill(0);
        let read =
            read_bytes_as_log(&bytes).expect("the frame at the mark's count was not flushed");
        assert_eq!((read.entries.len(), read.good), (1, at[1] as u64));
        // One byte less, and the mark covers it.
        let (mut bytes, at) = marked_log(&nonce, &[Some(1), Some(2)]);
        mark(&mut bytes, &nonce, at[1] as u64);
        bytes[at[1] - 1] ^= 0xff;
        assert!(matches!(read_bytes_as_log(&bytes), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_mark_with_another_nonce_proves_nothing() {
        // A value may hold marks of this format, with any nonce but the log's (it never leaves
        // the disk): after damage, they do not make it corruption.
        let (mut bytes, at) = marked_log(&[7u8; NONCE_LEN], &[Some(1), Some(2)]);
        mark(&mut bytes, &[0u8; NONCE_LEN], 1 << 20);
        mark(&mut bytes, &[8u8; NONCE_LEN], 1 << 20);
        bytes[at[1] + 20] ^= 0xff;
        let read = read_bytes_as_log(&bytes).expect("forged marks are not the log's");
        assert_eq!((read.entries.len(), read.good), (1, at[1] as u64));
    }
}
