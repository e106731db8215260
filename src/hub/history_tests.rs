//! Deterministic tests of history (`HistoryMes`, and the appending of every accepted
//! message): scripted conversations through the test kit, against the in-memory store,
//! with jobs run in a chosen order. No sockets, threads or sleeps.

use crate::hub::HubConfig;
use crate::hub::testkit::Harness;
use crate::job::{Job, JobKind};
use crate::proto::{
    ClientMessage, CodeRes, HistoryEntry, HistoryMes, HistoryResMes, LoginMes, ServerMessage,
    SmsMes, SmsPrivateMes, code,
};
use crate::store::StoreError;
use crate::types::ConnRef;

fn h() -> Harness {
    Harness::new(HubConfig {
        msg_rate: 0,
        // Presence notices at the end of each turn: read away with the logins.
        presence_interval_ms: 0,
        // Entries go at the end of each turn (the gathering has its own test).
        history_gather_ms: 0,
        ..HubConfig::default()
    })
}

/// As `h()`, with entries gathered for 20 ms and at most `max_jobs` store jobs.
fn gathering(max_jobs: usize) -> Harness {
    Harness::new(HubConfig {
        msg_rate: 0,
        presence_interval_ms: 0,
        history_gather_ms: 20,
        max_jobs,
        ..HubConfig::default()
    })
}

#[test]
fn entries_due_while_the_job_queue_is_full_do_not_make_the_loop_spin() {
    let mut t = gathering(1);
    let [a, b] = t.everyone_online([1, 2]);
    t.register(3);
    // A private message to a user offline: its storing job fills the queue.
    t.send(a, &private(3, "stored"));
    assert_eq!(t.jobs.len(), 1);
    t.send(b, &sms("waits"));
    t.advance(25);
    assert_eq!(
        append_sizes(&t.jobs),
        Vec::<usize>::new(),
        "the queue is full"
    );
    assert!(
        t.hub
            .poll_timeout(t.now)
            .is_none_or(|at| at > t.now.mono_ms),
        "no wake-up at once for entries that cannot go"
    );
    // The job's end lets them go (the group message: the stored one joined the
    // history in the store's own write).
    t.run_job(0);
    assert_eq!(append_sizes(&t.jobs), [1]);
}

#[test]
fn entries_are_gathered_into_one_commit_until_due_or_asked_for() {
    let mut t = gathering(HubConfig::default().max_jobs);
    let [a, b] = t.everyone_online([1, 2]);
    for i in 0..5 {
        t.send(a, &sms(&format!("m{i}")));
        t.advance(3);
    }
    assert_eq!(append_sizes(&t.jobs), Vec::<usize>::new(), "gathering");
    assert!(
        t.hub
            .poll_timeout(t.now)
            .is_some_and(|at| at > t.now.mono_ms),
        "the loop sleeps until they are due"
    );
    t.advance(5);
    assert_eq!(append_sizes(&t.jobs), [5], "due 20 ms after the first");
    t.run_jobs();

    // A page asked for takes what waits along at once.
    t.send(a, &sms("late"));
    t.recv(b);
    t.send(b, &ask(0, 10, None));
    assert_eq!(append_sizes(&t.jobs), [1]);
    t.run_jobs();
    let got = t.recv(b);
    assert!(
        matches!(&got[..], [ServerMessage::HistoryRes(r)] if r.messages.len() == 6),
        "{got:?}"
    );

    // Enough waiting goes at once.
    for i in 0..crate::hub::history::GATHER_ENTRIES {
        t.send(a, &sms(&format!("n{i}")));
    }
    assert_eq!(append_sizes(&t.jobs), [crate::hub::history::GATHER_ENTRIES]);
}

#[test]
fn long_messages_go_to_the_store_at_once_instead_of_being_dropped() {
    use crate::hub::history::{GATHER_CONTENT_BYTES, MAX_PENDING_BYTES};
    let mut t = gathering(HubConfig::default().max_jobs);
    let [a, _] = t.everyone_online([1, 2]);
    let long = "x".repeat(16 * 1024);
    let n = GATHER_CONTENT_BYTES / long.len();
    assert!(n * long.len() < MAX_PENDING_BYTES);
    for _ in 0..n {
        t.send(a, &sms(&long));
    }
    assert_eq!(append_sizes(&t.jobs), [n], "due at once, not after 20 ms");
    t.run_jobs();
    // Twice as much again while the store keeps up: still nothing lost.
    for _ in 0..2 * n {
        t.send(a, &sms(&long));
        t.run_jobs();
    }
    assert_eq!(t.hub.stats.history_lost, 0);
}

fn sms(content: &str) -> ClientMessage {
    ClientMessage::Sms(SmsMes {
        content: content.into(),
        // Claims to be someone else: the history names the session's user.
        user_id: 999,
        user_name: "mallory".into(),
        ..Default::default()
    })
}

fn private(to: i64, content: &str) -> ClientMessage {
    ClientMessage::Private(SmsPrivateMes {
        to_user_id: to,
        content: content.into(),
        ..Default::default()
    })
}

fn ask(before: u64, limit: i64, with: Option<i64>) -> ClientMessage {
    ClientMessage::History(HistoryMes {
        before,
        limit,
        with,
        after: None,
    })
}

/// Asks for a page and runs the jobs: the answer (whatever else came before it).
fn page(t: &mut Harness, c: ConnRef, before: u64, limit: i64, with: Option<i64>) -> HistoryResMes {
    t.recv(c);
    t.send(c, &ask(before, limit, with));
    t.run_jobs();
    match &t.recv(c)[..] {
        [ServerMessage::HistoryRes(r)] => r.clone(),
        other => panic!("{other:?}"),
    }
}

/// Registers and logs in each id as a client that reads frames of 1 MiB.
fn online_reading_1mib<const N: usize>(t: &mut Harness, ids: [i64; N]) -> [ConnRef; N] {
    for id in ids {
        t.register(id);
    }
    let conns = ids.map(|id| {
        let c = t.connect();
        t.send(
            c,
            &ClientMessage::Login(LoginMes {
                user_id: id,
                user_pwd: format!("pw{id}"),
                max_frame: Some(1 << 20),
                ..Default::default()
            }),
        );
        t.run_jobs();
        c
    });
    for c in conns {
        t.recv(c);
    }
    conns
}

fn contents(r: &HistoryResMes) -> Vec<&str> {
    r.messages.iter().map(|e| e.content.as_str()).collect()
}

fn append_sizes(jobs: &std::collections::VecDeque<Job>) -> Vec<usize> {
    jobs.iter()
        .filter_map(|j| match &j.kind {
            JobKind::AppendHistory { entries, .. } => Some(entries.len()),
            _ => None,
        })
        .collect()
}

#[test]
fn group_messages_of_one_turn_are_appended_in_one_job_and_read_back() {
    let mut t = h();
    let [a, b, _c] = t.everyone_online([1, 2, 3]);
    // Three frames in one read: one append job for the three, none per recipient.
    let mut bytes = sms("one").encode();
    bytes.extend(sms("two").encode());
    bytes.extend(sms("three").encode());
    t.send_bytes(a, &bytes);
    assert_eq!(append_sizes(&t.jobs), [3]);
    assert_eq!(t.jobs.len(), 1);
    t.run_jobs();
    assert_eq!(t.hub.stats.history_appended, 3);
    assert_eq!(t.recv(b).len(), 3, "delivered live, as always");
    let r = page(&mut t, b, 0, 10, None);
    assert_eq!(contents(&r), ["one", "two", "three"]);
    assert!(!r.more);
    assert_eq!(
        r.messages[0],
        HistoryEntry {
            id: 1,
            time: t.now.unix_ms,
            user_id: 1,
            user_name: "u1".into(),
            content: "one".into(),
            to_user_id: None,
        }
    );
    assert_eq!(
        r.messages.iter().map(|e| e.id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[test]
fn paging_back_across_the_cap() {
    let mut t = h();
    let [a, b] = online_reading_1mib(&mut t, [1, 2]);
    for i in 0..250 {
        t.send(a, &sms(&format!("m{i}")));
    }
    t.run_jobs();
    t.recv(b);
    // A larger ask is served the cap (100), never refused.
    let first = page(&mut t, b, 0, 1_000_000, None);
    assert_eq!(first.messages.len(), 100);
    assert!(first.more);
    assert_eq!(first.messages[0].content, "m150");
    assert_eq!(first.messages[99].content, "m249");
    let second = page(&mut t, b, first.messages[0].id, 100, None);
    assert_eq!(second.messages.len(), 100);
    assert!(second.more);
    assert_eq!(
        (
            second.messages[0].content.as_str(),
            second.messages[99].id + 1
        ),
        ("m50", first.messages[0].id)
    );
    let last = page(&mut t, b, second.messages[0].id, 100, None);
    assert_eq!(last.messages.len(), 50);
    assert!(!last.more);
    assert_eq!(last.messages[0].content, "m0");
    // No limit (or a nonsense one): the default page.
    assert_eq!(page(&mut t, b, 0, 0, None).messages.len(), 50);
    assert_eq!(page(&mut t, b, 0, -5, None).messages.len(), 50);
    assert_eq!(contents(&page(&mut t, b, 0, 2, None)), ["m248", "m249"]);
    // Its JSON, as the protocol shows it.
    t.send(b, &ask(2, 1, None));
    t.run_jobs();
    let frame = &t.recv_frames(b)[0];
    let env: serde_json::Value = serde_json::from_slice(&frame[4..]).unwrap();
    assert_eq!(env["type"], "HistoryResMes");
    assert_eq!(
        env["data"],
        format!(
            r#"{{"messages":[{{"id":1,"time":{},"userId":1,"userName":"u1","content":"m0"}}],"more":false}}"#,
            t.now.unix_ms
        )
    );
}

#[test]
fn only_the_last_n_are_kept() {
    let mut t = Harness::new(HubConfig {
        history: 5,
        ..h().hub.config().clone()
    });
    let [a, b] = t.everyone_online([1, 2]);
    for i in 0..12 {
        t.send(a, &sms(&format!("m{i}")));
        t.send(a, &private(2, &format!("p{i}")));
    }
    t.run_jobs();
    assert_eq!(t.store.history_count(), 10, "5 of the group, 5 of the pair");
    let r = page(&mut t, b, 0, 100, None);
    assert_eq!(contents(&r), ["m7", "m8", "m9", "m10", "m11"]);
    assert!(!r.more);
    let r = page(&mut t, b, 0, 100, Some(1));
    assert_eq!(contents(&r), ["p7", "p8", "p9", "p10", "p11"]);
}

#[test]
fn private_history_is_seen_by_its_two_parties_only() {
    let mut t = h();
    let [one, two, three] = t.everyone_online([1, 2, 3]);
    t.register(4);
    t.send(one, &private(2, "1 to 2"));
    t.send(two, &private(1, "2 to 1"));
    t.send(three, &private(2, "3 to 2"));
    // 4 is offline: stored (202), and then in the history of 1 and 4.
    t.send(one, &private(4, "1 to 4, offline"));
    // No such user: no history for anyone.
    t.send(one, &private(77, "to nobody"));
    t.run_jobs();
    for c in [one, two, three] {
        t.recv(c);
    }
    let r = page(&mut t, one, 0, 10, Some(2));
    assert_eq!(contents(&r), ["1 to 2", "2 to 1"]);
    assert_eq!(
        r.messages
            .iter()
            .map(|e| (e.user_id, e.to_user_id))
            .collect::<Vec<_>>(),
        [(1, Some(2)), (2, Some(1))]
    );
    assert_eq!(
        contents(&page(&mut t, two, 0, 10, Some(1))),
        ["1 to 2", "2 to 1"]
    );
    assert_eq!(contents(&page(&mut t, two, 0, 10, Some(3))), ["3 to 2"]);
    // 3 sees its own conversation with 2, nothing of 1's, whatever it asks.
    assert_eq!(contents(&page(&mut t, three, 0, 10, Some(2))), ["3 to 2"]);
    assert!(page(&mut t, three, 0, 10, Some(1)).messages.is_empty());
    assert!(page(&mut t, one, 0, 10, Some(77)).messages.is_empty());
    // The group's history holds none of it.
    assert!(page(&mut t, one, 0, 10, None).messages.is_empty());
    let four = t.login(4);
    t.run_jobs();
    t.recv(four);
    assert_eq!(
        contents(&page(&mut t, four, 0, 10, Some(1))),
        ["1 to 4, offline"]
    );
    // Nonsense: a clear refusal, the connection goes on.
    t.recv(one);
    t.send(one, &ask(0, 10, Some(-3)));
    assert_eq!(
        t.recv(one),
        [ServerMessage::Error(CodeRes::new(
            code::BAD_REQUEST,
            "with: a user id is a positive number"
        ))]
    );
}

#[test]
fn before_login_history_is_refused_401() {
    let mut t = h();
    let c = t.connect();
    t.send(c, &ask(0, 10, None));
    assert_eq!(
        t.recv(c),
        [ServerMessage::Error(CodeRes::new(
            code::UNAUTHORIZED,
            "log in first"
        ))]
    );
    assert!(t.jobs.is_empty());
}

#[test]
fn history_off_keeps_nothing_and_answers_an_empty_page() {
    let mut t = Harness::new(HubConfig {
        history: 0,
        ..h().hub.config().clone()
    });
    let [a, b] = t.everyone_online([1, 2]);
    t.send(a, &sms("not kept"));
    t.send(a, &private(2, "nor this"));
    assert!(t.jobs.is_empty(), "no job at all");
    assert_eq!(t.recv(b).len(), 2);
    t.send(b, &ask(0, 10, None));
    assert!(t.jobs.is_empty());
    assert_eq!(
        t.recv(b),
        [ServerMessage::HistoryRes(HistoryResMes {
            messages: vec![],
            more: false
        })]
    );
    assert_eq!(t.store.history_count(), 0);
}

#[test]
fn a_message_accepted_before_the_page_was_asked_is_on_it() {
    let mut t = h();
    let [a, b] = t.everyone_online([1, 2]);
    // Same turn: the message's append goes before the read.
    let mut bytes = sms("just now").encode();
    bytes.extend(ask(0, 10, None).encode());
    t.send_bytes(a, &bytes);
    t.run_jobs();
    let got = t.recv(a);
    assert!(
        matches!(&got[..], [ServerMessage::HistoryRes(r)] if contents(r) == ["just now"]),
        "{got:?}"
    );
    t.recv(b);
}

#[test]
fn frames_wait_for_the_page_and_answers_keep_their_order() {
    let mut t = h();
    let [a, _b] = t.everyone_online([1, 2]);
    let mut bytes = ask(0, 10, None).encode();
    bytes.extend(ClientMessage::Ping.encode());
    t.send_bytes(a, &bytes);
    assert!(t.recv(a).is_empty(), "nothing before the page");
    t.run_jobs();
    let got = t.recv(a);
    assert!(
        matches!(
            &got[..],
            [ServerMessage::HistoryRes(_), ServerMessage::Pong]
        ),
        "{got:?}"
    );
}

#[test]
fn a_page_too_long_for_the_client_drops_its_oldest_and_says_more() {
    let mut t = h();
    let [a, _b] = t.everyone_online([1, 2]);
    for i in 0..10 {
        t.send(a, &sms(&format!("{i}{}", "x".repeat(3000))));
    }
    t.run_jobs();
    // A seed-sized reader (no maxFrame): 8,096 bytes a frame.
    let seed = t.connect();
    t.send(
        seed,
        &ClientMessage::Login(LoginMes {
            user_id: 2,
            user_pwd: "pw2".into(),
            ..Default::default()
        }),
    );
    t.run_jobs();
    t.recv(seed);
    t.send(seed, &ask(0, 100, None));
    t.run_jobs();
    let frames = t.recv_frames(seed);
    assert!(frames[0].len() - 4 <= crate::proto::SEED_MAX_FRAME);
    let ServerMessage::HistoryRes(r) = ServerMessage::parse(&frames[0][4..]).unwrap() else {
        panic!()
    };
    assert!(r.more);
    assert_eq!(r.messages.len(), 2, "the two newest fit");
    assert!(r.messages[1].content.starts_with('9'));
    // One alone too long: the newest, cut short, so paging can go on from its id.
    t.send(a, &sms(&"\"".repeat(9000)));
    t.run_jobs();
    t.recv(seed);
    t.send(seed, &ask(0, 100, None));
    t.run_jobs();
    let frames = t.recv_frames(seed);
    assert!(frames[0].len() - 4 <= crate::proto::SEED_MAX_FRAME);
    let ServerMessage::HistoryRes(r) = ServerMessage::parse(&frames[0][4..]).unwrap() else {
        panic!()
    };
    assert_eq!(r.messages.len(), 1);
    assert!(
        r.messages[0]
            .content
            .ends_with(crate::hub::frame_fit::CUT_NOTE)
    );
    assert_eq!(r.messages[0].id, 11);
    assert!(r.more);
}

#[test]
fn a_storage_failure_costs_history_never_live_delivery() {
    let mut t = h();
    let [a, b, c] = t.everyone_online([1, 2, 3]);
    t.store.set_failing(Some("disk on fire"));
    for i in 0..30 {
        t.send(a, &sms(&format!("burst {i}")));
        t.run_jobs();
    }
    // Everyone got everything.
    assert_eq!(t.recv(b).len(), 30);
    assert_eq!(t.recv(c).len(), 30);
    assert_eq!(t.hub.stats.history_lost, 30);
    assert_eq!(t.hub.summary().history_lost, 30);
    assert_eq!(t.hub.stats.history_appended, 0);
    // Reading fails clearly.
    t.send(b, &ask(0, 10, None));
    t.run_jobs();
    assert_eq!(
        t.recv(b),
        [ServerMessage::Error(CodeRes::new(
            code::UNAVAILABLE,
            "storage unavailable: history cannot be read now"
        ))]
    );
    // Back: history goes on from there.
    t.store.set_failing(None);
    t.send(a, &sms("after"));
    t.run_jobs();
    assert_eq!(contents(&page(&mut t, b, 0, 10, None)), ["after"]);
}

#[test]
fn a_slow_store_gets_few_append_jobs_and_entries_wait_bounded() {
    let mut t = h();
    let [a, b] = t.everyone_online([1, 2]);
    t.register(5);
    // The store does not answer: jobs are not run.
    for i in 0..10 {
        t.send(a, &sms(&format!("m{i}")));
    }
    assert_eq!(
        append_sizes(&t.jobs),
        [1, 1],
        "two in flight, the rest wait"
    );
    assert_eq!(t.recv(b).len(), 10);
    // A private message to an offline user still gets a job (and is stored).
    t.send(a, &private(5, "kept"));
    assert!(
        t.jobs
            .iter()
            .any(|j| matches!(j.kind, JobKind::StoreOffline { .. }))
    );
    // One finishes: the eight waiting go as one job.
    t.run_job(0);
    assert_eq!(append_sizes(&t.jobs), [1, 8]);
    t.run_jobs();
    let r = page(&mut t, b, 0, 100, None);
    assert_eq!(r.messages.len(), 10);
    // Waiting entries are bounded in bytes: the oldest go first, counted.
    let big = "y".repeat(60_000);
    for _ in 0..2 {
        t.send(a, &sms(&big));
    }
    for _ in 0..40 {
        t.send(a, &sms(&big));
    }
    assert!(t.hub.stats.history_lost > 0);
    let waiting: usize = append_sizes(&t.jobs).iter().sum();
    assert_eq!(waiting, 2, "two in flight");
    t.run_job(0);
    let sizes = append_sizes(&t.jobs);
    assert!(sizes[1] * 60_000 <= (1 << 20) + 60_000, "MAX_PENDING_BYTES");
    assert_eq!(
        t.hub.stats.history_lost as usize + sizes[1] + 2,
        42,
        "every entry appended or counted lost"
    );
    t.run_jobs();
}

#[test]
fn a_failed_read_that_timed_out_in_the_queue_says_busy() {
    let mut t = h();
    let [a] = t.everyone_online([1]);
    t.send(a, &ask(0, 10, None));
    let job = t.jobs.pop_front().unwrap();
    t.feed(crate::job::JobResult {
        conn: job.conn,
        outcome: job.kind.fail(StoreError::timed_out()),
        took: None,
    });
    let got = t.recv(a);
    assert!(
        matches!(&got[..], [ServerMessage::Error(e)] if e.code == code::UNAVAILABLE && e.retry_after == Some(1)),
        "{got:?}"
    );
}

#[test]
fn the_last_entries_are_appended_at_shutdown_whatever_is_in_flight() {
    let mut t = h();
    let [a, _b] = t.everyone_online([1, 2]);
    for i in 0..5 {
        t.send(a, &sms(&format!("m{i}")));
    }
    assert_eq!(append_sizes(&t.jobs), [1, 1]);
    t.hub.handle_shutdown(t.now);
    let job = t.hub.poll_job(t.now).expect("the rest goes now");
    assert_eq!(append_sizes(&std::collections::VecDeque::from([job])), [3]);
}

#[test]
fn a_page_asked_for_while_appends_wait_shows_them_all() {
    let mut t = h();
    let [a, b] = t.everyone_online([1, 2]);
    for i in 0..5 {
        t.send(a, &sms(&format!("m{i}")));
    }
    assert_eq!(append_sizes(&t.jobs), [1, 1], "three wait");
    t.recv(b);
    t.send(b, &ask(0, 10, None));
    // The three waiting went at once, as one job; the page is read once every
    // append handed over before it has ended (the pages have a lane of their own).
    assert_eq!(append_sizes(&t.jobs), [1, 1, 3]);
    let reads = |t: &Harness| t.jobs.iter().filter(|j| j.kind.reads_history()).count();
    assert_eq!(reads(&t), 0);
    t.run_job(0);
    t.run_job(0);
    assert_eq!(reads(&t), 0, "an append is still on its way");
    t.run_job(0);
    assert_eq!(reads(&t), 1);
    t.run_jobs();
    let got = t.recv(b);
    assert!(
        matches!(&got[..], [ServerMessage::HistoryRes(r)] if r.messages.len() == 5),
        "{got:?}"
    );
}

#[test]
fn a_stored_message_resent_with_its_msg_id_is_in_the_history_once() {
    let mut t = h();
    let [one] = t.everyone_online([1]);
    t.register(2);
    let hello = ClientMessage::Private(SmsPrivateMes {
        to_user_id: 2,
        content: "hello".into(),
        msg_id: Some("m-1".into()),
        ..Default::default()
    });
    let answer = |t: &mut Harness| match &t.recv(one)[..] {
        [ServerMessage::SmsRes(r)] => r.code,
        other => panic!("{other:?}"),
    };
    // Stored, but the answer is lost: the sender is told it may or may not be.
    t.store
        .set_losing_answers(Some(StoreError::Uncertain("reply lost".into())));
    t.send(one, &hello);
    t.run_jobs();
    t.store.set_losing_answers(None);
    assert_eq!(answer(&mut t), code::UNCERTAIN);
    // Resent, as the answer says is safe, and once more for good measure.
    for _ in 0..2 {
        t.send(one, &hello);
        t.run_jobs();
        assert_eq!(answer(&mut t), code::STORED);
    }
    assert_eq!(t.store.offline_count(2), 1);
    assert_eq!(contents(&page(&mut t, one, 0, 10, Some(2))), ["hello"]);
}

#[test]
fn a_stored_private_message_is_numbered_after_the_live_ones_sent_before_it() {
    let mut t = gathering(HubConfig::default().max_jobs);
    let [a, b, c] = t.everyone_online([1, 2, 3]);
    t.send(a, &private(2, "live"));
    t.send(a, &private(3, "another pair"));
    // Written to b (else it would be stored as b goes).
    t.recv(b);
    t.hangup(b);
    t.send(a, &private(2, "stored"));
    // The pair's entry still gathering goes ahead of the storing job, in the lane
    // that runs history jobs in order; the other pair's goes with it.
    let lane: Vec<(bool, bool)> = t
        .jobs
        .iter()
        .map(|j| {
            let kind = &j.kind;
            (
                kind.is_history(),
                matches!(kind, JobKind::StoreOffline { .. }),
            )
        })
        .collect();
    assert_eq!(lane, [(true, false), (true, true)]);
    assert_eq!(append_sizes(&t.jobs), [2]);
    t.run_jobs();
    let r = page(&mut t, a, 0, 10, Some(2));
    assert_eq!(contents(&r), ["live", "stored"]);
    assert!(r.messages[0].id < r.messages[1].id);
    // With nothing of the pair waiting or being written, nothing is hurried and the
    // storing runs in the storage lane, where no history append holds it up.
    t.send(c, &sms("group"));
    t.send(a, &private(2, "stored again"));
    assert_eq!(append_sizes(&t.jobs), Vec::<usize>::new());
    assert!(!t.jobs[0].kind.is_history());
    t.run_jobs();
    // An append of the pair still being written: the storing goes after it.
    let b = t.login(2);
    t.run_jobs();
    t.recv(b);
    t.send(a, &private(2, "live again"));
    t.advance(25);
    assert_eq!(append_sizes(&t.jobs), [2], "the group's and the pair's");
    t.hangup(b);
    t.send(a, &private(2, "stored last"));
    assert!(t.jobs.back().unwrap().kind.is_history());
    t.run_jobs();
    assert_eq!(
        contents(&page(&mut t, a, 0, 10, Some(2))),
        [
            "live",
            "stored",
            "stored again",
            "live again",
            "stored last"
        ]
    );
}

/// As `h()`, with room for `reads` pages at once, `jobs` other store jobs, and
/// `rate` pages a minute per user.
fn flooded(reads: usize, jobs: usize, rate: u32) -> Harness {
    Harness::new(HubConfig {
        msg_rate: 0,
        presence_interval_ms: 0,
        history_gather_ms: 0,
        history_reads: reads,
        history_rate: rate,
        max_jobs: jobs,
        // Every login of the test comes from one address.
        login_rate: 0,
        ..HubConfig::default()
    })
}

/// The error among what a client got (presence notices aside).
fn error_of(got: &[ServerMessage]) -> Option<&CodeRes> {
    got.iter().find_map(|m| match m {
        ServerMessage::Error(e) => Some(e),
        _ => None,
    })
}

#[test]
fn a_history_flood_holds_up_no_live_message_stored_message_or_login() {
    let mut t = flooded(4, 8, 0);
    let [a, b] = t.everyone_online([1, 2]);
    t.register(3);
    t.register(4);
    // Twelve users ask for pages, none read yet: four are taken, the rest told busy
    // (checked below).
    let ids: [i64; 12] = std::array::from_fn(|i| 10 + i as i64);
    let flood = t.everyone_online(ids);
    for &c in &flood {
        t.send(c, &ask(0, 100, None));
    }
    // A live message is delivered at once (the others' logins read away first).
    t.recv(a);
    t.recv(b);
    t.send(a, &sms("live"));
    assert!(
        matches!(&t.recv(b)[..], [ServerMessage::Sms(m)] if m.content == "live"),
        "the group message arrives"
    );
    // A private message to a user offline is stored and answered 202, the pages
    // still unread.
    t.send(a, &private(3, "for later"));
    let stored = t
        .jobs
        .iter()
        .position(|j| matches!(j.kind, JobKind::StoreOffline { .. }))
        .expect("the private message is handed to a worker");
    t.run_job(stored);
    assert!(
        matches!(&t.recv(a)[..], [ServerMessage::SmsRes(r)] if r.code == code::STORED),
        "answered 202"
    );
    // A login is admitted and answered.
    let c = t.connect();
    t.send(c, &crate::hub::testkit::login_msg(4, "pw4"));
    let login = t
        .jobs
        .iter()
        .position(|j| matches!(j.kind, JobKind::Login { .. }))
        .expect("the login is handed to a worker");
    t.run_job(login);
    assert!(
        matches!(t.recv(c).first(), Some(ServerMessage::LoginRes(r)) if r.code == 200),
        "logged in"
    );
    let reads = |t: &Harness| t.jobs.iter().filter(|j| j.kind.reads_history()).count();
    assert_eq!(reads(&t), 4, "the history queue holds four");
    let busy = flood
        .iter()
        .filter(|&&c| {
            let got = t.recv(c);
            error_of(&got).is_some_and(|e| e.code == code::UNAVAILABLE && e.retry_after == Some(1))
        })
        .count();
    assert_eq!(busy, 8);
    // Asked again and again while the queue is full: refused at once, nothing queued.
    for _ in 0..3 {
        for &c in &flood[4..] {
            t.send(c, &ask(0, 100, None));
            assert!(error_of(&t.recv(c)).is_some_and(|e| e.code == code::UNAVAILABLE));
        }
    }
    assert_eq!(reads(&t), 4);

    assert_eq!(reads(&t), 4, "the pages are still on their way");
    // The pages come; the queue has room again.
    t.run_jobs();
    for &c in &flood[..4] {
        let got = t.recv(c);
        assert!(
            matches!(got.last(), Some(ServerMessage::HistoryRes(_))),
            "{got:?}"
        );
    }
    t.send(flood[4], &ask(0, 100, None));
    assert_eq!(reads(&t), 1);
}

#[test]
fn a_user_over_the_history_rate_is_refused_429_until_it_refills() {
    let mut t = flooded(16, 1024, 3);
    let [a, b] = t.everyone_online([1, 2]);
    for _ in 0..3 {
        page(&mut t, a, 0, 10, None);
    }
    t.send(a, &ask(0, 10, None));
    assert!(t.jobs.is_empty(), "nothing read for the fourth");
    let got = t.recv(a);
    assert!(
        error_of(&got).is_some_and(|e| e.code == code::TOO_MANY && e.retry_after == Some(20)),
        "{got:?}"
    );
    // Another user has an allowance of their own, and so does the same user on a
    // new connection (the allowance is the user's, not the connection's).
    page(&mut t, b, 0, 10, None);
    t.hangup(a);
    let a = t.login(1);
    t.recv(a);
    t.send(a, &ask(0, 10, None));
    assert!(error_of(&t.recv(a)).is_some_and(|e| e.code == code::TOO_MANY));
    // One more a minute over three: twenty seconds on, one more.
    t.advance(20_000);
    page(&mut t, a, 0, 10, None);
    t.send(a, &ask(0, 10, None));
    assert!(error_of(&t.recv(a)).is_some_and(|e| e.code == code::TOO_MANY));
}

#[test]
fn a_page_refused_as_busy_costs_none_of_the_users_allowance() {
    let mut t = flooded(1, 1024, 2);
    let [a, b] = t.everyone_online([1, 2]);
    t.send(a, &ask(0, 10, None));
    // The queue is full: b is told busy, again and again, and keeps its two.
    for _ in 0..5 {
        t.send(b, &ask(0, 10, None));
        assert!(error_of(&t.recv(b)).is_some_and(|e| e.code == code::UNAVAILABLE));
    }
    t.run_jobs();
    page(&mut t, b, 0, 10, None);
    page(&mut t, b, 0, 10, None);
    t.send(b, &ask(0, 10, None));
    assert!(error_of(&t.recv(b)).is_some_and(|e| e.code == code::TOO_MANY));
}

#[test]
fn a_page_after_an_id_gives_the_newer_entries_oldest_first() {
    let mut t = h();
    let [a, b] = t.everyone_online([1, 2]);
    for i in 0..5 {
        t.send(a, &sms(&format!("m{i}")));
    }
    t.run_jobs();
    t.recv(b);
    let after = |t: &mut Harness, id: u64, limit: i64| {
        t.send(
            b,
            &ClientMessage::History(HistoryMes {
                // Not looked at when `after` is given.
                before: 2,
                limit,
                with: None,
                after: Some(id),
            }),
        );
        t.run_jobs();
        match &t.recv(b)[..] {
            [ServerMessage::HistoryRes(r)] => r.clone(),
            other => panic!("{other:?}"),
        }
    };
    let r = after(&mut t, 2, 2);
    assert_eq!((contents(&r), r.more), (vec!["m2", "m3"], true));
    assert_eq!(r.messages.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4]);
    let r = after(&mut t, 4, 2);
    assert_eq!((contents(&r), r.more), (vec!["m4"], false));
    let r = after(&mut t, 0, 100);
    assert_eq!(contents(&r).len(), 5);
    assert!(!r.more);
    let r = after(&mut t, 5, 100);
    assert_eq!((r.messages.len(), r.more), (0, false));
}
