//! Deterministic tests of what operators do to a running hub: a ban or a removal ends
//! the user's sessions (a word first, then the close), refuses the logins in flight,
//! and reaches every node of a cluster as an event; and the counters a scrape shows.

use crate::cluster::{Event, Input};
use crate::hub::testkit::{Harness, login_msg};
use crate::metrics::{FrameType, Lane, LoginOutcome};
use crate::ops::admin::{Kick, Request, apply};
use crate::proto::{ClientMessage, CodeRes, LoginResMes, ServerMessage, SmsMes, code, status};
use crate::store::Store;

fn h() -> Harness {
    Harness::new(crate::hub::testkit::test_config())
}

fn err(code: u16, text: &str) -> ServerMessage {
    ServerMessage::Error(CodeRes::new(code, text))
}

fn offline(id: i64) -> ServerMessage {
    ServerMessage::NotifyUserStatus(crate::proto::NotifyUserStatusMes {
        user_id: id,
        status: status::OFFLINE,
        user_name: format!("u{id}"),
    })
}

fn login_refused(code: u16, text: &str) -> ServerMessage {
    ServerMessage::LoginRes(LoginResMes {
        code,
        error: text.into(),
        ..LoginResMes::default()
    })
}

/// What the admin socket's thread does: the store first, then the hub.
fn operator(t: &mut Harness, req: Request) -> usize {
    let done = apply(&mut t.store.clone(), req).expect("applied");
    match done.kick {
        Some((user, kick)) => t.admin(user, kick),
        None => 0,
    }
}

#[test]
fn a_ban_closes_the_session_with_a_word_and_refuses_the_next_login() {
    let mut t = h();
    let [a, b] = t.everyone_online([1, 2]);
    assert_eq!(operator(&mut t, Request::Ban { id: 2 }), 1);
    assert_eq!(t.recv(b), [err(code::BANNED, "this account is banned")]);
    assert!(t.is_closed(b));
    assert_eq!(t.recv(a), [offline(2)]);
    assert_eq!(t.hub.stats.kicked, 1);
    // The right password now gets a clear refusal; a wrong one is still just wrong.
    let c = t.connect();
    t.send(c, &login_msg(2, "nope"));
    t.run_jobs();
    assert_eq!(
        t.recv(c),
        [login_refused(code::WRONG_PASSWORD, "wrong password")]
    );
    t.send(c, &login_msg(2, "pw2"));
    t.run_jobs();
    assert_eq!(
        t.recv(c),
        [login_refused(code::BANNED, "this account is banned")]
    );
    assert!(t.recv(a).is_empty(), "nobody hears of a refused login");
    // Unbanned, the same connection logs in.
    assert_eq!(operator(&mut t, Request::Unban { id: 2 }), 0);
    t.send(c, &login_msg(2, "pw2"));
    t.run_jobs();
    assert!(matches!(&t.recv(c)[..], [ServerMessage::LoginRes(r)] if r.code == 200));
    assert_eq!(
        t.hub.stats.logins[LoginOutcome::Banned],
        1,
        "one login refused as banned"
    );
}

#[test]
fn a_login_in_flight_when_the_ban_lands_is_refused() {
    let mut t = h();
    t.register(3);
    let [a] = t.everyone_online([4]);
    let c = t.connect();
    t.send(c, &login_msg(3, "pw3"));
    assert_eq!(t.jobs.len(), 1, "the login is with a worker");
    // The worker read the record before the ban: its answer says "ok".
    let job = t.jobs.pop_front().unwrap();
    let outcome = crate::job::execute(
        &mut t.store.clone(),
        &crate::hub::testkit::TestPasswords,
        job.kind,
    );
    assert!(matches!(outcome, crate::job::Outcome::Login(Ok(_))));
    assert_eq!(operator(&mut t, Request::Ban { id: 3 }), 0);
    t.feed(crate::job::JobResult {
        conn: job.conn,
        outcome,
        took: Some(std::time::Duration::from_millis(1)),
    });
    assert_eq!(
        t.recv(c),
        [login_refused(code::BANNED, "this account is banned")]
    );
    assert!(t.recv(a).is_empty(), "never seen online");
    assert!(t.hub.nothing_revoked());
    assert_eq!(t.hub.online_count(), 1);
}

#[test]
fn a_removal_closes_the_session_and_deletes_the_account_and_its_messages() {
    let mut t = h();
    let [a, b] = t.everyone_online([5, 6]);
    t.hangup(b);
    t.recv(a);
    t.send(
        a,
        &ClientMessage::Private(crate::proto::SmsPrivateMes {
            to_user_id: 6,
            content: "kept for 6".into(),
            ..Default::default()
        }),
    );
    t.run_jobs();
    t.recv(a);
    assert_eq!(t.store.offline_count(6), 1);
    let b = t.login(6);
    t.recv(a);
    t.hangup(b);
    t.recv(a);
    let b = t.login(6);
    t.recv(a);
    assert_eq!(operator(&mut t, Request::Remove { id: 6 }), 1);
    assert_eq!(t.recv(b), [err(code::GONE, "this account was removed")]);
    assert!(t.is_closed(b));
    assert_eq!(t.recv(a), [offline(6)]);
    assert_eq!(t.store.offline_count(6), 0);
    let c = t.connect();
    t.send(c, &login_msg(6, "pw6"));
    t.run_jobs();
    assert_eq!(
        t.recv(c),
        [login_refused(code::NO_SUCH_USER, "no such user")]
    );
}

#[test]
fn a_new_password_ends_no_session_but_the_old_password() {
    let mut t = h();
    let [a] = t.everyone_online([7]);
    let hash = crate::job::Passwords::hash(&crate::hub::testkit::TestPasswords, "new").unwrap();
    // The admin path insists on argon2 hashes; the test store takes its own.
    t.store
        .clone()
        .modify_user(7, &mut |r| r.pwd_hash = hash.clone())
        .unwrap();
    t.send(a, &ClientMessage::OnlineUsers);
    assert!(matches!(&t.recv(a)[..], [ServerMessage::OnlineUsersRes(_)]));
    let c = t.connect();
    t.send(c, &login_msg(7, "pw7"));
    t.run_jobs();
    assert_eq!(
        t.recv(c),
        [login_refused(code::WRONG_PASSWORD, "wrong password")]
    );
    t.send(c, &login_msg(7, "new"));
    t.run_jobs();
    assert!(matches!(&t.recv(c)[..], [ServerMessage::LoginRes(r)] if r.code == 200));
}

#[test]
fn a_kick_event_ends_the_session_on_every_node_that_has_one() {
    let mut a = h();
    let mut b = h();
    b.store = a.store.clone();
    a.hub.enable_cluster("a", 5_000);
    b.hub.enable_cluster("b", 5_000);
    a.cluster(Input::Link(true));
    b.cluster(Input::Link(true));
    a.register(8);
    let c = b.login(8);
    let ev = Event::Kick {
        node: "chat-server-users-1".into(),
        user: 8,
        kick: Kick::Banned,
    };
    a.cluster(Input::Event(ev.clone()));
    b.cluster(Input::Event(ev));
    assert_eq!(b.recv(c), [err(code::BANNED, "this account is banned")]);
    assert!(b.is_closed(c));
    assert_eq!(a.hub.stats.kicked, 0);
    assert_eq!(b.hub.stats.kicked, 1);
}

#[test]
fn the_counters_follow_what_happened() {
    let mut t = h();
    let [a, b] = t.everyone_online([10, 11]);
    t.send(
        a,
        &ClientMessage::Sms(SmsMes {
            content: "hi".into(),
            ..Default::default()
        }),
    );
    t.recv(b);
    let c = t.connect();
    t.send(c, &login_msg(10, "bad"));
    t.send(c, &login_msg(99, "x"));
    t.run_jobs();
    t.recv(c);
    t.send_bytes(c, &(1_000_000u32).to_be_bytes());
    t.recv(c);
    let m = t.hub.metrics(t.now);
    let st = &m.stats;
    assert_eq!(m.connections, 2);
    assert_eq!(m.online_here, 2);
    assert_eq!(st.logins, [2, 1, 1, 0, 0, 0]);
    assert_eq!(st.registrations, [2, 0, 0, 0]);
    assert_eq!(st.frames_by_type[FrameType::Login], 4, "four LoginMes");
    assert_eq!(st.frames_by_type[FrameType::Register], 2, "two RegisterMes");
    assert_eq!(st.frames_by_type[FrameType::Sms], 1, "one SmsMes");
    assert_eq!(st.group_messages, 1);
    assert_eq!(st.refused_too_large, 1);
    assert_eq!(
        st.job_seconds[Lane::Hash].count(),
        6,
        "every login and registration"
    );
    assert_eq!(st.hash_latency.count(), 6);
    assert!(st.bytes_in > 0 && st.bytes_out > st.bytes_in / 2);
    let text = crate::metrics::render(&m);
    assert!(
        text.contains("chat_logins_total{outcome=\"wrong_password\"} 1\n"),
        "{text}"
    );
}

/// A node of a cluster that was cut off from Redis when an operator banned some of its
/// users never heard of it: once its link is back (the presence snapshot comes), it
/// looks its users up in the store and ends the banned ones' sessions. A user whose
/// record is missing keeps the session: the store may have lost its data (a Redis
/// restarted without persistence knows nobody).
#[test]
fn a_node_back_from_an_outage_ends_the_sessions_of_users_banned_meanwhile() {
    let mut t = h();
    t.hub.enable_cluster("a", 5_000);
    t.cluster(Input::Link(true));
    let [x, y, z, w] = t.everyone_online([1, 2, 3, 4]);
    t.recv(x);
    t.cluster(Input::Link(false));
    // Meanwhile the operator's commands change the store; their events never come here.
    apply(&mut t.store.clone(), Request::Ban { id: 2 }).expect("banned");
    apply(&mut t.store.clone(), Request::Ban { id: 4 }).expect("banned");
    apply(&mut t.store.clone(), Request::Remove { id: 3 }).expect("removed");
    t.cluster(Input::Link(true));
    t.cluster(Input::Snapshot(Vec::new()));
    assert!(t.recv(y).is_empty(), "nothing before the store answers");
    // The store is down at first: the check is tried again later.
    t.store.set_failing(Some("down"));
    t.run_jobs();
    assert!(t.recv(y).is_empty());
    assert!(!t.is_closed(y));
    t.store.set_failing(None);
    t.advance(5_000);
    t.run_jobs();
    for banned in [y, w] {
        assert_eq!(
            t.recv(banned),
            [err(code::BANNED, "this account is banned")]
        );
        assert!(t.is_closed(banned));
    }
    for stays in [x, z] {
        assert_eq!(t.recv(stays), [offline(2), offline(4)]);
    }
    assert!(!t.is_closed(x) && !t.is_closed(z));
    assert_eq!(t.hub.stats.kicked, 2);
    // Another snapshot, nobody banned left: the check finds nothing.
    t.cluster(Input::Snapshot(Vec::new()));
    t.run_jobs();
    assert!(t.recv(x).is_empty());
    assert!(!t.is_closed(x));
}

/// A login that read the record before the ban, still in flight when the node's link
/// comes back: the check covers it, and it is refused when its result comes.
#[test]
fn a_login_in_flight_when_a_node_is_back_is_checked_too() {
    let mut t = h();
    t.hub.enable_cluster("a", 5_000);
    t.cluster(Input::Link(true));
    t.register(6);
    let c = t.connect();
    t.send(c, &login_msg(6, "pw6"));
    // The worker runs the login now (the record is not banned yet); its result comes
    // back only after the check.
    let job = t.jobs.pop_front().expect("the login");
    let outcome = crate::job::execute(&mut t.store.clone(), &t.hasher, job.kind);
    assert!(matches!(outcome, crate::job::Outcome::Login(Ok(_))));
    t.cluster(Input::Link(false));
    apply(&mut t.store.clone(), Request::Ban { id: 6 }).expect("banned");
    t.cluster(Input::Link(true));
    t.cluster(Input::Snapshot(Vec::new()));
    t.run_jobs();
    t.feed(crate::job::JobResult {
        conn: job.conn,
        outcome,
        took: None,
    });
    assert_eq!(
        t.recv(c),
        [login_refused(code::BANNED, "this account is banned")]
    );
}
