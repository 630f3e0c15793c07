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
    open(path, std::fs::OpenOptions::new().write(true).truncate(true))?.write_all(data)
}

/// Opens `path` with `options`, creating it (mode 0600 on Unix) if it
/// does not exist; an existing file keeps its mode.
pub fn open(path: &Path, options: &mut std::fs::OpenOptions) -> io::Result<std::fs::File> {
    options.create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}
