//! Format-preserving encryption with FF1 (NIST SP 800-38G Rev. 1, section 5.1), from the `fpe`
//! crate, over AES-256 from aws-lc-rs (the workspace's one crypto backend): the `fpe` crate is
//! generic over a block cipher, and [`Aes256`] gives it aws-lc-rs's AES as one.
//!
//! A value is encrypted "in place": the characters of the alphabet (digits, or digits and
//! letters) are taken out in order, encrypted as one numeral string with the field's name as the
//! tweak, and put back where they were; every other character (`+`, spaces, dashes) stays. A
//! value whose numeral string is below the minimum domain of SP 800-38G Rev. 1 (radix^length of
//! at least 1,000,000) is refused rather than encrypted weakly.
//!
//! The Feistel rounds, the PRF and the rest of FF1 are the `fpe` crate's; its numeral string for
//! any radix ([`FlexibleNumeralString`]) does each round's arithmetic in `BigUint`, which was a
//! quarter of a transfer's stream. A value whose halves each fit in a `u64` (up to 38 digits, or
//! 24 letters and digits: every phone number, postcode and account number) goes through
//! `PackedNumerals` instead, the same numeral string with its halves held as integers; longer
//! ones through `FlexibleNumeralString`. The tests check that both give the same ciphertexts.

use std::sync::Arc;

use aws_lc_rs::cipher::{AES_256, EncryptingKey, UnboundCipherKey};
use cipher::consts::{U1, U16, U32};
use cipher::{
    Block, BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, InOut, Key, KeyInit,
    KeySizeUser, ParBlocksSizeUser,
};
use fpe::ff1::{FF1, FlexibleNumeralString, NumeralString, Operations};

/// The smallest domain FF1 may encrypt (SP 800-38G Rev. 1, section 5.2): radix^length.
pub const MIN_DOMAIN: u64 = 1_000_000;

/// The characters FF1 encrypts in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    /// `0-9`: radix 10.
    Digits,
    /// `0-9a-z`, letters lowercased first: radix 36.
    Alphanumeric,
}

impl Alphabet {
    fn radix(self) -> u32 {
        match self {
            Self::Digits => 10,
            Self::Alphanumeric => 36,
        }
    }
}

/// What FF1 refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ff1Error {
    /// The value has too few characters of the alphabet.
    #[error("{numerals} characters of radix {radix} are below FF1's minimum domain of 1,000,000")]
    DomainTooSmall {
        /// The radix.
        radix: u32,
        /// How many characters of the alphabet the value has.
        numerals: usize,
    },
    /// The cipher refused the numeral string (it cannot for the alphabets here).
    #[error("the FF1 cipher failed")]
    Cipher,
}

/// Whether `value` has enough characters of `alphabet` for FF1's minimum domain (what
/// [`Ff1Key::encrypt_in_place`] refuses otherwise), without encrypting anything.
pub fn fits(alphabet: Alphabet, value: &str) -> bool {
    let radix = alphabet.radix();
    let numerals = value.chars().filter(|c| c.to_ascii_lowercase().is_digit(radix)).count();
    u64::from(radix).checked_pow(u32::try_from(numerals).unwrap_or(u32::MAX)).is_none_or(|d| d >= MIN_DOMAIN)
}

/// AES-256 block encryption backed by aws-lc-rs, for `fpe`: FF1 uses only the forward
/// direction, on single blocks (ECB over one block is the AES permutation itself).
#[derive(Clone)]
pub struct Aes256(Arc<EncryptingKey>);

impl KeySizeUser for Aes256 {
    type KeySize = U32;
}

impl BlockSizeUser for Aes256 {
    type BlockSize = U16;
}

impl KeyInit for Aes256 {
    #[expect(clippy::expect_used, reason = "a 32-byte key, as the type says, is an AES-256 key")]
    fn new(key: &Key<Self>) -> Self {
        let key = UnboundCipherKey::new(&AES_256, key.as_slice()).expect("a 32-byte AES-256 key");
        Self(Arc::new(EncryptingKey::ecb(key).expect("AES-256 in ECB mode")))
    }
}

struct Backend<'a>(&'a EncryptingKey);

impl BlockSizeUser for Backend<'_> {
    type BlockSize = U16;
}

impl ParBlocksSizeUser for Backend<'_> {
    type ParBlocksSize = U1;
}

impl BlockCipherEncBackend for Backend<'_> {
    #[expect(clippy::expect_used, reason = "ECB over exactly one 16-byte block cannot fail")]
    fn encrypt_block(&self, mut block: InOut<'_, '_, Block<Self>>) {
        let mut buf: [u8; 16] = (*block.get_in()).into();
        self.0.encrypt(&mut buf).expect("one 16-byte block");
        block.get_out().copy_from_slice(&buf);
    }
}

impl BlockCipherEncrypt for Aes256 {
    fn encrypt_with_backend(&self, f: impl BlockCipherEncClosure<BlockSize = U16>) {
        f.call(&Backend(&self.0));
    }
}

/// An FF1 key, ready for both alphabets.
pub struct Ff1Key {
    digits: Option<FF1<Aes256>>,
    alphanumeric: Option<FF1<Aes256>>,
}

impl Ff1Key {
    /// The key `secret` (AES-256).
    pub fn new(secret: &[u8; 32]) -> Self {
        Self { digits: FF1::new(secret, 10).ok(), alphanumeric: FF1::new(secret, 36).ok() }
    }

    /// Encrypts the characters of `alphabet` in `value` under `tweak`, keeping the others in
    /// place.
    pub fn encrypt_in_place(&self, alphabet: Alphabet, tweak: &[u8], value: &str) -> Result<String, Ff1Error> {
        let radix = alphabet.radix();
        let numerals: Vec<u16> = value
            .chars()
            .filter_map(|c| c.to_ascii_lowercase().to_digit(radix))
            .filter_map(|d| u16::try_from(d).ok())
            .collect();
        let domain = u64::from(radix).checked_pow(u32::try_from(numerals.len()).unwrap_or(u32::MAX));
        if domain.is_some_and(|d| d < MIN_DOMAIN) {
            return Err(Ff1Error::DomainTooSmall { radix, numerals: numerals.len() });
        }
        let ff1 = match alphabet {
            Alphabet::Digits => self.digits.as_ref(),
            Alphabet::Alphanumeric => self.alphanumeric.as_ref(),
        }
        .ok_or(Ff1Error::Cipher)?;
        let encrypted: Vec<u16> = match PackedNumerals::new(numerals, radix) {
            Ok(packed) => ff1.encrypt(tweak, &packed).map_err(|_| Ff1Error::Cipher)?.numerals,
            Err(numerals) => {
                ff1.encrypt(tweak, &FlexibleNumeralString::from(numerals)).map_err(|_| Ff1Error::Cipher)?.into()
            }
        };
        let mut encrypted = encrypted.into_iter();
        let mut out = String::with_capacity(value.len());
        for c in value.chars() {
            if c.to_ascii_lowercase().is_digit(radix) {
                let d = encrypted.next().ok_or(Ff1Error::Cipher)?;
                out.push(char::from_digit(u32::from(d), radix).ok_or(Ff1Error::Cipher)?);
            } else {
                out.push(c);
            }
        }
        Ok(out)
    }
}

/// A numeral string whose two halves (FF1's A and B, of `floor(n/2)` and `ceil(n/2)` numerals)
/// each fit in a `u64`: the same numeral string as [`FlexibleNumeralString`], with each round's
/// `(NUM(A) + y) mod radix^m` done on integers rather than in `BigUint`.
struct PackedNumerals {
    numerals: Vec<u16>,
    radix: u32,
}

impl PackedNumerals {
    /// `numerals` (each below `radix`) packed, or given back when the longer half would not fit in
    /// a `u64`.
    fn new(numerals: Vec<u16>, radix: u32) -> Result<Self, Vec<u16>> {
        let longer = numerals.len() - numerals.len() / 2;
        match u32::try_from(longer).ok().and_then(|v| u64::from(radix).checked_pow(v)) {
            Some(_) => Ok(Self { numerals, radix }),
            None => Err(numerals),
        }
    }

    fn half(&self, numerals: &[u16]) -> Half {
        let value =
            numerals.iter().fold(0u64, |v, &d| v.wrapping_mul(u64::from(self.radix)).wrapping_add(u64::from(d)));
        Half { value, len: numerals.len(), radix: self.radix }
    }
}

/// One half of a [`PackedNumerals`]: `NUM(X, radix)` of its `len` numerals, below `radix^len`,
/// which fits in a `u64` (so `radix^len` does too).
struct Half {
    value: u64,
    len: usize,
    radix: u32,
}

impl Half {
    /// `radix^m` for a half of `m` numerals, at most `u64::MAX` (see [`PackedNumerals::new`]).
    fn modulus(radix: u32, m: usize) -> u128 {
        (0..m).fold(1u128, |acc, _| acc.saturating_mul(u128::from(radix)))
    }

    /// `NUM(S) mod modulus`, the bytes big-endian. FF1's `d` bytes are at most 12 for a half
    /// that fits in a `u64`, so `NUM(S)` is gathered whole and reduced once; a longer `S` would be
    /// reduced on the way (before a shift could overflow), which gives the same remainder.
    fn reduce(bytes: impl Iterator<Item = u8>, modulus: u128) -> u128 {
        let r = bytes.fold(0u128, |r, b| {
            let r = if r >> 120 == 0 { r } else { r % modulus };
            (r << 8) | u128::from(b)
        });
        r % modulus
    }

    fn with(value: u128, m: usize, radix: u32) -> Self {
        Self { value: u64::try_from(value).unwrap_or(u64::MAX), len: m, radix }
    }
}

/// The `b` bytes of `STR^b_256(NUM(X))`: a half's value big-endian, its leading zeros kept.
struct BeBytes {
    buf: [u8; 16],
    start: usize,
}

impl AsRef<[u8]> for BeBytes {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }
}

impl Operations for Half {
    type Bytes = BeBytes;

    fn numeral_count(&self) -> usize {
        self.len
    }

    fn to_be_bytes(&self, _radix: u32, b: usize) -> BeBytes {
        // b = ceil(len * log2(radix) / 8) is at most 8 for a value below radix^len <= u64::MAX.
        BeBytes { buf: u128::from(self.value).to_be_bytes(), start: 16usize.saturating_sub(b) }
    }

    fn add_mod_exp(self, other: impl Iterator<Item = u8>, radix: u32, m: usize) -> Self {
        let modulus = Self::modulus(radix, m);
        let (a, y) = (u128::from(self.value), Self::reduce(other, modulus));
        // Both below the modulus: their sum is below twice it.
        Self::with(if a + y >= modulus { a + y - modulus } else { a + y }, m, radix)
    }

    fn sub_mod_exp(self, other: impl Iterator<Item = u8>, radix: u32, m: usize) -> Self {
        let modulus = Self::modulus(radix, m);
        let (a, y) = (u128::from(self.value), Self::reduce(other, modulus));
        Self::with(if a >= y { a - y } else { a + modulus - y }, m, radix)
    }
}

impl NumeralString for PackedNumerals {
    type Ops = Half;

    fn is_valid(&self, radix: u32) -> bool {
        radix == self.radix && self.numerals.iter().all(|&d| u32::from(d) < radix)
    }

    fn numeral_count(&self) -> usize {
        self.numerals.len()
    }

    fn split(&self) -> (Half, Half) {
        let (a, b) = self.numerals.split_at(self.numerals.len() / 2);
        (self.half(a), self.half(b))
    }

    fn concat(a: Half, b: Half) -> Self {
        let radix = a.radix;
        let mut numerals = vec![0u16; a.len + b.len];
        for (half, place) in [(&a, 0), (&b, a.len)] {
            let mut value = half.value;
            for i in (0..half.len).rev() {
                if let Some(slot) = numerals.get_mut(place + i) {
                    *slot = u16::try_from(value % u64::from(radix)).unwrap_or(0);
                }
                value /= u64::from(radix);
            }
        }
        Self { numerals, radix }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use proptest::prelude::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// NIST's FF1 samples 7 to 9 (AES-256), from FF1samples.pdf.
    #[test]
    fn nist_samples_for_aes_256() {
        let key: [u8; 32] =
            unhex("2B7E151628AED2A6ABF7158809CF4F3CEF4359D8D580AA4F7F036D6F04FC6A94").try_into().unwrap();
        let ff1 = Ff1Key::new(&key);
        assert_eq!(ff1.encrypt_in_place(Alphabet::Digits, &[], "0123456789").unwrap(), "6657667009");
        assert_eq!(
            ff1.encrypt_in_place(Alphabet::Digits, &unhex("39383736353433323130"), "0123456789").unwrap(),
            "1001623463"
        );
        assert_eq!(
            ff1.encrypt_in_place(Alphabet::Alphanumeric, &unhex("3737373770717273373737"), "0123456789abcdefghi")
                .unwrap(),
            "xs8a0azh2avyalyzuwd"
        );
    }

    #[test]
    fn small_domains_are_refused() {
        assert!(!fits(Alphabet::Digits, "+1 2345") && fits(Alphabet::Digits, "123-456"));
        assert!(!fits(Alphabet::Alphanumeric, "ab c") && fits(Alphabet::Alphanumeric, "D02 X"));
        let ff1 = Ff1Key::new(&[3; 32]);
        assert_eq!(
            ff1.encrypt_in_place(Alphabet::Digits, b"t", "+1 2345"),
            Err(Ff1Error::DomainTooSmall { radix: 10, numerals: 5 })
        );
        assert!(ff1.encrypt_in_place(Alphabet::Digits, b"t", "123-456").is_ok());
        assert_eq!(
            ff1.encrypt_in_place(Alphabet::Alphanumeric, b"t", "ab c"),
            Err(Ff1Error::DomainTooSmall { radix: 36, numerals: 3 })
        );
        assert!(ff1.encrypt_in_place(Alphabet::Alphanumeric, b"t", "D02 X").is_ok());
    }

    /// Which numeral strings take the packed path: halves up to 19 digits, or 12 of radix 36.
    #[test]
    fn long_values_take_the_flexible_path() {
        assert!(PackedNumerals::new(vec![9; 38], 10).is_ok() && PackedNumerals::new(vec![9; 39], 10).is_err());
        assert!(PackedNumerals::new(vec![35; 24], 36).is_ok() && PackedNumerals::new(vec![35; 25], 36).is_err());
    }

    fn numerals(radix: u32) -> impl Strategy<Value = Vec<u16>> {
        let top = u16::try_from(radix).unwrap();
        proptest::collection::vec(0..top, 2..48)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// `NUM(S) mod radix^m` gathered whole is the remainder taken byte by byte, for any
        /// length of `S` (FF1 gives at most 12 bytes to a packed half).
        #[test]
        fn a_string_of_bytes_is_reduced_as_one_number(
            bytes in proptest::collection::vec(any::<u8>(), 0..40),
            modulus in 2u128..=u128::from(u64::MAX),
        ) {
            let stepwise = bytes.iter().fold(0u128, |r, &b| (r * 256 + u128::from(b)) % modulus);
            prop_assert_eq!(Half::reduce(bytes.into_iter(), modulus), stepwise);
        }

        /// The packed numeral string is the same FF1 as `fpe`'s own: the same ciphertext for any
        /// key, tweak and numerals (radix 10 and 36, lengths around and past what fits), and it
        /// decrypts back (`sub_mod_exp`).
        #[test]
        fn packed_numerals_encrypt_as_the_flexible_ones(
            key in any::<[u8; 32]>(),
            tweak in proptest::collection::vec(any::<u8>(), 0..40),
            (radix, numerals) in prop_oneof![Just(10u32), Just(36u32), 2u32..100].prop_flat_map(|r| (Just(r), numerals(r))),
        ) {
            let ff1 = FF1::<Aes256>::new(&key, radix).unwrap();
            let flexible = ff1.encrypt(&tweak, &FlexibleNumeralString::from(numerals.clone()));
            match PackedNumerals::new(numerals.clone(), radix) {
                Ok(packed) => {
                    let packed = ff1.encrypt(&tweak, &packed);
                    match (flexible, packed) {
                        (Ok(f), Ok(p)) => {
                            prop_assert_eq!(&Vec::<u16>::from(f), &p.numerals);
                            let back = ff1.decrypt(&tweak, &p).unwrap();
                            prop_assert_eq!(back.numerals, numerals);
                        }
                        (Err(_), Err(_)) => {}
                        (f, p) => prop_assert!(false, "flexible {:?}, packed {:?}", f.is_ok(), p.is_ok()),
                    }
                }
                // Only a longer half of more than 9 numerals can miss a u64 below radix 100.
                Err(_) => prop_assert!(numerals.len() - numerals.len() / 2 > 9),
            }
        }

        #[test]
        fn the_format_is_kept(value in "[0-9 +()-]{6,24}") {
            let ff1 = Ff1Key::new(&[9; 32]);
            match ff1.encrypt_in_place(Alphabet::Digits, b"phone", &value) {
                Ok(out) => {
                    prop_assert_eq!(out.len(), value.len());
                    for (a, b) in value.chars().zip(out.chars()) {
                        prop_assert_eq!(a.is_ascii_digit(), b.is_ascii_digit());
                        if !a.is_ascii_digit() { prop_assert_eq!(a, b); }
                    }
                }
                Err(Ff1Error::DomainTooSmall { numerals, .. }) => prop_assert!(numerals < 6),
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
