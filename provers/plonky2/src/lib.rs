//! push0-plonky2: a plonky2 1.1 reference prover for push0 (leaf proofs over 4 KiB payload
//! parts and 2-to-1 recursive aggregation), speaking push0's prover contract. See README.md.

pub mod cache;
pub mod circuits;
pub mod cli;
pub mod envelope;
pub mod native;

/// Failure classes of the prover contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input is invalid (exit 3 for tasks, exit 1 "invalid" for `verify`).
    Invalid(String),
    /// Anything else (exit 1 for tasks, exit 2 for `verify`).
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "invalid input: {m}"),
            Error::Internal(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Panic containment: plonky2 panics on some malformed inputs; we turn those into errors.
pub mod guard {
    use std::cell::Cell;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Once;

    thread_local! {
        static QUIET: Cell<u32> = const { Cell::new(0) };
    }

    static HOOK: Once = Once::new();

    /// Installs (once) a panic hook that is silent inside [`guarded`] and otherwise defers to
    /// the hook installed before it.
    pub fn install_hook() {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if QUIET.with(|q| q.get()) == 0 {
                    previous(info);
                }
            }));
        });
    }

    /// A hook printing one line (`push0-plonky2: internal error (panic): …`), for the binary.
    pub fn one_line_hook() {
        std::panic::set_hook(Box::new(|info| {
            let loc = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!(
                "push0-plonky2: internal error (panic): {}{loc}",
                payload_str(info.payload()).replace('\n', " ")
            );
        }));
    }

    fn payload_str(p: &(dyn std::any::Any + Send)) -> String {
        if let Some(s) = p.downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = p.downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic".into()
        }
    }

    /// Runs `f`, turning a panic into `Err(message)` without printing it.
    pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
        install_hook();
        QUIET.with(|q| q.set(q.get() + 1));
        let r = catch_unwind(AssertUnwindSafe(f));
        QUIET.with(|q| q.set(q.get() - 1));
        r.map_err(|p| payload_str(&*p).replace('\n', " "))
    }
}

#[cfg(test)]
mod tests;
