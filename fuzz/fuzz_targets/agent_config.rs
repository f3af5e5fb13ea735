//! Arbitrary text as an agent's config file: TOML, then every check of
//! `AgentConfig::parse` (and the error's line/key location, computed from
//! the parser's byte offset). A config that parses is within the
//! documented ranges.
#![no_main]

use std::path::Path;

use agent::config::{parse_public_key, AgentConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    match AgentConfig::parse(text, Path::new("agent.toml")) {
        Ok(cfg) => {
            assert_eq!(
                parse_public_key(&cfg.relay.public_key),
                Some(cfg.relay_key())
            );
            assert!(cfg.status.listen.ip().is_loopback());
            assert!(cfg.tunnel.dead_after() > cfg.tunnel.ping_after());
            assert!(!(cfg.client.is_some() && cfg.connector.is_some()));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
