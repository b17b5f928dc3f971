//! The runtime's error, and the kind of each failure: what a caller decides by (retry soon,
//! wait, or tell an operator) and what the error metric counts, read from async-nats's typed
//! errors rather than from their messages.

use std::error::Error as StdError;

use async_nats::jetstream::{context, kv};
use thiserror::Error;

pub type BoxError = Box<dyn StdError + Send + Sync>;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot connect to nats at {url}: {source}")]
    Connect { url: String, source: BoxError },
    #[error("{what}: {source}")]
    Nats {
        what: String,
        kind: ErrorKind,
        source: BoxError,
    },
    #[error("corrupt record {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("blob {key}: {detail}")]
    Blob { key: String, detail: String },
    #[error("verifier {program}: {detail}")]
    Verifier { program: String, detail: String },
    #[error("topology not ready: {}; fix: {fix}", problems.join("; "))]
    Topology { problems: Vec<String>, fix: String },
}

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A setting is wrong: retrying changes nothing until it is fixed.
    Config,
    /// The server cannot be reached.
    Connect,
    /// The server did not answer in time (an overloaded server, a leader election).
    TimedOut,
    /// Nobody answered: the stream or bucket has no leader at the moment (or does not exist;
    /// the server answers both alike, and during an election it is the former).
    NoResponders,
    /// The connection broke while a request was out.
    Disconnected,
    /// Writers raced for one record more often than a write retries.
    Contended,
    /// The server refused or failed the operation otherwise.
    Server,
    /// A stored record does not decode.
    Corrupt,
    /// A payload in the object store could not be read or written.
    Blob,
    /// A verifier program could not be run.
    Verifier,
    /// The streams and buckets are not what this version declares.
    Topology,
}

impl ErrorKind {
    /// The label the error metric and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connect => "connect",
            ErrorKind::TimedOut => "timed_out",
            ErrorKind::NoResponders => "no_responders",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Contended => "contended",
            ErrorKind::Server => "server",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Blob => "blob",
            ErrorKind::Verifier => "verifier",
            ErrorKind::Topology => "topology",
        }
    }

    /// Whether the same step may succeed when tried again in a moment, with nothing changed
    /// but time: a timeout, an election, a broken connection, a race. A wrong setting, a
    /// corrupt record or streams unlike the declared ones need someone to act.
    pub fn is_transient(self) -> bool {
        !matches!(
            self,
            ErrorKind::Config | ErrorKind::Corrupt | ErrorKind::Topology
        )
    }
}

impl RuntimeError {
    /// A failed NATS operation `what`, its kind read from `source`.
    pub fn nats(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        RuntimeError::Nats {
            what: what.into(),
            kind: kind_of(source.as_ref()),
            source,
        }
    }

    /// Writers raced for `key` more often than one write retries.
    pub fn contended(key: &str) -> Self {
        RuntimeError::Nats {
            what: format!("update {key}"),
            kind: ErrorKind::Contended,
            source: "too many concurrent writers".into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::Config(_) => ErrorKind::Config,
            RuntimeError::Connect { .. } => ErrorKind::Connect,
            RuntimeError::Nats { kind, .. } => *kind,
            RuntimeError::Corrupt { .. } => ErrorKind::Corrupt,
            RuntimeError::Blob { .. } => ErrorKind::Blob,
            RuntimeError::Verifier { .. } => ErrorKind::Verifier,
            RuntimeError::Topology { .. } => ErrorKind::Topology,
        }
    }
}

/// The kind of a NATS failure: the first error in `error`'s chain whose own kind says
/// (a KV create that failed in its publish is classified by the publish's error).
fn kind_of(error: &(dyn StdError + 'static)) -> ErrorKind {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(kind) = own_kind(e) {
            return kind;
        }
        next = e.source();
    }
    ErrorKind::Server
}

fn own_kind(e: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    use context::{PublishErrorKind as P, RequestErrorKind as R};
    if let Some(e) = e.downcast_ref::<context::PublishError>() {
        return match e.kind() {
            P::TimedOut => Some(ErrorKind::TimedOut),
            // A publish nobody answered: async-nats reports "no responders" as this.
            P::StreamNotFound => Some(ErrorKind::NoResponders),
            P::BrokenPipe => Some(ErrorKind::Disconnected),
            P::Other => None,
            _ => Some(ErrorKind::Server),
        };
    }
    if let Some(e) = e.downcast_ref::<context::RequestError>() {
        return match e.kind() {
            R::TimedOut => Some(ErrorKind::TimedOut),
            R::NoResponders => Some(ErrorKind::NoResponders),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<async_nats::RequestError>() {
        return match e.kind() {
            async_nats::RequestErrorKind::TimedOut => Some(ErrorKind::TimedOut),
            async_nats::RequestErrorKind::NoResponders => Some(ErrorKind::NoResponders),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<kv::EntryError>() {
        return (e.kind() == kv::EntryErrorKind::TimedOut).then_some(ErrorKind::TimedOut);
    }
    if let Some(e) = e.downcast_ref::<kv::UpdateError>() {
        return (e.kind() == kv::UpdateErrorKind::TimedOut).then_some(ErrorKind::TimedOut);
    }
    if let Some(e) = e.downcast_ref::<kv::WatchError>() {
        return (e.kind() == kv::WatchErrorKind::TimedOut).then_some(ErrorKind::TimedOut);
    }
    if e.downcast_ref::<async_nats::PublishError>().is_some()
        || e.downcast_ref::<std::io::Error>().is_some()
    {
        return Some(ErrorKind::Disconnected);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_classified_by_the_first_typed_error_in_its_chain() {
        let timed_out = context::PublishError::new(context::PublishErrorKind::TimedOut);
        assert_eq!(
            RuntimeError::nats("publish", timed_out).kind(),
            ErrorKind::TimedOut
        );
        let no_leader = context::RequestError::new(context::RequestErrorKind::NoResponders);
        assert_eq!(
            RuntimeError::nats("read", no_leader).kind(),
            ErrorKind::NoResponders
        );
        // A KV create that failed in its publish: the publish's kind.
        let create = kv::CreateError::with_source(
            kv::CreateErrorKind::Publish,
            context::PublishError::new(context::PublishErrorKind::StreamNotFound),
        );
        let e = RuntimeError::nats("create k", create);
        assert_eq!(e.kind(), ErrorKind::NoResponders);
        assert!(e.kind().is_transient());
        // Nothing typed in the chain: the server's.
        assert_eq!(RuntimeError::nats("x", "odd").kind(), ErrorKind::Server);
        assert_eq!(RuntimeError::contended("k").kind(), ErrorKind::Contended);
        assert!(ErrorKind::Contended.is_transient());
        assert!(!RuntimeError::Config("x".into()).kind().is_transient());
    }
}
