//! A tiny DNS responder for service names, and the stable virtual address
//! each service gets in `tun` mode. No I/O: the caller owns the socket
//! (or the TUN packets) and hands over one query at a time.
//!
//! It answers as the authority for the names `lookup` knows: `A` queries
//! for a known name get one `A` record (TTL [`TTL`]); any other type for a
//! known name gets NOERROR with no answer (NODATA); an unknown name gets
//! NXDOMAIN. Anything malformed with a full 12-byte header gets FORMERR,
//! an opcode other than QUERY gets NOTIMP. What follows the question
//! (EDNS `OPT` records and the like) is ignored and not echoed, as a
//! responder without EDNS may do (RFC 6891 §7).
//!
//! Nothing here panics on any input.

use std::net::Ipv4Addr;

/// TTL of every answer, in seconds: short, since a service's address is
/// stable but its existence is policy.
pub const TTL: u32 = 60;

const HEADER_LEN: usize = 12;
/// Longest name on the wire (RFC 1035 §3.1).
const MAX_NAME_WIRE: usize = 255;

const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const RD: u16 = 0x0100;
const OPCODE_QUERY: u16 = 0;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

/// Response codes (RFC 1035 §4.1.1).
const NOERROR: u16 = 0;
const FORMERR: u16 = 1;
const NXDOMAIN: u16 = 3;
const NOTIMP: u16 = 4;

/// Why no response at all was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// Shorter than a DNS header: nothing to address a response to.
    #[error("DNS message of {0} bytes is shorter than the 12-byte header; dropped, no response possible")]
    TooShort(usize),
    /// The message is itself a response (QR set); answering responses can
    /// loop between two responders.
    #[error("DNS message is a response, not a query; dropped without answering")]
    NotAQuery,
}

/// Writes the response to `query` into `out` (cleared first), resolving
/// names with `lookup`, which gets them lower-case and without the
/// trailing dot (`wiki.corp.example`).
pub fn answer(
    query: &[u8],
    lookup: impl Fn(&str) -> Option<Ipv4Addr>,
    out: &mut Vec<u8>,
) -> Result<(), DnsError> {
    out.clear();
    let Some(header) = query.get(..HEADER_LEN) else {
        return Err(DnsError::TooShort(query.len()));
    };
    let id = [header[0], header[1]];
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & QR != 0 {
        return Err(DnsError::NotAQuery);
    }
    // Keep the opcode and RD; we are the authority (AA).
    let reply_flags = QR | AA | (flags & (0x7800 | RD));
    let opcode = (flags >> 11) & 0xf;
    if opcode != OPCODE_QUERY {
        write_header(out, id, reply_flags | NOTIMP, 0, 0);
        return Ok(());
    }
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    let question = match (qdcount, Question::parse(query)) {
        (1, Some(q)) => q,
        _ => {
            write_header(out, id, reply_flags | FORMERR, 0, 0);
            return Ok(());
        }
    };
    let address = question.name().and_then(lookup);
    let rcode = if address.is_some() { NOERROR } else { NXDOMAIN };
    let record = address.filter(|_| {
        question.qtype == TYPE_A && (question.qclass == CLASS_IN || question.qclass == CLASS_ANY)
    });
    write_header(out, id, reply_flags | rcode, 1, u16::from(record.is_some()));
    // The question as it came, case included (resolvers check it).
    out.extend_from_slice(question.wire);
    if let Some(addr) = record {
        out.extend_from_slice(&[0xc0, HEADER_LEN as u8]); // pointer to the question's name
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&addr.octets());
    }
    Ok(())
}

fn write_header(out: &mut Vec<u8>, id: [u8; 2], flags: u16, qdcount: u16, ancount: u16) {
    out.extend_from_slice(&id);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&qdcount.to_be_bytes());
    out.extend_from_slice(&ancount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
}

/// The one question of a query.
struct Question<'a> {
    /// Name, type and class as they were on the wire.
    wire: &'a [u8],
    /// The name, lower-case, dot-separated, without the final dot; `None`
    /// when a label holds a byte no service name has (then it is unknown).
    name: Option<NameBuf>,
    qtype: u16,
    qclass: u16,
}

/// A presentation-form name: at most 253 bytes fit a 255-byte wire name.
struct NameBuf {
    bytes: [u8; MAX_NAME_WIRE],
    len: usize,
}

impl Question<'_> {
    /// Parses the question at offset 12; `None` if it is malformed or uses
    /// compression (never needed in a question; unsupported here).
    fn parse(msg: &[u8]) -> Option<Question<'_>> {
        let mut name = NameBuf {
            bytes: [0; MAX_NAME_WIRE],
            len: 0,
        };
        let mut plain = true;
        let mut at = HEADER_LEN;
        loop {
            let len = usize::from(*msg.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            // 0xc0: a compression pointer; 0x40, 0x80: extended label types.
            if len > 63 || at + len - HEADER_LEN >= MAX_NAME_WIRE {
                return None;
            }
            let label = msg.get(at..at + len)?;
            if name.len > 0 {
                name.bytes[name.len] = b'.';
                name.len += 1;
            }
            for &b in label {
                plain &= b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
                name.bytes[name.len] = b.to_ascii_lowercase();
                name.len += 1;
            }
            at += len;
        }
        let tail = msg.get(at..at + 4)?;
        Some(Question {
            wire: &msg[HEADER_LEN..at + 4],
            name: plain.then_some(name),
            qtype: u16::from_be_bytes([tail[0], tail[1]]),
            qclass: u16::from_be_bytes([tail[2], tail[3]]),
        })
    }

    fn name(&self) -> Option<&str> {
        let n = self.name.as_ref()?;
        std::str::from_utf8(n.bytes.get(..n.len)?).ok()
    }
}

/// Hosts of 100.80.0.0/16 a service may get: host parts whose last octet
/// is 0 or 255 are skipped (some stacks treat x.y.z.0 and x.y.z.255 as
/// special), and so are 100.80.0.1 (the device) and 100.80.0.2 (its peer).
pub const SERVICE_ADDRESSES: u32 = 256 * 254 - 2;

/// The stable virtual address of service `id` in 100.80.0.0/16.
///
/// The usable hosts are numbered in address order, 100.80.0.3 = 0,
/// 100.80.0.4 = 1, …, 100.80.0.254 = 251, 100.80.1.1 = 252, …,
/// 100.80.255.254 = [`SERVICE_ADDRESSES`] - 1, and service `id` gets host
/// number `id % SERVICE_ADDRESSES`: ids 0..65021 map one to one, in order.
/// Ids are any `u32`, so two may share an address; use
/// [`service_addresses`] for a set of services, which resolves that.
pub fn service_address(id: u32) -> Ipv4Addr {
    host(id % SERVICE_ADDRESSES)
}

/// Host number `n` < [`SERVICE_ADDRESSES`], as above.
fn host(n: u32) -> Ipv4Addr {
    // Skip the two reserved hosts that come first.
    let n = n + 2;
    Ipv4Addr::new(100, 80, (n / 254) as u8, (n % 254 + 1) as u8)
}

/// Addresses for a set of services, collisions resolved deterministically:
/// the result depends only on the set of ids (not their order or repeats)
/// and comes sorted by id.
///
/// First every id whose [`service_address`] is contested by no lower id
/// keeps it, so a service moves only if a lower id takes its address;
/// then each remaining id, lowest first, takes the next free host after
/// its own (wrapping). At most [`SERVICE_ADDRESSES`] services fit; the
/// highest ids beyond that get no address and are left out.
pub fn service_addresses(ids: &[u32]) -> Vec<(u32, Ipv4Addr)> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut taken = vec![0u64; (SERVICE_ADDRESSES as usize).div_ceil(64)];
    let is_taken = |taken: &[u64], n: u32| taken[(n / 64) as usize] & (1 << (n % 64)) != 0;
    let take = |taken: &mut [u64], n: u32| taken[(n / 64) as usize] |= 1 << (n % 64);

    let mut hosts: Vec<Option<u32>> = vec![None; ids.len()];
    for (id, slot) in ids.iter().zip(hosts.iter_mut()) {
        let n = id % SERVICE_ADDRESSES;
        if !is_taken(&taken, n) {
            take(&mut taken, n);
            *slot = Some(n);
        }
    }
    let mut free = SERVICE_ADDRESSES as usize - hosts.iter().flatten().count();
    for (id, slot) in ids.iter().zip(hosts.iter_mut()) {
        if slot.is_some() || free == 0 {
            continue;
        }
        let mut n = id % SERVICE_ADDRESSES;
        while is_taken(&taken, n) {
            n = (n + 1) % SERVICE_ADDRESSES;
        }
        take(&mut taken, n);
        *slot = Some(n);
        free -= 1;
    }
    ids.into_iter()
        .zip(hosts)
        .filter_map(|(id, n)| Some((id, host(n?))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Queries captured from `dig @127.0.0.1 -p 5399 …` (DiG 9.18, with its
    /// EDNS OPT record and cookie unless `+noedns`).
    const DIG_A: &str = "b200012000010000000000010477696b6904636f7270047a746e61000001000100002904d000000000000c000a0008846ee8d0615b5c6b";
    const DIG_AAAA_MIXED_CASE: &str = "b08f012000010000000000010457696b6904436f7270045a544e4100001c000100002904d000000000000c000a0008fecf9ec2acbd5150";
    const DIG_A_NOEDNS: &str = "4f4b012000010000000000000367697404636f7270047a746e610000010001";
    const DIG_A_UNKNOWN: &str = "ed6501200001000000000001046e6f706504636f7270047a746e61000001000100002904d000000000000c000a0008e87eef63b353488c";

    fn hex(s: &str) -> Vec<u8> {
        proto::identity::armour::from_hex(s).expect("hex digits")
    }

    fn services(name: &str) -> Option<Ipv4Addr> {
        match name {
            "wiki.corp.ztna" => Some(Ipv4Addr::new(100, 80, 0, 10)),
            "git.corp.ztna" => Some(Ipv4Addr::new(100, 80, 0, 11)),
            _ => None,
        }
    }

    fn respond(query: &[u8]) -> Vec<u8> {
        let mut out = vec![0xee; 3]; // must be cleared
        answer(query, services, &mut out).unwrap();
        out
    }

    fn rcode(r: &[u8]) -> u16 {
        u16::from_be_bytes([r[2], r[3]]) & 0xf
    }

    fn counts(r: &[u8]) -> [u16; 4] {
        [4, 6, 8, 10].map(|i| u16::from_be_bytes([r[i], r[i + 1]]))
    }

    /// Where the question of a dig query ends (before its OPT record).
    fn question_end(q: &[u8]) -> usize {
        let mut at = 12;
        while q[at] != 0 {
            at += 1 + usize::from(q[at]);
        }
        at + 5
    }

    #[test]
    fn a_for_a_known_name() {
        let q = hex(DIG_A);
        let r = respond(&q);
        assert_eq!(&r[..2], &q[..2], "id");
        // QR AA RD, opcode QUERY, NOERROR.
        assert_eq!(u16::from_be_bytes([r[2], r[3]]), 0x8500);
        assert_eq!(counts(&r), [1, 1, 0, 0]);
        let qend = question_end(&q);
        assert_eq!(&r[12..qend], &q[12..qend], "question echoed");
        let expected_answer = [0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 100, 80, 0, 10];
        assert_eq!(&r[qend..], &expected_answer);
    }

    #[test]
    fn names_match_case_insensitively_and_keep_their_case() {
        let q = hex(DIG_AAAA_MIXED_CASE);
        let r = respond(&q);
        // Known (as wiki.corp.ztna) but AAAA: NODATA.
        assert_eq!(rcode(&r), NOERROR);
        assert_eq!(counts(&r), [1, 0, 0, 0]);
        assert_eq!(&r[12..], &q[12..question_end(&q)], "case preserved");

        let mut a = q.clone();
        let qend = question_end(&a);
        a[qend - 3] = 1; // AAAA -> A
        let r = respond(&a);
        assert_eq!(counts(&r)[1], 1);
        assert_eq!(&r[r.len() - 4..], &[100, 80, 0, 10]);
    }

    #[test]
    fn without_edns() {
        let r = respond(&hex(DIG_A_NOEDNS));
        assert_eq!(counts(&r), [1, 1, 0, 0]);
        assert_eq!(&r[r.len() - 4..], &[100, 80, 0, 11]);
    }

    #[test]
    fn nxdomain_for_an_unknown_name() {
        let q = hex(DIG_A_UNKNOWN);
        let r = respond(&q);
        assert_eq!(rcode(&r), NXDOMAIN);
        assert_eq!(counts(&r), [1, 0, 0, 0]);
        assert_eq!(r.len(), question_end(&q));
    }

    #[test]
    fn lookup_sees_lower_case_without_the_final_dot() {
        let q = hex(DIG_AAAA_MIXED_CASE);
        let seen = std::cell::RefCell::new(String::new());
        let mut out = Vec::new();
        answer(
            &q,
            |n| {
                *seen.borrow_mut() = n.to_owned();
                None
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(*seen.borrow(), "wiki.corp.ztna");
    }

    #[test]
    fn formerr_for_malformed_queries() {
        let q = hex(DIG_A_NOEDNS);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no question", q[..12].to_vec()),
            ("cut in a label", q[..16].to_vec()),
            ("no type and class", q[..question_end(&q) - 4].to_vec()),
            ("two questions", {
                let mut m = q.clone();
                m[5] = 2;
                m
            }),
            ("zero questions", {
                let mut m = q.clone();
                m[5] = 0;
                m
            }),
            ("compression pointer", {
                let mut m = q[..12].to_vec();
                m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
                m
            }),
            ("label over 63", {
                let mut m = q[..12].to_vec();
                m.push(64);
                m.extend_from_slice(&[b'a'; 64]);
                m.extend_from_slice(&[0, 0, 1, 0, 1]);
                m
            }),
            ("name over 255", {
                let mut m = q[..12].to_vec();
                for _ in 0..5 {
                    m.push(63);
                    m.extend_from_slice(&[b'a'; 63]);
                }
                m.extend_from_slice(&[0, 0, 1, 0, 1]);
                m
            }),
        ];
        for (what, m) in cases {
            let r = respond(&m);
            assert_eq!(rcode(&r), FORMERR, "{what}");
            assert_eq!(&r[..2], &m[..2], "{what}: id");
            assert_eq!(counts(&r), [0, 0, 0, 0], "{what}");
        }
    }

    #[test]
    fn longest_legal_name_is_parsed() {
        // 3 x 63 + 61 bytes of labels: 255 bytes on the wire with the root.
        let mut m = hex(DIG_A_NOEDNS)[..12].to_vec();
        for len in [63, 63, 63, 61] {
            m.push(len);
            m.extend(std::iter::repeat_n(b'x', usize::from(len)));
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(m.len() - 12 - 4, 255);
        let r = respond(&m);
        assert_eq!(rcode(&r), NXDOMAIN);
    }

    #[test]
    fn odd_bytes_in_a_name_make_it_unknown() {
        let mut m = hex(DIG_A_NOEDNS);
        m[13] = b'.'; // "g.t.corp.ztna" would be ambiguous
        assert_eq!(rcode(&respond(&m)), NXDOMAIN);
        m[13] = 0xff;
        assert_eq!(rcode(&respond(&m)), NXDOMAIN);
    }

    #[test]
    fn other_opcodes_are_not_implemented() {
        let mut m = hex(DIG_A_NOEDNS);
        m[2] |= 2 << 3; // STATUS
        let r = respond(&m);
        assert_eq!(rcode(&r), NOTIMP);
        assert_eq!(r[2] & 0x78, 2 << 3, "opcode echoed");
    }

    #[test]
    fn short_input_and_responses_are_errors() {
        let mut out = vec![1, 2, 3];
        assert_eq!(
            answer(&[0; 11], services, &mut out),
            Err(DnsError::TooShort(11))
        );
        assert!(out.is_empty());
        let mut m = hex(DIG_A);
        m[2] |= 0x80;
        assert_eq!(answer(&m, services, &mut out), Err(DnsError::NotAQuery));
        assert!(out.is_empty());
    }

    #[test]
    fn service_address_mapping() {
        assert_eq!(service_address(0), Ipv4Addr::new(100, 80, 0, 3));
        assert_eq!(service_address(251), Ipv4Addr::new(100, 80, 0, 254));
        assert_eq!(service_address(252), Ipv4Addr::new(100, 80, 1, 1));
        assert_eq!(
            service_address(SERVICE_ADDRESSES - 1),
            Ipv4Addr::new(100, 80, 255, 254)
        );
        assert_eq!(service_address(SERVICE_ADDRESSES), service_address(0));
        assert_eq!(
            service_address(u32::MAX),
            service_address(u32::MAX % SERVICE_ADDRESSES)
        );
    }

    #[test]
    fn collisions_are_resolved_by_probing() {
        let n = SERVICE_ADDRESSES;
        // 5 and n + 5 collide; n + 5 is higher, so it moves to 6's host,
        // and 6 keeps its own because natural owners go first.
        let got = service_addresses(&[n + 5, 6, 5, 5]);
        assert_eq!(
            got,
            vec![
                (5, service_address(5)),
                (6, service_address(6)),
                (n + 5, service_address(7)),
            ]
        );
        // Wraps past the last host.
        let got = service_addresses(&[n - 1, 2 * n - 1]);
        assert_eq!(got[1], (2 * n - 1, service_address(0)));
    }

    #[test]
    fn every_host_is_used_once_when_full() {
        let ids: Vec<u32> = (0..SERVICE_ADDRESSES + 10)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let got = service_addresses(&ids);
        assert_eq!(got.len(), SERVICE_ADDRESSES as usize);
        let mut addrs: Vec<Ipv4Addr> = got.iter().map(|&(_, a)| a).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), SERVICE_ADDRESSES as usize);
        for a in addrs {
            let [a0, a1, _, a3] = a.octets();
            assert_eq!((a0, a1), (100, 80));
            assert!(a3 != 0 && a3 != 255);
            assert!(a != Ipv4Addr::new(100, 80, 0, 1) && a != Ipv4Addr::new(100, 80, 0, 2));
        }
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut out = Vec::new();
            if answer(&bytes, services, &mut out).is_ok() {
                prop_assert!(out.len() >= 12);
                prop_assert_eq!(&out[..2], &bytes[..2]);
            }
        }

        #[test]
        fn never_panics_near_valid_queries(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut m = hex(DIG_A);
            for (i, b) in edits {
                let at = i.index(m.len());
                m[at] = b;
            }
            m.truncate(cut.index(m.len() + 1));
            let mut out = Vec::new();
            let _ = answer(&m, services, &mut out);
        }

        #[test]
        fn addresses_are_unique_and_in_range(ids in proptest::collection::vec(any::<u32>(), 0..300)) {
            let got = service_addresses(&ids);
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(got.iter().map(|&(id, _)| id).collect::<Vec<_>>(), unique);
            let mut addrs: Vec<_> = got.iter().map(|&(_, a)| a).collect();
            addrs.sort_unstable();
            addrs.dedup();
            prop_assert_eq!(addrs.len(), got.len());
            // Order does not matter.
            let mut reversed = ids.clone();
            reversed.reverse();
            prop_assert_eq!(service_addresses(&reversed), got);
        }
    }
}
