//! Files only the server's user may read: generated keys and secrets
//! under `data_dir`.

use std::io::{self, Write};
use std::path::Path;

/// Writes `data` to `path` (replacing it), mode 0600 on Unix, creating
/// its directory first.
pub(crate) fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(data)
}
