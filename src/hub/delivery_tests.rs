//! What a private message's answer promises (200 once written to the recipient's
//! socket, 202 once stored, never 200 for a message then lost), and what a seed
//! client is sent (only the frame types it shows).

use crate::hub::HubConfig;
use crate::hub::testkit::{Harness, seed_login_msg, test_config};
use crate::proto::{ClientMessage, CodeRes, ServerMessage, SmsMes, SmsPrivateMes, code};
use crate::types::ConnRef;
use std::time::Duration;

fn private(to: i64, content: &str) -> ClientMessage {
    ClientMessage::Private(SmsPrivateMes {
        to_user_id: to,
        content: content.into(),
        ..Default::default()
    })
}

fn private_id(to: i64, content: &str, id: &str) -> ClientMessage {
    ClientMessage::Private(SmsPrivateMes {
        to_user_id: to,
        content: content.into(),
        msg_id: Some(id.into()),
        ..Default::default()
    })
}

/// The answers to private messages among `got`.
fn answers(got: &[ServerMessage]) -> Vec<CodeRes> {
    got.iter()
        .filter_map(|m| match m {
            ServerMessage::SmsRes(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn codes(got: &[ServerMessage]) -> Vec<u16> {
    answers(got).iter().map(|r| r.code).collect()
}

/// The contents of the private messages among `got` (as extension clients get them).
fn privates(got: &[ServerMessage]) -> Vec<String> {
    got.iter()
        .filter_map(|m| match m {
            ServerMessage::Private(p) => Some(p.content.clone()),
            _ => None,
        })
        .collect()
}

/// The group messages among `got`: (sender id, content).
fn sms(got: &[ServerMessage]) -> Vec<(i64, String)> {
    got.iter()
        .filter_map(|m| match m {
            ServerMessage::Sms(s) => Some((s.user_id, s.content.clone())),
            _ => None,
        })
        .collect()
}

/// Whether every frame is one the seed's client shows once logged in.
fn all_seed_kinds(got: &[ServerMessage]) -> bool {
    got.iter().all(|m| {
        matches!(
            m,
            ServerMessage::Sms(_) | ServerMessage::NotifyUserStatus(_)
        )
    })
}

/// Runs the jobs, `r` reading what it is sent meanwhile (as a client does).
fn run_jobs_reading(t: &mut Harness, r: ConnRef) -> Vec<ServerMessage> {
    let mut got = t.recv(r);
    while !t.jobs.is_empty() {
        t.run_job(0);
        got.extend(t.recv(r));
    }
    got
}

fn seed_login(t: &mut Harness, id: i64) -> ConnRef {
    let c = t.connect();
    t.send(c, &seed_login_msg(id, &format!("pw{id}")));
    t.run_jobs();
    c
}

#[test]
fn a_private_message_is_answered_200_once_written_not_when_queued() {
    let mut t = Harness::new(test_config());
    let [a, b] = t.everyone_online([1, 2]);
    t.stall(b, true);
    t.send(a, &private_id(2, "hello", "m1"));
    // Queued for b, whose socket takes nothing: no answer yet.
    assert_eq!(codes(&t.recv(a)), Vec::<u16>::new());
    t.stall(b, false);
    assert_eq!(privates(&t.recv(b)), ["hello"]);
    let got = answers(&t.recv(a));
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].code, got[0].msg_id.as_deref()), (200, Some("m1")));
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 0, "delivered: nothing stored");
}

#[test]
fn a_recipient_that_never_reads_is_dropped_and_every_message_to_it_is_stored_202() {
    let mut t = Harness::new(HubConfig {
        max_outbuf: 2000,
        msg_rate: 0,
        ..test_config()
    });
    let [a, b] = t.everyone_online([1, 2]);
    t.stall(b, true);
    let sent: Vec<String> = (0..40)
        .map(|i| format!("message {i:02} {}", "x".repeat(60)))
        .collect();
    let mut got = Vec::new();
    for m in &sent {
        t.send(a, &private(2, m));
        got.extend(t.recv(a));
    }
    assert!(t.is_closed(b), "dropped as a slow consumer");
    assert_eq!(t.hub.stats.slow_consumers_dropped, 1);
    got.extend(run_jobs_reading(&mut t, a));
    let codes = codes(&got);
    assert_eq!(codes.len(), sent.len(), "every message answered: {codes:?}");
    assert!(
        codes.iter().all(|&c| c == code::STORED),
        "none written, so none 200: {codes:?}"
    );
    assert_eq!(t.store.offline_count(2), sent.len());
    // Delivered at the next login, in the order sent.
    let b2 = t.connect();
    t.send(b2, &crate::hub::testkit::login_msg(2, "pw2"));
    t.run_jobs();
    let mut arrived = privates(&t.recv(b2));
    while arrived.len() < sent.len() {
        t.run_jobs();
        let more = privates(&t.recv(b2));
        assert!(!more.is_empty(), "stuck at {}", arrived.len());
        arrived.extend(more);
    }
    assert_eq!(arrived, sent);
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 0);
}

#[test]
fn messages_written_before_the_drop_are_200_and_the_rest_202() {
    let mut t = Harness::new(HubConfig {
        max_outbuf: 2000,
        msg_rate: 0,
        ..test_config()
    });
    let [a, b] = t.everyone_online([1, 2]);
    t.send(a, &private(2, "read"));
    assert_eq!(privates(&t.recv(b)), ["read"]);
    t.stall(b, true);
    for i in 0..40 {
        t.send(a, &private(2, &format!("unread {i:02} {}", "y".repeat(60))));
    }
    assert!(t.is_closed(b));
    let codes = codes(&run_jobs_reading(&mut t, a));
    assert_eq!(codes.len(), 41);
    assert_eq!(codes[0], code::OK);
    assert!(codes[1..].iter().all(|&c| c == code::STORED), "{codes:?}");
    assert_eq!(t.store.offline_count(2), 40);
}

#[test]
fn at_shutdown_a_message_not_yet_written_is_stored() {
    let mut t = Harness::new(test_config());
    let [a, b] = t.everyone_online([1, 2]);
    t.stall(b, true);
    t.send(a, &private(2, "before the stop"));
    assert_eq!(codes(&t.recv(a)), Vec::<u16>::new());
    t.hub.handle_shutdown(t.now);
    t.advance(HubConfig::default().close_linger_ms + 1);
    assert!(t.is_closed(b));
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 1, "kept for the next login");
}

#[test]
fn group_messages_leave_no_trace_in_the_private_bookkeeping() {
    let mut t = Harness::new(test_config());
    let [a, b] = t.everyone_online([1, 2]);
    t.stall(b, true);
    t.send(
        a,
        &ClientMessage::Sms(SmsMes {
            content: "to all".into(),
            ..Default::default()
        }),
    );
    assert!(t.hub.get(b).unwrap().awaiting.is_empty());
}

#[test]
fn a_seed_client_gets_a_private_message_as_a_message_it_shows() {
    let mut t = Harness::new(test_config());
    let [a] = t.everyone_online([1]);
    t.register(2);
    let b = seed_login(&mut t, 2);
    t.recv(b);
    t.recv(a);
    t.send(a, &private(2, "psst"));
    let got = t.recv(b);
    assert!(all_seed_kinds(&got), "{got:?}");
    assert_eq!(sms(&got), [(1, "[private from u1 (1)] psst".to_string())]);
    // Shown: that is delivered.
    assert_eq!(codes(&t.recv(a)), [code::OK]);
}

#[test]
fn a_seed_client_gets_messages_stored_while_offline_and_only_then_are_they_removed() {
    let mut t = Harness::new(test_config());
    let [a] = t.everyone_online([1]);
    t.register(2);
    t.send(a, &private(2, "while you were out"));
    t.run_jobs();
    assert_eq!(codes(&t.recv(a)), [code::STORED]);
    let b = t.connect();
    t.stall(b, true);
    t.send(b, &seed_login_msg(2, "pw2"));
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 1, "not written: still stored");
    t.stall(b, false);
    let got = t.recv(b);
    assert!(matches!(got.first(), Some(ServerMessage::LoginRes(r)) if r.code == 200));
    assert!(all_seed_kinds(&got[1..]), "{got:?}");
    assert_eq!(
        sms(&got),
        [(
            1,
            "[private from u1 (1), sent while you were offline] while you were out".to_string()
        )]
    );
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 0, "written: removed");
}

#[test]
fn a_seed_client_gets_refusals_and_notices_as_messages_from_the_server() {
    let mut t = Harness::new(HubConfig {
        msg_rate: 2,
        ..test_config()
    });
    t.register(1);
    let a = seed_login(&mut t, 1);
    t.recv(a);
    // An empty group message: 400.
    t.send(
        a,
        &ClientMessage::Sms(SmsMes {
            content: String::new(),
            ..Default::default()
        }),
    );
    let got = t.recv(a);
    assert!(all_seed_kinds(&got), "{got:?}");
    assert_eq!(
        sms(&got),
        [(0, "[server notice 400] empty message".to_string())]
    );
    // Logged in elsewhere: 409, then the close.
    let again = t.connect();
    t.send(again, &seed_login_msg(1, "pw1"));
    t.run_jobs();
    let got = t.recv(a);
    assert!(all_seed_kinds(&got), "{got:?}");
    assert!(
        sms(&got)
            .iter()
            .any(|(id, text)| *id == 0 && text.starts_with("[server notice 409] ")),
        "{got:?}"
    );
    assert!(t.is_closed(a));
    // Flooding past the rate for 10 s: 429, then the close.
    t.register(2);
    let f = seed_login(&mut t, 2);
    t.recv(f);
    t.keep_reading(f);
    for i in 0..80u64 {
        t.send_later(
            f,
            &ClientMessage::Sms(SmsMes {
                content: format!("m{i}"),
                ..Default::default()
            }),
            Duration::from_millis(200 * i),
        );
    }
    t.advance(16_000);
    assert!(t.is_closed(f));
    let got = t.recv(f);
    assert!(all_seed_kinds(&got), "{got:?}");
    assert!(
        sms(&got)
            .iter()
            .any(|(id, text)| *id == 0 && text.starts_with("[server notice 429] ")),
        "{got:?}"
    );
}

#[test]
fn a_seed_client_is_told_its_group_message_was_cut_short() {
    let mut t = Harness::new(test_config());
    t.register(1);
    t.register(2);
    let a = seed_login(&mut t, 1);
    let b = seed_login(&mut t, 2);
    t.recv(a);
    t.recv(b);
    t.send(
        a,
        &ClientMessage::Sms(SmsMes {
            content: "z".repeat(9000),
            ..Default::default()
        }),
    );
    let got = t.recv(a);
    assert!(all_seed_kinds(&got), "{got:?}");
    assert!(
        sms(&got)
            .iter()
            .any(|(id, text)| *id == 0 && text.starts_with("[server notice 206] ")),
        "{got:?}"
    );
}

#[test]
fn a_recipient_that_takes_nothing_for_10_s_is_dropped_and_the_sender_answered_202() {
    let mut t = Harness::new(test_config());
    let [a, b] = t.everyone_online([1, 2]);
    t.stall(b, true);
    t.send(a, &private(2, "are you there?"));
    t.advance(crate::hub::chat::PRIVATE_WRITE_WAIT_MS - 1);
    assert!(!t.is_closed(b), "not yet");
    assert_eq!(codes(&t.recv(a)), Vec::<u16>::new());
    t.advance(1);
    assert!(t.is_closed(b), "dropped: it took nothing");
    assert_eq!(codes(&run_jobs_reading(&mut t, a)), [code::STORED]);
    assert_eq!(t.store.offline_count(2), 1);
}

#[test]
fn a_message_sent_while_the_recipient_lingers_comes_after_those_it_did_not_take() {
    let mut t = Harness::new(test_config());
    let [a, b] = t.everyone_online([1, 2]);
    t.stall(b, true);
    t.send(a, &private_id(2, "first", "m1"));
    // b logs out: its connection lingers to write what it was sent, and cannot.
    t.send(b, &ClientMessage::Logout);
    assert!(!t.is_closed(b));
    t.send(a, &private_id(2, "second", "m2"));
    t.run_jobs();
    t.advance(HubConfig::default().close_linger_ms + 1);
    assert!(t.is_closed(b));
    let codes = codes(&run_jobs_reading(&mut t, a));
    assert_eq!(codes, [code::STORED, code::STORED]);
    // At b's next login, in the order they were sent.
    let b2 = t.connect();
    t.send(b2, &crate::hub::testkit::login_msg(2, "pw2"));
    t.run_jobs();
    assert_eq!(privates(&t.recv(b2)), ["first", "second"]);
}
