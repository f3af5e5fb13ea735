//! Arbitrary text as the relay's files: its config (TOML, then the range
//! checks of `Config::validate`) and its static key file. A config that
//! validates is within the documented ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let _ = relay::keys::parse_static_key(text);
    let Ok(mut config) = toml::from_str::<Config>(text) else {
        return;
    };
    if config.validate().is_ok() {
        assert!((1..=256).contains(&config.workers), "{}", config.workers);
        assert!((2048..=65536).contains(&config.buffer_size));
        // Validation is idempotent.
        let before = config.workers;
        assert!(config.validate().is_ok());
        assert_eq!(config.workers, before);
    }
});
