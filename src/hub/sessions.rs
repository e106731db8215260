//! Sessions: `LoginMes` and `RegisterMes` (a worker checks or hashes the password),
//! `PingMes` and `LogoutMes`, and what stands before a hash: the admission of hashing
//! jobs ([`Admission`], the one home of that decision) and the per-address rates of
//! failed logins (a login that succeeds is not counted: a classroom behind one
//! address logs in freely, a password guesser does not) and of registrations.
//!
//! On a login's success the caller gets `LoginResMes` 200 listing everyone online
//! (itself included), then its offline messages; the others get `NotifyUserStatusMes`
//! status 0 (`PresenceMes` for clients that logged in `compact`). If the user was
//! already online on another connection, that older session gets `ErrorResMes` 409
//! and is closed, and the others see no offline/online flicker.
//!
//! `RegisterResMes` 200 goes out only after the store committed the new user.
//!
//! A login still waiting for its hash when the job timeout has passed since it was
//! queued (every hashing thread busy for that long), and the time of one hash more
//! (in case a worker took it up just before), is answered busy then, with
//! `retryAfter`, from the hub's timer; its result, if it comes later, is dropped. A
//! registration waits for its result (it may have created the user), which a worker
//! gives at once for a job that waited longer than the timeout.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::chat::Chat;
use super::cluster::Cluster;
use super::config::HubConfig;
use super::cx::Cx;
use super::offline_delivery::OfflineDelivery;
use super::security::{Event, Reason, SecurityLog};
use crate::conn::{Pending, Session};
use crate::hub::admission::Admission;
use crate::job::{JobKind, LoginError, LoginOk, RegisterError};
use crate::metrics::{LoginOutcome, RegisterOutcome};
use crate::offline::OfflineSlot;
use crate::proto::{CodeRes, LoginMes, LoginResMes, RegisterMes, ServerMessage, code, status};
use crate::rate::PerAddr;
use crate::types::{ConnRef, Now};
use crate::users::{MAX_PASSWORD_BYTES, OnlineEntry, validate_registration};

/// The refusal text for a login or registration that would wait too long: when to try
/// again, rounded up to whole seconds.
fn busy(wait_ms: u64) -> String {
    format!(
        "server busy, try again in {} s",
        wait_ms.div_ceil(1000).max(1)
    )
}

/// Logins, registrations and what admits them.
#[derive(Debug)]
pub(crate) struct Sessions {
    /// Which logins and registrations are admitted, given what hashing delivers.
    admission: Admission,
    /// Failed logins per client address.
    login_limits: PerAddr,
    /// Logins waiting for their hash: when each was queued.
    waiting: HashMap<ConnRef, u64>,
    /// The same in the order queued, so the soonest deadline is the first (an entry
    /// whose login was answered meanwhile is skipped).
    queued: VecDeque<(u64, ConnRef)>,
    /// Logins answered busy at their deadline whose result has not come back: it is
    /// dropped when it does.
    given_up: HashSet<ConnRef>,
    /// Failed logins and registrations, for the operator (bounded).
    security: SecurityLog,
    /// Registrations per client address.
    register_limits: PerAddr,
}

impl Sessions {
    pub(crate) fn new(cfg: &HubConfig) -> Sessions {
        Sessions {
            admission: Admission::new(cfg.hash_workers, cfg.job_timeout_ms, cfg.hash_cost),
            login_limits: PerAddr::default(),
            waiting: HashMap::new(),
            queued: VecDeque::new(),
            given_up: HashSet::new(),
            security: SecurityLog::default(),
            register_limits: PerAddr::default(),
        }
    }
}

impl Sessions {
    /// Refuses a login or registration as busy: returns the refusal text and the
    /// time to come back in seconds. The login timeout starts again from then: a
    /// client that waits as asked is not closed for having waited.
    fn refuse_busy(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        wait_ms: u64,
        now: Now,
    ) -> (String, u64) {
        let c = cx.conn_mut(key);
        c.login_clock_ms = c.login_clock_ms.max(now.mono_ms.saturating_add(wait_ms));
        (busy(wait_ms), wait_ms.div_ceil(1000).max(1))
    }

    fn login_res(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        code: u16,
        error: &str,
        retry_after: Option<u64>,
    ) {
        // Counted by outcome; success is counted online.
        let outcome = match (code, retry_after) {
            (code::NO_SUCH_USER, _) => LoginOutcome::NoSuchUser,
            (code::WRONG_PASSWORD, _) => LoginOutcome::WrongPassword,
            (code::BANNED, _) => LoginOutcome::Banned,
            (_, Some(_)) => LoginOutcome::Busy,
            _ => LoginOutcome::Error,
        };
        cx.stats().logins[outcome] += 1;
        cx.reply(
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

    pub(crate) fn handle_login(&mut self, cx: &mut Cx<'_>, key: usize, m: LoginMes, now: Now) {
        if cx.conn(key).is_online() {
            cx.error(key, code::BAD_REQUEST, "already logged in");
            return;
        }
        if m.user_id <= 0 {
            let (code, text) = (code::NO_SUCH_USER, "no such user");
            self.login_failed(cx, key, m.user_id, code, text, now);
            return;
        }
        if m.user_pwd.len() > MAX_PASSWORD_BYTES {
            let (code, text) = (code::WRONG_PASSWORD, "wrong password");
            self.login_failed(cx, key, m.user_id, code, text, now);
            return;
        }
        if self.given_up.contains(&cx.conn_ref(key)) {
            // Its last login is still with a worker: one at a time.
            let wait = self.admission.estimate(now.mono_ms).max(1000);
            let (text, secs) = self.refuse_busy(cx, key, wait, now);
            self.login_res(cx, key, code::SERVER_ERROR, &text, Some(secs));
            return;
        }
        if self.over_login_rate(cx, key, now) {
            return;
        }
        let job = JobKind::Login {
            user_id: m.user_id,
            password: m.user_pwd.clone(),
            offline_batch: cx.cfg().offline_batch,
        };
        let user_id = m.user_id;
        match self.submit_hash(cx, key, job, now) {
            Ok(()) => {
                cx.login_started(key, user_id);
                let r = cx.conn_ref(key);
                self.waiting.insert(r, now.mono_ms);
                self.queued.push_back((now.mono_ms, r));
                let conn = cx.conn_mut(key);
                conn.offline = OfflineSlot::new(m.ack_offline);
                conn.compact = m.compact;
                if let Some(n) = m.max_frame {
                    conn.set_max_frame(n);
                }
                // Any extension declared: not the seed's client.
                conn.extended |= m.ack_offline || m.compact;
            }
            Err(wait_ms) => {
                let (text, secs) = self.refuse_busy(cx, key, wait_ms, now);
                self.login_res(cx, key, code::SERVER_ERROR, &text, Some(secs));
            }
        }
    }

    fn login_failed(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        user: i64,
        code: u16,
        text: &str,
        now: Now,
    ) {
        if matches!(code, code::NO_SUCH_USER | code::WRONG_PASSWORD) {
            // What guessing looks like: counted against the address.
            let ip = cx.conn(key).peer_ip;
            self.login_limits.take(ip, now.mono_ms, cx.cfg().login_rate);
        }
        let reason = match code {
            code::NO_SUCH_USER => Reason::NoSuchUser,
            code::BANNED => Reason::Banned,
            _ => Reason::WrongPassword,
        };
        let addr = cx.conn(key).peer_ip;
        self.security
            .note(now.mono_ms, addr, Event::Login { user, reason });
        self.login_res(cx, key, code, text, None);
        let conn = cx.conn_mut(key);
        conn.login_failures += 1;
        if conn.login_failures >= cx.cfg().max_login_failures {
            let reason = Reason::TooManyFailures;
            self.security
                .note(now.mono_ms, addr, Event::Login { user, reason });
            cx.error(key, code::TOO_MANY, "too many failed logins");
            cx.close(key, true, "too many failed logins", now);
        }
    }

    /// A login's result. Returns whether the connection goes on (the hub then
    /// handles the frames that waited); not if it is closing. The hub has announced
    /// the departures of this turn before a login that succeeded, so that a user who
    /// left and came back this turn is seen leaving, then coming back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn login_done(
        &mut self,
        cx: &mut Cx<'_>,
        chat: &mut Chat,
        cluster: Option<&mut Cluster>,
        offline: &mut OfflineDelivery,
        key: usize,
        user: i64,
        result: Result<LoginOk, LoginError>,
        now: Now,
    ) -> bool {
        if cx.conn(key).closing.is_some() {
            return false;
        }
        match result {
            Ok(ok) => go_online(cx, chat, cluster, offline, key, ok, now),
            Err(LoginError::NoSuchUser) => {
                self.login_failed(cx, key, user, code::NO_SUCH_USER, "no such user", now)
            }
            // A stored hash over the server's limits is not checked: to the client,
            // a wrong password (the worker logged it for the operator).
            Err(LoginError::WrongPassword | LoginError::CostlyHash) => {
                self.login_failed(cx, key, user, code::WRONG_PASSWORD, "wrong password", now)
            }
            Err(LoginError::Banned) => {
                let text = "this account is banned";
                self.login_failed(cx, key, user, code::BANNED, text, now)
            }
            Err(LoginError::Store(e)) if e.is_timed_out() => {
                let wait = self.admission.estimate(now.mono_ms);
                let (text, secs) = self.refuse_busy(cx, key, wait, now);
                self.login_res(cx, key, code::SERVER_ERROR, &text, Some(secs));
            }
            Err(LoginError::Store(e)) => {
                cx.store_error(&format!("login failed: {e}"));
                let text = "server error: storage unavailable";
                self.login_res(cx, key, code::SERVER_ERROR, text, None);
            }
        }
        true
    }

    fn register_res(&mut self, cx: &mut Cx<'_>, key: usize, code: u16, error: String) {
        // Counted by outcome.
        let outcome = match code {
            code::OK => RegisterOutcome::Ok,
            code::BAD_REQUEST | code::FORBIDDEN => RegisterOutcome::Refused,
            _ => RegisterOutcome::Error,
        };
        cx.stats().registrations[outcome] += 1;
        cx.reply(key, &ServerMessage::RegisterRes(CodeRes::new(code, error)));
    }

    fn register_busy(&mut self, cx: &mut Cx<'_>, key: usize, wait_ms: u64, now: Now) {
        cx.stats().registrations[RegisterOutcome::Busy] += 1;
        let (text, secs) = self.refuse_busy(cx, key, wait_ms, now);
        let mut res = CodeRes::new(code::SERVER_ERROR, text);
        res.retry_after = Some(secs);
        cx.reply(key, &ServerMessage::RegisterRes(res));
    }

    pub(crate) fn handle_register(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        m: RegisterMes,
        now: Now,
    ) {
        if let Some(n) = m.max_frame {
            cx.conn_mut(key).set_max_frame(n);
        }
        let u = m.user;
        let addr = cx.conn(key).peer_ip;
        let user = u.user_id;
        if !cx.cfg().registration_open {
            let reason = Reason::Closed;
            self.security
                .note(now.mono_ms, addr, Event::Registration { user, reason });
            let text = "registration is closed on this server: ask its operator for an account";
            self.register_res(cx, key, code::FORBIDDEN, text.into());
            return;
        }
        if let Err(e) = validate_registration(u.user_id, &u.user_name, &u.user_pwd) {
            let reason = Reason::Invalid;
            self.security
                .note(now.mono_ms, addr, Event::Registration { user, reason });
            self.register_res(cx, key, code::BAD_REQUEST, e.to_string());
            return;
        }
        if self.over_register_rate(cx, key, now) {
            return;
        }
        let job = JobKind::Register {
            user_id: u.user_id,
            name: u.user_name,
            password: u.user_pwd,
            // Stored as given: the record keeps the seed's shape.
            status: u.user_status,
            sex: u.sex,
        };
        match self.submit_hash(cx, key, job, now) {
            Ok(()) => cx.conn_mut(key).pending = Some(Pending::Register { user_id: user }),
            Err(wait_ms) => self.register_busy(cx, key, wait_ms, now),
        }
    }

    /// A registration's result; the hub then handles the frames that waited.
    pub(crate) fn register_done(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        result: Result<(), RegisterError>,
        now: Now,
    ) {
        match result {
            Ok(()) => self.register_res(cx, key, code::OK, String::new()),
            Err(RegisterError::Taken) => {
                let user = match cx.conn(key).pending {
                    Some(Pending::Register { user_id }) => user_id,
                    _ => 0,
                };
                let (addr, reason) = (cx.conn(key).peer_ip, Reason::Taken);
                self.security
                    .note(now.mono_ms, addr, Event::Registration { user, reason });
                self.register_res(cx, key, code::BAD_REQUEST, "user id already taken".into())
            }
            Err(RegisterError::Store(e)) if e.is_timed_out() => {
                let wait = self.admission.estimate(now.mono_ms);
                self.register_busy(cx, key, wait, now);
            }
            // The store could not tell whether the user was created.
            Err(RegisterError::Store(e)) if e.is_uncertain() => {
                log::warn!("register outcome unknown: {e}");
                self.register_res(
                    cx,
                    key,
                    code::SERVER_ERROR,
                    "server error: storage did not answer; the user may or may not be \
                     registered: try logging in"
                        .into(),
                )
            }
            Err(RegisterError::Store(e)) => {
                cx.store_error(&format!("register failed: {e}"));
                self.register_res(
                    cx,
                    key,
                    code::SERVER_ERROR,
                    "server error: storage unavailable".into(),
                )
            }
        }
    }
    pub(crate) fn handle_ping(cx: &mut Cx<'_>, key: usize) {
        let pong = cx.pong();
        cx.deliver(key, &pong);
    }

    pub(crate) fn handle_logout(cx: &mut Cx<'_>, key: usize, now: Now) {
        cx.go_offline(key, now);
        cx.close(key, true, "logged out", now);
    }

    /// Per-address limit on failed logins: with none left, a login is refused before
    /// it costs a hash (a login that succeeds takes nothing). Sends the refusal.
    fn over_login_rate(&mut self, cx: &mut Cx<'_>, key: usize, now: Now) -> bool {
        let (ip, rate) = (cx.conn(key).peer_ip, cx.cfg().login_rate);
        if self.login_limits.has(ip, now.mono_ms, rate) {
            return false;
        }
        let wait = self.login_limits.wait_secs(ip, now.mono_ms, rate);
        cx.summary().login_rate_refused += 1;
        let reason = Reason::LoginRate;
        self.security
            .note(now.mono_ms, ip, Event::Throttled { reason });
        cx.error_retry(
            key,
            code::TOO_MANY,
            "too many login attempts from your address; try again later",
            wait,
        );
        true
    }

    /// Per-address limit on registrations, each of which costs a password hash.
    /// Sends the refusal.
    fn over_register_rate(&mut self, cx: &mut Cx<'_>, key: usize, now: Now) -> bool {
        let (ip, rate) = (cx.conn(key).peer_ip, cx.cfg().register_rate);
        if self.register_limits.take(ip, now.mono_ms, rate) {
            return false;
        }
        let wait = self.register_limits.wait_secs(ip, now.mono_ms, rate);
        cx.summary().login_rate_refused += 1;
        cx.error_retry(
            key,
            code::TOO_MANY,
            "too many registrations from your address; try again later",
            wait,
        );
        true
    }

    /// Queues a password-hashing job (login or registration) if it can be served in
    /// time. `Err` carries the estimated wait in ms when it cannot.
    fn submit_hash(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        kind: JobKind,
        now: Now,
    ) -> Result<(), u64> {
        self.admission.check(now.mono_ms)?;
        if self.admission.queued() >= cx.cfg().max_hash_jobs {
            cx.summary().hash_refused += 1;
            return Err(self.admission.estimate(now.mono_ms).max(1000));
        }
        cx.submit_hashing(key, kind);
        self.admission.submitted(now.mono_ms);
        Ok(())
    }

    /// The login job for `r` came back: whether its result is still wanted (not if
    /// the login was answered busy at its deadline).
    pub(crate) fn login_result_wanted(&mut self, r: ConnRef) -> bool {
        if self.given_up.remove(&r) {
            return false;
        }
        self.waiting.remove(&r);
        self.skip_answered();
        true
    }

    /// Drops the first queued entries of logins no longer waiting.
    fn skip_answered(&mut self) {
        while let Some(&(at, r)) = self.queued.front() {
            if self.waiting.get(&r) == Some(&at) {
                break;
            }
            self.queued.pop_front();
        }
    }

    /// When the soonest waiting login is given up on (the job timeout and one hash
    /// after it was queued), if any waits.
    pub(crate) fn next_login_deadline(&self) -> Option<u64> {
        self.queued
            .front()
            .map(|&(at, _)| at.saturating_add(self.admission.give_up_after_ms()))
    }

    /// Answers busy every login that has waited for its hash past the job timeout (and
    /// one hash); returns their connections, whose frames that waited the hub then
    /// handles.
    pub(crate) fn expire_logins(&mut self, cx: &mut Cx<'_>, now: Now) -> Vec<usize> {
        let mut answered = Vec::new();
        let max_wait = self.admission.give_up_after_ms();
        while let Some(&(at, r)) = self.queued.front() {
            if self.waiting.get(&r) != Some(&at) {
                self.queued.pop_front();
                continue;
            }
            if at.saturating_add(max_wait) > now.mono_ms {
                break;
            }
            self.queued.pop_front();
            self.waiting.remove(&r);
            let Some(c) = cx.get(r) else { continue };
            if c.closing.is_some() || !matches!(c.pending, Some(Pending::Login { .. })) {
                // Closing: its result, when it comes, is dropped as for any closing
                // connection.
                continue;
            }
            self.given_up.insert(r);
            cx.login_given_up(r.key);
            cx.summary().hash_refused += 1;
            let wait = self.admission.estimate(now.mono_ms).max(1000);
            let (text, secs) = self.refuse_busy(cx, r.key, wait, now);
            self.login_res(cx, r.key, code::SERVER_ERROR, &text, Some(secs));
            answered.push(r.key);
        }
        answered
    }

    /// A password hash came back, after `took` on a worker (`None`: it waited past
    /// the job timeout); `hashed` whether it really hashed. Returns how long it waited.
    pub(crate) fn hash_done(&mut self, now: Now, took: Option<Duration>, hashed: bool) -> u64 {
        self.admission.completed(now.mono_ms, took, hashed)
    }

    /// Whether logins or registrations are waiting for a password hash.
    pub(crate) fn hashing(&self) -> bool {
        self.admission.hashing()
    }

    /// Hashing jobs queued or running.
    pub(crate) fn hashing_queued(&self) -> usize {
        self.admission.queued()
    }

    /// How long a new login would wait for a hashing thread, in ms.
    pub(crate) fn hashing_wait_ms(&self, now: Now) -> u64 {
        self.admission.estimate(now.mono_ms)
    }

    /// When the next round of writes may start (see `Admission::next_flush_at`).
    pub(crate) fn next_flush_at(
        &self,
        start: Instant,
        done: Instant,
        interval: Duration,
    ) -> Instant {
        self.admission.next_flush_at(start, done, interval)
    }

    /// Whether per-address limits are kept (housekeeping forgets full ones).
    pub(crate) fn has_limits(&self) -> bool {
        !self.login_limits.is_empty() || !self.register_limits.is_empty()
    }

    /// Forgets the full per-address buckets; returns the requests refused as busy
    /// since the last call, for the summary.
    pub(crate) fn housekeeping(&mut self, cfg: &HubConfig, now: Now) -> u64 {
        self.login_limits.prune(now.mono_ms, cfg.login_rate);
        self.security.flush(now.mono_ms);
        self.register_limits.prune(now.mono_ms, cfg.register_rate);
        self.admission.take_refused()
    }
}

/// A login succeeded: the session goes online here, the others are told, the cluster
/// hears of it, and the client gets the login reply and its first offline messages.
fn go_online(
    cx: &mut Cx<'_>,
    chat: &mut Chat,
    mut cluster: Option<&mut Cluster>,
    offline: &mut OfflineDelivery,
    key: usize,
    ok: LoginOk,
    now: Now,
) {
    let me = cx.conn_ref(key);
    let name: std::rc::Rc<str> = ok.name.as_str().into();
    cx.stats().logins[LoginOutcome::Ok] += 1;
    let conn = cx.conn_mut(key);
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
    let elsewhere = cluster
        .as_deref()
        .is_some_and(|c| c.online_elsewhere(ok.user_id));
    let roster_current = chat.roster_current(cx.core(), cluster.as_deref());
    let listed = cx.online().get(ok.user_id).is_some() || elsewhere;
    let replaced = cx.put_online(ok.user_id, entry);
    if roster_current {
        chat.follow_login(cx.core(), cluster.as_deref(), listed, ok.user_id, &name);
    }
    match replaced {
        Some(old) if old.conn != me && cx.get(old.conn).is_some() => {
            // The newer session wins. The old one is no longer in the registry, so
            // closing it tells nobody that the user went offline.
            log::info!(
                "user {} logged in again from {}: older session replaced",
                ok.user_id,
                cx.conn(key).peer()
            );
            // Told as the session it was (a seed client shows it as a message).
            cx.error(old.conn.key, code::CONFLICT, "logged in elsewhere");
            cx.conn_mut(old.conn.key).session = Session::Anonymous;
            cx.close(old.conn.key, true, "replaced by a newer login", now);
            cx.mark_presence(ok.user_id);
        }
        _ if elsewhere => {
            // Online on another node until now: this login replaces that session
            // (its node closes it on hearing of this one), with no flicker.
            log::info!(
                "user {} online here from {}, replacing a session elsewhere",
                ok.user_id,
                cx.conn(key).peer()
            );
            cx.mark_presence(ok.user_id);
        }
        _ => {
            log::info!("user {} online from {}", ok.user_id, cx.conn(key).peer());
            cx.note_presence(ok.user_id, status::ONLINE, &name, now);
        }
    }
    if let Some(c) = cluster.as_deref_mut() {
        c.login(ok.user_id, &name);
    }
    let conn = cx.conn(key);
    let (limit, compact) = (conn.max_frame(), conn.compact());
    // A client that declared a larger `maxFrame` than the seed's is told the server's
    // own limit, so that it never sends a frame that would be refused as too large.
    let announce = (limit > crate::proto::SEED_MAX_FRAME)
        .then(|| u32::try_from(cx.cfg().max_frame).unwrap_or(u32::MAX));
    let room = announce.map_or(0, |n| super::roster::max_frame_field(n).len());
    let mut parts = chat.login_reply(
        cx.core(),
        cluster.as_deref(),
        ok.user_id,
        limit - room,
        compact,
        now,
    );
    if let Some(n) = announce {
        parts = super::roster::with_max_frame(parts, n);
    }
    cx.reply_parts(key, &parts);
    let batch = cx.cfg().offline_batch;
    offline.deliver(cx, key, ok.offline, batch);
}
