//! One server per data directory: `serve` holds an exclusive lock on
//! `<data_dir>/waxwing.lock` for its whole life, so that a second `serve`
//! on the same data refuses to start and `restore` can tell the server is
//! running. The kernel drops the lock when the process ends, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join("waxwing.lock")
}

/// Takes the lock; fails if another process holds it. Keep the file open.
pub fn acquire(data_dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = lock_path(data_dir);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => bail!(
            "another waxwing process is running on {} (it holds {})",
            data_dir.display(),
            path.display()
        ),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}
