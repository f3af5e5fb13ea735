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
        let digits = line.as_bytes();
        if digits.len() % 2 != 0 {
            return Err(bad());
        }
        for pair in digits.chunks_exact(2) {
            let hi = hex_val(pair[0]).ok_or_else(bad)?;
            let lo = hex_val(pair[1]).ok_or_else(bad)?;
            out.push(hi << 4 | lo);
        }
    }
    if !ended || lines.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// A 32-byte key from exactly 64 hex digits (either case); `None` for
/// anything else. Never panics, whatever the text.
pub fn key_from_hex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (b, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        *b = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(key)
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
}
