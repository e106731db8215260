//! Users: the stored record, the rules a new account must meet, and the registry of
//! who is online on this server right now.
//!
//! The registry maps a user id to the connection that holds the session. It is the
//! single answer to "is this user online, and where": a second login of the same user
//! replaces the entry, and a closing connection only removes the entry if it still
//! points at that connection, which is what makes "the newer session wins, no
//! offline/online flicker" fall out naturally.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::ConnRef;

/// Longest accepted user name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 256;

/// A user as the store keeps it, in the seed's Redis schema: `userId`, `userPwd`,
/// `userName` (and, in the seed's records, `userStatus` and `sex`).
///
/// `userPwd` holds the argon2id PHC string: the seed's own server, which compares
/// `userPwd` with the password as typed, then matches no password at all, the empty
/// one included. A record left by the seed's server has a plaintext `userPwd`; it is
/// read as is ([`legacy_pwd`](Self::legacy_pwd)) and upgraded to a hash, in place, at
/// the first successful login.
///
/// Reading: a `userPwd` that starts with `$argon2`, or equals `pwdHash`, is a hash;
/// otherwise a non-empty `pwdHash` is the hash (a record written by an earlier version
/// of this server, which left `userPwd` out: [`stale_shape`](Self::stale_shape));
/// otherwise `userPwd` is seed plaintext. Writing: the hash goes in `userPwd` (and in
/// `pwdHash` too only if it is not an argon2 hash, which `userPwd` alone would not
/// show to be one), plus `regToken` when set. Every other field is kept as found
/// ([`extra`](Self::extra)).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct UserRecord {
    pub id: i64,
    pub name: String,
    /// The argon2id PHC string; empty for a seed record not yet upgraded.
    pub pwd_hash: String,
    /// Plaintext from a seed-era record, until it is upgraded.
    pub legacy_pwd: String,
    /// A random token of the registration that created the record (field `regToken`),
    /// so that a registration whose answer was lost recognises its own write.
    pub reg_token: String,
    /// Every other field of the stored JSON (the seed's `userStatus`, `sex`, ...),
    /// written back unchanged.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Read from a record in the earlier shape (hash in `pwdHash` only, `userPwd`
    /// empty or plaintext): rewrite it in the current shape. Not stored.
    pub stale_shape: bool,
    /// Banned by an operator (`chat-server users ban`): logins are refused. Stored as
    /// `"banned":true` only when set, a field the seed's server ignores.
    pub banned: bool,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("has_hash", &!self.pwd_hash.is_empty())
            .field("has_legacy_pwd", &!self.legacy_pwd.is_empty())
            .field("extra_fields", &self.extra.keys().collect::<Vec<_>>())
            .field("banned", &self.banned)
            .finish()
    }
}

const F_ID: &str = "userId";
const F_NAME: &str = "userName";
const F_PWD: &str = "userPwd";
const F_HASH: &str = "pwdHash";
/// How a PHC string of argon2 begins.
const ARGON2: &str = "$argon2";
const F_TOKEN: &str = "regToken";
const F_BANNED: &str = "banned";

impl Serialize for UserRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(F_ID, &self.id)?;
        let pwd = if self.pwd_hash.is_empty() {
            &self.legacy_pwd
        } else {
            &self.pwd_hash
        };
        m.serialize_entry(F_PWD, pwd)?;
        m.serialize_entry(F_NAME, &self.name)?;
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        if !self.pwd_hash.is_empty() && !self.pwd_hash.starts_with(ARGON2) {
            // A hash `userPwd` alone would not be read as one (another scheme, as in
            // the tests): said again in `pwdHash`, which marks it. An argon2id hash is
            // recognised by itself and is not stored twice.
            m.serialize_entry(F_HASH, &self.pwd_hash)?;
        }
        if !self.reg_token.is_empty() {
            m.serialize_entry(F_TOKEN, &self.reg_token)?;
        }
        if self.banned {
            m.serialize_entry(F_BANNED, &true)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for UserRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let id = map
            .remove(F_ID)
            .and_then(|v| v.as_i64())
            .ok_or_else(|| D::Error::custom("missing or bad userId"))?;
        let mut text = |key: &str| -> Result<String, D::Error> {
            match map.remove(key) {
                None | Some(serde_json::Value::Null) => Ok(String::new()),
                Some(serde_json::Value::String(s)) => Ok(s),
                Some(other) => Err(D::Error::custom(format!("{key} is not a string: {other}"))),
            }
        };
        let name = text(F_NAME)?;
        let pwd = text(F_PWD)?;
        let hash = text(F_HASH)?;
        let reg_token = text(F_TOKEN)?;
        let banned = match map.remove(F_BANNED) {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => b,
            Some(other) => return Err(D::Error::custom(format!("banned is not a bool: {other}"))),
        };
        let (pwd_hash, legacy_pwd, stale_shape) = if pwd.starts_with(ARGON2) || pwd == hash {
            (pwd, String::new(), false)
        } else if !hash.is_empty() {
            (hash, String::new(), true)
        } else {
            (String::new(), pwd, false)
        };
        Ok(UserRecord {
            id,
            name,
            pwd_hash,
            legacy_pwd,
            reg_token,
            extra: map,
            stale_shape,
            banned,
        })
    }
}

impl UserRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("record serialises")
    }

    pub fn from_json(s: &str) -> Result<UserRecord, BadRecord> {
        serde_json::from_str(s).map_err(BadRecord)
    }
}

/// A stored user record that does not parse (the JSON parser's complaint).
#[derive(Debug)]
pub struct BadRecord(pub serde_json::Error);

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad user record: {}", self.0)
    }
}

impl std::error::Error for BadRecord {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Why the fields of a registration are refused; its text goes to the client as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidRegistration {
    /// `userId` is zero or negative.
    IdNotPositive,
    NameEmpty,
    /// Longer than [`MAX_NAME_CHARS`].
    NameTooLong,
    NameControl,
    /// The first bidirectional control character found.
    NameBidiControl(char),
    /// The first zero-width or other format character found.
    NameFormat(char),
    /// No visible character at all.
    NameInvisible,
    /// Whitespace or blank filler at either end.
    NameBlankEnd,
    NameCombiningStart,
    PasswordEmpty,
    /// Longer than [`MAX_PASSWORD_BYTES`].
    PasswordTooLong,
}

impl std::fmt::Display for InvalidRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use InvalidRegistration as I;
        match *self {
            I::IdNotPositive => f.write_str("userId must be a positive number"),
            I::NameEmpty => f.write_str("userName must not be empty"),
            I::NameTooLong => write!(f, "userName must be at most {MAX_NAME_CHARS} characters"),
            I::NameControl => f.write_str("userName must not contain control characters"),
            I::NameBidiControl(c) => write!(
                f,
                "userName must not contain bidirectional control characters (found U+{:04X})",
                u32::from(c)
            ),
            I::NameFormat(c) => write!(
                f,
                "userName must not contain zero-width or other format characters (found U+{:04X})",
                u32::from(c)
            ),
            I::NameInvisible => f.write_str("userName must contain at least one visible character"),
            I::NameBlankEnd => f.write_str(
                "userName must not start or end with whitespace or an invisible character",
            ),
            I::NameCombiningStart => f.write_str("userName must not start with a combining mark"),
            I::PasswordEmpty => f.write_str("userPwd must not be empty"),
            I::PasswordTooLong => write!(f, "userPwd must be at most {MAX_PASSWORD_BYTES} bytes"),
        }
    }
}

impl std::error::Error for InvalidRegistration {}

/// Checks the fields of a registration; the error text goes to the client as is.
///
/// A name must show the others what it is: besides the length and no control
/// characters, it has no bidirectional controls and no zero-width or other format
/// characters anywhere, at least one visible character, no whitespace or blank filler
/// at either end (refused, not trimmed), and does not start with a combining mark.
/// Only registration checks this; existing accounts keep their names.
pub fn validate_registration(
    id: i64,
    name: &str,
    password: &str,
) -> Result<(), InvalidRegistration> {
    use InvalidRegistration as I;
    if id <= 0 {
        return Err(I::IdNotPositive);
    }
    if name.is_empty() {
        return Err(I::NameEmpty);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(I::NameTooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(I::NameControl);
    }
    if let Some(c) = name.chars().find(|&c| is_bidi_control(c)) {
        return Err(I::NameBidiControl(c));
    }
    if let Some(c) = name.chars().find(|&c| is_format(c)) {
        return Err(I::NameFormat(c));
    }
    if !name.chars().any(is_visible) {
        return Err(I::NameInvisible);
    }
    let (first, last) = (name.chars().next(), name.chars().next_back());
    if first.is_some_and(is_blank) || last.is_some_and(is_blank) {
        return Err(I::NameBlankEnd);
    }
    if first.is_some_and(is_combining_mark) {
        return Err(I::NameCombiningStart);
    }
    if password.is_empty() {
        return Err(I::PasswordEmpty);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(I::PasswordTooLong);
    }
    Ok(())
}

// Character classes for names, hand-written from the Unicode Character Database
// (version 16) for the few properties that matter here; no tables crate.

/// Bidirectional formatting characters: ALM, LRM, RLM, the embeddings and overrides
/// (U+202A-U+202E) and the isolates (U+2066-U+2069).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Format characters (general category Cf: zero-width spaces and joiners, word
/// joiner, BOM, soft hyphen, number signs, tags ...), plus U+034F COMBINING GRAPHEME
/// JOINER, which is zero-width and default-ignorable like them.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// Letters that render as blank space: the Hangul fillers and the blank Braille cell.
fn is_filler(c: char) -> bool {
    matches!(
        c,
        '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}'
    )
}

/// Combining marks (general category M) of the common blocks: the combining
/// diacritics, Cyrillic, Hebrew, Arabic and Devanagari marks, kana voicing marks and
/// the variation selectors. Not every mark in Unicode; enough that a name cannot be
/// only marks, or open with one that would sit on whatever is shown before it.
fn is_combining_mark(c: char) -> bool {
    matches!(
        c,
        '\u{0300}'..='\u{036F}'
            | '\u{0483}'..='\u{0489}'
            | '\u{0591}'..='\u{05BD}'
            | '\u{05BF}'
            | '\u{05C1}'..='\u{05C2}'
            | '\u{05C4}'..='\u{05C5}'
            | '\u{05C7}'
            | '\u{0610}'..='\u{061A}'
            | '\u{064B}'..='\u{065F}'
            | '\u{0670}'
            | '\u{06D6}'..='\u{06DC}'
            | '\u{06DF}'..='\u{06E4}'
            | '\u{06E7}'..='\u{06E8}'
            | '\u{06EA}'..='\u{06ED}'
            | '\u{0900}'..='\u{0903}'
            | '\u{093A}'..='\u{093C}'
            | '\u{093E}'..='\u{094F}'
            | '\u{0951}'..='\u{0957}'
            | '\u{0962}'..='\u{0963}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{302A}'..='\u{302F}'
            | '\u{3099}'..='\u{309A}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FE20}'..='\u{FE2F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Shows nothing: whitespace, controls, format characters and blank fillers.
fn is_blank(c: char) -> bool {
    c.is_whitespace() || c.is_control() || is_format(c) || is_filler(c)
}

/// Shows something on its own: not blank and not a combining mark.
fn is_visible(c: char) -> bool {
    !is_blank(c) && !is_combining_mark(c)
}

/// One online session as the registry sees it. The user's name is in the session
/// (`Session::Online`), not repeated here: an entry is per user online, and idle
/// memory counts.
#[derive(Debug, Clone)]
pub struct OnlineEntry {
    pub conn: ConnRef,
}

/// Who is online on this server. Ordered by id so lists are stable.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: BTreeMap<i64, OnlineEntry>,
    /// Changes with every insertion and removal (see `roster`).
    version: u64,
}

impl Registry {
    pub fn get(&self, id: i64) -> Option<&OnlineEntry> {
        self.by_id.get(&id)
    }

    /// Puts `id` online at `conn`; returns the entry it replaced, if any.
    pub fn insert(&mut self, id: i64, entry: OnlineEntry) -> Option<OnlineEntry> {
        self.version += 1;
        self.by_id.insert(id, entry)
    }

    /// Removes `id` only if its entry still points at `conn`.
    pub fn remove_if(&mut self, id: i64, conn: ConnRef) -> bool {
        if self.by_id.get(&id).is_some_and(|e| e.conn == conn) {
            self.by_id.remove(&id);
            self.version += 1;
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// A number that changes whenever someone comes or goes.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn ids(&self) -> Vec<i64> {
        self.by_id.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, &OnlineEntry)> {
        self.by_id.iter().map(|(id, e)| (*id, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banned_flag_is_stored_only_when_set() {
        let seed = r#"{"userId":7,"userPwd":"pw","userName":"s","sex":"m"}"#;
        let mut rec = UserRecord::from_json(seed).unwrap();
        assert!(!rec.banned);
        assert!(!rec.to_json().contains("banned"));
        rec.banned = true;
        let json = rec.to_json();
        assert!(json.contains(r#""banned":true"#), "{json}");
        let back = UserRecord::from_json(&json).unwrap();
        assert!(back.banned);
        assert_eq!(back.extra.get("sex"), Some(&serde_json::json!("m")));
        assert!(!back.extra.contains_key("banned"));
        assert!(UserRecord::from_json(r#"{"userId":7,"banned":"yes"}"#).is_err());
    }

    #[test]
    fn registration_rules() {
        assert!(validate_registration(1, "scott", "pw").is_ok());
        assert!(validate_registration(0, "scott", "pw").is_err());
        assert!(validate_registration(-5, "scott", "pw").is_err());
        assert!(validate_registration(1, "", "pw").is_err());
        assert!(validate_registration(1, "   ", "pw").is_err());
        assert!(validate_registration(1, "a\nb", "pw").is_err());
        assert!(validate_registration(1, &"x".repeat(33), "pw").is_err());
        assert!(validate_registration(1, &"é".repeat(32), "pw").is_ok());
        assert!(validate_registration(1, "scott", "").is_err());
        assert!(validate_registration(1, "scott", &"p".repeat(257)).is_err());
    }

    #[test]
    fn every_refusal_reads_as_the_client_is_told() {
        use InvalidRegistration as I;
        let cases = [
            (I::IdNotPositive, "userId must be a positive number"),
            (I::NameEmpty, "userName must not be empty"),
            (I::NameTooLong, "userName must be at most 32 characters"),
            (
                I::NameControl,
                "userName must not contain control characters",
            ),
            (
                I::NameBidiControl('\u{202E}'),
                "userName must not contain bidirectional control characters (found U+202E)",
            ),
            (
                I::NameFormat('\u{200B}'),
                "userName must not contain zero-width or other format characters (found U+200B)",
            ),
            (
                I::NameInvisible,
                "userName must contain at least one visible character",
            ),
            (
                I::NameBlankEnd,
                "userName must not start or end with whitespace or an invisible character",
            ),
            (
                I::NameCombiningStart,
                "userName must not start with a combining mark",
            ),
            (I::PasswordEmpty, "userPwd must not be empty"),
            (I::PasswordTooLong, "userPwd must be at most 256 bytes"),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
        assert_eq!(validate_registration(0, "a", "pw"), Err(I::IdNotPositive));
        assert_eq!(validate_registration(1, "a", ""), Err(I::PasswordEmpty));
        let bad = UserRecord::from_json("{").unwrap_err().to_string();
        assert!(bad.starts_with("bad user record: "), "{bad}");
    }

    fn name_error(name: &str) -> String {
        match validate_registration(1, name, "pw") {
            Ok(()) => panic!("{name:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn names_in_any_script_register() {
        for name in [
            "scott",
            "Zoë",
            "Zoe\u{0308}",
            "李雷",
            "José María",
            "O'Brien",
            "🙂",
            "❤\u{FE0F}",
            "1\u{FE0F}\u{20E3}",
            "سارة",
            "नमस्ते",
            "שָׁלוֹם",
            "Ω-7",
            "a\u{3000}b",
        ] {
            assert_eq!(validate_registration(1, name, "pw"), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn names_with_bidi_controls_are_refused() {
        for name in [
            "\u{202E}evil",
            "evil\u{202A}",
            "a\u{202B}b\u{202C}",
            "\u{2066}x\u{2069}",
            "x\u{2067}y",
            "x\u{2068}y",
            "abc\u{200E}",
            "abc\u{200F}def",
            "x\u{061C}y",
        ] {
            let e = name_error(name);
            assert!(e.contains("bidirectional control"), "{name:?}: {e}");
        }
        assert_eq!(
            name_error("\u{202E}evil"),
            "userName must not contain bidirectional control characters (found U+202E)"
        );
    }

    #[test]
    fn names_with_zero_width_or_format_characters_are_refused() {
        for name in [
            "alice\u{200B}",
            "\u{200B}",
            "\u{FEFF}bob",
            "al\u{200C}ice",
            "a\u{200D}b",
            "a\u{2060}b",
            "a\u{2064}b",
            "a\u{206F}b",
            "a\u{180E}b",
            "soft\u{00AD}hyphen",
            "\u{0600}1",
            "x\u{FFF9}",
            "x\u{110BD}",
            "x\u{13430}",
            "x\u{1BCA3}",
            "x\u{1D173}",
            "x\u{E0001}",
            "tag\u{E0041}",
            "x\u{E007F}",
            "x\u{034F}",
        ] {
            let e = name_error(name);
            assert!(e.contains("format characters"), "{name:?}: {e}");
        }
        assert_eq!(
            name_error("alice\u{200B}"),
            "userName must not contain zero-width or other format characters (found U+200B)"
        );
        assert!(name_error("\u{FEFF}bob").ends_with("(found U+FEFF)"));
    }

    #[test]
    fn names_with_nothing_visible_are_refused() {
        for name in [
            "   ",
            "\u{3164}",
            "\u{3164}\u{3164}",
            "\u{115F}\u{1160}",
            "\u{FFA0}",
            "\u{2800}",
            "\u{00A0}",
            "\u{3000}",
            "\u{0301}",
            "\u{FE0F}",
            " \u{0301} ",
        ] {
            assert_eq!(
                name_error(name),
                "userName must contain at least one visible character",
                "{name:?}"
            );
        }
    }

    #[test]
    fn names_padded_with_blanks_are_refused_not_trimmed() {
        for name in [
            " bob",
            "bob ",
            "\tbob",
            "bob\u{00A0}",
            "\u{2003}bob",
            "bob\u{3000}",
            "\u{3164}bob",
            "bob\u{3164}",
            "bob\u{2800}",
            "\u{FFA0}bob",
            "bob\u{115F}",
        ] {
            let e = name_error(name);
            assert!(
                e == "userName must not start or end with whitespace or an invisible character"
                    || e == "userName must not contain control characters",
                "{name:?}: {e}"
            );
        }
        assert_eq!(
            name_error("\u{0301}bob"),
            "userName must not start with a combining mark"
        );
    }

    #[test]
    fn name_character_classes() {
        for c in ' '..='~' {
            assert_eq!(is_visible(c), c != ' ', "{c:?}");
            assert!(
                !is_format(c) && !is_filler(c) && !is_combining_mark(c),
                "{c:?}"
            );
        }
        for c in "Zoë李雷سارةनमसतשלום🙂".chars() {
            assert!(is_visible(c), "{c:?}");
        }
        for c in "\u{094D}\u{0947}\u{05B8}\u{0651}\u{0308}\u{20E3}".chars() {
            assert!(is_combining_mark(c) && !is_visible(c), "{c:?}");
        }
        for c in "\u{061C}\u{200E}\u{200F}\u{202A}\u{202E}\u{2066}\u{2069}".chars() {
            assert!(is_bidi_control(c) && is_format(c), "{c:?}");
        }
    }

    #[test]
    fn seed_record_reads_and_debug_hides_secrets() {
        let r = UserRecord::from_json(
            r#"{"userId":100,"userPwd":"123456","userName":"Scott","userStatus":0,"sex":"m"}"#,
        )
        .unwrap();
        assert_eq!(r.id, 100);
        assert_eq!(r.legacy_pwd, "123456");
        assert!(r.pwd_hash.is_empty() && !r.stale_shape);
        assert!(!format!("{r:?}").contains("123456"));
        // Written back as it was, field for field.
        let back: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"userId":100,"userPwd":"123456","userName":"Scott","userStatus":0,"sex":"m"})
        );
    }

    #[test]
    fn the_hash_goes_in_user_pwd_and_unknown_fields_stay() {
        let ours = UserRecord {
            id: 1,
            name: "a".into(),
            pwd_hash: "$argon2id$x".into(),
            reg_token: "t".into(),
            ..UserRecord::default()
        };
        assert_eq!(
            ours.to_json(),
            r#"{"userId":1,"userPwd":"$argon2id$x","userName":"a","regToken":"t"}"#
        );
        assert_eq!(UserRecord::from_json(&ours.to_json()).unwrap(), ours);
        // Any hash scheme round-trips: `userPwd` equal to `pwdHash` is a hash.
        let other = UserRecord {
            pwd_hash: "$test$00ff".into(),
            ..ours.clone()
        };
        assert_eq!(UserRecord::from_json(&other.to_json()).unwrap(), other);
        // A record of the earlier shape: hash in `pwdHash`, no `userPwd`.
        let old = UserRecord::from_json(r#"{"userId":1,"userName":"a","pwdHash":"$argon2id$x"}"#)
            .unwrap();
        assert_eq!(old.pwd_hash, "$argon2id$x");
        assert!(old.legacy_pwd.is_empty() && old.stale_shape);
        let old2 = UserRecord::from_json(
            r#"{"userId":1,"userPwd":"","userName":"a","pwdHash":"$argon2id$x"}"#,
        )
        .unwrap();
        assert!(old2.stale_shape && old2.legacy_pwd.is_empty());
        // The seed's server compares userPwd as typed: nothing it can be sent matches.
        let json: serde_json::Value = serde_json::from_str(&old.to_json()).unwrap();
        assert_eq!(json["userPwd"], "$argon2id$x");
        // A hash found in `userPwd` alone (no `pwdHash`) is a hash too.
        let bare = UserRecord::from_json(r#"{"userId":1,"userPwd":"$argon2id$y"}"#).unwrap();
        assert_eq!(bare.pwd_hash, "$argon2id$y");
        assert!(bare.legacy_pwd.is_empty());
        assert!(UserRecord::from_json(r#"{"userName":"x"}"#).is_err());
        assert!(UserRecord::from_json(r#"{"userId":1,"userPwd":5}"#).is_err());
    }

    #[test]
    fn registry_removes_only_its_own_entry() {
        let mut reg = Registry::default();
        let a = ConnRef {
            key: 1,
            generation: 1,
        };
        let b = ConnRef {
            key: 2,
            generation: 1,
        };
        reg.insert(7, OnlineEntry { conn: a });
        let old = reg.insert(7, OnlineEntry { conn: b });
        assert_eq!(old.unwrap().conn, a);
        assert!(!reg.remove_if(7, a));
        assert!(reg.remove_if(7, b));
        assert!(reg.is_empty());
    }
}
