//! The small filesystem interface the log writes through, so tests can inject faults
//! (a failing `sync_data`, a short write) without touching the real disk's behaviour.
//! Reads use `std::fs` directly: the log never trusts what it reads without a checksum.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where segment files are written.
pub trait Storage: Send + Sync + 'static {
    /// Open a file for writing, creating it when missing; existing bytes are kept.
    fn open_writable(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Make a directory's entries (new or removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A file the log writes: positional writes, `sync_data`, truncation.
pub trait WritableFile: Send {
    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// The operating system's filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsStorage;

struct OsFile(File);

impl Storage for OsStorage {
    fn open_writable(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl WritableFile for OsFile {
    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}
