//! SipHash-2-4 of several data frames' tag inputs at once, one frame per
//! 64-bit lane of a vector register.
//!
//! A relay computes two hop tags per forwarded data frame (it verifies one
//! and writes one), and each is a chain of 24 SipRounds in which every step
//! waits for the one before: a core cannot overlap two of them in scalar
//! code (two interleaved take as long as two in a row, docs/perf.md). Four
//! frames' hashes in the four lanes of one AVX2 register run those rounds
//! once for all four, each lane under its own key: the same function as
//! [`SipHash24Fixed::hash_data`], checked equal lane by lane below.
//!
//! The vector code is compiled when the target has AVX2 (the workspace's
//! `.cargo/config.toml` turns it on for x86-64 Linux builds). It calls
//! the `safe_arch` crate's wrappers, which exist only when the feature is
//! enabled at compile time and so need no `unsafe` here. Other targets get
//! the scalar function once per lane, with the same results.

use super::candidates::SipHash24Fixed;
use crate::wire::{E2E_TAG_LEN, TAGGED_LEN};

/// Frames whose tags one call computes together.
pub const LANES: usize = 4;

/// A data frame's tag input as it lies in the frame: the 24 tagged header
/// bytes and the 16-byte end-to-end AEAD tag (`proto::hoptag`, "What the
/// tag covers").
#[derive(Debug, Clone, Copy)]
pub struct DataInput<'a> {
    /// The tagged header bytes.
    pub header: &'a [u8; TAGGED_LEN],
    /// The end-to-end AEAD tag: the body's last 16 bytes.
    pub e2e_tag: &'a [u8; E2E_TAG_LEN],
}

/// Whether [`hash_data`] runs the lanes in one vector register (`true`) or
/// one after another.
pub const VECTOR: bool = cfg!(all(target_arch = "x86_64", target_feature = "avx2"));

/// The CPU feature this build's vector lanes need and the CPU lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this build uses {0} instructions (the workspace's .cargo/config.toml turns AVX2 on; \
     RUSTFLAGS such as -C target-cpu=native turn on more), and this CPU does not have \
     them: rebuild on this machine, or with RUSTFLAGS=\"\" (which replaces those flags) \
     to run anywhere"
)]
pub struct MissingCpuFeature(pub &'static str);

/// Whether this CPU has what [`hash_data`] was compiled for: AVX2 in the
/// workspace's build, and the AVX-512 extensions of x86-64-v4 when a build
/// for a newer CPU (`-C target-cpu=native` on one that has them, or
/// `-C target-cpu=x86-64-v4`) turned them on; with AVX-512VL the lanes'
/// rotations are one instruction each (`vprolq`). A binary calls it first
/// thing in `main`, so that on an older CPU it stops with an error that
/// says how to rebuild, rather than an illegal instruction at the first
/// frame.
pub fn check_cpu() -> Result<(), MissingCpuFeature> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if !std::arch::is_x86_feature_detected!("avx2") {
        return Err(MissingCpuFeature("AVX2"));
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return Err(MissingCpuFeature("AVX-512F"));
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512vl"))]
    if !std::arch::is_x86_feature_detected!("avx512vl") {
        return Err(MissingCpuFeature("AVX-512VL"));
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512bw"))]
    if !std::arch::is_x86_feature_detected!("avx512bw") {
        return Err(MissingCpuFeature("AVX-512BW"));
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512dq"))]
    if !std::arch::is_x86_feature_detected!("avx512dq") {
        return Err(MissingCpuFeature("AVX-512DQ"));
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512cd"))]
    if !std::arch::is_x86_feature_detected!("avx512cd") {
        return Err(MissingCpuFeature("AVX-512CD"));
    }
    Ok(())
}

/// `keys[i].hash_data(inputs[i])` for every lane `i`, computed together.
#[inline]
pub fn hash_data(keys: [&SipHash24Fixed; LANES], inputs: [DataInput<'_>; LANES]) -> [u64; LANES] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        avx2::hash_data(keys, inputs)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    {
        core::array::from_fn(|i| keys[i].hash_data(inputs[i].header, inputs[i].e2e_tag))
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod avx2 {
    use super::{DataInput, LANES};
    use crate::hoptag::candidates::{SipHash24Fixed, DATA_INPUT_LEN};
    use safe_arch::{
        add_i64_m256i, bitor_m256i, bitxor_m256i, m256i, shl_imm_u64_m256i, shr_imm_u64_m256i,
        shuffle_ai_i32_half_m256i, shuffle_av_i8z_half_m256i,
    };

    /// The four SipHash state words, each a register of four lanes.
    type State = [m256i; 4];

    /// Rotates every lane left by `r` bits (two shifts and an OR: AVX2 has
    /// no 64-bit rotate).
    macro_rules! rotl {
        ($x:expr, $r:literal) => {{
            let x = $x;
            bitor_m256i(
                shl_imm_u64_m256i::<$r>(x),
                shr_imm_u64_m256i::<{ 64 - $r }>(x),
            )
        }};
    }

    /// Rotates every lane by 32 bits: swaps its two 32-bit halves.
    #[inline(always)]
    fn rotl32(x: m256i) -> m256i {
        shuffle_ai_i32_half_m256i::<0b10_11_00_01>(x)
    }

    /// Rotates every lane left by 16 bits: a byte shuffle, whose pattern
    /// moves byte `j` of each lane to byte `j + 2 mod 8`.
    #[inline(always)]
    fn rotl16(x: m256i, pattern: m256i) -> m256i {
        shuffle_av_i8z_half_m256i(x, pattern)
    }

    /// The byte pattern of [`rotl16`].
    #[inline(always)]
    fn rotl16_pattern() -> m256i {
        let lane: [u8; 8] = [6, 7, 0, 1, 2, 3, 4, 5];
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            // Each lane's pattern indexes within its own 16-byte half.
            *b = lane[i % 8] + (i % 16 / 8 * 8) as u8;
        }
        m256i::from(bytes)
    }

    /// The first three steps of a SipRound (`v0`, `v1`).
    #[inline(always)]
    fn round_head(v: &mut State) {
        v[0] = add_i64_m256i(v[0], v[1]);
        v[1] = bitxor_m256i(rotl!(v[1], 13), v[0]);
        v[0] = rotl32(v[0]);
    }

    /// The rest of a SipRound, after [`round_head`].
    #[inline(always)]
    fn round_tail(v: &mut State, r16: m256i) {
        v[2] = add_i64_m256i(v[2], v[3]);
        v[3] = bitxor_m256i(rotl16(v[3], r16), v[2]);
        v[0] = add_i64_m256i(v[0], v[3]);
        v[3] = bitxor_m256i(rotl!(v[3], 21), v[0]);
        v[2] = add_i64_m256i(v[2], v[1]);
        v[1] = bitxor_m256i(rotl!(v[1], 17), v[2]);
        v[2] = rotl32(v[2]);
    }

    #[inline(always)]
    fn round(v: &mut State, r16: m256i) {
        round_head(v);
        round_tail(v, r16);
    }

    /// Absorbs one word per lane: two SipRounds.
    #[inline(always)]
    fn compress(v: &mut State, m: m256i, r16: m256i) {
        v[3] = bitxor_m256i(v[3], m);
        round(v, r16);
        round(v, r16);
        v[0] = bitxor_m256i(v[0], m);
    }

    /// Word `w` (little-endian, bytes `8w..8w + 8` of the 40-byte input) of
    /// each lane's input.
    #[inline(always)]
    fn word(inputs: &[DataInput<'_>; LANES], w: usize) -> m256i {
        m256i::from(inputs.map(|input| {
            let bytes = match w {
                0..=2 => &input.header[8 * w..8 * w + 8],
                _ => &input.e2e_tag[8 * (w - 3)..8 * (w - 3) + 8],
            };
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            u64::from_le_bytes(b)
        }))
    }

    /// The four lanes of [`super::hash_data`]: the steps of
    /// [`SipHash24Fixed::hash_data`], four lanes wide.
    #[inline]
    pub(super) fn hash_data(
        keys: [&SipHash24Fixed; LANES],
        inputs: [DataInput<'_>; LANES],
    ) -> [u64; LANES] {
        let r16 = rotl16_pattern();
        // Each key's state after the key-only first steps of round one.
        let mut v: State = core::array::from_fn(|j| m256i::from(keys.map(|k| k.init_half()[j])));
        let m0 = word(&inputs, 0);
        v[3] = bitxor_m256i(v[3], m0);
        round_tail(&mut v, r16);
        round(&mut v, r16);
        v[0] = bitxor_m256i(v[0], m0);
        for w in 1..5 {
            compress(&mut v, word(&inputs, w), r16);
        }
        compress(
            &mut v,
            m256i::from([(DATA_INPUT_LEN as u64) << 56; LANES]),
            r16,
        );
        v[2] = bitxor_m256i(v[2], m256i::from([0xffu64; LANES]));
        for _ in 0..4 {
            round(&mut v, r16);
        }
        <[u64; LANES]>::from(bitxor_m256i(
            bitxor_m256i(v[0], v[1]),
            bitxor_m256i(v[2], v[3]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inputs<'a>(
        headers: &'a [[u8; TAGGED_LEN]; LANES],
        tags: &'a [[u8; E2E_TAG_LEN]; LANES],
    ) -> [DataInput<'a>; LANES] {
        core::array::from_fn(|i| DataInput {
            header: &headers[i],
            e2e_tag: &tags[i],
        })
    }

    /// The SipHash reference `vectors.h` entry for the 40-byte message
    /// 00..27 under key 00..0f, in every lane at once and in each lane
    /// beside other inputs.
    #[test]
    fn every_lane_gives_the_reference_vector() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let k = SipHash24Fixed::with_sip_key(&key);
        let other = SipHash24Fixed::with_sip_key(&[0xa5; 16]);
        let header: [u8; TAGGED_LEN] = core::array::from_fn(|i| i as u8);
        let tag: [u8; E2E_TAG_LEN] = core::array::from_fn(|i| (TAGGED_LEN + i) as u8);
        let want = u64::from_le_bytes([0xd0, 0xa7, 0x04, 0x53, 0x6b, 0xa9, 0x3e, 0x0e]);
        let all = hash_data([&k; LANES], inputs(&[header; LANES], &[tag; LANES]));
        assert_eq!(all, [want; LANES]);
        for lane in 0..LANES {
            let mut keys = [&other; LANES];
            keys[lane] = &k;
            let mut headers = [[0x33; TAGGED_LEN]; LANES];
            headers[lane] = header;
            let mut tags = [[0x77; E2E_TAG_LEN]; LANES];
            tags[lane] = tag;
            let got = hash_data(keys, inputs(&headers, &tags));
            assert_eq!(got[lane], want, "lane {lane}");
            for (i, h) in got.iter().enumerate().filter(|(i, _)| *i != lane) {
                assert_ne!(*h, want, "lane {i} took lane {lane}'s input");
            }
        }
    }

    #[test]
    fn this_machine_runs_the_build() {
        // The tests run on the machine that built them: a build for
        // instructions it lacks would not have got this far.
        assert_eq!(check_cpu(), Ok(()));
        let msg = MissingCpuFeature("AVX2").to_string();
        assert!(
            msg.contains("AVX2") && msg.contains("RUSTFLAGS=\"\"") && msg.contains("native"),
            "{msg}"
        );
    }

    proptest! {
        /// Each lane is the scalar function of its own key and input.
        #[test]
        fn lanes_equal_the_scalar_function(
            keys in proptest::array::uniform4(proptest::array::uniform16(any::<u8>())),
            headers in proptest::array::uniform4(proptest::array::uniform24(any::<u8>())),
            tags in proptest::array::uniform4(proptest::array::uniform16(any::<u8>())),
        ) {
            let keys = keys.map(|k| SipHash24Fixed::with_sip_key(&k));
            let got = hash_data(core::array::from_fn(|i| &keys[i]), inputs(&headers, &tags));
            for i in 0..LANES {
                prop_assert_eq!(got[i], keys[i].hash_data(&headers[i], &tags[i]), "lane {}", i);
            }
        }
    }
}
