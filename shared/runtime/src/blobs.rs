//! Blobs: bytes travel inline below a threshold and through the object store above it.
//! Stored blobs are content-addressed (key = sha256), so storing twice is harmless.

use async_nats::jetstream::object_store::ObjectStore;
use push0_protocol::{Blob, ObjectRef};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::bus::{Bus, RuntimeError};

/// Default inline threshold: well under the server's message limit, large enough that typical
/// proofs (100-200 KB) ride in the message itself.
pub const DEFAULT_INLINE_THRESHOLD: usize = 256 * 1024;

/// Largest buffer reserved up front for a stored blob; bigger ones grow as they are read.
const PREALLOCATE_MAX: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct BlobStore {
    store: ObjectStore,
    bucket: String,
    threshold: usize,
}

impl BlobStore {
    pub async fn open(bus: &Bus, threshold: usize) -> Result<Self, RuntimeError> {
        let bucket = bus.subjects.object_store();
        let what = format!("open object store {bucket}");
        let store =
            crate::bus::through_election(&what, || bus.js.get_object_store(&bucket)).await?;
        Ok(Self {
            store,
            bucket,
            threshold,
        })
    }

    pub async fn put(&self, bytes: Vec<u8>) -> Result<Blob, RuntimeError> {
        if bytes.len() <= self.threshold {
            return Ok(Blob::Inline(bytes));
        }
        let sha256 = Sha256::digest(&bytes).to_vec();
        let key = hex::encode(&sha256);
        if self.store.info(&key).await.is_err() {
            self.store
                .put(key.as_str(), &mut bytes.as_slice())
                .await
                .map_err(|e| RuntimeError::Blob {
                    key: key.clone(),
                    detail: e.to_string(),
                })?;
        }
        Ok(Blob::Stored(ObjectRef {
            bucket: self.bucket.clone(),
            key,
            size: bytes.len() as u64,
            sha256,
        }))
    }

    /// The blob's bytes; a stored blob is checked against its size and digest.
    pub async fn get(&self, blob: &Blob) -> Result<Vec<u8>, RuntimeError> {
        let r = match blob {
            Blob::Inline(bytes) => return Ok(bytes.clone()),
            Blob::Stored(r) => r,
        };
        let err = |detail: String| RuntimeError::Blob {
            key: r.key.clone(),
            detail,
        };
        let mut object = self
            .store
            .get(&r.key)
            .await
            .map_err(|e| err(e.to_string()))?;
        // The declared size comes off the bus: reserve no more than a message can carry.
        let mut bytes = Vec::with_capacity((r.size as usize).min(PREALLOCATE_MAX));
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| err(e.to_string()))?;
        if bytes.len() as u64 != r.size || Sha256::digest(&bytes).as_slice() != r.sha256 {
            return Err(err("content does not match its reference".into()));
        }
        Ok(bytes)
    }
}
