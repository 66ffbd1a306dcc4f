//! A `clover.toml` (an operator's file, but also one copied from elsewhere or half-edited):
//! parsing and checking it never panic, and a configuration that is accepted prints back to a
//! `clover.toml` that parses and checks to the same configuration.
#![no_main]

use clover_gateway::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::parse(text) {
        let printed = config.to_toml().expect("an accepted configuration prints");
        let again = Config::parse(&printed).expect("a printed configuration parses");
        assert_eq!(again.to_toml().expect("it prints again"), printed);
    }
});
