//! Newtypes that are validated once, at the edge, so the inside never re-validates.

use std::fmt;
use std::sync::Arc;

/// Longest lot id accepted, in bytes (after normalisation).
pub const MAX_LOT_ID_LEN: usize = 64;
/// Longest lot name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 200;
/// Largest capacity a lot may declare.
pub const MAX_CAPACITY: u32 = 1_000_000;

/// Why an identifier or value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("lot_id must not be empty")]
    EmptyLotId,
    #[error("lot_id is longer than {MAX_LOT_ID_LEN} bytes")]
    LotIdTooLong,
    #[error("lot_id may only contain letters, digits, '-', '_' and '.' (found {0:?})")]
    LotIdChar(char),
    #[error(
        "lot_id must hold a letter, digit, '-' or '_' (not only dots, which name folders in paths)"
    )]
    LotIdDots,
    #[error("name must not be empty")]
    EmptyName,
    #[error("name is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    #[error("name must not contain control characters (found U+{0:04X})")]
    NameControlChar(u32),
    #[error("capacity must be between 1 and {MAX_CAPACITY} (got {0})")]
    Capacity(i64),
}

/// A normalised lot identifier: trimmed, lower-cased, inner whitespace runs turned into
/// a single `-`, then restricted to `[a-z0-9._-]`, 1..=64 bytes, not dots alone.
///
/// `" NIA North "` and `"nia-north"` are the same lot. Cloning is cheap (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LotId(Arc<str>);

impl LotId {
    /// Normalise and validate a lot id as a client sent it.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(IdError::EmptyLotId);
        }
        let mut out = String::with_capacity(trimmed.len());
        let mut in_space = false;
        for c in trimmed.chars() {
            if c.is_whitespace() {
                if !in_space {
                    out.push('-');
                }
                in_space = true;
                continue;
            }
            in_space = false;
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                out.push(c);
            } else {
                return Err(IdError::LotIdChar(c));
            }
        }
        if out.len() > MAX_LOT_ID_LEN {
            return Err(IdError::LotIdTooLong);
        }
        if out.bytes().all(|b| b == b'.') {
            return Err(IdError::LotIdDots);
        }
        Ok(LotId(out.into()))
    }

    /// Build from a string already known to be normalised (read back from the log).
    pub(crate) fn from_normalised(s: &str) -> Self {
        LotId(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LotId({})", &*self.0)
    }
}

impl serde::Serialize for LotId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The number of spaces of a lot, 1..=[`MAX_CAPACITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Capacity(u32);

impl Capacity {
    pub fn new(value: i64) -> Result<Self, IdError> {
        if (1..=i64::from(MAX_CAPACITY)).contains(&value) {
            // In range, so the conversion cannot fail.
            Ok(Capacity(value as u32))
        } else {
            Err(IdError::Capacity(value))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A lot's display name: trimmed, 1..=[`MAX_NAME_LEN`] bytes of UTF-8, no control
/// characters (no NUL, no line breaks, no escapes: PostgreSQL refuses NUL in text, and
/// a name is shown on one line everywhere).
///
/// Every path that registers a lot builds its name here, so no name that a reader or a
/// database cannot take is ever written to the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LotName(Arc<str>);

impl LotName {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(IdError::EmptyName);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(IdError::NameTooLong);
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(IdError::NameControlChar(u32::from(c)));
        }
        Ok(LotName(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lot_ids_are_trimmed_lowercased_and_spaces_joined() {
        assert_eq!(
            LotId::parse("  NIA   North ").unwrap().as_str(),
            "nia-north"
        );
        assert_eq!(LotId::parse("BHMBCCMKT01").unwrap().as_str(), "bhmbccmkt01");
        assert_eq!(
            LotId::parse("Others-CCCPS105a").unwrap(),
            LotId::parse("others-cccps105a").unwrap()
        );
    }

    #[test]
    fn bad_lot_ids_are_refused_with_the_reason() {
        assert_eq!(LotId::parse("   "), Err(IdError::EmptyLotId));
        assert_eq!(LotId::parse("a/b"), Err(IdError::LotIdChar('/')));
        assert_eq!(LotId::parse(&"x".repeat(65)), Err(IdError::LotIdTooLong));
        assert!(LotId::parse(&"x".repeat(64)).is_ok());
        for dots in [".", "..", " .. ", "..."] {
            assert_eq!(LotId::parse(dots), Err(IdError::LotIdDots), "{dots:?}");
        }
        assert!(LotId::parse("north.1").is_ok() && LotId::parse(".north").is_ok());
    }

    #[test]
    fn names_are_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(LotName::parse("  North 1 ").unwrap().as_str(), "North 1");
        assert_eq!(LotName::parse(" \t "), Err(IdError::EmptyName));
        assert_eq!(LotName::parse("a\u{0}b"), Err(IdError::NameControlChar(0)));
        assert_eq!(LotName::parse("a\nb"), Err(IdError::NameControlChar(10)));
        assert_eq!(
            LotName::parse("a\u{9b}b"),
            Err(IdError::NameControlChar(0x9b))
        );
        assert_eq!(LotName::parse(&"é".repeat(101)), Err(IdError::NameTooLong));
        assert!(LotName::parse(&"é".repeat(100)).is_ok());
    }

    #[test]
    fn capacity_bounds() {
        assert!(Capacity::new(0).is_err());
        assert!(Capacity::new(-3).is_err());
        assert_eq!(Capacity::new(1).unwrap().get(), 1);
        assert!(Capacity::new(i64::from(MAX_CAPACITY) + 1).is_err());
    }
}
