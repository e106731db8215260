//! The security log: every failed login and registration, and every refusal by the
//! per-address rate, as one line of a fixed shape under the log target
//! `chat::security`, so that fail2ban (or a grep) can act on it:
//!
//! ```text
//! ... [WARN ] (main) chat::security: login failed: user=100 addr=203.0.113.7 reason=wrong-password
//! ... [WARN ] (main) chat::security: registration failed: user=300 addr=203.0.113.7 reason=taken
//! ... [WARN ] (main) chat::security: throttled: addr=203.0.113.7 reason=login-rate
//! ```
//!
//! The fields come in this order, `addr` is the client's IP address (no port), and
//! `reason` is one word of [`Reason`]. The lines are bounded: at most
//! [`LINES_PER_SECOND`] a second; beyond that they are counted, and one line says how
//! many were left out, so that a flood from many addresses cannot fill the disk.
#![forbid(unsafe_code)]

use std::net::IpAddr;

/// Most security lines written in one second.
pub(crate) const LINES_PER_SECOND: u32 = 50;

/// Why a login or registration failed, as the line's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    NoSuchUser,
    WrongPassword,
    Banned,
    /// Too many failed logins on one connection: it is closed.
    TooManyFailures,
    /// Registration: the id is taken.
    Taken,
    /// Registration: an id, name or password the server does not take.
    Invalid,
    /// Registration is closed on this server.
    Closed,
    /// The per-address rate of logins and registrations.
    LoginRate,
}

impl Reason {
    fn word(self) -> &'static str {
        match self {
            Reason::NoSuchUser => "no-such-user",
            Reason::WrongPassword => "wrong-password",
            Reason::Banned => "banned",
            Reason::TooManyFailures => "too-many-failures",
            Reason::Taken => "taken",
            Reason::Invalid => "invalid",
            Reason::Closed => "registration-closed",
            Reason::LoginRate => "login-rate",
        }
    }
}

/// What happened, for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Login { user: i64, reason: Reason },
    Registration { user: i64, reason: Reason },
    Throttled { reason: Reason },
}

/// The bound on security lines (one per hub).
#[derive(Debug, Default)]
pub(crate) struct SecurityLog {
    /// The second (of the monotonic clock, in ms / 1000) being counted.
    second: u64,
    written: u32,
    left_out: u64,
}

impl SecurityLog {
    /// Logs `event` from `addr`, within the bound.
    pub(crate) fn note(&mut self, now_ms: u64, addr: IpAddr, event: Event) {
        let (left_out, line) = self.lines(now_ms, addr, event);
        for l in left_out.iter().chain(line.iter()) {
            log::warn!(target: "chat::security", "{l}");
        }
    }

    /// Says how many lines the last second left out, once that second is over
    /// (housekeeping: a flood that stopped is still reported).
    pub(crate) fn flush(&mut self, now_ms: u64) {
        if now_ms / 1000 != self.second && self.left_out > 0 {
            log::warn!(
                target: "chat::security",
                "{} security lines left out (over {LINES_PER_SECOND} a second)",
                self.left_out
            );
            self.left_out = 0;
        }
    }

    /// The lines to write for `event`: first the count left out in an earlier
    /// second, if any; then the event's own, unless over the bound.
    fn lines(
        &mut self,
        now_ms: u64,
        addr: IpAddr,
        event: Event,
    ) -> (Option<String>, Option<String>) {
        let second = now_ms / 1000;
        let mut head = None;
        if second != self.second {
            if self.left_out > 0 {
                head = Some(format!(
                    "{} security lines left out (over {LINES_PER_SECOND} a second)",
                    self.left_out
                ));
            }
            self.second = second;
            self.written = 0;
            self.left_out = 0;
        }
        if self.written >= LINES_PER_SECOND {
            self.left_out += 1;
            return (head, None);
        }
        self.written += 1;
        let body = match event {
            Event::Login { user, reason } => {
                format!(
                    "login failed: user={user} addr={addr} reason={}",
                    reason.word()
                )
            }
            Event::Registration { user, reason } => format!(
                "registration failed: user={user} addr={addr} reason={}",
                reason.word()
            ),
            Event::Throttled { reason } => {
                format!("throttled: addr={addr} reason={}", reason.word())
            }
        };
        (head, Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_one_shape_and_are_bounded_per_second() {
        let mut log = SecurityLog::default();
        let addr: IpAddr = "203.0.113.7".parse().unwrap();
        let login = Event::Login {
            user: 100,
            reason: Reason::WrongPassword,
        };
        assert_eq!(
            log.lines(1_000, addr, login),
            (
                None,
                Some("login failed: user=100 addr=203.0.113.7 reason=wrong-password".into())
            )
        );
        let reg = Event::Registration {
            user: 300,
            reason: Reason::Taken,
        };
        assert_eq!(
            log.lines(1_001, "::1".parse().unwrap(), reg).1.unwrap(),
            "registration failed: user=300 addr=::1 reason=taken"
        );
        for _ in 2..LINES_PER_SECOND {
            assert!(log.lines(1_500, addr, login).1.is_some());
        }
        for _ in 0..7 {
            assert_eq!(log.lines(1_999, addr, login), (None, None));
        }
        let next = Event::Throttled {
            reason: Reason::LoginRate,
        };
        assert_eq!(
            log.lines(2_000, addr, next),
            (
                Some("7 security lines left out (over 50 a second)".into()),
                Some("throttled: addr=203.0.113.7 reason=login-rate".into())
            )
        );
    }
}
