//! Stand-in until the measured hop tag lands (issue 3).
use core::hash::Hasher;
use siphasher::sip128::{Hasher128, SipHasher24};

/// Length of the hop tag.
pub const TAG_LEN: usize = 8;
/// Bytes covered.
pub const TAGGED_LEN: usize = 24;

/// Hop MAC key.
#[derive(Clone)]
pub struct HopKey(SipHasher24);

impl core::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HopKey(..)")
    }
}

impl HopKey {
    /// Tags per key.
    pub const USAGE_LIMIT: u64 = 1 << 31;
    /// New key.
    pub fn new(key: &[u8; 32]) -> Self {
        let mut k = [0u8; 16];
        k.copy_from_slice(&key[..16]);
        Self(SipHasher24::new_with_key(&k))
    }
    /// Tag.
    #[inline]
    pub fn tag(&self, header: &[u8; 24]) -> [u8; 8] {
        let mut h = self.0;
        h.write(header);
        h.finish128().h1.to_le_bytes()
    }
    /// Verify.
    #[inline]
    pub fn verify(&self, header: &[u8; 24], tag: &[u8; 8]) -> bool {
        self.tag(header) == *tag
    }
}
