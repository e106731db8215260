//! Secrets kept out of what is printed: the password of a URL (`--redis
//! redis://user:PASSWORD@host/0`, or `?password=` in its query) is masked as `***`
//! wherever a URL, or a text that may carry one (an error), reaches a log line, an
//! error message or a metric.
//!
//! [`SecretUrl`] holds a URL whose `Display` and `Debug` are masked; the URL itself is
//! only had through [`SecretUrl::expose`], for connecting.

use std::fmt;

/// What a password is printed as.
pub const MASK: &str = "***";

/// `url` with its password masked: `scheme://user:***@host...`, `scheme://:***@host`;
/// a user part without a `:` (which some clients take for the password) is masked
/// whole, and so is the value of a `password=` or `pass=` query parameter. A text
/// that is no URL comes back as it is.
pub fn url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_at = scheme_end + 3;
    let rest = &url[rest_at..];
    // The authority ends at the first '/', '?' or '#'; its user part at its last '@'.
    let auth_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_len];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_at]);
    match authority.rfind('@') {
        Some(at) => {
            let user = &authority[..at];
            match user.find(':') {
                Some(colon) => {
                    out.push_str(&user[..colon]);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(MASK),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[auth_len..];
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let (query, fragment) = match tail[q + 1..].find('#') {
                Some(h) => tail[q + 1..].split_at(h),
                None => (&tail[q + 1..], ""),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_password_key(k) => format!("{k}={MASK}"),
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
            out.push_str(fragment);
        }
        None => out.push_str(tail),
    }
    out
}

fn is_password_key(k: &str) -> bool {
    ["password", "pass", "passwd", "pwd"]
        .iter()
        .any(|p| k.eq_ignore_ascii_case(p))
}

/// `text` with the password of every URL in it masked (a URL runs from its scheme to
/// the next blank, quote or bracket): for error messages that may quote a URL.
pub fn text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    let ends = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        // The scheme: the letters, digits, '+', '-' and '.' just before "://".
        let start = rest[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[sep..].find(ends).map_or(rest.len(), |i| sep + i);
        out.push_str(&rest[..start]);
        out.push_str(&url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A URL that may carry a password: printed masked ([`url`]), exposed only to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The URL as given, password and all: for connecting, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&url(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", url(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_of_urls_are_masked() {
        assert_eq!(
            url("redis://:s3cret@host:6380/1"),
            "redis://:***@host:6380/1"
        );
        assert_eq!(
            url("redis://user:s3cret@127.0.0.1:6379/0"),
            "redis://user:***@127.0.0.1:6379/0"
        );
        assert_eq!(url("rediss://s3cret@host"), "rediss://***@host");
        assert_eq!(url("redis://us:p@ss:w@host/0"), "redis://us:***@host/0");
        assert_eq!(
            url("redis+unix:///run/redis.sock?db=1&pass=s3cret#x"),
            "redis+unix:///run/redis.sock?db=1&pass=***#x"
        );
        assert_eq!(url("redis://host:6380"), "redis://host:6380");
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(url(""), "");
    }

    #[test]
    fn urls_inside_a_text_are_masked() {
        assert_eq!(
            text("bad Redis URL \"redis://:s3cret@h/0\": x; and redis://u:pw@h2 too"),
            "bad Redis URL \"redis://:***@h/0\": x; and redis://u:***@h2 too"
        );
        assert_eq!(text("no url here"), "no url here");
        assert_eq!(text("://:pw@h"), "://:***@h");
    }

    #[test]
    fn a_secret_url_prints_masked() {
        let s = SecretUrl::new("redis://:s3cret@h/0");
        assert_eq!(s.to_string(), "redis://:***@h/0");
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(s.expose(), "redis://:s3cret@h/0");
    }
}
