//! How things look on the terminal: one readable line per event.

use std::io::Write;
use std::sync::Mutex;

use chat::proto::{HistoryEntry, SmsMes, SmsPrivateMes, code, status};

/// Prints one whole line at once, so lines from the reader thread and the menus never
/// interleave mid-line.
pub fn line(s: &str) {
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// Where pushes go on a terminal: the line editor's printer, which prints above the
/// line being typed and draws it again (see `set_printer`).
type Printer = Box<dyn FnMut(String) + Send>;
static PRINTER: Mutex<Option<Printer>> = Mutex::new(None);

/// From now on, pushes go through `print` (while no plain prompt is showing).
pub fn set_printer(print: Printer) {
    *PRINTER.lock().unwrap_or_else(|p| p.into_inner()) = Some(print);
}

/// The plain prompt on screen while the menu thread waits for input, if any (through
/// a pipe, or a password on a terminal).
static PROMPT: Mutex<Option<String>> = Mutex::new(None);

fn current_prompt() -> std::sync::MutexGuard<'static, Option<String>> {
    PROMPT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prints a prompt (no newline) and flushes it.
pub fn prompt(s: &str) {
    let mut p = current_prompt();
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = write!(out, "{s}");
    let _ = out.flush();
    *p = Some(s.to_string());
}

/// The user answered the prompt.
pub fn answered() {
    *current_prompt() = None;
}

/// Prints something the server pushed. If a prompt is showing, the line goes below it
/// and the prompt is shown again, so the push never sticks to the prompt's text.
pub fn push(s: &str) {
    let p = current_prompt();
    if p.is_none() {
        let mut printer = PRINTER.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(print) = printer.as_mut() {
            print(format!("{s}\n"));
            return;
        }
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = match &*p {
        Some(prompt) => write!(out, "\n{s}\n{prompt}"),
        None => writeln!(out, "{s}"),
    };
    let _ = out.flush();
}

pub fn who(id: i64, name: &str) -> String {
    if name.is_empty() {
        format!("user {id}")
    } else {
        format!("{name} ({id})")
    }
}

/// `HH:MM` (UTC) of a unix-millisecond time.
pub fn clock(unix_ms: u64) -> String {
    let mins = unix_ms / 60_000;
    format!("{:02}:{:02} UTC", (mins / 60) % 24, mins % 60)
}

pub fn group(m: &SmsMes) -> String {
    format!("[group] {}: {}", who(m.user_id, &m.user_name), m.content)
}

pub fn private(m: &SmsPrivateMes) -> String {
    if m.offline {
        format!(
            "[private, sent while you were offline, {}] {}: {}",
            clock(m.time),
            who(m.user_id, &m.user_name),
            m.content
        )
    } else {
        format!("[private] {}: {}", who(m.user_id, &m.user_name), m.content)
    }
}

/// One entry of history: `[HH:MM UTC] scott (100): hi`; in a private conversation the
/// caller's own lines read `you`.
pub fn earlier(e: &HistoryEntry, me: i64) -> String {
    let from = if e.to_user_id.is_some() && e.user_id == me {
        "you".to_string()
    } else {
        who(e.user_id, &e.user_name)
    };
    format!("[{}] {from}: {}", clock(e.time), e.content)
}

pub fn status(id: i64, name: &str, s: u8) -> String {
    let what = match s {
        status::ONLINE => "is online",
        status::OFFLINE => "went offline",
        status::BUSY => "is busy",
        _ => "changed status",
    };
    format!("* {} {what}", who(id, name))
}

pub fn server_error(c: u16, text: &str, retry_after: Option<u64>) -> String {
    let plain = match c {
        code::CONFLICT => {
            "You were logged out: this account logged in from somewhere else.".to_string()
        }
        code::UNAUTHORIZED => format!("Not logged in ({text})."),
        code::TOO_MANY => match retry_after {
            Some(s) => format!("Too fast: {}.", again_in(s)),
            None => format!("Too fast: {text}."),
        },
        code::TOO_LARGE => "That was too large for the server.".to_string(),
        code::PARTIAL => return cut_short(text),
        code::UNAVAILABLE => format!("The server is unavailable: {text}."),
        _ => format!("The server refused that: {text}."),
    };
    format!("! {plain}")
}

/// The server's 206 about a group message ("your message was cut short for 3 users
/// whose clients read at most 8096 bytes"): it went out, whole to everyone whose client
/// can take it. Not a refusal.
pub fn cut_short(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = words
        .windows(3)
        .find(|w| w[0] == "for" && w[2].starts_with("user"))
        .and_then(|w| w[1].parse::<u64>().ok());
    let whom = match n {
        Some(1) => "1 user whose client cannot take it".to_string(),
        Some(n) => format!("{n} users whose clients cannot take it"),
        None => "some users whose clients cannot take it".to_string(),
    };
    format!("Your group message was sent; cut short for {whom} whole.")
}

/// A frame not sent for its size, as the end of a sentence: "it is too long ...".
pub fn too_large(len: usize, max: usize) -> String {
    format!(
        "it is too long for this server ({} bytes as sent, and it takes at most {}; \
         quotes, backslashes and letters beyond ASCII count more than one)",
        thousands(len),
        thousands(max)
    )
}

/// `70000` as `70,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn again_in(secs: u64) -> String {
    format!("try again in {secs} s")
}

/// A busy refusal as a sentence part: "the server is busy; try again in 3 s". The time
/// is the reply's `retryAfter`; a server that does not send it may still say it in
/// the text ("server busy, try again in 3 s"), which is used as it stands.
pub fn busy(error: &str, retry_after: Option<u64>) -> String {
    if let Some(s) = retry_after {
        return format!("the server is busy; {}", again_in(s));
    }
    match error.split_once(", ") {
        Some((_, rest)) => format!("the server is busy; {rest}"),
        None => "the server is busy; try again later".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn busy_refusals_read_as_a_sentence() {
        // The number, not the text, when the server sends one.
        assert_eq!(
            super::busy("server busy, try again in 3 s", Some(9)),
            "the server is busy; try again in 9 s"
        );
        assert_eq!(
            super::busy("server busy", Some(2)),
            "the server is busy; try again in 2 s"
        );
        // Older servers: the text.
        assert_eq!(
            super::busy("server busy, try again in 3 s", None),
            "the server is busy; try again in 3 s"
        );
        assert_eq!(
            super::busy("server busy", None),
            "the server is busy; try again later"
        );
    }

    #[test]
    fn a_cut_short_group_message_reads_as_sent() {
        let text = "your message was cut short for 3 users whose clients read at most 8096 bytes";
        assert_eq!(
            super::cut_short(text),
            "Your group message was sent; cut short for 3 users whose clients cannot take it whole."
        );
        assert_eq!(
            super::server_error(206, &text.replace(" 3 ", " 1 "), None),
            "Your group message was sent; cut short for 1 user whose client cannot take it whole."
        );
        assert!(super::cut_short("partial").contains("for some users"));
    }

    #[test]
    fn sizes_read_with_thousands() {
        assert_eq!(super::thousands(7), "7");
        assert_eq!(super::thousands(8096), "8,096");
        assert_eq!(super::thousands(140_012), "140,012");
        assert_eq!(super::thousands(16_777_216), "16,777,216");
    }

    #[test]
    fn rate_limits_use_the_number_when_there_is_one() {
        let text = "too many login attempts from your address; try again later";
        assert_eq!(
            super::server_error(429, text, Some(4)),
            "! Too fast: try again in 4 s."
        );
        assert_eq!(
            super::server_error(429, text, None),
            format!("! Too fast: {text}.")
        );
    }
}
