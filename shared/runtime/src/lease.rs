//! One active instance of a singleton role (scheduler, aggregator) with hot standbys: the
//! active one holds a key in the `leases` bucket, whose entries expire after `LEASE_TTL`
//! unless renewed by compare-and-set; a standby takes the key once it is gone. Every decision
//! the roles make is in KV with compare-and-set and every handler is idempotent, so the short
//! overlap possible when a paused holder wakes up after losing its lease (NATS has no
//! fencing: a lapsed holder can still ack) changes nothing.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use push0_protocol::topology::LEASE_TTL;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, RuntimeError};

/// Consecutive NATS failures of the active work after which `while_leader` gives up.
const NATS_FAILURES_BEFORE_EXIT: u32 = 5;
/// An active run this long resets the failure count.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How often the holder renews, and how often a standby tries to take the lease.
const RENEW_EVERY: Duration = Duration::from_millis(LEASE_TTL.as_millis() as u64 / 3);

/// This process's name in a lease: the role, host and pid.
pub fn holder_name(role: &str) -> String {
    format!("{role}@{}/{}", crate::host_name("host"), std::process::id())
}

/// Runs `work` while this process holds the lease of `role`, as often as it wins it again,
/// until `shutdown`. `work` gets a token that is cancelled when the lease is lost (or on
/// shutdown) and must then return; it starts over from durable state on the next win. Work
/// that fails on a NATS error hands the lease back and stands by (a node loss is no reason to
/// exit); `NATS_FAILURES_BEFORE_EXIT` such failures in a row, with no run lasting a minute in
/// between, end it with the error, so a permanent refusal still stops the process.
pub async fn while_leader<F, Fut>(
    bus: &Bus,
    role: &str,
    shutdown: CancellationToken,
    mut work: F,
) -> Result<(), RuntimeError>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), RuntimeError>>,
{
    let kv = bus.kv(&bus.subjects.bucket_leases()).await?;
    let holder = holder_name(role);
    let mut waiting_logged = false;
    let mut failures = 0;
    while !shutdown.is_cancelled() {
        let Some(revision) = try_acquire(&kv, role, &holder).await else {
            // A standby is ready: it is what takes over.
            crate::health::working();
            if !waiting_logged {
                tracing::info!(
                    role,
                    holder,
                    "standing by: another instance holds the lease"
                );
                waiting_logged = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(RENEW_EVERY) => {}
            }
            continue;
        };
        waiting_logged = false;
        tracing::info!(role, holder, "lease acquired: active");
        crate::metrics::metrics()
            .lease_acquired
            .with_label_values(&[role])
            .inc();
        let active = shutdown.child_token();
        let renewer = tokio::spawn(renew(
            kv.clone(),
            role.to_string(),
            holder.clone(),
            revision,
            active.clone(),
        ));
        let began = tokio::time::Instant::now();
        let result = work(active.clone()).await;
        if began.elapsed() >= HEALTHY_RUN {
            failures = 0;
        }
        let still_held = !active.is_cancelled() || shutdown.is_cancelled();
        active.cancel();
        let last_revision = renewer.await.ok().flatten();
        if shutdown.is_cancelled() || result.is_err() {
            // Hand over at once rather than after the TTL.
            if let Some(rev) = last_revision {
                let _ = kv.delete_expect_revision(role, Some(rev)).await;
            }
        }
        match result {
            // NATS trouble (a node lost, a leader being elected) is no reason to exit: a
            // standby, this one included, takes over once it clears.
            Err(RuntimeError::Nats { what, source, .. })
                if !shutdown.is_cancelled() && failures + 1 < NATS_FAILURES_BEFORE_EXIT =>
            {
                failures += 1;
                tracing::error!(role, holder, %what, error = %source, failures, "active work failed: standing by");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(RENEW_EVERY) => {}
                }
                continue;
            }
            result if shutdown.is_cancelled() || still_held => return result,
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        tracing::warn!(role, holder, "lease lost: standing by");
    }
    Ok(())
}

/// Creates the lease key; None when someone else holds it (or NATS cannot be reached).
async fn try_acquire(kv: &kv::Store, role: &str, holder: &str) -> Option<u64> {
    match kv.create(role, Bytes::from(holder.to_string())).await {
        Ok(revision) => Some(revision),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
        Err(e) => {
            tracing::debug!(role, error = %e, "lease not acquired");
            None
        }
    }
}

/// Renews the lease until `active` is cancelled, cancelling it when a renewal shows the lease
/// is gone. Returns the last revision held, for a prompt release.
async fn renew(
    kv: kv::Store,
    role: String,
    holder: String,
    mut revision: u64,
    active: CancellationToken,
) -> Option<u64> {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = active.cancelled() => return Some(revision),
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
        match kv
            .update(&role, Bytes::from(holder.clone()), revision)
            .await
        {
            Ok(r) => {
                revision = r;
                last_renewed = tokio::time::Instant::now();
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(role, error = %e, "lease taken over");
                active.cancel();
                return None;
            }
            Err(e) => {
                // NATS unreachable: keep trying until the lease would have expired anyway.
                if last_renewed.elapsed() >= LEASE_TTL {
                    tracing::warn!(role, error = %e, "lease not renewed in time");
                    active.cancel();
                    return None;
                }
            }
        }
    }
}
