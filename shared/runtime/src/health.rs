//! What a service's `/healthz` and `/readyz` answer. Alive is being able to answer at all.
//! Ready is: the topology checked, the NATS connection up, its work started (a consumer bound,
//! or standing by for a lease another instance holds), and not draining for a shutdown.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::connection::State;

/// The readiness facts of this process, set as they become true.
#[derive(Default)]
struct Facts {
    topology: AtomicBool,
    working: AtomicBool,
    draining: AtomicBool,
    client: OnceLock<async_nats::Client>,
}

static FACTS: OnceLock<Facts> = OnceLock::new();

fn facts() -> &'static Facts {
    FACTS.get_or_init(Facts::default)
}

/// The topology was found as declared, and `client` is the connection to watch.
pub fn topology_checked(client: &async_nats::Client) {
    let f = facts();
    let _ = f.client.set(client.clone());
    f.topology.store(true, Ordering::Relaxed);
}

/// The service's work started: a consumer is bound, or it stands by for a lease.
pub fn working() {
    facts().working.store(true, Ordering::Relaxed);
}

/// A shutdown began: what is running finishes, nothing new should be sent here.
pub fn draining() {
    facts().draining.store(true, Ordering::Relaxed);
}

/// Ready, or why not.
pub fn readiness() -> Result<(), &'static str> {
    let f = facts();
    if f.draining.load(Ordering::Relaxed) {
        return Err("draining for shutdown");
    }
    if !f.topology.load(Ordering::Relaxed) {
        return Err("waiting for the topology");
    }
    match f.client.get().map(async_nats::Client::connection_state) {
        Some(State::Connected) => {}
        _ => return Err("not connected to NATS"),
    }
    if !f.working.load(Ordering::Relaxed) {
        return Err("work not started");
    }
    Ok(())
}
