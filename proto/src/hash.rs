//! The one hashing constant shared by the id hasher ([`crate::route`]), the
//! policy tables and the synthetic policy generator.

/// 2^64 / golden ratio (odd): the Fibonacci hashing multiplier. Its high
/// product bits depend on every key bit, so taking the top bits spreads
/// keys that differ only in their low bits (consecutive ids) or high bits
/// (class). SplitMix64 adds it as its Weyl-sequence increment.
pub(crate) const FIB: u64 = 0x9E37_79B9_7F4A_7C15;
