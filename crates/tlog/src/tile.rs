//! Tile coordinates and entry bundles (c2sp.org/tlog-tiles).
//!
//! A hash tile at level `L` holds up to 256 hashes of tree level `8·L`; tile `N` of that level
//! covers hashes `256·N .. 256·N + W`. Its path is `tile/<L>/<N>`, with `.p/<W>` appended when
//! it is partial (W < 256). `N` is written in groups of three digits, each but the last
//! prefixed with `x`: 1234067 is `x001/x234/067`. Entry bundles are `tile/entries/<N>[.p/<W>]`
//! and hold entries `256·N .. 256·N + W`, each as a big-endian `u16` length and its bytes.

/// Entries and hashes per full tile.
pub const TILE_WIDTH: u64 = 256;

/// A tile or entry bundle coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tile {
    /// `Some(L)` for a hash tile at level L, `None` for an entry bundle.
    pub level: Option<u8>,
    /// The tile's index within its level.
    pub index: u64,
    /// How many hashes or entries it holds (1..=256).
    pub width: u16,
}

/// A path that is not a canonical tile path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a tile path (tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>])")]
pub struct BadTilePath(pub String);

fn index_path(n: u64) -> String {
    let mut groups = vec![format!("{:03}", n % 1000)];
    let mut rest = n / 1000;
    while rest > 0 {
        groups.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

impl Tile {
    /// The tile's path, relative to the log's prefix (starts with `tile/`).
    pub fn path(&self) -> String {
        let level = self.level.map_or_else(|| "entries".to_owned(), |l| l.to_string());
        let partial = if u64::from(self.width) == TILE_WIDTH { String::new() } else { format!(".p/{}", self.width) };
        format!("tile/{level}/{}{partial}", index_path(self.index))
    }

    /// Parses a canonical tile path.
    pub fn parse(path: &str) -> Result<Self, BadTilePath> {
        let bad = || BadTilePath(path.chars().take(100).collect());
        let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
        let (level, rest) = rest.split_once('/').ok_or_else(bad)?;
        let level = if level == "entries" {
            None
        } else {
            if level.is_empty() || (level.len() > 1 && level.starts_with('0')) {
                return Err(bad());
            }
            Some(level.parse::<u8>().ok().filter(|l| *l < 64).ok_or_else(bad)?)
        };
        let (index_part, width) = match rest.split_once(".p/") {
            Some((i, w)) => {
                let width: u16 = w.parse().map_err(|_| bad())?;
                if width == 0 || u64::from(width) >= TILE_WIDTH || w.starts_with('0') {
                    return Err(bad());
                }
                (i, width)
            }
            None => (rest, 256),
        };
        let mut index: u64 = 0;
        let groups: Vec<&str> = index_part.split('/').collect();
        let last = groups.len().checked_sub(1).ok_or_else(bad)?;
        for (i, group) in groups.iter().enumerate() {
            let digits = if i < last { group.strip_prefix('x').ok_or_else(bad)? } else { group };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let value: u64 = digits.parse().map_err(|_| bad())?;
            index = index.checked_mul(1000).and_then(|v| v.checked_add(value)).ok_or_else(bad)?;
        }
        let tile = Self { level, index, width };
        // Only one spelling per tile: no leading zero groups.
        if tile.path() != path {
            return Err(bad());
        }
        Ok(tile)
    }
}

/// Appends `entry` to a bundle: its length as a big-endian `u16`, then its bytes.
pub fn push_bundle_entry(bundle: &mut Vec<u8>, entry: &[u8]) -> Result<(), usize> {
    let len = u16::try_from(entry.len()).map_err(|_| entry.len())?;
    bundle.extend_from_slice(&len.to_be_bytes());
    bundle.extend_from_slice(entry);
    Ok(())
}

/// Splits a bundle into its entries; `None` if it is malformed.
pub fn split_bundle(mut bundle: &[u8]) -> Option<Vec<&[u8]>> {
    let mut entries = Vec::new();
    while !bundle.is_empty() {
        let (len, rest) = bundle.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let (entry, rest) = rest.split_at_checked(len)?;
        entries.push(entry);
        bundle = rest;
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_spec_examples() {
        let cases = [
            (Tile { level: Some(0), index: 1_234_067, width: 256 }, "tile/0/x001/x234/067"),
            (Tile { level: Some(1), index: 0, width: 8 }, "tile/1/000.p/8"),
            (Tile { level: None, index: 1000, width: 256 }, "tile/entries/x001/000"),
            (Tile { level: None, index: 5, width: 255 }, "tile/entries/005.p/255"),
        ];
        for (tile, path) in cases {
            assert_eq!(tile.path(), path);
            assert_eq!(Tile::parse(path).unwrap(), tile);
        }
        for bad in [
            "tile/0/1",
            "tile/0/x000/001",
            "tile/00/001",
            "tile/0/001.p/0",
            "tile/0/001.p/256",
            "tile/0/001.p/08",
            "tile/entries/001/002",
            "tile/64/000",
            "tiles/0/000",
            "tile/0/",
            "tile/0/001.p/",
        ] {
            assert!(Tile::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bundles_round_trip() {
        let mut bundle = Vec::new();
        for e in [&b"a"[..], b"", b"hello"] {
            push_bundle_entry(&mut bundle, e).unwrap();
        }
        assert_eq!(split_bundle(&bundle).unwrap(), vec![&b"a"[..], b"", b"hello"]);
        assert!(split_bundle(&bundle[..bundle.len() - 1]).is_none());
        assert!(push_bundle_entry(&mut bundle, &vec![0; 70_000]).is_err());
    }
}
