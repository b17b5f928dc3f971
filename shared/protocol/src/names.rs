//! Validation of the names that become subject tokens, stream names and KV keys.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{what} must be 1 to {max} characters, got {len}")]
    Length {
        what: &'static str,
        max: usize,
        len: usize,
    },
    #[error("{what} {value:?} may only contain {allowed}")]
    Charset {
        what: &'static str,
        value: String,
        allowed: &'static str,
    },
}

fn check(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), NameError> {
    if value.is_empty() || value.len() > max {
        return Err(NameError::Length {
            what,
            max,
            len: value.len(),
        });
    }
    if !value.chars().all(ok) {
        return Err(NameError::Charset {
            what,
            value: value.to_string(),
            allowed,
        });
    }
    Ok(())
}

fn lower_alnum_dash(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// A chain id: `[a-z0-9-]{1,32}`, as in the public interface.
pub fn validate_chain(chain: &str) -> Result<(), NameError> {
    check("chain", chain, 32, "a-z, 0-9 and -", lower_alnum_dash)
}

/// A team name or task class: same alphabet as a chain, so it is a safe subject token and KV key.
pub fn validate_token(what: &'static str, token: &str) -> Result<(), NameError> {
    check(what, token, 32, "a-z, 0-9 and -", lower_alnum_dash)
}

/// The subject prefix also names streams and buckets, which forbid `.`; `_` is allowed there.
pub fn validate_prefix(prefix: &str) -> Result<(), NameError> {
    check("prefix", prefix, 32, "a-z, 0-9, - and _", |c| {
        lower_alnum_dash(c) || c == '_'
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains() {
        assert!(validate_chain("eth-mainnet").is_ok());
        assert!(validate_chain("").is_err());
        assert!(validate_chain("Eth").is_err());
        assert!(validate_chain("a.b").is_err());
        assert!(validate_chain("a*").is_err());
        assert!(validate_chain(&"a".repeat(33)).is_err());
    }

    #[test]
    fn prefixes() {
        assert!(validate_prefix("push0").is_ok());
        assert!(validate_prefix("t_1a2b").is_ok());
        assert!(validate_prefix("a.b").is_err());
    }
}
