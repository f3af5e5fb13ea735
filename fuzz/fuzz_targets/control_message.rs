//! Control message bodies (what an agent and its relay exchange on a hop
//! session) from arbitrary bytes, and directory parts from them put
//! together by an agent's `DirectoryAssembler`.
//!
//! Input: a sequence of bodies, each prefixed with a big-endian u16
//! length (the last one takes what is left).
//!
//! Whatever parses re-emits the very same bytes; a directory the assembler
//! returns is exactly the one its digest names (rebuilt from its services
//! it has the same digest, and that digest is never 0).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::control::{ControlMessage, Directory, DirectoryAssembler, MAX_SERVICES};

fuzz_target!(|data: &[u8]| {
    let mut asm = DirectoryAssembler::new();
    let mut rest = data;
    // Bounded: every round consumes at least two bytes.
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let (body, next) = body.split_at(len.min(body.len()));
        rest = next;
        let Ok(m) = ControlMessage::parse(body) else {
            continue;
        };
        let mut out = Vec::new();
        m.emit(&mut out);
        assert_eq!(out, body, "{m:?} does not re-emit its bytes");
        assert_eq!(m.encoded_len(), body.len());
        if let ControlMessage::DirectoryPart {
            digest,
            part,
            parts,
            mode,
            services,
        } = m
        {
            if let Some(dir) = asm.push(digest, part, parts, mode, services) {
                assert_eq!(dir.digest, digest);
                assert_ne!(dir.digest, 0);
                assert!(dir.services.len() <= MAX_SERVICES);
                let again = Directory::new(dir.mode, dir.services.clone());
                assert_eq!(again, dir);
            }
        }
    }
});
