//! The statement's native side: packing a part's bytes into field elements, the state update,
//! the initial state of a block and the chain of states across a block's parts, hex helpers.
//!
//! Everything here is plain arithmetic in winterfell's 128-bit prime field
//! `p = 2^128 - 45 * 2^40 + 1`; the AIR in [`crate::air`] proves exactly this computation.

use winterfell::math::{StarkField, fields::f128::BaseElement};

/// The field every state and data element lives in.
pub type Felt = BaseElement;

/// Largest part (in bytes) one proof covers. 64 KiB → a 2^13-row trace.
pub const MAX_PART_BYTES: usize = 64 * 1024;

/// Bytes packed into one data element. 15 bytes = 120 bits, always below `p`, so every chunk
/// maps to a distinct field element (8 bytes would work too but doubles the trace).
pub const BYTES_PER_ELEMENT: usize = 15;

/// The last data element of every part is `LENGTH_TAG + byte_length`. Data chunks are < 2^120,
/// the tag is ≥ 2^120, so the element sequence encodes the bytes injectively (the zero padding of
/// the last chunk is not ambiguous).
pub const LENGTH_TAG: u128 = 1 << 120;

/// The additive round constant of the update `s' = s^3 + d + 42`.
pub const ROUND_CONSTANT: u32 = 42;

/// Smallest trace winterfell accepts.
pub const MIN_TRACE_LENGTH: usize = 8;

/// The data elements of a part: 15-byte little-endian chunks (the last one zero-padded), then
/// the length tag.
pub fn pack(bytes: &[u8]) -> Vec<Felt> {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(BYTES_PER_ELEMENT) + 1);
    for chunk in bytes.chunks(BYTES_PER_ELEMENT) {
        let mut le = [0u8; 16];
        le[..chunk.len()].copy_from_slice(chunk);
        out.push(Felt::new(u128::from_le_bytes(le)));
    }
    out.push(Felt::new(LENGTH_TAG + bytes.len() as u128));
    out
}

/// One step of the state update: `s' = s^3 + d + 42`.
#[inline]
pub fn step(s: Felt, d: Felt) -> Felt {
    s * s * s + d + Felt::from(ROUND_CONSTANT)
}

/// The state after absorbing `bytes` starting from `prev`.
pub fn apply(prev: Felt, bytes: &[u8]) -> Felt {
    pack(bytes).into_iter().fold(prev, step)
}

/// Rows of the execution trace proving a part of `part_len` bytes: one row per state
/// (`elements + 1`), rounded up to a power of two, at least [`MIN_TRACE_LENGTH`].
pub fn trace_length(part_len: usize) -> usize {
    let rows = part_len.div_ceil(BYTES_PER_ELEMENT) + 2;
    rows.next_power_of_two().max(MIN_TRACE_LENGTH)
}

/// The state a block starts from: the first 16 bytes of its hash as a little-endian `u128`,
/// reduced mod `p`.
pub fn initial_state(block_hash: &[u8; 32]) -> Felt {
    let mut le = [0u8; 16];
    le.copy_from_slice(&block_hash[..16]);
    Felt::new(u128::from_le_bytes(le))
}

/// The states of a block: its initial state and the state after each part, in order.
/// Ranges are `(offset, len)` into `payload` and must lie inside it.
pub fn chain_states(
    block_hash: &[u8; 32],
    payload: &[u8],
    ranges: &[(u64, u64)],
) -> Result<(Felt, Vec<Felt>), String> {
    let initial = initial_state(block_hash);
    let mut state = initial;
    let mut after = Vec::with_capacity(ranges.len());
    for (i, &range) in ranges.iter().enumerate() {
        let part = slice(payload, range).map_err(|e| format!("part {i}: {e}"))?;
        state = apply(state, part);
        after.push(state);
    }
    Ok((initial, after))
}

/// `payload[offset .. offset + len]`, or an error if the range does not lie inside `payload`.
pub fn slice(payload: &[u8], (offset, len): (u64, u64)) -> Result<&[u8], String> {
    let end = offset.checked_add(len);
    match end {
        Some(end) if end <= payload.len() as u64 => Ok(&payload[offset as usize..end as usize]),
        _ => Err(format!(
            "range {offset}:{len} lies outside the {}-byte block payload",
            payload.len()
        )),
    }
}

/// A state as 16 little-endian bytes of its canonical value, in lowercase hex.
pub fn state_to_hex(s: Felt) -> String {
    hex_encode(&s.as_int().to_le_bytes())
}

/// Parses a state written by [`state_to_hex`]; rejects values ≥ p.
pub fn state_from_hex(text: &str) -> Result<Felt, String> {
    let bytes = hex_decode(text)?;
    let le: [u8; 16] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "a state is 16 bytes (32 hex digits), got {} bytes",
            bytes.len()
        )
    })?;
    state_from_le(le).ok_or_else(|| "state is not below the field modulus".to_string())
}

/// A canonical field element from 16 little-endian bytes, `None` if the value is ≥ p.
pub fn state_from_le(le: [u8; 16]) -> Option<Felt> {
    let v = u128::from_le_bytes(le);
    (v < Felt::MODULUS).then(|| Felt::new(v))
}

/// Parses a 32-byte block hash in hex (an optional `0x` prefix is allowed).
pub fn block_hash_from_hex(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex_decode(text)?;
    bytes.as_slice().try_into().map_err(|_| {
        format!(
            "block_hash must be 32 bytes (64 hex digits), got {} bytes",
            bytes.len()
        )
    })
}

pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Decodes hex (either case, optional `0x` prefix).
pub fn hex_decode(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if !t.len().is_multiple_of(2) {
        return Err(format!(
            "hex string has an odd number of digits ({})",
            t.len()
        ));
    }
    let digit = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("invalid hex digit {:?}", c as char)),
        }
    };
    t.as_bytes()
        .chunks(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_injective_on_padding() {
        assert_ne!(pack(b"ab"), pack(b"ab\0"));
        assert_ne!(pack(b""), pack(b"\0"));
        assert_eq!(pack(&[7u8; 15]).len(), 2);
        assert_eq!(pack(&[7u8; 16]).len(), 3);
    }

    #[test]
    fn trace_lengths() {
        assert_eq!(trace_length(0), 8);
        assert_eq!(trace_length(4096), 512);
        assert_eq!(trace_length(MAX_PART_BYTES), 8192);
    }

    #[test]
    fn hex_round_trip() {
        let s = Felt::new(0x0123_4567_89ab_cdef_u128 << 64 | 42);
        assert_eq!(state_from_hex(&state_to_hex(s)).unwrap(), s);
        assert!(state_from_hex(&"ff".repeat(16)).is_err());
        assert!(state_from_hex("abc").is_err());
        assert_eq!(hex_decode("0xABcd").unwrap(), vec![0xab, 0xcd]);
    }

    #[test]
    fn apply_matches_chain() {
        let hash = [9u8; 32];
        let payload: Vec<u8> = (0..100u8).collect();
        let (init, after) = chain_states(&hash, &payload, &[(0, 40), (40, 60)]).unwrap();
        assert_eq!(after[0], apply(init, &payload[..40]));
        assert_eq!(after[1], apply(after[0], &payload[40..]));
        assert!(chain_states(&hash, &payload, &[(90, 11)]).is_err());
        assert!(chain_states(&hash, &payload, &[(u64::MAX, 2)]).is_err());
    }
}
