//! An operator banned or removed a user (`chat-server users ban|remove`): their
//! sessions end now, with a word first.
//!
//! The store was changed before this runs (by the admin socket's thread, or by the
//! command line on Redis, which then publishes a cluster event every node takes), so
//! every login that reads the record from now on sees the change. A login in flight
//! read it before: it is refused when its result comes, whatever that says.
//!
//! A node of a cluster that was cut off from Redis missed what was published
//! meanwhile, bans included: when its link is back, it looks its users online up in
//! the store ([`BansCheck`]) and ends the sessions of the banned ones, as if it had
//! heard. (A removal is not caught that way: a store that lost its data, such as a
//! Redis restarted without persistence, knows nobody, and that must not end every
//! session. The removed user's session lasts until it ends; no login follows.)
#![forbid(unsafe_code)]

use super::cx::Cx;
use crate::conn::{Pending, Session};
use crate::job::JobKind;
use crate::store::StoreError;
use crate::types::Kick;
use crate::types::{ConnRef, Now};
use std::collections::HashMap;

/// How long after a failed or refused check for bans the next one is tried.
const BANS_RETRY_MS: u64 = 5_000;

/// Bans, kicks and removals: what the hub knows of them.
#[derive(Debug, Default)]
pub(crate) struct Moderation {
    /// The check of this node's users for bans after its cluster link came back.
    bans_check: BansCheck,
    /// Logins in flight of users an operator banned or removed meanwhile: refused
    /// when their result comes, whatever it says.
    revoked: HashMap<ConnRef, Kick>,
}

/// The check of this node's users online for bans (see `JobKind::CheckBans`).
#[derive(Debug, Default)]
struct BansCheck {
    /// From when one is wanted (`None`: none).
    due_ms: Option<u64>,
    in_flight: bool,
}

impl Moderation {
    /// Ends every session of `user` on this server: `ErrorResMes` (423 banned, 410
    /// removed, 401 kicked), then the close; the others see the user go offline (the
    /// caller announces the departures once it has ended every session it meant to).
    /// Logins of that user in flight are refused when they come back (not after a
    /// kick). Returns the number of sessions closed.
    pub(crate) fn end_sessions(
        &mut self,
        cx: &mut Cx<'_>,
        user: i64,
        kick: Kick,
        now: Now,
    ) -> usize {
        let (code, text) = kick.error();
        let reason = match kick {
            Kick::Banned => "banned by an operator",
            Kick::Removed => "account removed by an operator",
            Kick::Kicked => "kicked by an operator",
        };
        let mut closed = 0;
        // The registry's session, and any other connection logged in as this user
        // (none today: a newer login replaces the older one at once).
        let keys: Vec<usize> = cx
            .conns()
            .filter(|(_, c)| c.closing.is_none())
            .filter(
                |(_, c)| matches!(&c.session, Session::Online { user_id, .. } if *user_id == user),
            )
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            cx.error(key, code, text);
            cx.close(key, true, reason, now);
            closed += 1;
        }
        let logging_in: Vec<usize> = cx
            .conns()
            .filter(|(_, c)| c.pending == Some(Pending::Login { user_id: user }))
            .map(|(k, _)| k)
            .collect();
        // A kick leaves them free to log in again: logins in flight go on.
        if kick.login_error().is_some() {
            for key in logging_in {
                let r = cx.conn_ref(key);
                self.revoked.insert(r, kick);
            }
        }
        if closed > 0 {
            log::info!("user {user}: {closed} sessions closed ({reason})");
        }
        cx.stats().kicked += closed as u64;
        closed
    }

    /// A login of `r` has come back: the kick of its user meanwhile, if any.
    pub(crate) fn revoked(&mut self, r: ConnRef) -> Option<Kick> {
        self.revoked.remove(&r)
    }

    /// Whether no login in flight waits to be refused (tests).
    #[cfg(test)]
    pub(crate) fn nothing_revoked(&self) -> bool {
        self.revoked.is_empty()
    }

    /// The cluster link is back (a snapshot of presence came): bans published while it
    /// was down were not heard here, so the users online here are looked up in the
    /// store.
    pub(crate) fn check_bans_soon(&mut self, cx: &mut Cx<'_>, now: Now) {
        self.bans_check.due_ms = Some(now.mono_ms);
        self.check_bans_if_due(cx, now);
    }

    /// Submits the check if one is wanted now and none is in flight.
    pub(crate) fn check_bans_if_due(&mut self, cx: &mut Cx<'_>, now: Now) {
        let c = &self.bans_check;
        if c.in_flight || c.due_ms.is_none_or(|due| due > now.mono_ms) {
            return;
        }
        // Logins in flight too: one may have read the record before the ban.
        let mut users = cx.online().ids();
        users.extend(
            cx.users_logging_in()
                .filter(|u| cx.online().get(*u).is_none()),
        );
        if users.is_empty() {
            self.bans_check.due_ms = None;
            return;
        }
        if cx.submit(None, JobKind::CheckBans { users }) {
            self.bans_check = BansCheck {
                due_ms: None,
                in_flight: true,
            };
        } else {
            self.bans_check.due_ms = Some(now.mono_ms + BANS_RETRY_MS);
        }
    }

    /// The store said which users online or logging in here are banned: their sessions
    /// end and their logins in flight are refused (the caller announces the departures
    /// once all are gone, so that nobody leaving hears of the others). A failed check
    /// is tried again a little later.
    pub(crate) fn bans_checked(
        &mut self,
        cx: &mut Cx<'_>,
        result: Result<Vec<i64>, StoreError>,
        now: Now,
    ) {
        self.bans_check.in_flight = false;
        match result {
            Ok(banned) => {
                log::debug!("users online checked for bans: {} banned", banned.len());
                for user in banned {
                    if self.end_sessions(cx, user, Kick::Banned, now) > 0 {
                        log::info!("user {user}: banned while this node was cut off from Redis");
                    }
                }
            }
            Err(e) => {
                cx.store_error(&format!("users online not checked for bans: {e}"));
                let retry = now.mono_ms + BANS_RETRY_MS;
                let due = self.bans_check.due_ms.map_or(retry, |d| d.min(retry));
                self.bans_check.due_ms = Some(due);
            }
        }
        self.check_bans_if_due(cx, now);
    }
}
