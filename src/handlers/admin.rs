//! An operator banned or removed a user (`chat-server users ban|remove`): their
//! sessions end now, with a word first.
//!
//! The store was changed before this runs (by the admin socket's thread, or by the
//! command line on Redis, which then publishes a cluster event every node takes), so
//! every login that reads the record from now on sees the change. A login in flight
//! read it before: it is refused when its result comes, whatever that says.
#![forbid(unsafe_code)]

use crate::admin::Kick;
use crate::conn::{Pending, Session};
use crate::hub::{Hub, Now};

impl Hub {
    /// Ends every session of `user` on this server: `ErrorResMes` (423 banned, 410
    /// removed), then the close; the others see the user go offline. Logins of that
    /// user in flight are refused when they come back. Returns the number of sessions
    /// closed.
    pub fn handle_admin(&mut self, user: i64, kick: Kick, now: Now) -> usize {
        let (code, text) = kick.error();
        let reason = match kick {
            Kick::Banned => "banned by an operator",
            Kick::Removed => "account removed by an operator",
        };
        let mut closed = 0;
        // The registry's session, and any other connection logged in as this user
        // (none today: a newer login replaces the older one at once).
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.closing.is_none())
            .filter(
                |(_, c)| matches!(&c.session, Session::Online { user_id, .. } if *user_id == user),
            )
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.error(key, code, text);
            self.close(key, true, reason, now);
            closed += 1;
        }
        let logging_in: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.pending == Some(Pending::Login { user_id: user }))
            .map(|(k, _)| k)
            .collect();
        for key in logging_in {
            let r = self.conn_ref(key);
            self.revoked.insert(r, kick);
        }
        if closed > 0 {
            log::info!("user {user}: {closed} sessions closed ({reason})");
        }
        self.stats.kicked += closed as u64;
        self.announce_departures(now);
        closed
    }
}
