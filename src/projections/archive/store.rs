//! Where archive objects live: a local folder (the embedded default) or S3.
//!
//! Keys are `/`-separated paths relative to the archive root. A `put` replaces the
//! object whole or not at all (local: write a temporary file, sync, rename, sync the
//! directory; S3: a PUT or a completed multipart upload is atomic).

use std::path::{Path, PathBuf};

/// Errors of a store, with the key or path involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {key}: {message}")]
    Remote {
        op: &'static str,
        key: String,
        message: String,
    },
}

/// An archive store.
#[derive(Clone, Debug)]
pub enum Store {
    Local(LocalStore),
    S3(super::s3::S3Store),
}

impl Store {
    pub fn local(root: impl Into<PathBuf>) -> Store {
        Store::Local(LocalStore { root: root.into() })
    }

    /// Human-readable location, for logs and the lake's reader examples (docs/history.md).
    pub fn describe(&self) -> String {
        match self {
            Store::Local(l) => l.root.display().to_string(),
            Store::S3(s) => s.describe(),
        }
    }

    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Store::Local(l) => {
                let l = l.clone();
                let key = key.to_owned();
                tokio::task::spawn_blocking(move || l.put(&key, &body))
                    .await
                    .expect("the store task does not panic")
            }
            Store::S3(s) => s.put(key, body).await,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Local(l) => l.get(key),
            Store::S3(s) => s.get(key).await,
        }
    }

    /// Every key under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Local(l) => {
                let l = l.clone();
                let prefix = prefix.to_owned();
                tokio::task::spawn_blocking(move || l.list(&prefix))
                    .await
                    .expect("the store task does not panic")
            }
            Store::S3(s) => s.list(prefix).await,
        }
    }

    /// Local folders also get a `current` symlink to the live generation, so readers
    /// can use one fixed path; object stores rely on the `_current` object alone.
    pub(super) fn link_current(&self, gen: &str) -> Result<(), StoreError> {
        match self {
            Store::Local(l) => l.link_current(gen),
            Store::S3(_) => Ok(()),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Local(l) => l.delete(key),
            Store::S3(s) => s.delete(key).await,
        }
    }
}

/// A folder on the local filesystem.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io<'a>(op: &'static str, key: &'a str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            op,
            key: key.to_owned(),
            source,
        }
    }

    fn put(&self, key: &str, body: &[u8]) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.path(key);
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(Self::io("create directory for", key))?;
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let mut f = std::fs::File::create(&tmp).map_err(Self::io("create", key))?;
        f.write_all(body).map_err(Self::io("write", key))?;
        f.sync_data().map_err(Self::io("sync", key))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(Self::io("rename into place", key))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io("sync directory of", key))?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(self.path(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io("read", key)(e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let start = self.path(prefix);
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io("list", prefix)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(Self::io("list", prefix))?;
                let p = entry.path();
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue;
                }
                if entry
                    .file_type()
                    .map_err(Self::io("list", prefix))?
                    .is_dir()
                {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Point the `current` symlink at a generation (replace it atomically).
    pub(super) fn link_current(&self, gen: &str) -> Result<(), StoreError> {
        let tmp = self
            .root
            .join(format!(".current.{}.tmp", uuid::Uuid::new_v4().simple()));
        std::os::unix::fs::symlink(gen, &tmp).map_err(Self::io("link", "current"))?;
        std::fs::rename(&tmp, self.root.join("current")).map_err(Self::io("link", "current"))?;
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        match std::fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io("delete", key)(e)),
        }
    }
}
