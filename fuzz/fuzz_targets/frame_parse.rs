//! Arbitrary bytes as a received datagram: the wire views, the handshake
//! frame parser, the control message parser (on the bytes and on a frame's
//! body), and the whole relay datapath (in every mode, against a fixture
//! with real sessions and policy) must give a verdict, never panic.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use proto::control::ControlMessage;
use proto::datapath::{Mode, Verdict};
use proto::handshake::frames;
use proto::testkit::Fixture;
use proto::wire::{E2eRecord, Frame, HeaderRepr};

// Built once: compiling the fixture's policy per input would dominate.
// Replay windows carry state from input to input, as on a real relay.
static FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = Frame::new_checked(data) {
        let repr = HeaderRepr::parse(&f);
        assert_eq!(repr.frame_len(), data.len());
        let _ =
            E2eRecord::new_checked(f.body()).map(|r| (r.receiver(), r.counter(), r.payload_len()));
        control_round_trip(f.body());
    }
    control_round_trip(data);
    let _ = frames::parse(data);
    let mut guard = FIXTURE.lock().unwrap_or_else(|e| e.into_inner());
    let fx = guard.get_or_insert_with(|| Fixture::new(4, 8));
    for mode in Mode::ALL {
        let mut buf = data.to_vec();
        let v = fx.datapath(mode).process(&mut buf);
        if let Verdict::Forward { .. } = v {
            // Only a frame that authenticates (or any well-formed frame in
            // forward mode) is forwarded, and it stays well-formed.
            assert!(Frame::new_checked(&buf[..]).is_ok());
        }
    }
});

/// Whatever parses as a control message is canonical: it emits the very
/// bytes it was parsed from.
fn control_round_trip(body: &[u8]) {
    if let Ok(m) = ControlMessage::parse(body) {
        let mut out = Vec::new();
        m.emit(&mut out);
        assert_eq!(out, body);
        assert_eq!(m.encoded_len(), body.len());
    }
}
