//! `LoginMes`: a worker checks the password (argon2id) and fetches the first offline
//! messages; then the session goes online here.
//!
//! On success the caller gets `LoginResMes` 200 listing everyone online (itself
//! included), then its offline messages; the others get `NotifyUserStatusMes` status 0
//! (`PresenceMes` for clients that logged in `compact`).
//! If the user was already online on another connection, that older session gets
//! `ErrorResMes` 409 and is closed, and the others see no offline/online flicker.
#![forbid(unsafe_code)]

use crate::conn::Session;
use crate::fit;
use crate::hub::{Hub, Now};
use crate::job::{JobKind, LoginError, LoginOk};
use crate::offline::OfflineSlot;
use crate::proto::{self, LoginMes, LoginResMes, ServerMessage, code, kind, status};
use crate::roster::Listing;
use crate::types::Part;
use crate::users::{MAX_PASSWORD_BYTES, OnlineEntry};

/// The refusal text for a login or registration that would wait too long: when to try
/// again, rounded up to whole seconds.
pub(crate) fn busy(wait_ms: u64) -> String {
    format!(
        "server busy, try again in {} s",
        wait_ms.div_ceil(1000).max(1)
    )
}

impl Hub {
    /// Refuses a login or registration as busy: returns the refusal text and the
    /// time to come back in seconds. The login timeout starts again from then: a
    /// client that waits as asked is not closed for having waited.
    pub(crate) fn refuse_busy(&mut self, key: usize, wait_ms: u64, now: Now) -> (String, u64) {
        let c = &mut self.core.conns[key];
        c.login_clock_ms = c.login_clock_ms.max(now.mono_ms.saturating_add(wait_ms));
        (busy(wait_ms), wait_ms.div_ceil(1000).max(1))
    }

    fn login_res(&mut self, key: usize, code: u16, error: &str, retry_after: Option<u64>) {
        // Counted by outcome (`metrics::LOGIN_OUTCOMES`); success is counted online.
        let outcome = match (code, retry_after) {
            (code::NO_SUCH_USER, _) => 1,
            (code::WRONG_PASSWORD, _) => 2,
            (code::BANNED, _) => 3,
            (_, Some(_)) => 4,
            _ => 5,
        };
        self.stats.logins[outcome] += 1;
        self.cx().reply(
            key,
            &ServerMessage::LoginRes(LoginResMes {
                code,
                users_id: Vec::new(),
                error: error.to_string(),
                retry_after,
                ..LoginResMes::default()
            }),
        );
    }

    pub(crate) fn handle_login(&mut self, key: usize, m: LoginMes, now: Now) {
        if self.core.conns[key].is_online() {
            self.cx().error(key, code::BAD_REQUEST, "already logged in");
            return;
        }
        if m.user_id <= 0 {
            self.login_failed(key, code::NO_SUCH_USER, "no such user", now);
            return;
        }
        if m.user_pwd.len() > MAX_PASSWORD_BYTES {
            self.login_failed(key, code::WRONG_PASSWORD, "wrong password", now);
            return;
        }
        if self.over_login_rate(key, now) {
            return;
        }
        let job = JobKind::Login {
            user_id: m.user_id,
            password: m.user_pwd.clone(),
            offline_batch: self.core.cfg.offline_batch,
        };
        let user_id = m.user_id;
        match self.core.submit_hash(key, job, now) {
            Ok(()) => {
                self.core.login_started(key, user_id);
                let conn = &mut self.core.conns[key];
                conn.offline = OfflineSlot::new(m.ack_offline);
                conn.compact = m.compact;
                if let Some(n) = m.max_frame {
                    conn.set_max_frame(n);
                }
            }
            Err(wait_ms) => {
                let (text, secs) = self.refuse_busy(key, wait_ms, now);
                self.login_res(key, code::SERVER_ERROR, &text, Some(secs));
            }
        }
    }

    /// The login reply for a client that reads frames of at most `limit` bytes: the
    /// whole lists if they fit (the names as `users`, or as `names` for a `compact`
    /// client); else without the names; else the caller
    /// and as many others as fit (the rest it learns from the notices). Made of the
    /// roster's shared blocks, which are built again only if who is online changed
    /// otherwise than by logins.
    fn login_reply(&mut self, me: i64, limit: usize, compact: bool, now: Now) -> Vec<Part> {
        self.roster_used_ms = now.mono_ms;
        let version = self.roster_version();
        if !self.roster.is_current(version) {
            let infos = self.all_infos();
            self.roster.rebuild(
                version,
                infos.iter().map(|u| (u.user_id, u.user_name.as_str())),
            );
        }
        let named = if compact {
            Listing::Names
        } else {
            Listing::Users
        };
        for listing in [named, Listing::Ids] {
            if self.roster.body_len(listing) <= limit {
                return self.roster.reply(listing);
            }
        }
        let others: Vec<i64> = self.roster.ids().filter(|&id| id != me).collect();
        let with = |n: usize| {
            let r = LoginResMes {
                code: code::OK,
                users_id: std::iter::once(me)
                    .chain(others[..n].iter().copied())
                    .collect(),
                ..LoginResMes::default()
            };
            proto::encode(kind::LOGIN_RES, &r)
        };
        let n = fit::largest(others.len(), |n| fit::fits(&with(n), limit));
        vec![Part::whole(with(n).into())]
    }

    fn login_failed(&mut self, key: usize, code: u16, text: &str, now: Now) {
        self.login_res(key, code, text, None);
        let conn = &mut self.core.conns[key];
        conn.login_failures += 1;
        if conn.login_failures >= self.core.cfg.max_login_failures {
            self.cx()
                .error(key, code::TOO_MANY, "too many failed logins");
            self.core.close(key, true, "too many failed logins", now);
        }
    }

    pub(crate) fn login_done(&mut self, key: usize, result: Result<LoginOk, LoginError>, now: Now) {
        if self.core.conns[key].closing.is_some() {
            return;
        }
        match result {
            Ok(ok) => self.go_online(key, ok, now),
            Err(LoginError::NoSuchUser) => {
                self.login_failed(key, code::NO_SUCH_USER, "no such user", now)
            }
            Err(LoginError::WrongPassword) => {
                self.login_failed(key, code::WRONG_PASSWORD, "wrong password", now)
            }
            Err(LoginError::Banned) => {
                self.login_failed(key, code::BANNED, "this account is banned", now)
            }
            Err(LoginError::Store(e)) if e.is_timed_out() => {
                let wait = self.core.admission.estimate(now.mono_ms);
                let (text, secs) = self.refuse_busy(key, wait, now);
                self.login_res(key, code::SERVER_ERROR, &text, Some(secs));
            }
            Err(LoginError::Store(e)) => {
                self.cx().store_error(&format!("login failed: {e}"));
                let text = "server error: storage unavailable";
                self.login_res(key, code::SERVER_ERROR, text, None);
            }
        }
        self.resume(key, now);
    }

    fn go_online(&mut self, key: usize, ok: LoginOk, now: Now) {
        // Departures first, so that a user who left and came back this turn is seen
        // leaving, then coming back.
        self.announce_departures(now);
        let me = self.core.conn_ref(key);
        let name: std::rc::Rc<str> = ok.name.as_str().into();
        self.stats.logins[0] += 1;
        let conn = &mut self.core.conns[key];
        conn.login_failures = 0;
        // Online: the login timeout no longer applies, and its timer is dropped at the
        // next housekeeping.
        conn.armed_ms = 0;
        conn.session = Session::Online {
            user_id: ok.user_id,
            name: name.clone(),
        };
        let entry = OnlineEntry { conn: me };
        // The roster follows a login without being built again.
        let roster_current = self.roster.is_current(self.roster_version());
        let listed =
            self.core.online.get(ok.user_id).is_some() || self.online_elsewhere(ok.user_id);
        let replaced = self.core.online.insert(ok.user_id, entry);
        if roster_current {
            let version = self.roster_version();
            if listed {
                self.roster.touch(version);
            } else {
                self.roster.push(version, ok.user_id, &name);
            }
        }
        match replaced {
            Some(old) if old.conn != me && self.core.get(old.conn).is_some() => {
                // The newer session wins. The old one is no longer in the registry, so
                // closing it tells nobody that the user went offline.
                log::info!(
                    "user {} logged in again: older session replaced",
                    ok.user_id
                );
                self.core.conns[old.conn.key].session = Session::Anonymous;
                self.cx()
                    .error(old.conn.key, code::CONFLICT, "logged in elsewhere");
                self.core
                    .close(old.conn.key, true, "replaced by a newer login", now);
                self.core.mark_presence(ok.user_id);
            }
            _ if self.online_elsewhere(ok.user_id) => {
                // Online on another node until now: this login replaces that session
                // (its node closes it on hearing of this one), with no flicker.
                log::info!(
                    "user {} online here, replacing a session elsewhere",
                    ok.user_id
                );
                self.core.mark_presence(ok.user_id);
            }
            _ => {
                log::info!("user {} online", ok.user_id);
                self.core
                    .note_presence(ok.user_id, status::ONLINE, &name, now);
            }
        }
        if let Some(c) = self.cluster.as_mut() {
            c.login(ok.user_id, &name);
        }
        let conn = &self.core.conns[key];
        let parts = self.login_reply(ok.user_id, conn.max_frame(), conn.compact(), now);
        self.cx().reply_parts(key, &parts);
        let batch = self.core.cfg.offline_batch;
        self.offline.deliver(cx!(self), key, ok.offline, batch);
    }
}
