//! Uploaded files on disk: `<dir>/<owner>/<id>/data` and beside it `meta`
//! (content type, file name, upload time). A PUT writes `part` and renames
//! it to `data` once complete, so a file is either whole or absent. Blocking
//! file-system walks run on tokio's blocking pool.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `meta` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub content_type: String,
    pub filename: String,
    /// Unix seconds.
    pub uploaded: u64,
}

impl Meta {
    pub fn encode(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.content_type, self.filename, self.uploaded
        )
    }

    pub fn decode(s: &str) -> Option<Meta> {
        let mut lines = s.lines();
        Some(Meta {
            content_type: lines.next()?.to_string(),
            filename: lines.next()?.to_string(),
            uploaded: lines.next()?.parse().ok()?,
        })
    }
}

pub fn slot_dir(root: &Path, owner: &str, id: &str) -> PathBuf {
    root.join(owner).join(id)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn expired(meta: &Meta, retention: Option<Duration>, now: u64) -> bool {
    retention.is_some_and(|r| meta.uploaded.saturating_add(r.as_secs()) <= now)
}

/// Reads a slot's `meta`, `None` when there is no complete, live file.
pub fn live_meta(dir: &Path, retention: Option<Duration>, now: u64) -> Option<Meta> {
    let meta = Meta::decode(&std::fs::read_to_string(dir.join("meta")).ok()?)?;
    (!expired(&meta, retention, now) && dir.join("data").is_file()).then_some(meta)
}

/// Bytes of one owner's live files (what the quota counts).
pub fn used_bytes(root: &Path, owner: &str, retention: Option<Duration>, now: u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(root.join(owner)) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| live_meta(&e.path(), retention, now).is_some())
        .filter_map(|e| e.path().join("data").metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Removes expired files, and unfinished uploads older than `stale`
/// (their slot has expired). Returns how many slots were removed.
pub fn cleanup(
    root: &Path,
    retention: Option<Duration>,
    stale: Duration,
    now: u64,
) -> io::Result<usize> {
    let mut removed = 0;
    let owners = match std::fs::read_dir(root) {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for owner in owners.flatten() {
        let Ok(slots) = std::fs::read_dir(owner.path()) else {
            continue;
        };
        for slot in slots.flatten() {
            let dir = slot.path();
            let doomed = match Meta::decode(
                &std::fs::read_to_string(dir.join("meta")).unwrap_or_default(),
            ) {
                Some(meta) => expired(&meta, retention, now),
                // No meta: an upload in progress or abandoned; judged by age.
                None => dir
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > stale),
            };
            if doomed && std::fs::remove_dir_all(&dir).is_ok() {
                removed += 1;
            }
        }
        // Empty owner directories go too (fails harmlessly when not empty).
        let _ = std::fs::remove_dir(owner.path());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, owner: &str, id: &str, bytes: usize, uploaded: u64) {
        let d = slot_dir(root, owner, id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data"), vec![0u8; bytes]).unwrap();
        let meta = Meta {
            content_type: "image/png".into(),
            filename: "a.png".into(),
            uploaded,
        };
        std::fs::write(d.join("meta"), meta.encode()).unwrap();
    }

    #[test]
    fn quota_counts_live_files_and_cleanup_removes_expired_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let day = Duration::from_secs(86_400);
        let now = 10 * 86_400;
        put(root, "o1", "old", 100, now - 2 * 86_400);
        put(root, "o1", "new", 30, now - 10);
        put(root, "o2", "other", 7, now);
        assert_eq!(used_bytes(root, "o1", Some(day), now), 30);
        assert_eq!(used_bytes(root, "o1", None, now), 130);
        assert_eq!(used_bytes(root, "nobody", Some(day), now), 0);
        assert_eq!(cleanup(root, Some(day), day, now).unwrap(), 1);
        assert!(!slot_dir(root, "o1", "old").exists());
        assert!(slot_dir(root, "o1", "new").join("data").exists());
        assert_eq!(
            live_meta(&slot_dir(root, "o2", "other"), Some(day), now)
                .unwrap()
                .filename,
            "a.png"
        );
    }
}
