//! The team registry: a record of the `teams` bucket (MessagePack, decoded by every service's
//! registry and by `push0 teams`) and a teams file (TOML, `TeamsFile::parse`, the scheduler's
//! `--teams` and `push0 teams apply`). The same bytes are decoded both ways.
#![no_main]

use libfuzzer_sys::fuzz_target;
use push0_fuzz::team;
use push0_protocol::{TeamConfig, TeamsFile};

fuzz_target!(|data: &[u8]| {
    // `Registry::watch` takes any record that decodes, unchecked.
    if let Ok(t) = rmp_serde::from_slice::<TeamConfig>(data) {
        team(&t);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        match TeamsFile::parse(text) {
            Ok(teams) => teams.iter().for_each(team),
            Err(problems) => assert!(!problems.is_empty()),
        }
    }
});
