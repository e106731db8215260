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
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::conn::ConnRef;
use crate::proto::UserInfo;

/// Longest accepted user name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 256;

/// A user as the store keeps it. The JSON shape follows the seed's Redis schema
/// (`userId`, `userName`), plus `pwdHash` for the argon2id PHC string. A record left by
/// the seed's own server has a plaintext `userPwd` instead; it is read as is and
/// upgraded to a hash at the first successful login.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
pub struct UserRecord {
    #[serde(rename = "userId")]
    pub id: i64,
    #[serde(rename = "userName", default)]
    pub name: String,
    #[serde(rename = "pwdHash", default, skip_serializing_if = "String::is_empty")]
    pub pwd_hash: String,
    /// Plaintext from a seed-era record. Never written by this server.
    #[serde(rename = "userPwd", default, skip_serializing_if = "String::is_empty")]
    pub legacy_pwd: String,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("has_hash", &!self.pwd_hash.is_empty())
            .field("has_legacy_pwd", &!self.legacy_pwd.is_empty())
            .finish()
    }
}

impl UserRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("record serialises")
    }

    pub fn from_json(s: &str) -> Result<UserRecord, String> {
        serde_json::from_str(s).map_err(|e| format!("bad user record: {e}"))
    }
}

/// Checks the fields of a registration; the error text goes to the client as is.
///
/// A name must show the others what it is: besides the length and no control
/// characters, it has no bidirectional controls and no zero-width or other format
/// characters anywhere, at least one visible character, no whitespace or blank filler
/// at either end (refused, not trimmed), and does not start with a combining mark.
/// Only registration checks this; existing accounts keep their names.
pub fn validate_registration(id: i64, name: &str, password: &str) -> Result<(), String> {
    if id <= 0 {
        return Err("userId must be a positive number".into());
    }
    if name.is_empty() {
        return Err("userName must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "userName must be at most {MAX_NAME_CHARS} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("userName must not contain control characters".into());
    }
    if let Some(c) = name.chars().find(|&c| is_bidi_control(c)) {
        return Err(format!(
            "userName must not contain bidirectional control characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    if let Some(c) = name.chars().find(|&c| is_format(c)) {
        return Err(format!(
            "userName must not contain zero-width or other format characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    if !name.chars().any(is_visible) {
        return Err("userName must contain at least one visible character".into());
    }
    let (first, last) = (name.chars().next(), name.chars().next_back());
    if first.is_some_and(is_blank) || last.is_some_and(is_blank) {
        return Err(
            "userName must not start or end with whitespace or an invisible character".into(),
        );
    }
    if first.is_some_and(is_combining_mark) {
        return Err("userName must not start with a combining mark".into());
    }
    if password.is_empty() {
        return Err("userPwd must not be empty".into());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "userPwd must be at most {MAX_PASSWORD_BYTES} bytes"
        ));
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

/// One online session as the registry sees it.
#[derive(Debug, Clone)]
pub struct OnlineEntry {
    pub conn: ConnRef,
    pub name: Rc<str>,
}

/// Who is online on this server. Ordered by id so lists are stable.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: BTreeMap<i64, OnlineEntry>,
}

impl Registry {
    pub fn get(&self, id: i64) -> Option<&OnlineEntry> {
        self.by_id.get(&id)
    }

    /// Puts `id` online at `conn`; returns the entry it replaced, if any.
    pub fn insert(&mut self, id: i64, entry: OnlineEntry) -> Option<OnlineEntry> {
        self.by_id.insert(id, entry)
    }

    /// Removes `id` only if its entry still points at `conn`.
    pub fn remove_if(&mut self, id: i64, conn: ConnRef) -> bool {
        if self.by_id.get(&id).is_some_and(|e| e.conn == conn) {
            self.by_id.remove(&id);
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn ids(&self) -> Vec<i64> {
        self.by_id.keys().copied().collect()
    }

    pub fn infos(&self) -> Vec<UserInfo> {
        self.by_id
            .iter()
            .map(|(id, e)| UserInfo {
                user_id: *id,
                user_name: e.name.to_string(),
            })
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, &OnlineEntry)> {
        self.by_id.iter().map(|(id, e)| (*id, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn name_error(name: &str) -> String {
        match validate_registration(1, name, "pw") {
            Ok(()) => panic!("{name:?} was accepted"),
            Err(e) => e,
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
        let r = UserRecord::from_json(r#"{"userId":100,"userPwd":"123456","userName":"Scott"}"#)
            .unwrap();
        assert_eq!(r.id, 100);
        assert_eq!(r.legacy_pwd, "123456");
        assert!(!format!("{r:?}").contains("123456"));
        let ours = UserRecord {
            id: 1,
            name: "a".into(),
            pwd_hash: "$argon2id$x".into(),
            legacy_pwd: String::new(),
        };
        assert_eq!(
            ours.to_json(),
            r#"{"userId":1,"userName":"a","pwdHash":"$argon2id$x"}"#
        );
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
        reg.insert(
            7,
            OnlineEntry {
                conn: a,
                name: "x".into(),
            },
        );
        let old = reg.insert(
            7,
            OnlineEntry {
                conn: b,
                name: "x".into(),
            },
        );
        assert_eq!(old.unwrap().conn, a);
        assert!(!reg.remove_if(7, a));
        assert!(reg.remove_if(7, b));
        assert!(reg.is_empty());
    }
}
