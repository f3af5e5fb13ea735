//! AES-256-GCM implementations behind one trait.
//!
//! Both stay public so that the `aead` bench compares them and the tests
//! check they interoperate byte for byte: an agent built with one backend
//! must talk to a connector built with the other. [`super::E2eKey`] uses
//! [`Ring`] when the `ring` feature is on (it is several times faster on
//! AES-NI machines, see `docs/perf.md`, "End-to-end AES-256-GCM") and
//! [`RustCrypto`] otherwise.

use super::{OpenError, E2E_TAG_LEN, NONCE_LEN};
use aes_gcm::aead::{AeadInOut, KeyInit};
use core::fmt;

/// One AES-256-GCM implementation, with the key schedule done at
/// construction and detached tags, in place.
pub trait Aes256GcmBackend: Clone + Send + Sync + fmt::Debug {
    /// Short name, used in bench ids and `Debug` output.
    const NAME: &'static str;

    /// Name of the hop-tag candidate that uses this backend as GMAC.
    const GMAC_NAME: &'static str;

    /// Expands the 32-byte key (AES round keys and the GHASH key).
    fn new(key: &[u8; 32]) -> Self;

    /// Encrypts `buf` in place and returns the tag.
    ///
    /// The nonce must never repeat under one key.
    ///
    /// # Panics
    ///
    /// If `buf` is longer than GCM allows (about 64 GiB); a frame is at most
    /// 64 KiB.
    fn seal_raw(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; E2E_TAG_LEN];

    /// Checks `tag` and decrypts `buf` in place.
    ///
    /// On error the contents of `buf` are unspecified (ring scrubs them,
    /// `aes-gcm` leaves the ciphertext) and must be discarded.
    fn open_raw(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; E2E_TAG_LEN],
    ) -> Result<(), OpenError>;
}

/// RustCrypto `aes-gcm` (portable, with runtime-detected AES-NI/CLMUL).
#[derive(Clone)]
pub struct RustCrypto {
    cipher: aes_gcm::Aes256Gcm,
}

impl Aes256GcmBackend for RustCrypto {
    const NAME: &'static str = "aes-gcm";
    const GMAC_NAME: &'static str = "gmac-aesgcm";

    fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: aes_gcm::Aes256Gcm::new(key.into()),
        }
    }

    #[inline]
    fn seal_raw(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; E2E_TAG_LEN] {
        self.cipher
            .encrypt_inout_detached(nonce.into(), aad, buf.into())
            .expect("AES-GCM input longer than 2^36 bytes")
            .into()
    }

    #[inline]
    fn open_raw(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; E2E_TAG_LEN],
    ) -> Result<(), OpenError> {
        self.cipher
            .decrypt_inout_detached(nonce.into(), aad, buf.into(), tag.into())
            .map_err(|_| OpenError)
    }
}

impl fmt::Debug for RustCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAME)
    }
}

/// `ring`'s AES-256-GCM (BoringSSL assembly, AES-NI/VAES + CLMUL).
#[cfg(feature = "ring")]
#[derive(Clone)]
pub struct Ring {
    key: ring::aead::LessSafeKey,
}

#[cfg(feature = "ring")]
impl Aes256GcmBackend for Ring {
    const NAME: &'static str = "ring";
    const GMAC_NAME: &'static str = "gmac-ring";

    fn new(key: &[u8; 32]) -> Self {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
            .expect("a 32-byte key is the AES-256-GCM key length");
        Self {
            key: ring::aead::LessSafeKey::new(unbound),
        }
    }

    #[inline]
    fn seal_raw(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; E2E_TAG_LEN] {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), buf)
            .expect("AES-GCM input longer than ring's ~64 GiB limit");
        let mut out = [0u8; E2E_TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    #[inline]
    fn open_raw(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; E2E_TAG_LEN],
    ) -> Result<(), OpenError> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        self.key
            .open_in_place_separate_tag(
                nonce,
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| OpenError)
    }
}

#[cfg(feature = "ring")]
impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAME)
    }
}
