//! The default backend: one redb file (`chat.redb`) in the data directory.
//!
//! redb commits are durable when `commit` returns (it syncs to disk by default), so a
//! write acknowledged to a client survives `kill -9` and power loss. One `Database`
//! is shared by all worker threads; redb serialises writers and lets readers run
//! alongside.
//!
//! Tables:
//! - `users`: user id → the user's JSON (the same JSON as the Redis backend).
//! - `offline`: (recipient id, seq) → the message's JSON; the key order is delivery order.
//! - `meta`: `"offline_seq"` → the last sequence number handed out.
//! - `offline_ids`: (recipient, sender, tagged id) → (seq, expiry in unix ms): the ids
//!   of stored messages, so that a repeated write stores nothing new (see
//!   [`DEDUPE_WINDOW`]); `offline_id_exp`: (expiry, recipient, sender, tagged id), the
//!   same entries by expiry, from which each write removes a few expired ones.
//! - `history`: (conversation, id) → the entry's JSON; the group is conversation
//!   (0, 0), a private one (lower user id, higher user id). `history_ids`:
//!   conversation → its last id. An append numbers, inserts and trims in one
//!   transaction: one commit (one sync) per batch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Conv, DEDUPE_WINDOW, HistoryEntry, OfflineId, OfflineMsg, Outliving, Store, StoreError,
    StoredMsg,
};
use crate::users::UserRecord;

const USERS: TableDefinition<i64, &str> = TableDefinition::new("users");
const OFFLINE: TableDefinition<(i64, u64), &str> = TableDefinition::new("offline");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const IDS: TableDefinition<(i64, i64, &str), (u64, u64)> = TableDefinition::new("offline_ids");
const ID_EXP: TableDefinition<(u64, i64, i64, &str), ()> = TableDefinition::new("offline_id_exp");
const HISTORY: TableDefinition<(i64, i64, u64), &str> = TableDefinition::new("history");
const HISTORY_IDS: TableDefinition<(i64, i64), u64> = TableDefinition::new("history_ids");
const SEQ_KEY: &str = "offline_seq";
/// Expired ids removed per write at most: more than one, so the table shrinks back
/// after a burst.
const PRUNE_PER_WRITE: usize = 8;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The file name inside the data directory.
pub const FILE_NAME: &str = "chat.redb";

/// Memory for the data file's pages, by default. redb's own default is 1 GiB, which a
/// small machine does not have: history alone would fill it over time. The file's
/// pages stay in the kernel's page cache as well, so a page that misses costs a copy,
/// not a disk read.
pub const DEFAULT_CACHE_MIB: usize = 32;

/// A handle onto the shared database; cheap to clone, one per worker.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

/// How soon after a failed attempt the data file is opened again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// What every handle shares: the database, and whether it is failing.
///
/// After an I/O error (a full disk, most often) redb refuses every later transaction
/// until the database is opened again. The first handle to see the error logs its OS
/// cause, and the database is dropped here; requests are refused with that cause
/// (the storage code) meanwhile. Each request then tries, at most once per
/// [`REOPEN_EVERY`], to open the file again (which succeeds once the last handle of
/// the old one is gone; redb recovers the file to its last commit, so every
/// acknowledged write is there). The first commit that succeeds after that ends the
/// episode, with a line saying so. A file that cannot be opened again for any other
/// reason than I/O (it is damaged) ends the process with that cause, so that the
/// service manager restarts it.
struct Shared {
    db: RwLock<Option<Arc<Database>>>,
    /// The data file, for reopening and [`Store::backup`].
    path: std::path::PathBuf,
    cache_bytes: usize,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// The cause of the current failure (`None`: healthy).
    failing: Option<String>,
    last_attempt: Option<Instant>,
}

macro_rules! tryx {
    ($e:expr, $ctx:expr) => {
        $e.map_err(|e| StoreError::new($ctx, redb::Error::from(e)))?
    };
}

impl EmbeddedStore {
    /// Opens (or creates) `DIR/chat.redb`, creating the tables if missing, with a
    /// cache of [`DEFAULT_CACHE_MIB`]. The file is created with mode 0600, and one
    /// that other users can read is made so (see `sys::make_private`).
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with_cache(dir, DEFAULT_CACHE_MIB << 20)
    }

    /// [`EmbeddedStore::open`] with at most `cache_bytes` of the file's pages kept in
    /// memory (read and not yet written ones together).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<EmbeddedStore, StoreError> {
        let path = dir.join(FILE_NAME);
        // Created private (redb would create it as the umask says); an existing one
        // made so. redb initialises an empty file as a new database.
        if let Err(e) = crate::sys::open_private_file(&path, false) {
            return Err(StoreError::Unavailable(format!(
                "cannot open the data file {}: {e}",
                path.display()
            )));
        }
        if let Err(e) = crate::sys::make_private(&path) {
            log::warn!(
                "{}: readable by other users, and its mode cannot be changed: {e}",
                path.display()
            );
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(|e| {
                let why = match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => "it is in use by another \
                        process (is another server running on this data directory?)"
                        .to_string(),
                    other => other.to_string(),
                };
                StoreError::Unavailable(format!(
                    "cannot open the data file {}: {why}",
                    path.display()
                ))
            })?;
        create_tables(&db)?;
        Ok(EmbeddedStore {
            shared: Arc::new(Shared {
                db: RwLock::new(Some(Arc::new(db))),
                path,
                cache_bytes,
                health: Mutex::new(Health::default()),
            }),
        })
    }

    /// The database, or the cause of the failure while it is failing (trying to open
    /// it again at most every [`REOPEN_EVERY`]).
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let sh = &*self.shared;
        if let Some(db) = sh.db.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(db.clone());
        }
        let mut health = sh.health.lock().unwrap_or_else(|e| e.into_inner());
        let cause = health.failing.clone().unwrap_or_default();
        let refused = || StoreError::Unavailable(format!("storage failing: {cause}"));
        if health
            .last_attempt
            .is_some_and(|t| t.elapsed() < REOPEN_EVERY)
        {
            return Err(refused());
        }
        health.last_attempt = Some(Instant::now());
        let mut slot = sh.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        // `open`, not `create`: a data file that is not there (a disk not mounted back
        // yet) is waited for, not replaced by an empty one.
        match Database::builder()
            .set_cache_size(sh.cache_bytes)
            .open(&sh.path)
        {
            Ok(db) => {
                log::info!("data file {} opened again", sh.path.display());
                let db = Arc::new(db);
                *slot = Some(db.clone());
                Ok(db)
            }
            // The old database is still held by a request under way, or the disk
            // still fails: the next attempt comes soon.
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
            | Err(redb::DatabaseError::Storage(redb::StorageError::Io(_))) => Err(refused()),
            Err(e) => {
                let why = format!(
                    "the data file {} cannot be opened again after \"{cause}\": {e}",
                    sh.path.display()
                );
                log::error!("{why}; exiting so that the service manager restarts the server");
                log::logger().flush();
                eprintln!("chat-server: {why}");
                std::process::exit(1);
            }
        }
    }

    /// `r`, with an I/O error (or redb's "an earlier I/O error") starting or going on
    /// with a failure (see [`Shared`]), and a success of a commit while failing
    /// ending it.
    fn io<T, E: Into<redb::Error>>(&self, r: Result<T, E>, ctx: &str) -> Result<T, StoreError> {
        let sh = &*self.shared;
        match r {
            Ok(v) => {
                if ctx.starts_with("commit") {
                    let mut health = sh.health.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(cause) = health.failing.take() {
                        log::warn!(
                            "data file {}: writes succeed again (after \"{cause}\")",
                            sh.path.display()
                        );
                    }
                }
                Ok(v)
            }
            Err(e) => {
                let e: redb::Error = e.into();
                if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
                    let mut health = sh.health.lock().unwrap_or_else(|e| e.into_inner());
                    if health.failing.is_none() {
                        let cause = match &e {
                            redb::Error::Io(io) => io.to_string(),
                            other => other.to_string(),
                        };
                        log::error!(
                            "data file {}: {ctx}: {cause}; storage requests are refused until \
                             it can be written again",
                            sh.path.display()
                        );
                        health.failing = Some(cause);
                        health.last_attempt = None;
                    }
                    // Dropped here; closed once the requests under way let it go.
                    sh.db.write().unwrap_or_else(|e| e.into_inner()).take();
                }
                Err(failure(ctx, e))
            }
        }
    }
}

/// What a failed step means for the request. A commit that failed on an I/O error
/// other than a full disk may have reached the disk all the same (the error can come
/// from the last sync, after the commit point): the outcome is uncertain, and the
/// request may be repeated safely (writes are idempotent). A full disk fails before
/// the commit point (redb writes its commit record in place, in the header): certainly
/// not done, as is every failure of another step.
fn failure(ctx: &str, e: redb::Error) -> StoreError {
    let uncertain = ctx.starts_with("commit")
        && matches!(&e, redb::Error::Io(io) if io.kind() != std::io::ErrorKind::StorageFull);
    if uncertain {
        StoreError::Uncertain(format!("{ctx}: {e}"))
    } else {
        StoreError::new(ctx, e)
    }
}

/// Creates the tables if missing (a new file).
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let tx = tryx!(db.begin_write(), "begin write");
    {
        tryx!(tx.open_table(USERS), "open users");
        tryx!(tx.open_table(OFFLINE), "open offline");
        tryx!(tx.open_table(META), "open meta");
        tryx!(tx.open_table(IDS), "open offline_ids");
        tryx!(tx.open_table(ID_EXP), "open offline_id_exp");
        tryx!(tx.open_table(HISTORY), "open history");
        tryx!(tx.open_table(HISTORY_IDS), "open history_ids");
    }
    tryx!(tx.commit(), "commit");
    Ok(())
}

impl Store for EmbeddedStore {
    fn get_user(&mut self, id: i64) -> Result<Option<UserRecord>, StoreError> {
        let db = self.db()?;
        let tx = self.io(db.begin_read(), "begin read")?;
        let t = tryx!(tx.open_table(USERS), "open users");
        match tryx!(t.get(id), "read user") {
            Some(v) => UserRecord::from_json(v.value())
                .map(Some)
                .map_err(StoreError::from),
            None => Ok(None),
        }
    }

    fn create_user(&mut self, rec: &UserRecord) -> Result<bool, StoreError> {
        let db = self.db()?;
        let tx = self.io(db.begin_write(), "begin write")?;
        {
            let mut t = tryx!(tx.open_table(USERS), "open users");
            if let Some(old) = tryx!(t.get(rec.id), "read user") {
                // The same registration again (its first answer lost) is no conflict.
                let same = !rec.reg_token.is_empty()
                    && UserRecord::from_json(old.value())
                        .is_ok_and(|old| old.reg_token == rec.reg_token);
                return Ok(same);
            }
            tryx!(t.insert(rec.id, rec.to_json().as_str()), "write user");
        }
        self.io(tx.commit(), "commit user")?;
        Ok(true)
    }

    fn update_user(&mut self, rec: &UserRecord) -> Result<(), StoreError> {
        let db = self.db()?;
        let tx = self.io(db.begin_write(), "begin write")?;
        {
            let mut t = tryx!(tx.open_table(USERS), "open users");
            tryx!(t.insert(rec.id, rec.to_json().as_str()), "write user");
        }
        self.io(tx.commit(), "commit user")?;
        Ok(())
    }

    fn push_offline(
        &mut self,
        msg: &OfflineMsg,
        id: &OfflineId,
        history: usize,
    ) -> Result<Option<u64>, StoreError> {
        let json = serde_json::to_string(msg).map_err(|e| StoreError::new("encode", e))?;
        let tagged = id.tagged();
        let now = now_ms();
        let db = self.db()?;
        let tx = self.io(db.begin_write(), "begin write")?;
        let seq;
        {
            let mut ids = tryx!(tx.open_table(IDS), "open offline_ids");
            let mut exp = tryx!(tx.open_table(ID_EXP), "open offline_id_exp");
            let key = (msg.to, msg.from, tagged.as_str());
            if let Some(v) = tryx!(ids.get(key), "read id") {
                let (seq, expires) = v.value();
                if expires > now {
                    return Ok(Some(seq));
                }
            }
            let users = tryx!(tx.open_table(USERS), "open users");
            if tryx!(users.get(msg.to), "read user").is_none() {
                return Ok(None);
            }
            let mut meta = tryx!(tx.open_table(META), "open meta");
            seq = tryx!(meta.get(SEQ_KEY), "read seq").map_or(0, |v| v.value()) + 1;
            tryx!(meta.insert(SEQ_KEY, seq), "write seq");
            let mut t = tryx!(tx.open_table(OFFLINE), "open offline");
            tryx!(t.insert((msg.to, seq), json.as_str()), "write message");
            let expires = now.saturating_add(DEDUPE_WINDOW.as_millis() as u64);
            tryx!(ids.insert(key, (seq, expires)), "write id");
            tryx!(
                exp.insert((expires, msg.to, msg.from, tagged.as_str()), ()),
                "write id expiry"
            );
            // Forget a few ids whose window has passed (an id rewritten since has a
            // later expiry of its own, and stays).
            let mut old = Vec::new();
            for item in tryx!(exp.range(..(now, i64::MIN, i64::MIN, "")), "range expiry")
                .take(PRUNE_PER_WRITE)
            {
                let (k, _) = tryx!(item, "read expiry");
                let (e, to, from, id) = k.value();
                old.push((e, to, from, id.to_string()));
            }
            for (e, to, from, id) in old {
                tryx!(exp.remove((e, to, from, id.as_str())), "remove expiry");
                let current =
                    tryx!(ids.get((to, from, id.as_str())), "read id").map(|v| v.value().1);
                if current == Some(e) {
                    tryx!(ids.remove((to, from, id.as_str())), "remove id");
                }
            }
        }
        if history > 0 {
            append_in(&tx, std::slice::from_ref(&msg.history_entry()), history)?;
        }
        self.io(tx.commit(), "commit message")?;
        Ok(Some(seq))
    }

    fn fetch_offline(&mut self, user: i64, max: usize) -> Result<Vec<StoredMsg>, StoreError> {
        let db = self.db()?;
        let tx = self.io(db.begin_read(), "begin read")?;
        let t = tryx!(tx.open_table(OFFLINE), "open offline");
        let mut out = Vec::new();
        for item in tryx!(t.range((user, 0)..=(user, u64::MAX)), "range").take(max) {
            let (k, v) = tryx!(item, "read message");
            let msg: OfflineMsg = serde_json::from_str(v.value())
                .map_err(|e| StoreError::new("bad stored message", e))?;
            out.push(StoredMsg {
                seq: k.value().1,
                msg,
            });
        }
        Ok(out)
    }

    fn ack_offline(&mut self, user: i64, upto: u64) -> Result<(), StoreError> {
        let db = self.db()?;
        let tx = self.io(db.begin_write(), "begin write")?;
        {
            let mut t = tryx!(tx.open_table(OFFLINE), "open offline");
            tryx!(
                t.retain_in((user, 0)..=(user, upto), |_, _| false),
                "remove messages"
            );
        }
        self.io(tx.commit(), "commit ack")?;
        Ok(())
    }

    fn append_history(&mut self, entries: &[HistoryEntry], keep: usize) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let db = self.db()?;
        let tx = self.io(db.begin_write(), "begin write")?;
        append_in(&tx, entries, keep)?;
        self.io(tx.commit(), "commit history")?;
        Ok(())
    }

    fn read_history(
        &mut self,
        conv: Conv,
        before: u64,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, bool), StoreError> {
        let db = self.db()?;
        let tx = self.io(db.begin_read(), "begin read")?;
        let t = tryx!(tx.open_table(HISTORY), "open history");
        let (a, b) = conv.key();
        let below = if before == 0 { u64::MAX } else { before };
        let mut out = Vec::new();
        let mut more = false;
        for item in tryx!(t.range((a, b, 0)..(a, b, below)), "range history").rev() {
            let (k, v) = tryx!(item, "read history");
            if out.len() == limit {
                more = true;
                break;
            }
            let e: HistoryEntry = serde_json::from_str(v.value())
                .map_err(|e| StoreError::new("bad stored history entry", e))?;
            out.push(HistoryEntry {
                id: k.value().2,
                ..e
            });
        }
        out.reverse();
        Ok((out, more))
    }

    fn read_history_after(
        &mut self,
        conv: Conv,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, bool), StoreError> {
        let db = self.db()?;
        let tx = self.io(db.begin_read(), "begin read")?;
        let t = tryx!(tx.open_table(HISTORY), "open history");
        let (a, b) = conv.key();
        let mut out = Vec::new();
        let mut more = false;
        let from = (a, b, after.saturating_add(1));
        for item in tryx!(t.range(from..=(a, b, u64::MAX)), "range history") {
            let (k, v) = tryx!(item, "read history");
            if out.len() == limit {
                more = true;
                break;
            }
            let e: HistoryEntry = serde_json::from_str(v.value())
                .map_err(|e| StoreError::new("bad stored history entry", e))?;
            out.push(HistoryEntry {
                id: k.value().2,
                ..e
            });
        }
        Ok((out, more))
    }
    fn list_users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        let db = self.db()?;
        let tx = self.io(db.begin_read(), "begin read")?;
        let t = tryx!(tx.open_table(USERS), "open users");
        let mut out = Vec::new();
        for item in tryx!(t.iter(), "list users") {
            let (_, v) = tryx!(item, "read user");
            out.push(UserRecord::from_json(v.value()).map_err(StoreError::from)?);
        }
        Ok(out)
    }

    fn remove_user(&mut self, id: i64) -> Result<bool, StoreError> {
        let db = self.db()?;
        let tx = self.io(db.begin_write(), "begin write")?;
        let existed;
        {
            let mut users = tryx!(tx.open_table(USERS), "open users");
            existed = tryx!(users.remove(id), "remove user").is_some();
            let mut t = tryx!(tx.open_table(OFFLINE), "open offline");
            tryx!(
                t.retain_in((id, 0)..=(id, u64::MAX), |_, _| false),
                "remove messages"
            );
            // The ids of messages stored for this user go too (their expiry entries
            // are pruned as usual: they no longer match an id).
            let mut ids = tryx!(tx.open_table(IDS), "open offline_ids");
            tryx!(
                ids.retain_in(
                    (id, i64::MIN, "")..(id.saturating_add(1), i64::MIN, ""),
                    |_, _| { false }
                ),
                "remove ids"
            );
            // Their private conversations go, found through the conversations'
            // counters (one per conversation; the pairs with the user second are not
            // one range). The counters stay: a conversation of whoever registers the
            // id next is numbered after them.
            let convs = tryx!(tx.open_table(HISTORY_IDS), "open history_ids");
            let mut pairs = Vec::new();
            for item in tryx!(convs.iter(), "list conversations") {
                let (k, _) = tryx!(item, "read conversation");
                let (a, b) = k.value();
                if (a, b) != (0, 0) && (a == id || b == id) {
                    pairs.push((a, b));
                }
            }
            let mut t = tryx!(tx.open_table(HISTORY), "open history");
            for (a, b) in pairs {
                tryx!(
                    t.retain_in((a, b, 0)..=(a, b, u64::MAX), |_, _| false),
                    "remove history"
                );
            }
        }
        self.io(tx.commit(), "commit removal")?;
        Ok(existed)
    }

    fn modify_user(
        &mut self,
        id: i64,
        change: &mut dyn FnMut(&mut UserRecord),
    ) -> Result<Option<UserRecord>, StoreError> {
        // Read and written in one write transaction: redb serialises writers.
        let db = self.db()?;
        let tx = self.io(db.begin_write(), "begin write")?;
        let rec;
        {
            let mut t = tryx!(tx.open_table(USERS), "open users");
            let Some(mut r) = tryx!(t.get(id), "read user")
                .map(|v| UserRecord::from_json(v.value()))
                .transpose()
                .map_err(StoreError::from)?
            else {
                return Ok(None);
            };
            change(&mut r);
            r.stale_shape = false;
            tryx!(t.insert(id, r.to_json().as_str()), "write user");
            rec = r;
        }
        self.io(tx.commit(), "commit user")?;
        Ok(Some(rec))
    }

    /// Copies the file while holding redb's write lock: no commit can start or be
    /// under way meanwhile, and every commit before it was synced to disk (redb's
    /// default durability), so the copy is the database as of its last commit, as
    /// after a crash at that instant, which redb recovers from by design. Writers
    /// (registrations, stored messages) wait for the copy; readers do not.
    fn backup(&mut self, to: &Path) -> Result<u64, StoreError> {
        let from = self.shared.path.clone();
        let db = self.db()?;
        let tx = self.io(db.begin_write(), "begin write")?;
        let copied = copy_new(&from, to);
        // Nothing was written in it.
        tryx!(tx.abort(), "end backup");
        let n = copied
            .map_err(|e| StoreError::Unavailable(format!("backup to {}: {e}", to.display())))?;
        // The copy is checked: opened (which recovers it as after a crash) and its
        // checksums verified.
        let bad = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("the backup {} is unusable: {e}", to.display()))
        };
        let mut check = Database::open(to).map_err(|e| bad(&e))?;
        match check.check_integrity() {
            Ok(true) => {
                drop(check);
                // The size of the file written, as checked (what the operator keeps).
                Ok(std::fs::metadata(to).map_or(n, |m| m.len()))
            }
            Ok(false) => Err(bad(&"it needed repairs")),
            Err(e) => Err(bad(&e)),
        }
    }
}

/// Appends `entries` to their conversations' history within `tx` and trims each
/// conversation it touched to its last `keep` (see [`Store::append_history`]).
fn append_in(
    tx: &redb::WriteTransaction,
    entries: &[HistoryEntry],
    keep: usize,
) -> Result<(), StoreError> {
    let mut t = tryx!(tx.open_table(HISTORY), "open history");
    let mut ids = tryx!(tx.open_table(HISTORY_IDS), "open history_ids");
    // Each conversation's last id, read once and written once per append (a
    // busy group's append is hundreds of entries of one conversation).
    let mut last: HashMap<(i64, i64), u64> = HashMap::new();
    let mut outliving = Outliving::new(entries, keep);
    for e in entries {
        let conv = Conv::of(e).key();
        let id = match last.get_mut(&conv) {
            Some(id) => id,
            None => {
                let stored = tryx!(ids.get(conv), "read history id").map(|v| v.value());
                last.entry(conv).or_insert(stored.unwrap_or(0))
            }
        };
        *id += 1;
        if !outliving.next(conv) {
            continue;
        }
        // Stored without its id: the key holds it (the hub's entries have none).
        let json = if e.id == 0 {
            serde_json::to_string(e)
        } else {
            serde_json::to_string(&HistoryEntry { id: 0, ..e.clone() })
        }
        .map_err(|e| StoreError::new("encode", e))?;
        tryx!(
            t.insert((conv.0, conv.1, *id), json.as_str()),
            "write history"
        );
    }
    for ((a, b), id) in last {
        tryx!(ids.insert((a, b), id), "write history id");
        if id > keep as u64 {
            // Trimmed at every append, so this range holds what this one
            // pushed past the limit.
            tryx!(
                t.retain_in((a, b, 0)..=(a, b, id - keep as u64), |_, _| false),
                "trim history"
            );
        }
    }
    Ok(())
}

/// Copies `from` to a new file `to` (never over an existing one) and syncs it.
fn copy_new(from: &Path, to: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let mut src = std::fs::File::open(from)?;
    let mut dst = crate::sys::open_private_file(to, true)?;
    let result = std::io::copy(&mut src, &mut dst).and_then(|n| {
        dst.flush()?;
        dst.sync_all()?;
        Ok(n)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(to);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_commit_is_uncertain_unless_the_disk_was_full() {
        let io = |errno| redb::Error::Io(std::io::Error::from_raw_os_error(errno));
        assert!(failure("commit message", io(libc::EIO)).is_uncertain());
        assert!(!failure("commit message", io(libc::ENOSPC)).is_uncertain());
        assert!(!failure("begin write", io(libc::EIO)).is_uncertain());
        assert!(!failure("commit message", redb::Error::PreviousIo).is_uncertain());
    }

    #[test]
    fn passes_the_backend_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        super::super::suite::run(&|| Box::new(store.clone()));
    }

    #[test]
    fn a_backup_taken_during_writes_is_a_whole_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (mut s, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut id = 1;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let rec = UserRecord {
                        id,
                        name: format!("user {id}"),
                        pwd_hash: "$argon2id$x".into(),
                        ..UserRecord::default()
                    };
                    assert!(s.create_user(&rec).unwrap());
                    id += 1;
                }
                id - 1
            })
        };
        // Some writes before and during each copy.
        while store.clone().get_user(50).unwrap().is_none() {
            std::thread::yield_now();
        }
        let copies: Vec<_> = (0..3)
            .map(|i| {
                let to = dir.path().join(format!("copy-{i}.redb"));
                let n = store.clone().backup(&to).unwrap();
                assert!(n > 0);
                to
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let written = writer.join().unwrap();
        let mut last = 0;
        for to in copies {
            let copy_dir = tempfile::tempdir().unwrap();
            std::fs::rename(&to, copy_dir.path().join(FILE_NAME)).unwrap();
            let mut c = EmbeddedStore::open(copy_dir.path()).unwrap();
            let users = c.list_users().unwrap();
            // Every record whole, and no gap: a prefix of what was written.
            let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
            assert!(ids.len() >= 50 && ids.len() as i64 <= written);
            assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
            assert!(users.iter().all(|u| u.name == format!("user {}", u.id)));
            assert!(ids.len() >= last, "later copies hold more");
            last = ids.len();
        }
        // Never over an existing file.
        let there = dir.path().join("there.redb");
        std::fs::write(&there, b"keep").unwrap();
        assert!(store.clone().backup(&there).is_err());
        assert_eq!(std::fs::read(&there).unwrap(), b"keep");
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = EmbeddedStore::open(dir.path()).unwrap();
            let rec = UserRecord {
                id: 5,
                name: "e".into(),
                pwd_hash: "h".into(),
                ..UserRecord::default()
            };
            assert!(s.create_user(&rec).unwrap());
        }
        let mut s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.get_user(5).unwrap().unwrap().name, "e");
    }

    #[test]
    fn history_survives_reopening_and_numbering_goes_on() {
        use crate::store::suite::entry;
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = EmbeddedStore::open(dir.path()).unwrap();
            s.append_history(&[entry(1, None, "a"), entry(1, Some(2), "b")], 10)
                .unwrap();
        }
        let mut s = EmbeddedStore::open(dir.path()).unwrap();
        s.append_history(&[entry(2, None, "c")], 10).unwrap();
        let (got, more) = s.read_history(Conv::Group, 0, 10).unwrap();
        let got: Vec<(u64, &str)> = got.iter().map(|e| (e.id, e.content.as_str())).collect();
        assert_eq!((got, more), (vec![(1, "a"), (2, "c")], false));
        let (got, _) = s.read_history(Conv::pair(2, 1), 0, 10).unwrap();
        assert_eq!(got[0].content, "b");
    }

    /// Fails the store as a commit's I/O error would, and lets the next request try
    /// to open the file again at once.
    fn fail(store: &EmbeddedStore) {
        let e = std::io::Error::other("simulated I/O error");
        assert!(
            store
                .io::<(), _>(Err(redb::Error::Io(e)), "commit")
                .is_err()
        );
        store.shared.health.lock().unwrap().last_attempt = None;
    }

    #[test]
    fn a_data_file_gone_while_failing_is_not_replaced_by_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EmbeddedStore::open(dir.path()).unwrap();
        let rec = UserRecord {
            id: 5,
            name: "e".into(),
            pwd_hash: "h".into(),
            ..UserRecord::default()
        };
        assert!(s.create_user(&rec).unwrap());
        fail(&s);
        // The file is away (a disk not mounted back yet, an operator moving it).
        let file = dir.path().join(FILE_NAME);
        let away = dir.path().join("away.redb");
        std::fs::rename(&file, &away).unwrap();
        assert!(s.get_user(5).is_err(), "refused while the file is away");
        assert!(!file.exists(), "no new, empty data file in its place");
        s.shared.health.lock().unwrap().last_attempt = None;
        // Back: the store heals with every record.
        std::fs::rename(&away, &file).unwrap();
        assert_eq!(s.get_user(5).unwrap().unwrap().name, "e");
    }
}
