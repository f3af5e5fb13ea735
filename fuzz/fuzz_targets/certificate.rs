//! Certificates from arbitrary bytes and text (what a peer sends in a
//! handshake, what a node reads from its files), then verification.
//!
//! First byte: bit 0 selects the text form (the rest as UTF-8: the
//! certificate armour and a CA public key file), else the binary form.
//!
//! A parsed certificate re-encodes to exactly the bytes it came from (the
//! encoding is canonical, so a signature covers one certificate only); one
//! that verifies under the fixtures' CA fails under another CA, and
//! outside its validity window.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use proto::identity::{CaPublicKey, Certificate};
use proto::testkit::handshake::{ca, other_ca, NOW_UNIX};

static CAS: LazyLock<(CaPublicKey, CaPublicKey)> =
    LazyLock::new(|| (ca().public(), other_ca().public()));

fn check(cert: &Certificate) {
    let (ca, other) = &*CAS;
    let b = &cert.body;
    for now in [NOW_UNIX, b.not_before, b.not_after] {
        if cert.verify(ca, now).is_ok() {
            assert!(cert.verify(other, now).is_err(), "verifies under two CAs");
            assert!(b.not_before <= now && now <= b.not_after);
            assert_ne!(b.static_key, [0; 32]);
            if let Some(after) = b.not_after.checked_add(1) {
                assert!(cert.verify(ca, after).is_err(), "valid after not_after");
            }
            if let Some(before) = b.not_before.checked_sub(1) {
                assert!(cert.verify(ca, before).is_err(), "valid before not_before");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(cert) = Certificate::from_bytes(rest) {
            assert_eq!(cert.to_bytes(), rest, "non-canonical encoding accepted");
            check(&cert);
        }
        return;
    }
    let Ok(text) = core::str::from_utf8(rest) else {
        return;
    };
    if let Ok(cert) = Certificate::from_text(text) {
        let again = Certificate::from_text(&cert.to_text());
        assert_eq!(again.as_ref(), Ok(&cert));
        check(&cert);
    }
    if let Ok(key) = CaPublicKey::from_text(text) {
        assert_eq!(CaPublicKey::from_text(&key.to_text()), Ok(key));
    }
});
