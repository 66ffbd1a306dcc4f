//! A tile path and a tile's bytes from anyone (c2sp.org/tlog-tiles): parsing never panics, a
//! parsed path prints back to itself, and an entry bundle that splits joins back to its bytes.
#![no_main]

use clover_tlog::tile::{Tile, push_bundle_entry, split_bundle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (path, bundle) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => data.split_at(at),
        None => (data, &[][..]),
    };
    if let Ok(path) = std::str::from_utf8(path)
        && let Ok(tile) = Tile::parse(path)
    {
        assert_eq!(Tile::parse(&tile.path()), Ok(tile));
    }
    if let Some(entries) = split_bundle(bundle) {
        let mut joined = Vec::new();
        for entry in entries {
            push_bundle_entry(&mut joined, entry).expect("a split entry fits a bundle");
        }
        assert_eq!(joined, bundle);
    }
});
