//! Keys and certificates as text: lowercase hex, and the PEM-like armour
//! of the files that hold them:
//!
//! ```text
//! -----BEGIN ZTNA CERTIFICATE-----
//! hex of the bytes, lines of at most 64 characters
//! -----END ZTNA CERTIFICATE-----
//! ```
//!
//! Decoding never panics, whatever the text.

use super::CertError;

/// `bytes` as lowercase hex: the one encoder of keys as text (armour,
/// configs, etcd records, logs).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// `bytes` armoured under `label`: a `-----BEGIN {label}-----` line, the
/// hex in lines of 64 characters, an `-----END {label}-----` line.
pub fn encode(label: &str, bytes: &[u8]) -> String {
    let h = to_hex(bytes);
    let mut s = format!("-----BEGIN {label}-----\n");
    // Hex is ASCII, so splitting on byte boundaries is splitting on chars.
    for line in h.as_bytes().chunks(64) {
        s.push_str(core::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// The bytes of [`encode`]'s output for `label`. Surrounding whitespace and
/// blank lines are ignored; anything else (another label, a missing end
/// line, an odd or non-hex digit, text after the end) is
/// [`CertError::BadText`].
pub fn decode(label: &'static str, text: &str) -> Result<Vec<u8>, CertError> {
    let bad = || CertError::BadText(label);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some(format!("-----BEGIN {label}-----").as_str()) {
        return Err(bad());
    }
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut ended = false;
    for line in lines.by_ref() {
        if line == end {
            ended = true;
            break;
        }
        out.extend(from_hex(line).ok_or_else(bad)?);
    }
    if !ended || lines.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// A 32-byte key armoured under `label` (see [`decode`]); any other length
/// is [`CertError::BadText`].
pub fn decode_key(label: &'static str, text: &str) -> Result<[u8; 32], CertError> {
    decode(label, text)?
        .try_into()
        .map_err(|_| CertError::BadText(label))
}

/// The bytes of an even number of hex digits (either case); `None` for
/// anything else. Never panics, whatever the text.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| Some(hex_val(pair[0])? << 4 | hex_val(pair[1])?))
        .collect()
}

/// A 32-byte key from exactly 64 hex digits (either case); `None` for
/// anything else. Never panics, whatever the text.
pub fn key_from_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    from_hex(text)?.try_into().ok()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex_and_junk_is_refused() {
        let key: [u8; 32] = core::array::from_fn(|i| (i * 7) as u8);
        let text = to_hex(&key);
        assert_eq!(text.len(), 64);
        assert_eq!(key_from_hex(&text), Some(key));
        assert_eq!(key_from_hex(&text.to_uppercase()), Some(key));
        assert_eq!(key_from_hex(&text[..62]), None);
        assert_eq!(key_from_hex(&format!("{}zz", &text[..62])), None);
        // Multi-byte characters of the right byte length must not panic.
        assert_eq!(key_from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn hex_of_any_length_round_trips_and_junk_is_refused() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
        assert_eq!(from_hex(""), Some(vec![]));
        assert_eq!(from_hex("0A1b"), Some(vec![0x0a, 0x1b]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex(" 00"), None);
        assert_eq!(from_hex("é"), None);
    }

    #[test]
    fn armour_round_trips_and_refuses_what_is_not_it() {
        let bytes: Vec<u8> = (0..100).collect();
        let text = encode("TEST", &bytes);
        // 200 hex digits: lines of 64, 64, 64 and 8.
        assert_eq!(text.lines().count(), 6);
        assert!(text.starts_with("-----BEGIN TEST-----\n"));
        assert!(text.ends_with("-----END TEST-----\n"));
        assert_eq!(decode("TEST", &text), Ok(bytes.clone()));
        // Surrounding whitespace and blank lines do not matter.
        let loose = format!("\n  {}\n\n", text.replace('\n', "\n\n  "));
        assert_eq!(decode("TEST", &loose), Ok(bytes));
        let bad = Err(CertError::BadText("TEST"));
        assert_eq!(decode("TEST", &encode("OTHER", &[1])), bad);
        assert_eq!(decode("TEST", "-----BEGIN TEST-----\n00\n"), bad);
        assert_eq!(decode("TEST", &text.replacen("00", "0", 1)), bad);
        assert_eq!(decode("TEST", &text.replacen("00", "zz", 1)), bad);
        assert_eq!(decode("TEST", &format!("{text}00\n")), bad);
        assert_eq!(decode("TEST", &format!("junk\n{text}")), bad);
    }

    #[test]
    fn keys_decode_only_at_32_bytes() {
        let key = [0x5a; 32];
        assert_eq!(decode_key("KEY", &encode("KEY", &key)), Ok(key));
        let bad = Err(CertError::BadText("KEY"));
        assert_eq!(decode_key("KEY", &encode("KEY", &key[..31])), bad);
        assert_eq!(decode_key("KEY", &encode("KEY", &[0x5a; 33])), bad);
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(s in ".{0,200}") {
            let _ = from_hex(&s);
            let _ = key_from_hex(&s);
            let _ = decode("KEY", &s);
            let _ = decode_key("KEY", &format!("-----BEGIN KEY-----\n{s}\n-----END KEY-----"));
        }
    }
}
