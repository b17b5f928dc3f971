//! Blobs: bytes travel inline below a threshold and through an object store above it.
//! Stored blobs are content-addressed (key = sha256), so storing twice is harmless.
//!
//! Services store in the shared store (block payloads, dead letters); a team's gateways in
//! their team's own ([`BlobStore::open_team`]). A reference names its store, and a reader
//! opens the store it names, if it is one of push0's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::object_store::ObjectStore;
use push0_protocol::{Blob, ObjectRef, Subjects};
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
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    /// Where [`BlobStore::put`] stores.
    store: ObjectStore,
    bucket: String,
    threshold: usize,
    /// Stores opened to read from, by bucket: the shared one and teams' (bounded by the teams
    /// whose references this process has read; names off the bus are checked first).
    opened: Arc<Mutex<HashMap<String, ObjectStore>>>,
}

impl BlobStore {
    /// Stores in the shared object store.
    pub async fn open(bus: &Bus, threshold: usize) -> Result<Self, RuntimeError> {
        Self::open_bucket(bus, bus.subjects.object_store(), threshold).await
    }

    /// Stores in `team`'s own object store. Where the store has not been created (a cluster
    /// set up before teams had their own), in the shared one, saying so: that works where
    /// the server confines nobody, and is refused where it confines teams.
    pub async fn open_team(bus: &Bus, team: &str, threshold: usize) -> Result<Self, RuntimeError> {
        let bucket = bus.subjects.team_object_store(team);
        match crate::topology::team_store_exists(bus, team).await {
            Some(false) => {
                tracing::warn!(
                    team,
                    store = %bucket,
                    fix = "push0 team add, or push0 topology apply --teams",
                    "the team's object store is missing: proofs above the inline size go to the shared store, which a server that confines teams refuses"
                );
                Self::open(bus, threshold).await
            }
            Some(true) | None => Self::open_bucket(bus, bucket, threshold).await,
        }
    }

    async fn open_bucket(
        bus: &Bus,
        bucket: String,
        threshold: usize,
    ) -> Result<Self, RuntimeError> {
        let what = format!("open object store {bucket}");
        let store =
            crate::bus::through_election(&what, || bus.js.get_object_store(&bucket)).await?;
        let opened = HashMap::from([(bucket.clone(), store.clone())]);
        Ok(Self {
            js: bus.js.clone(),
            subjects: bus.subjects.clone(),
            store,
            bucket,
            threshold,
            opened: Arc::new(Mutex::new(opened)),
        })
    }

    /// The store called `bucket`, opened on first use.
    async fn reader(&self, bucket: &str) -> Result<ObjectStore, RuntimeError> {
        if let Some(store) = self.opened.lock().expect("blob stores").get(bucket) {
            return Ok(store.clone());
        }
        if !self.subjects.is_object_store(bucket) {
            return Err(RuntimeError::Blob {
                key: bucket.to_string(),
                detail: "the reference names no object store of push0's".into(),
            });
        }
        let store = self
            .js
            .get_object_store(bucket)
            .await
            .map_err(|e| RuntimeError::nats(format!("open object store {bucket}"), e))?;
        self.opened
            .lock()
            .expect("blob stores")
            .insert(bucket.to_string(), store.clone());
        Ok(store)
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
            .reader(&r.bucket)
            .await?
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
