//! On-disk cache of serialized circuit data, shared by concurrent processes.
//!
//! Files live in `<dir>/<CACHE_DIR_NAME>/<name>`. Each starts with a header naming the full
//! [`CACHE_KEY`] and the payload length; a file whose header does not match (another version,
//! a truncated write) is ignored and rebuilt. Writes go to a unique temporary file in the same
//! directory and are renamed into place, so a reader never sees a partial file and concurrent
//! writers of the same (deterministic) content simply race to an identical result.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bump when a circuit, the statement or the serialized layout changes.
pub const CIRCUIT_VERSION: u32 = 1;

/// Everything the cached bytes depend on.
pub const CACHE_KEY: &str = concat!(
    "push0-plonky2/",
    env!("CARGO_PKG_VERSION"),
    " circuits=v1 plonky2=1.1.0 config=standard_recursion C=PoseidonGoldilocks D=2",
    " chunk=4096 agg=2to1+single-flag"
);

const MAGIC: &[u8; 4] = b"P0PC";

/// Environment variable naming the cache directory (`off` disables the cache).
pub const CACHE_ENV: &str = "PUSH0_PLONKY2_CACHE";

#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// `$PUSH0_PLONKY2_CACHE` (`off`, `none`, `0` or empty: no cache), else
    /// `$XDG_CACHE_HOME/push0-plonky2`, else `/tmp/push0-plonky2-cache`.
    pub fn from_env() -> Option<DiskCache> {
        match std::env::var(CACHE_ENV) {
            Ok(v) => {
                let t = v.trim();
                if t.is_empty() || ["off", "none", "0", "false"].contains(&t) {
                    None
                } else {
                    Some(DiskCache::new(PathBuf::from(t)))
                }
            }
            Err(_) => {
                let base = match std::env::var("XDG_CACHE_HOME") {
                    Ok(x) if !x.trim().is_empty() => PathBuf::from(x).join("push0-plonky2"),
                    _ => PathBuf::from("/tmp/push0-plonky2-cache"),
                };
                Some(DiskCache::new(base))
            }
        }
    }

    /// A cache rooted at `base` (the versioned sub-directory is added here).
    pub fn new(base: PathBuf) -> DiskCache {
        DiskCache {
            dir: base.join(format!(
                "v{CIRCUIT_VERSION}-{:016x}",
                fnv1a(CACHE_KEY.as_bytes())
            )),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The payload stored under `name`, if present and written by this version.
    pub fn load(&self, name: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.dir.join(name)).ok()?;
        let key = CACHE_KEY.as_bytes();
        if bytes.len() < 8 || &bytes[..4] != MAGIC {
            return None;
        }
        let key_len = u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize;
        if key_len != key.len() || bytes.get(8..8 + key_len)? != key {
            return None;
        }
        let len_at = 8 + key_len;
        let len = u64::from_le_bytes(bytes.get(len_at..len_at + 8)?.try_into().ok()?) as usize;
        let payload = bytes.get(len_at + 8..)?;
        if payload.len() != len {
            return None;
        }
        Some(payload.to_vec())
    }

    /// Stores `payload` under `name` atomically (temporary file + rename).
    pub fn store(&self, name: &str, payload: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = self
            .dir
            .join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            let key = CACHE_KEY.as_bytes();
            f.write_all(MAGIC)?;
            f.write_all(&(key.len() as u32).to_le_bytes())?;
            f.write_all(key)?;
            f.write_all(&(payload.len() as u64).to_le_bytes())?;
            f.write_all(payload)?;
            std::fs::rename(&tmp, self.dir.join(name))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// 64-bit FNV-1a, only to name the versioned directory.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_load_round_trip_and_rejects_garbage() {
        let base =
            std::env::temp_dir().join(format!("push0-plonky2-cache-test-{}", std::process::id()));
        let c = DiskCache::new(base.clone());
        assert!(c.load("x").is_none());
        c.store("x", b"hello").unwrap();
        assert_eq!(c.load("x").unwrap(), b"hello");
        std::fs::write(c.dir().join("y"), b"P0PC garbage").unwrap();
        assert!(c.load("y").is_none());
        // A truncated file is ignored.
        let full = std::fs::read(c.dir().join("x")).unwrap();
        std::fs::write(c.dir().join("z"), &full[..full.len() - 1]).unwrap();
        assert!(c.load("z").is_none());
        let _ = std::fs::remove_dir_all(base);
    }
}
