//! Frames that fit what a client can read.
//!
//! The seed's client reads each frame into a buffer of 8,096 bytes and fails on a
//! longer body, and a message's JSON is encoded twice on the wire, so a message of
//! quotes or non-ASCII text grows several times over. A connection is taken for a
//! seed client until it declares `maxFrame` in its login or registration; nothing
//! longer than it can read is ever queued for it (the hub checks every frame). Where a
//! message would not fit, such a client gets the message cut short, with a note
//! saying so, and the sender is told.
#![forbid(unsafe_code)]

use crate::proto::{self, HEADER_LEN, HistoryEntry, HistoryResMes, json_escaped, kind};

/// Added to a message cut short for a client that cannot read it whole.
pub const CUT_NOTE: &str = " [… cut short: the whole message is too long for this client]";

/// Whether an encoded frame (prefix included) fits a client that reads bodies of at
/// most `limit` bytes.
pub fn fits(frame: &[u8], limit: usize) -> bool {
    fits_len(frame.len(), limit)
}

/// [`fits`] for a frame of `len` bytes, header included.
pub fn fits_len(len: usize, limit: usize) -> bool {
    len <= limit + HEADER_LEN
}

/// The longest start of `content` (whole characters) that, followed by
/// [`CUT_NOTE`], encodes with `encode` into a frame that fits `limit`. `None` if not
/// even the note alone fits.
pub fn cut_to_fit(
    content: &str,
    limit: usize,
    encode: impl Fn(&str) -> Vec<u8>,
) -> Option<Vec<u8>> {
    let with = |n: usize| -> Vec<u8> {
        let end = content
            .char_indices()
            .nth(n)
            .map_or(content.len(), |(i, _)| i);
        encode(&format!("{}{CUT_NOTE}", &content[..end]))
    };
    let chars = content.chars().count();
    let (mut lo, mut hi) = (0usize, chars);
    if !fits(&with(0), limit) {
        return None;
    }
    // The largest n with with(n) fitting: the encoded size only grows with n.
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(&with(mid), limit) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(with(lo))
}

/// The largest `n` in `0..=max` for which `fits_with(n)` holds, assuming it holds for
/// 0 and, once false, stays false.
pub fn largest(max: usize, fits_with: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, max);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits_with(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// The bytes one character of a message's content takes on the wire, where content
/// is escaped twice (once in the message's JSON, once more in the envelope's `data`
/// string): `"` and `\` grow to four, a control character to three or seven.
pub fn wire_len(c: char) -> usize {
    match c {
        '"' | '\\' => 4,
        '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 3,
        '\0'..='\u{1f}' => 7,
        _ => c.len_utf8(),
    }
}

/// `HistoryResMes` as a frame of at most `limit` body bytes, in one pass: each entry
/// is encoded once, from the end kept first, its size added to the envelope's, until
/// the next would not fit; the page is then put together from the pieces, never
/// encoded again. The result is the frame [`proto::encode`] gives for the longest run
/// that fits (`more` set when some were left out), byte for byte: of the newest
/// entries (a page back in time), or with `oldest` of the oldest (a page forwards).
/// If not even one fits alone, that one cut short (with [`CUT_NOTE`]).
pub fn history_page(messages: &[HistoryEntry], more: bool, limit: usize, oldest: bool) -> Vec<u8> {
    let cap = limit + HEADER_LEN;
    let shell = PageShell::new();
    let mut parts: Vec<String> = Vec::new();
    let mut sum = 0usize;
    let order: Box<dyn Iterator<Item = &HistoryEntry>> = if oldest {
        Box::new(messages.iter())
    } else {
        Box::new(messages.iter().rev())
    };
    for e in order {
        let part = escaped_entry(e);
        let add = part.len() + usize::from(!parts.is_empty());
        if shell.len(true) + sum + add > cap {
            break;
        }
        sum += add;
        parts.push(part);
    }
    if !oldest {
        parts.reverse();
    }
    if parts.len() == messages.len() {
        // All of them: with `more` as it is if that fits (`false` is a byte longer).
        let more = more || shell.len(false) + sum > cap;
        return shell.frame(&parts, sum, more);
    }
    if !parts.is_empty() {
        return shell.frame(&parts, sum, true);
    }
    // Not even one alone fits: the one kept first, cut short.
    let first = if oldest {
        messages.first()
    } else {
        messages.last()
    };
    let first = first.expect("a page that does not fit has entries");
    let noted = |content: String| {
        escaped_entry(&HistoryEntry {
            content,
            ..first.clone()
        })
    };
    let bare = noted(CUT_NOTE.to_string());
    if shell.len(true) + bare.len() > cap {
        return shell.frame(&[], 0, true);
    }
    let mut room = cap - shell.len(true) - bare.len();
    let mut end = 0;
    for (i, c) in first.content.char_indices() {
        let w = wire_len(c);
        if w > room {
            break;
        }
        room -= w;
        end = i + c.len_utf8();
    }
    let part = noted(format!("{}{CUT_NOTE}", &first.content[..end]));
    let len = part.len();
    shell.frame(&[part], len, true)
}

/// An entry's JSON as it reads inside the envelope's `data` string.
fn escaped_entry(e: &HistoryEntry) -> String {
    json_escaped(&serde_json::to_string(e).expect("an entry serialises"))
}

/// The envelope of a `HistoryResMes` around its list of entries: what comes before
/// the first entry, and after the last (with `more` true or false).
struct PageShell {
    head: Vec<u8>,
    tail: [Vec<u8>; 2],
}

impl PageShell {
    fn new() -> PageShell {
        let empty = |more| {
            let msg = HistoryResMes {
                messages: Vec::new(),
                more,
            };
            proto::encode(kind::HISTORY_RES, &msg)
        };
        let split = |frame: Vec<u8>| {
            let at = frame
                .windows(2)
                .position(|w| w == b"[]")
                .expect("an empty list")
                + 1;
            (frame[HEADER_LEN..at].to_vec(), frame[at..].to_vec())
        };
        let (head, with_false) = split(empty(false));
        let (_, with_true) = split(empty(true));
        PageShell {
            head,
            tail: [with_false, with_true],
        }
    }

    /// The frame's length, header included, with no entries.
    fn len(&self, more: bool) -> usize {
        HEADER_LEN + self.head.len() + self.tail[usize::from(more)].len()
    }

    /// The frame of `parts` (in order, `sum` bytes with the commas between them).
    fn frame(&self, parts: &[String], sum: usize, more: bool) -> Vec<u8> {
        let tail = &self.tail[usize::from(more)];
        let body = self.head.len() + sum + tail.len();
        let mut out = Vec::with_capacity(HEADER_LEN + body);
        out.extend_from_slice(&(body as u32).to_be_bytes());
        out.extend_from_slice(&self.head);
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(p.as_bytes());
        }
        out.extend_from_slice(tail);
        debug_assert_eq!(out.len(), HEADER_LEN + body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ServerMessage, SmsMes};
    use proptest::prelude::*;

    fn sms(content: &str) -> Vec<u8> {
        ServerMessage::Sms(SmsMes {
            content: content.into(),
            user_id: 1,
            user_name: "scott".into(),
            ..Default::default()
        })
        .encode()
    }

    #[test]
    fn messages_that_grow_on_the_wire_are_cut_to_fit() {
        for content in ["\"".repeat(8000), "字".repeat(8000), "a".repeat(20_000)] {
            assert!(!fits(&sms(&content), 8096));
            let cut = cut_to_fit(&content, 8096, sms).unwrap();
            assert!(fits(&cut, 8096), "{}", cut.len());
            // As much as fits: one more character would not.
            let ServerMessage::Sms(m) = ServerMessage::parse(&cut[HEADER_LEN..]).unwrap() else {
                panic!()
            };
            assert!(m.content.ends_with(CUT_NOTE));
            let kept = m.content.strip_suffix(CUT_NOTE).unwrap();
            assert!(content.starts_with(kept));
            let one_more = content
                .chars()
                .take(kept.chars().count() + 1)
                .collect::<String>();
            assert!(!fits(&sms(&format!("{one_more}{CUT_NOTE}")), 8096));
        }
    }

    #[test]
    fn nothing_fits_below_the_note() {
        assert_eq!(cut_to_fit("hello", 10, sms), None);
    }

    /// The exact fit as found by trying: the whole page if it fits, else the largest
    /// run of newest entries that fits (found by encoding the page again and again),
    /// else the newest cut short.
    fn page_by_trying(
        messages: &[HistoryEntry],
        more: bool,
        limit: usize,
        oldest: bool,
    ) -> Vec<u8> {
        let encode = |messages: &[HistoryEntry], more: bool| {
            proto::encode(
                kind::HISTORY_RES,
                &HistoryResMes {
                    messages: messages.to_vec(),
                    more,
                },
            )
        };
        let frame = encode(messages, more);
        if fits(&frame, limit) || messages.is_empty() {
            return frame;
        }
        let len = messages.len();
        let run = |n: usize| {
            if oldest {
                &messages[..n]
            } else {
                &messages[len - n..]
            }
        };
        let n = largest(len, |n| fits(&encode(run(n), true), limit));
        if n > 0 {
            return encode(run(n), true);
        }
        let newest = if oldest {
            messages.first().unwrap()
        } else {
            messages.last().unwrap()
        };
        let cut = |content: &str| {
            let e = HistoryEntry {
                content: content.to_string(),
                ..newest.clone()
            };
            encode(std::slice::from_ref(&e), true)
        };
        cut_to_fit(&newest.content, limit, cut).unwrap_or_else(|| encode(&[], true))
    }

    fn entry() -> impl Strategy<Value = HistoryEntry> {
        let content = prop_oneof![
            "[a-z ]{0,300}",
            "[\"\\\\\n\t\u{1}\u{7f}]{0,200}",
            "[字é😀a\"<>&\u{2028}]{0,200}",
            "\\PC{0,400}",
            ".{0,50}",
        ];
        (
            0u64..1 << 40,
            any::<u64>(),
            any::<i64>(),
            "\\PC{0,12}",
            content,
            proptest::option::of(any::<i64>()),
        )
            .prop_map(
                |(id, time, user_id, user_name, content, to_user_id)| HistoryEntry {
                    id,
                    time,
                    user_id,
                    user_name,
                    content,
                    to_user_id,
                },
            )
    }

    proptest! {
        #[test]
        fn one_pass_gives_the_page_found_by_trying(
            messages in proptest::collection::vec(entry(), 0..40),
            more in any::<bool>(),
            limit in 60usize..12_000,
            oldest in any::<bool>(),
        ) {
            let got = history_page(&messages, more, limit, oldest);
            let want = page_by_trying(&messages, more, limit, oldest);
            prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
            prop_assert!(fits(&got, limit) || !fits(&want, limit));
        }

        #[test]
        fn wire_len_is_what_two_escapings_make(c in any::<char>()) {
            let twice = json_escaped(&json_escaped(&c.to_string()));
            prop_assert_eq!(wire_len(c), twice.len());
        }
    }

    #[test]
    fn a_whole_page_at_the_edge_is_sent_as_it_is() {
        let e = |content: &str| HistoryEntry {
            id: 7,
            user_id: 1,
            content: content.into(),
            ..HistoryEntry::default()
        };
        let page = [e("a"), e("\"é\n"), e(&"x".repeat(900))];
        for (more, oldest) in [(false, false), (true, false), (false, true), (true, true)] {
            let whole = page_by_trying(&page, more, usize::MAX / 2, oldest);
            for limit in whole.len() - HEADER_LEN - 3..whole.len() {
                assert_eq!(
                    history_page(&page, more, limit, oldest),
                    page_by_trying(&page, more, limit, oldest),
                    "limit {limit}"
                );
            }
        }
    }

    #[test]
    fn largest_finds_the_edge() {
        assert_eq!(largest(100, |n| n <= 37), 37);
        assert_eq!(largest(100, |_| true), 100);
        assert_eq!(largest(100, |n| n == 0), 0);
    }
}
