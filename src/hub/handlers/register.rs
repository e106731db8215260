//! `RegisterMes`: validate, then a worker hashes the password and creates the user.
//! `RegisterResMes` 200 goes out only after the store committed the new user.
#![forbid(unsafe_code)]

use crate::conn::Pending;
use crate::hub::{Hub, Now};
use crate::job::{JobKind, RegisterError};
use crate::proto::{CodeRes, RegisterMes, ServerMessage, code};
use crate::users::validate_registration;

impl Hub {
    fn register_res(&mut self, key: usize, code: u16, error: String) {
        // Counted by outcome (`metrics::REGISTER_OUTCOMES`).
        let outcome = match code {
            code::OK => 0,
            code::BAD_REQUEST => 1,
            _ => 3,
        };
        self.stats.registrations[outcome] += 1;
        self.cx()
            .reply(key, &ServerMessage::RegisterRes(CodeRes::new(code, error)));
    }

    fn register_busy(&mut self, key: usize, wait_ms: u64, now: Now) {
        self.stats.registrations[2] += 1;
        let (text, secs) = self.refuse_busy(key, wait_ms, now);
        let mut res = CodeRes::new(code::SERVER_ERROR, text);
        res.retry_after = Some(secs);
        self.cx().reply(key, &ServerMessage::RegisterRes(res));
    }

    pub(crate) fn handle_register(&mut self, key: usize, m: RegisterMes, now: Now) {
        if let Some(n) = m.max_frame {
            self.core.conns[key].set_max_frame(n);
        }
        let u = m.user;
        if let Err(e) = validate_registration(u.user_id, &u.user_name, &u.user_pwd) {
            self.register_res(key, code::BAD_REQUEST, e);
            return;
        }
        if self.over_login_rate(key, now) {
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
        match self.core.submit_hash(key, job, now) {
            Ok(()) => self.core.conns[key].pending = Some(Pending::Register),
            Err(wait_ms) => self.register_busy(key, wait_ms, now),
        }
    }

    pub(crate) fn register_done(
        &mut self,
        key: usize,
        result: Result<(), RegisterError>,
        now: Now,
    ) {
        match result {
            Ok(()) => self.register_res(key, code::OK, String::new()),
            Err(RegisterError::Taken) => {
                self.register_res(key, code::BAD_REQUEST, "user id already taken".into())
            }
            Err(RegisterError::Store(e)) if e.is_timed_out() => {
                let wait = self.core.admission.estimate(now.mono_ms);
                self.register_busy(key, wait, now);
            }
            // The store could not tell whether the user was created.
            Err(RegisterError::Store(e)) if e.is_uncertain() => {
                log::warn!("register outcome unknown: {e}");
                self.register_res(
                    key,
                    code::SERVER_ERROR,
                    "server error: storage did not answer; the user may or may not be \
                     registered: try logging in"
                        .into(),
                )
            }
            Err(RegisterError::Store(e)) => {
                self.cx().store_error(&format!("register failed: {e}"));
                self.register_res(
                    key,
                    code::SERVER_ERROR,
                    "server error: storage unavailable".into(),
                )
            }
        }
        self.resume(key, now);
    }
}
