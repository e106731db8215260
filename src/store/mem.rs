//! An in-memory store with the same semantics as the real backends, shared between
//! handles through a mutex. For tests of the logic above storage, and the reference
//! the backend suite is checked against.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{Conv, HistoryEntry, OfflineId, OfflineMsg, Outliving, Store, StoreError, StoredMsg};
use crate::users::UserRecord;

#[derive(Default, Debug)]
struct Inner {
    users: HashMap<i64, UserRecord>,
    offline: BTreeMap<(i64, u64), OfflineMsg>,
    next_seq: u64,
    /// Ids of stored messages: (recipient, sender, id) → seq. Kept for the life of the
    /// store (a test store: the window of the real backends is not modelled).
    ids: HashMap<(i64, i64, OfflineId), u64>,
    /// History: (conversation, id) → entry; and each conversation's last id.
    history: BTreeMap<((i64, i64), u64), HistoryEntry>,
    history_ids: HashMap<(i64, i64), u64>,
    /// When set, every call fails with this error (to test outage handling).
    fail: Option<StoreError>,
    /// When set, writes are done but then reported as this error, as if the answer
    /// was lost (to test uncertain outcomes).
    lose_answers: Option<StoreError>,
}

impl Inner {
    /// Numbers each entry in its conversation and keeps the last `keep` of each.
    fn append_history(&mut self, entries: &[HistoryEntry], keep: usize) {
        let mut outliving = Outliving::new(entries, keep);
        for e in entries {
            let conv = Conv::of(e).key();
            let id = {
                let last = self.history_ids.entry(conv).or_insert(0);
                *last += 1;
                *last
            };
            if !outliving.next(conv) {
                continue;
            }
            self.history
                .insert((conv, id), HistoryEntry { id, ..e.clone() });
            if id > keep as u64 {
                let old: Vec<_> = self
                    .history
                    .range((conv, 0)..=(conv, id - keep as u64))
                    .map(|(k, _)| *k)
                    .collect();
                for k in old {
                    self.history.remove(&k);
                }
            }
        }
    }
}

/// A handle onto a shared in-memory store; clones see the same data.
#[derive(Clone, Default, Debug)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Makes every following call fail (`Some`: certainly not done, as
    /// [`StoreError::Unavailable`]) or work again (`None`).
    pub fn set_failing(&self, fail: Option<&str>) {
        self.lock().fail = fail.map(|f| StoreError::Unavailable(f.to_owned()));
    }

    /// Makes every following call fail with `e` (`Some`), or work again (`None`).
    pub fn set_failing_with(&self, e: Option<StoreError>) {
        self.lock().fail = e;
    }

    /// Makes every following write happen but answer `e` (`Some`), as when a reply is
    /// lost; `None` answers truly again.
    pub fn set_losing_answers(&self, e: Option<StoreError>) {
        self.lock().lose_answers = e;
    }

    /// Number of offline messages held for `user`.
    pub fn offline_count(&self, user: i64) -> usize {
        self.lock()
            .offline
            .range((user, 0)..=(user, u64::MAX))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated (every
        // update is a single insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checked(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        let g = self.lock();
        match &g.fail {
            Some(f) => Err(f.clone()),
            None => Ok(g),
        }
    }

    /// What a write that was done answers.
    fn answer<T>(&self, v: T) -> Result<T, StoreError> {
        match &self.lock().lose_answers {
            Some(e) => Err(e.clone()),
            None => Ok(v),
        }
    }
}

impl MemStore {
    /// The stored record of `id`; panics if there is none (tests only).
    pub fn get_user_for_test(&mut self, id: i64) -> UserRecord {
        self.lock().users.get(&id).cloned().expect("user exists")
    }
}

impl Store for MemStore {
    fn get_user(&mut self, id: i64) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.checked()?.users.get(&id).cloned())
    }

    fn create_user(&mut self, rec: &UserRecord) -> Result<bool, StoreError> {
        let created = {
            let mut g = self.checked()?;
            match g.users.get(&rec.id) {
                Some(old) => !rec.reg_token.is_empty() && old.reg_token == rec.reg_token,
                None => {
                    g.users.insert(rec.id, rec.clone());
                    true
                }
            }
        };
        self.answer(created)
    }

    fn update_user(&mut self, rec: &UserRecord) -> Result<(), StoreError> {
        self.checked()?.users.insert(rec.id, rec.clone());
        self.answer(())
    }

    fn push_offline(
        &mut self,
        msg: &OfflineMsg,
        id: &OfflineId,
        history: usize,
    ) -> Result<Option<u64>, StoreError> {
        let seq = {
            let mut g = self.checked()?;
            let key = (msg.to, msg.from, id.clone());
            if let Some(&seq) = g.ids.get(&key) {
                Some(seq)
            } else if !g.users.contains_key(&msg.to) {
                None
            } else {
                g.next_seq += 1;
                let seq = g.next_seq;
                g.offline.insert((msg.to, seq), msg.clone());
                g.ids.insert(key, seq);
                if history > 0 {
                    g.append_history(std::slice::from_ref(&msg.history_entry()), history);
                }
                Some(seq)
            }
        };
        self.answer(seq)
    }

    fn fetch_offline(&mut self, user: i64, max: usize) -> Result<Vec<StoredMsg>, StoreError> {
        Ok(self
            .checked()?
            .offline
            .range((user, 0)..=(user, u64::MAX))
            .take(max)
            .map(|((_, seq), m)| StoredMsg {
                seq: *seq,
                msg: m.clone(),
            })
            .collect())
    }

    fn ack_offline(&mut self, user: i64, upto: u64) -> Result<(), StoreError> {
        let mut g = self.checked()?;
        let keys: Vec<(i64, u64)> = g
            .offline
            .range((user, 0)..=(user, upto))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            g.offline.remove(&k);
        }
        drop(g);
        self.answer(())
    }

    fn append_history(&mut self, entries: &[HistoryEntry], keep: usize) -> Result<(), StoreError> {
        self.checked()?.append_history(entries, keep);
        self.answer(())
    }

    fn read_history(
        &mut self,
        conv: Conv,
        before: u64,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, bool), StoreError> {
        let g = self.checked()?;
        let conv = conv.key();
        let below = if before == 0 { u64::MAX } else { before };
        let mut newest: Vec<HistoryEntry> = g
            .history
            .range((conv, 0)..(conv, below))
            .rev()
            .take(limit.saturating_add(1))
            .map(|(_, e)| e.clone())
            .collect();
        let more = newest.len() > limit;
        newest.truncate(limit);
        newest.reverse();
        Ok((newest, more))
    }

    fn read_history_after(
        &mut self,
        conv: Conv,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, bool), StoreError> {
        let g = self.checked()?;
        let conv = conv.key();
        let mut oldest: Vec<HistoryEntry> = g
            .history
            .range((conv, after.saturating_add(1))..=(conv, u64::MAX))
            .take(limit.saturating_add(1))
            .map(|(_, e)| e.clone())
            .collect();
        let more = oldest.len() > limit;
        oldest.truncate(limit);
        Ok((oldest, more))
    }

    fn list_users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        let mut all: Vec<UserRecord> = self.checked()?.users.values().cloned().collect();
        all.sort_by_key(|u| u.id);
        Ok(all)
    }

    fn remove_user(&mut self, id: i64) -> Result<bool, StoreError> {
        let removed = {
            let mut g = self.checked()?;
            let keys: Vec<(i64, u64)> = g
                .offline
                .range((id, 0)..=(id, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                g.offline.remove(&k);
            }
            g.ids.retain(|(to, _, _), _| *to != id);
            // Their private conversations go (the counters stay: a conversation of
            // whoever registers the id next is numbered after them).
            g.history
                .retain(|((a, b), _), _| (*a, *b) == (0, 0) || (*a != id && *b != id));
            g.users.remove(&id).is_some()
        };
        self.answer(removed)
    }

    fn modify_user(
        &mut self,
        id: i64,
        change: &mut dyn FnMut(&mut UserRecord),
    ) -> Result<Option<UserRecord>, StoreError> {
        let rec = {
            let mut g = self.checked()?;
            g.users.get_mut(&id).map(|r| {
                change(r);
                r.stale_shape = false;
                r.clone()
            })
        };
        self.answer(rec)
    }
}

impl MemStore {
    /// Number of history entries held, over every conversation.
    pub fn history_count(&self) -> usize {
        self.lock().history.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_backend_suite() {
        let shared = MemStore::new();
        super::super::suite::run(&|| Box::new(shared.clone()));
    }

    #[test]
    fn failing_mode_fails_every_call() {
        let mut s = MemStore::new();
        s.set_failing(Some("down"));
        assert_eq!(s.get_user(1), Err(StoreError::Unavailable("down".into())));
        s.set_failing(None);
        assert_eq!(s.get_user(1), Ok(None));
    }
}
