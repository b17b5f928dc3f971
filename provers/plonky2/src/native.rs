//! The statement computed natively (outside any circuit): byte packing, the initial state of a
//! block, the per-part Poseidon state transition, and the hex encodings used on the CLI.

use plonky2::field::goldilocks_field::GoldilocksField;
use plonky2::field::types::{Field, Field64, PrimeField64};
use plonky2::hash::hash_types::HashOut;
use plonky2::hash::poseidon::PoseidonHash;
use plonky2::plonk::config::Hasher;

/// The base field of every circuit here.
pub type F = GoldilocksField;

/// A chain state: a Poseidon digest, 4 Goldilocks elements.
pub type State = HashOut<F>;

/// Most bytes in one part (one leaf proof).
pub const CHUNK: usize = 4096;

/// Field elements a part is packed into: 4 bytes (a little-endian u32) per element.
pub const PACKED_LEN: usize = CHUNK / 4;

/// Number of field elements in a state.
pub const STATE_LEN: usize = 4;

/// Packs a part: zero-pad to [`CHUNK`] bytes, then one little-endian u32 per element.
pub fn pack_part(bytes: &[u8]) -> Result<Vec<F>, String> {
    if bytes.len() > CHUNK {
        return Err(format!(
            "part is {} bytes, more than the {CHUNK}-byte maximum",
            bytes.len()
        ));
    }
    let mut padded = [0u8; CHUNK];
    padded[..bytes.len()].copy_from_slice(bytes);
    Ok(padded
        .chunks_exact(4)
        .map(|w| F::from_canonical_u32(u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
        .collect())
}

/// Initial state of a block: `Poseidon.hash_no_pad(block_hash as 8 little-endian u32)`.
pub fn initial_state(block_hash: &[u8; 32]) -> State {
    let elems: Vec<F> = block_hash
        .chunks_exact(4)
        .map(|w| F::from_canonical_u32(u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    PoseidonHash::hash_no_pad(&elems)
}

/// One transition: `new = Poseidon.hash_no_pad(prev ‖ pack_part(part))`.
pub fn step(prev: State, part: &[u8]) -> Result<State, String> {
    let packed = pack_part(part)?;
    Ok(step_packed(prev, &packed))
}

/// [`step`] on already packed elements.
pub fn step_packed(prev: State, packed: &[F]) -> State {
    let mut input = Vec::with_capacity(STATE_LEN + packed.len());
    input.extend_from_slice(&prev.elements);
    input.extend_from_slice(packed);
    PoseidonHash::hash_no_pad(&input)
}

/// The bytes of `range` in `payload`, or an error if it does not fit.
pub fn slice_of(payload: &[u8], (offset, len): (u64, u64)) -> Result<&[u8], String> {
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= payload.len() as u64)
        .ok_or_else(|| {
            format!(
                "range [{offset}, {len}] is outside the {}-byte payload",
                payload.len()
            )
        })?;
    Ok(&payload[offset as usize..end as usize])
}

/// The states after each part: `states[i]` is the state after parts `0..=i`.
pub fn chain_states(
    initial: State,
    payload: &[u8],
    ranges: &[(u64, u64)],
) -> Result<Vec<State>, String> {
    let mut state = initial;
    let mut out = Vec::with_capacity(ranges.len());
    for (i, &r) in ranges.iter().enumerate() {
        let part = slice_of(payload, r).map_err(|e| format!("part {i}: {e}"))?;
        state = step(state, part).map_err(|e| format!("part {i}: {e}"))?;
        out.push(state);
    }
    Ok(out)
}

/// State as hex: the 4 elements as 4 little-endian u64, concatenated (64 hex chars).
pub fn state_hex(s: &State) -> String {
    let mut out = String::with_capacity(64);
    for e in s.elements {
        for b in e.to_canonical_u64().to_le_bytes() {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// Inverse of [`state_hex`]; every element must be canonical (< the Goldilocks modulus).
pub fn parse_state_hex(s: &str) -> Result<State, String> {
    let bytes = parse_hex(s)?;
    if bytes.len() != 32 {
        return Err(format!(
            "a state is 32 bytes (64 hex chars), got {} bytes",
            bytes.len()
        ));
    }
    let mut elements = [F::ZERO; STATE_LEN];
    for (i, w) in bytes.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        if v >= F::ORDER {
            return Err(format!(
                "state element {i} is not a canonical field element"
            ));
        }
        elements[i] = F::from_canonical_u64(v);
    }
    Ok(HashOut { elements })
}

/// A 32-byte block hash in hex (an optional `0x` prefix is accepted).
pub fn parse_block_hash(s: &str) -> Result<[u8; 32], String> {
    let bytes = parse_hex(s).map_err(|e| format!("block_hash: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("block_hash must be 32 bytes, got {}", b.len()))
}

/// Hex to bytes; an optional `0x` prefix is accepted.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(s.get(i..i + 2).ok_or("not hex")?, 16)
                .map_err(|_| format!("invalid hex digits at position {i}"))
        })
        .collect()
}

/// Parses `"o1:l1,o2:l2,..."` (empty string: no parts).
pub fn parse_parts(s: &str) -> Result<Vec<(u64, u64)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (o, l) = p
                .split_once(':')
                .ok_or_else(|| format!("part {p:?} is not OFFSET:LEN"))?;
            let o = o
                .trim()
                .parse::<u64>()
                .map_err(|e| format!("offset {o:?}: {e}"))?;
            let l = l
                .trim()
                .parse::<u64>()
                .map_err(|e| format!("length {l:?}: {e}"))?;
            Ok((o, l))
        })
        .collect()
}

/// Consecutive [`CHUNK`]-byte ranges covering `len` bytes (at least one, possibly empty, part).
pub fn default_parts(len: usize) -> Vec<(u64, u64)> {
    if len == 0 {
        return vec![(0, 0)];
    }
    (0..len)
        .step_by(CHUNK)
        .map(|o| (o as u64, (len - o).min(CHUNK) as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_little_endian_and_zero_padded() {
        let p = pack_part(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(p.len(), PACKED_LEN);
        assert_eq!(p[0], F::from_canonical_u32(0x04030201));
        assert_eq!(p[1], F::from_canonical_u32(5));
        assert!(p[2..].iter().all(|&e| e == F::ZERO));
        assert!(pack_part(&[0u8; CHUNK + 1]).is_err());
        assert!(pack_part(&[0xffu8; CHUNK]).is_ok());
    }

    #[test]
    fn hex_round_trips_and_rejects_non_canonical() {
        let s = initial_state(&[7u8; 32]);
        let h = state_hex(&s);
        assert_eq!(h.len(), 64);
        assert_eq!(parse_state_hex(&h).unwrap(), s);
        assert!(parse_state_hex(&"ff".repeat(32)).is_err());
        assert!(parse_state_hex("00").is_err());
        assert_eq!(
            parse_block_hash(&format!("0x{}", "ab".repeat(32))).unwrap(),
            [0xab; 32]
        );
        assert!(parse_block_hash("abcd").is_err());
    }

    #[test]
    fn parts_parse_and_default() {
        assert_eq!(parse_parts("0:10, 10:5").unwrap(), vec![(0, 10), (10, 5)]);
        assert_eq!(parse_parts("").unwrap(), vec![]);
        assert!(parse_parts("1-2").is_err());
        assert_eq!(default_parts(5000), vec![(0, 4096), (4096, 904)]);
        assert_eq!(default_parts(0), vec![(0, 0)]);
    }

    #[test]
    fn chaining_is_order_sensitive() {
        let init = initial_state(&[1u8; 32]);
        let payload: Vec<u8> = (0..100u8).collect();
        let a = chain_states(init, &payload, &[(0, 50), (50, 50)]).unwrap();
        let b = chain_states(init, &payload, &[(50, 50), (0, 50)]).unwrap();
        assert_ne!(a[1], b[1]);
        assert!(chain_states(init, &payload, &[(90, 20)]).is_err());
    }
}
