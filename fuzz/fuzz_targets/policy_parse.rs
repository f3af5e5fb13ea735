//! Arbitrary text through the whole policy load path: TOML parse,
//! validation, compilation, then queries. Nothing may panic, and a policy
//! that compiles must decide every pair (and every user's connection mode)
//! as the slow reference evaluation does, in both table layouts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::identity::{key_from_hex, Role};
use proto::policy::{CompiledPolicy, Layout, PeerVerdict, PolicyFile};

fuzz_target!(|data: &[u8]| {
    // Policy files are UTF-8; other input is rejected before the parser.
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = PolicyFile::from_toml_str(text) else {
        return;
    };
    let Ok(auto) = CompiledPolicy::compile(&file) else {
        return;
    };
    let Ok(by_group) = CompiledPolicy::compile_with_layout(&file, Layout::ByGroup) else {
        panic!("compiles with the automatic layout but not by group");
    };
    let _ = auto.stats();
    // Bounded so one input stays fast.
    for u in file.users.iter().take(16) {
        let _ = auto.user_name(u.id);
        assert_eq!(auto.connection_mode(u.id), file.evaluate_mode(u.id));
        // A pinned user (`static_keys`) is admitted with each of its keys
        // and with no other; an unpinned one with any key.
        let pins: Option<Vec<[u8; 32]>> = u
            .static_keys
            .as_ref()
            .map(|keys| keys.iter().filter_map(|k| key_from_hex(k)).collect());
        let other = [0xa5; 32];
        for key in pins.iter().flatten().chain([&other]) {
            let want = match &pins {
                Some(pins) if !pins.contains(key) => PeerVerdict::KeyNotPinned,
                _ => PeerVerdict::Allow,
            };
            assert_eq!(auto.admits_peer(Role::User, u.id.0, key), want);
        }
        for s in file.services.iter().take(16) {
            let want = file.evaluate(u.id, s.id);
            assert_eq!(auto.allowed(u.id, s.id), want);
            assert_eq!(by_group.allowed(u.id, s.id), want);
            let _ = auto.service(s.id);
        }
    }
    // Regenerated text parses back to the same policy.
    let again = PolicyFile::from_toml_str(&file.to_toml_string());
    assert_eq!(again.as_ref(), Ok(&file));
});
