//! Arbitrary text through the whole policy load path: TOML parse,
//! validation, compilation, then queries. Nothing may panic, and a policy
//! that compiles must decide every pair (and every user's connection mode)
//! as the slow reference evaluation does, in both table layouts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::policy::{CompiledPolicy, Layout, PolicyFile};

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
