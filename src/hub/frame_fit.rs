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

use crate::proto::HEADER_LEN;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ServerMessage, SmsMes};

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

    #[test]
    fn largest_finds_the_edge() {
        assert_eq!(largest(100, |n| n <= 37), 37);
        assert_eq!(largest(100, |_| true), 100);
        assert_eq!(largest(100, |n| n == 0), 0);
    }
}
