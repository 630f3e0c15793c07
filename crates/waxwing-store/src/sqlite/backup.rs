//! Online backup and offline restore of the SQLite database.
//!
//! A backup is `VACUUM INTO`: it reads the database inside one read
//! transaction, so the copy is the consistent state of one instant even
//! while the server keeps writing (WAL lets the writer go on), and it comes
//! out compacted, without a WAL of its own. The copy is written beside
//! the destination under a private temporary directory (it holds password
//! hashes: mode 0600 from the start, never world-readable) and renamed into
//! place, so a crash leaves either the old file or the whole new one.
//!
//! A restore replaces the database file while the server is stopped; the
//! caller checks that. The file it replaces is kept beside it.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};

use super::{BUSY_TIMEOUT, db, is_memory_url};
use crate::StoreError;

/// What [`backup`] and [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The file the restored database replaced, kept for the operator.
    pub previous: Option<PathBuf>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// The database file a SQLite URL names; an in-memory database has none.
pub fn database_path(url: &str) -> Result<PathBuf, StoreError> {
    if !url.starts_with("sqlite:") {
        return Err(StoreError::Backend(
            "backups are made of SQLite databases (storage.database = \"sqlite://…\")".into(),
        ));
    }
    if is_memory_url(url) {
        return Err(StoreError::Backend(
            "the database is in memory: there is nothing to back up or restore".into(),
        ));
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Backend(format!("bad SQLite URL: {e}")))?;
    Ok(options.get_filename().to_path_buf())
}

async fn open(path: &Path, read_only: bool) -> Result<SqliteConnection, StoreError> {
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(read_only)
        .create_if_missing(false)
        .busy_timeout(BUSY_TIMEOUT)
        .connect()
        .await
        .map_err(db)
}

/// `PRAGMA integrity_check` and the migration table: a file that passes is
/// a Waxwing database SQLite can read entirely.
async fn check(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let rows = sqlx::query("PRAGMA integrity_check")
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let verdict: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    if verdict != ["ok"] {
        return Err(StoreError::Corrupt(format!(
            "integrity check failed: {}",
            verdict.join("; ")
        )));
    }
    let migrations: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    if migrations == 0 {
        return Err(StoreError::Corrupt(
            "not a Waxwing database (no migration table)".into(),
        ));
    }
    Ok(())
}

/// A private directory beside `dest` for the file being written.
fn staging_dir(dest: &Path) -> Result<tempfile::TempDir, StoreError> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile creates the directory with mode 0700.
    tempfile::Builder::new()
        .prefix(".waxwing-backup-")
        .tempdir_in(dir)
        .map_err(|e| io("cannot create a temporary directory in", dir, e))
}

#[cfg(unix)]
fn private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("cannot restrict", path, e))
}

#[cfg(not(unix))]
fn private(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Writes a consistent copy of the database at `url` to `dest`, while the
/// server may be running and writing. Replaces `dest` atomically.
pub async fn backup(url: &str, dest: &Path) -> Result<BackupReport, StoreError> {
    let source = database_path(url)?;
    if !source.exists() {
        return Err(StoreError::Backend(format!(
            "{} does not exist",
            source.display()
        )));
    }
    let staging = staging_dir(dest)?;
    let partial = staging.path().join("backup.db");
    let mut conn = open(&source, true).await?;
    sqlx::query("VACUUM INTO $1")
        .bind(partial.to_string_lossy().as_ref())
        .execute(&mut conn)
        .await
        .map_err(db)?;
    conn.close().await.map_err(db)?;
    private(&partial)?;
    let mut copy = open(&partial, true).await?;
    check(&mut copy).await?;
    copy.close().await.map_err(db)?;
    // The data must be on disk before the name points at it.
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot sync", &partial, e))?;
    std::fs::rename(&partial, dest).map_err(|e| io("cannot move the backup to", dest, e))?;
    let bytes = std::fs::metadata(dest)
        .map_err(|e| io("cannot read", dest, e))?
        .len();
    Ok(BackupReport {
        path: dest.to_path_buf(),
        bytes,
        previous: None,
    })
}

/// Replaces the database at `url` with the backup `src`. The server must
/// not be running (the caller checks). The backup is verified first; the
/// database it replaces (with its WAL, if any) is kept as
/// `<name>.before-restore`.
pub async fn restore(url: &str, src: &Path) -> Result<BackupReport, StoreError> {
    let target = database_path(url)?;
    let mut conn = open(src, true).await?;
    check(&mut conn).await?;
    conn.close().await.map_err(db)?;

    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    }
    let staging = staging_dir(&target)?;
    let incoming = staging.path().join("restore.db");
    std::fs::copy(src, &incoming).map_err(|e| io("cannot copy", src, e))?;
    private(&incoming)?;
    // The copy is opened once read-write so that it is in WAL mode like
    // the server's database, and synced before it takes the name.
    let mut c = SqliteConnectOptions::new()
        .filename(&incoming)
        .journal_mode(SqliteJournalMode::Wal)
        .connect()
        .await
        .map_err(db)?;
    check(&mut c).await?;
    c.close().await.map_err(db)?;
    std::fs::File::open(&incoming)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot sync", &incoming, e))?;

    let mut previous = None;
    if target.exists() {
        let kept = suffixed(&target, ".before-restore");
        std::fs::rename(&target, &kept).map_err(|e| io("cannot move aside", &target, e))?;
        previous = Some(kept);
    }
    // The old database's WAL and shared-memory index belong to it: left
    // beside the restored file, SQLite would replay them into it.
    for ext in ["-wal", "-shm"] {
        let side = suffixed(&target, ext);
        if side.exists() {
            let kept = suffixed(&target, &format!(".before-restore{ext}"));
            std::fs::rename(&side, &kept).map_err(|e| io("cannot move aside", &side, e))?;
        }
    }
    std::fs::rename(&incoming, &target).map_err(|e| io("cannot move into place", &target, e))?;
    let bytes = std::fs::metadata(&target)
        .map_err(|e| io("cannot read", &target, e))?
        .len();
    Ok(BackupReport {
        path: target,
        bytes,
        previous,
    })
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::{Durability, connect};

    #[tokio::test]
    async fn memory_and_other_urls_are_refused() {
        assert!(database_path("sqlite::memory:").is_err());
        assert!(database_path("postgres://x").is_err());
        assert_eq!(
            database_path("sqlite://data/w.db").unwrap(),
            PathBuf::from("data/w.db")
        );
    }

    #[tokio::test]
    async fn restore_refuses_a_file_that_is_not_a_waxwing_database() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"not a database at all, just some bytes").unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        assert!(restore(&url, &junk).await.is_err());
        assert!(!dir.path().join("w.db").exists());
    }

    #[tokio::test]
    async fn backup_then_restore_round_trips_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let s = connect(&url, Durability::ProcessCrash).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&s.pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&s.pool)
            .await
            .unwrap();
        let dest = dir.path().join("b.db");
        let r = backup(&url, &dest).await.unwrap();
        assert!(r.bytes > 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&s.pool)
            .await
            .unwrap();
        s.pool.close().await;
        let r = restore(&url, &dest).await.unwrap();
        assert!(r.previous.as_ref().unwrap().exists());
        let s = connect(&url, Durability::ProcessCrash).await.unwrap();
        let xs: Vec<i64> = sqlx::query_scalar("SELECT x FROM t")
            .fetch_all(&s.pool)
            .await
            .unwrap();
        assert_eq!(xs, [1]);
    }
}
