//! The purge bus: every purge and mutation invalidation made on one replica reaches every
//! replica of the fleet, in order, through one capped Redis Stream.
//!
//! A stream rather than pub/sub, because pub/sub forgets whatever a replica misses while it is
//! disconnected: a replica reads the stream from the last entry it saw, so after a short
//! disconnect it catches up. When it missed more than the stream keeps, it cannot tell which
//! of its entries were purged, so it drops its whole local store (and says so in a log line and
//! `tollgate_cache_purge_bus_resyncs_total`) rather than serve what it cannot prove fresh.
//!
//! # Keys and entries
//!
//! - `<prefix>:cache:{purges}`: the stream, trimmed to `cache.purge_stream_length` entries.
//!   Each entry: `e` (the stream's epoch), `n` (its sequence number: 1, 2, 3, ... with no
//!   holes), `from` (the replica that made it) and `op` (the [`PurgeOp`] as JSON).
//! - `<prefix>:cache:{purges}:meta`: a hash with the `epoch` (random, set once) and the last
//!   `n`. Both keys share a hash tag, so one script updates them in a Redis Cluster too.
//!
//! A reader expects `n` to follow its last one. A hole means entries were trimmed before it
//! read them (`trimmed`); another epoch means Redis lost the stream (`stream_lost`).
//!
//! # Purges and the shared tier
//!
//! The bus also keeps the last purges it read (the *ban list*, as long as the stream), so the
//! shared tier can refuse an entry that a purge made after it was written matches: each shared
//! entry records the epoch and `n` its writer had read when it stored it. See
//! [`PurgeBus::verdict`].
//!
//! Publishing is off the request path: a purge is applied to the local store at once, queued,
//! and written to the stream by the bus' own task (in order; while Redis is away the queue
//! waits, up to [`MAX_PENDING`] purges).

use super::purge::PurgeOp;
use super::storage::{EntryTag, MemoryStorage};
use crate::fleet::link::Dedicated;
use crate::fleet::{Link, StoreError};
use crate::observe::metrics;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Own purges held while Redis is away; older ones are dropped past it (and logged).
pub const MAX_PENDING: usize = 10_000;

/// How long one `XREAD` blocks before it is sent again.
const BLOCK: Duration = Duration::from_secs(2);

/// Entries read per `XREAD`.
const READ_COUNT: usize = 512;

/// `KEYS[1]`: the stream, `KEYS[2]`: its meta hash. `ARGV[1]`: the stream's length cap,
/// `ARGV[2]`: an epoch to use if there is none yet, `ARGV[3]`: this replica, `ARGV[4]`: the
/// purge. Returns the entry's `{id, epoch, n}`.
const PUBLISH: &str = r"
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[2])
local e = redis.call('HGET', KEYS[2], 'epoch')
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'e', e, 'n', n, 'from', ARGV[3], 'op', ARGV[4])
return {id, e, n}
";

/// `KEYS[1]`: the meta hash; `ARGV[1]`: an epoch to use if there is none yet. Returns
/// `{epoch, last n}`.
const EPOCH: &str = r"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
return {redis.call('HGET', KEYS[1], 'epoch'), redis.call('HGET', KEYS[1], 'n') or '0'}
";

/// Where a replica is in the stream: the stream's epoch and the last `n` it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The stream's epoch.
    pub epoch: u64,
    /// The last entry applied.
    pub n: u64,
}

/// What the ban list says of a shared entry written at some [`Position`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No purge since it was written names it.
    Fresh,
    /// A purge since it was written names it.
    Purged,
    /// It was written before the purges this replica holds (or under another epoch): nothing
    /// proves it was not purged.
    Unprovable,
}

/// Why the local store was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resync {
    Trimmed,
    StreamLost,
    Undecodable,
}

impl Resync {
    fn label(self) -> &'static str {
        match self {
            Resync::Trimmed => "trimmed",
            Resync::StreamLost => "stream_lost",
            Resync::Undecodable => "undecodable",
        }
    }
}

/// What the reader knows of the stream.
#[derive(Default)]
struct Reader {
    /// The stream's epoch, once read.
    epoch: Option<u64>,
    /// The last entry applied: its `n` and its stream id (where the next read starts).
    n: u64,
    id: String,
    /// Shared entries written at an `n` below this are unprovable: the purges after them are
    /// not all in `bans`.
    floor: u64,
    /// The purges read, oldest first, with their `n`.
    bans: VecDeque<(u64, PurgeOp)>,
}

/// The replica's end of the fleet's purge stream.
pub struct PurgeBus {
    link: Arc<Link>,
    storage: &'static MemoryStorage,
    stream: String,
    meta: String,
    max_len: usize,
    reader: Mutex<Reader>,
    pending: Mutex<VecDeque<String>>,
    wake: tokio::sync::Notify,
}

impl PurgeBus {
    /// A bus over `link` for `storage`, keeping `max_len` purges in the stream.
    pub fn new(link: Arc<Link>, storage: &'static MemoryStorage, max_len: usize) -> PurgeBus {
        let prefix = &link.settings().key_prefix;
        let stream = format!("{prefix}:cache:{{purges}}");
        let meta = format!("{stream}:meta");
        metrics::PURGE_BUS_CONNECTED.set(0);
        metrics::PURGE_BUS_PENDING.set(0);
        metrics::PURGE_BUS_PUBLISHED_TOTAL.get();
        metrics::PURGE_BUS_APPLIED_TOTAL.get();
        for reason in ["trimmed", "stream_lost", "undecodable"] {
            metrics::PURGE_BUS_RESYNCS_TOTAL.with_label_values(&[reason]);
        }
        metrics::CACHE_PURGED_ENTRIES_TOTAL.with_label_values(&["fleet"]);
        PurgeBus {
            link,
            storage,
            stream,
            meta,
            max_len: max_len.max(1),
            reader: Mutex::new(Reader {
                id: "0-0".into(),
                ..Reader::default()
            }),
            pending: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Send a purge already applied here to the other replicas (queued; the bus' task writes
    /// it). Returns whether it is on its way now (`false`: Redis is away, it waits).
    pub fn publish(&self, op: &PurgeOp) -> bool {
        let Ok(json) = serde_json::to_string(op) else {
            return false;
        };
        let mut pending = self.pending.lock();
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
            tracing::warn!(
                "purge bus: {MAX_PENDING} purges wait for Redis; the oldest is dropped (other replicas will not see it)"
            );
        }
        pending.push_back(json);
        metrics::PURGE_BUS_PENDING.set(pending.len() as i64);
        drop(pending);
        self.wake.notify_one();
        self.link.available()
    }

    /// Where this replica is in the stream (for a shared entry written now), once it has read
    /// the stream's epoch.
    pub fn position(&self) -> Option<Position> {
        let r = self.reader.lock();
        r.epoch.map(|epoch| Position { epoch, n: r.n })
    }

    /// Whether a shared entry about `tag`, written at `at`, may be served: no purge held
    /// since `at` names it, and every purge since `at` is held.
    pub fn verdict(&self, at: Position, tag: &EntryTag) -> Verdict {
        let r = self.reader.lock();
        if r.epoch != Some(at.epoch) || at.n < r.floor {
            return Verdict::Unprovable;
        }
        // Bans are in `n` order: skip those the writer had already applied.
        let first = r.bans.partition_point(|(n, _)| *n <= at.n);
        if r.bans.range(first..).any(|(_, op)| op.matches(tag)) {
            Verdict::Purged
        } else {
            Verdict::Fresh
        }
    }

    /// Write the queued purges, oldest first, until none is left or Redis fails.
    async fn flush(&self) -> Result<(), StoreError> {
        loop {
            let Some(op) = self.pending.lock().front().cloned() else {
                return Ok(());
            };
            let script = redis::Script::new(PUBLISH);
            let mut inv = script.prepare_invoke();
            inv.key(&self.stream)
                .key(&self.meta)
                .arg(self.max_len)
                .arg(new_epoch())
                .arg(self.link.replica())
                .arg(&op);
            let _: (String, u64, u64) = self.link.eval("purge_publish", &inv).await?;
            let mut pending = self.pending.lock();
            // The front is still ours: only this task pops it (or `publish` when full, which
            // at worst drops one purge twice over; counted as published either way).
            if pending.front() == Some(&op) {
                pending.pop_front();
            }
            metrics::PURGE_BUS_PENDING.set(pending.len() as i64);
            metrics::PURGE_BUS_PUBLISHED_TOTAL.inc();
        }
    }

    /// The publishing loop: flush whenever a purge is queued, and retry while Redis is away.
    async fn publisher(&self) {
        loop {
            if self.flush().await.is_err() {
                // Redis is away: the link's backoff and heartbeat notice its return.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            self.wake.notified().await;
        }
    }

    /// On (re)connection: read the epoch. A new one (Redis lost the stream) drops the store;
    /// on the first connection (or after that), the purges the stream holds become the ban
    /// list. After a reconnection with the same epoch, reading goes on from the last entry
    /// applied, and [`PurgeBus::apply`] notices a hole.
    async fn sync_epoch(&self, conn: &mut Dedicated) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(EPOCH).arg(1).arg(&self.meta).arg(new_epoch());
        let (epoch, last_n): (u64, u64) = conn.query(&cmd).await?;
        let (known, applied) = {
            let r = self.reader.lock();
            (r.epoch, r.n)
        };
        match known {
            // The same stream, as far as this replica read it or further.
            Some(e) if e == epoch && last_n >= applied => return Ok(()),
            // Another stream, or this one rewound (a failover that lost recent writes, a
            // restart from an older save): purges this replica applied are gone from it, and
            // new ones will reuse their numbers.
            Some(_) => self.resync(Resync::StreamLost, None, 0, 0),
            None => {}
        }
        // Nothing to catch up on, but the purges the stream holds are the ban list shared
        // entries are checked against.
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(self.max_len);
        let entries: redis::streams::StreamRangeReply = conn.query(&cmd).await?;
        let mut r = self.reader.lock();
        r.epoch = Some(epoch);
        r.n = last_n;
        r.floor = last_n;
        r.id = "0-0".into();
        r.bans.clear();
        for sid in entries.ids {
            let entry = Entry::parse(&sid);
            if entry.epoch != epoch {
                continue;
            }
            if r.bans.is_empty() {
                r.floor = entry.n.saturating_sub(1);
            }
            r.bans
                .push_back((entry.n, entry.op.unwrap_or_else(PurgeOp::everything)));
            r.id = sid.id;
        }
        tracing::info!(
            "purge bus: reading {} after purge {last_n} ({} held)",
            self.stream,
            r.bans.len()
        );
        Ok(())
    }

    /// Drop the local store: purges were missed that nothing can reconstruct.
    fn resync(&self, why: Resync, epoch: Option<u64>, n: u64, floor: u64) {
        let dropped = self.storage.purge_where(|_| true);
        metrics::PURGE_BUS_RESYNCS_TOTAL
            .with_label_values(&[why.label()])
            .inc();
        metrics::CACHE_PURGED_ENTRIES_TOTAL
            .with_label_values(&["resync"])
            .inc_by(dropped as u64);
        tracing::warn!(
            "purge bus: {} (reason {}): dropping the local cache ({dropped} entries) rather than serve entries that may have been purged",
            match why {
                Resync::Trimmed => "purges were missed that the stream no longer holds",
                Resync::StreamLost => "Redis lost the purge stream",
                Resync::Undecodable => "a purge could not be read",
            },
            why.label()
        );
        let mut r = self.reader.lock();
        r.epoch = epoch;
        r.n = n;
        r.floor = floor;
        r.bans.clear();
    }

    /// Apply one entry read from the stream.
    fn apply(&self, id: String, entry: Entry) {
        let expected = {
            let r = self.reader.lock();
            (r.epoch, r.n + 1)
        };
        if expected.0 != Some(entry.epoch) {
            let (epoch, floor) = (Some(entry.epoch), entry.n.saturating_sub(1));
            self.resync(Resync::StreamLost, epoch, entry.n, floor);
        } else if entry.n > expected.1 {
            let (epoch, floor) = (Some(entry.epoch), entry.n.saturating_sub(1));
            self.resync(Resync::Trimmed, epoch, entry.n, floor);
        } else if entry.n < expected.1 {
            let mut r = self.reader.lock();
            if stream_id_after(&id, &r.id) {
                // A newer entry with an old number: the stream rewound under the same epoch
                // (purges applied here are gone from it).
                drop(r);
                let (epoch, floor) = (Some(entry.epoch), entry.n.saturating_sub(1));
                self.resync(Resync::StreamLost, epoch, entry.n, floor);
            } else {
                // Already applied (a read that overlapped the sync).
                r.id = id;
                return;
            }
        }
        let op = match entry.op {
            Some(op) => op,
            None => {
                self.resync(Resync::Undecodable, Some(entry.epoch), entry.n, entry.n);
                PurgeOp::everything()
            }
        };
        if entry.from != self.link.replica() {
            let removed = op.apply(self.storage);
            metrics::PURGE_BUS_APPLIED_TOTAL.inc();
            metrics::CACHE_PURGED_ENTRIES_TOTAL
                .with_label_values(&["fleet"])
                .inc_by(removed as u64);
            if let Some(ms) = id_millis(&id) {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                metrics::PURGE_BUS_LAG_SECONDS.observe(now.saturating_sub(ms) as f64 / 1000.0);
            }
        }
        let mut r = self.reader.lock();
        r.n = entry.n;
        r.id = id;
        r.bans.push_back((entry.n, op));
        while r.bans.len() > self.max_len {
            if let Some((n, _)) = r.bans.pop_front() {
                r.floor = n;
            }
        }
    }

    /// Read the stream until the connection fails. `connected` is set at the first answer
    /// (and `told`, an outage said in the log, is then cleared with a line saying it ended).
    async fn read(
        &self,
        conn: &mut Dedicated,
        connected: &mut bool,
        told: &mut bool,
    ) -> Result<(), StoreError> {
        loop {
            let from = self.reader.lock().id.clone();
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(READ_COUNT);
            if *connected {
                cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
            }
            // (The first read does not block, so a working connection is known at once.)
            cmd.arg("STREAMS").arg(&self.stream).arg(&from);
            let reply: Option<redis::streams::StreamReadReply> = conn.query(&cmd).await?;
            if !*connected {
                *connected = true;
                metrics::PURGE_BUS_CONNECTED.set(1);
                if std::mem::take(told) {
                    tracing::info!("purge bus: reading {} again", self.stream);
                }
            }
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for sid in key.ids {
                    let entry = Entry::parse(&sid);
                    self.apply(sid.id, entry);
                }
            }
        }
    }

    /// The reading loop: connect, sync, read; after a failure, wait and start again.
    async fn reader(&self) {
        let settings = self.link.settings();
        let timeout = BLOCK + settings.command_timeout.max(Duration::from_millis(100));
        // Said once per outage, not once per attempt.
        let mut told = false;
        loop {
            let mut connected = false;
            let result = async {
                let mut conn = self.link.dedicated(timeout).await?;
                self.sync_epoch(&mut conn).await?;
                // Own purges queued while away go out now.
                self.wake.notify_one();
                self.read(&mut conn, &mut connected, &mut told).await
            }
            .await;
            metrics::PURGE_BUS_CONNECTED.set(0);
            if let Err(e) = result {
                if !told || connected {
                    tracing::warn!(
                        "purge bus: cannot read {} ({e}); purges stay local until Redis answers",
                        self.stream
                    );
                    told = true;
                }
            }
            tokio::time::sleep(
                settings
                    .backoff
                    .clamp(Duration::from_millis(50), Duration::from_secs(5)),
            )
            .await;
        }
    }
}

/// The bus' task, run as a background service: the reader and the publisher.
pub struct PurgeBusService(pub &'static PurgeBus);

#[async_trait]
impl BackgroundService for PurgeBusService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = shutdown.changed() => {
                // Purges still queued are sent if Redis answers at once.
                let _ = tokio::time::timeout(Duration::from_millis(500), self.0.flush()).await;
            }
            _ = self.0.reader() => {}
            _ = self.0.publisher() => {}
        }
    }
}

/// One stream entry's fields.
struct Entry {
    epoch: u64,
    n: u64,
    from: String,
    /// `None` when it cannot be read.
    op: Option<PurgeOp>,
}

impl Entry {
    fn parse(sid: &redis::streams::StreamId) -> Entry {
        let text = |name: &str| {
            sid.map
                .get(name)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        };
        let number = |name: &str| text(name).and_then(|t| t.parse::<u64>().ok());
        let op = text("op").and_then(|t| serde_json::from_str::<PurgeOp>(&t).ok());
        if op.is_none() {
            tracing::warn!("purge bus: entry {} cannot be read", sid.id);
        }
        Entry {
            epoch: number("e").unwrap_or(0),
            n: number("n").unwrap_or(0),
            from: text("from").unwrap_or_default(),
            op,
        }
    }
}

/// Whether stream id `a` comes after `b` (`ms-seq`, compared as numbers; `0-0` is first).
fn stream_id_after(a: &str, b: &str) -> bool {
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a) > parse(b)
}

/// The milliseconds part of a stream id (`1700000000000-0`).
fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// A random epoch, offered each time (Redis keeps the first).
fn new_epoch() -> u64 {
    fastrand::u64(1..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::purge::PurgeRequest;
    use sha2::Digest;

    fn bus(max_len: usize) -> (&'static PurgeBus, &'static MemoryStorage) {
        let settings = crate::fleet::Settings::new(&crate::config::model::RedisConfig {
            url: Some("redis://127.0.0.1:1".into()),
            ..Default::default()
        });
        let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(1 << 20)));
        let link = Arc::new(Link::new(settings));
        let bus: &'static PurgeBus = Box::leak(Box::new(PurgeBus::new(link, storage, max_len)));
        bus.reader.lock().epoch = Some(7);
        (bus, storage)
    }

    fn prefix(p: &str) -> PurgeOp {
        let req: PurgeRequest = serde_json::from_str(&format!(r#"{{"prefix": "{p}"}}"#)).unwrap();
        PurgeOp::Select(req.into_selector().unwrap())
    }

    fn entry(n: u64, op: PurgeOp) -> Entry {
        Entry {
            epoch: 7,
            n,
            from: "another-replica".into(),
            op: Some(op),
        }
    }

    fn store(storage: &MemoryStorage, path: &str) {
        let header = pingora_http::ResponseHeader::build(200, None).unwrap();
        let now = SystemTime::now();
        let meta = pingora_cache::CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        let (internal, header) = meta.serialize().unwrap();
        let mut bytes = internal.clone();
        bytes.extend_from_slice(&header);
        // Distinct in the low 64 bits, which the store keys its maps by.
        let mut hash = [0u8; 16];
        let digest = sha2::Sha256::digest(path.as_bytes());
        hash.copy_from_slice(&digest[..16]);
        let tag = EntryTag::new("shared", "h", path, "");
        assert!(storage.insert_parts(
            hash,
            bytes.into(),
            internal.len(),
            Arc::from(&b"x"[..]),
            tag
        ));
    }

    #[test]
    fn purges_of_other_replicas_apply_in_order_and_ban_older_shared_entries() {
        let (bus, storage) = bus(100);
        store(storage, "/a/1");
        store(storage, "/b/1");
        bus.apply("1-0".into(), entry(1, prefix("/a/")));
        assert_eq!(storage.stats().entries, 1, "/a/1 purged, /b/1 kept");
        let tag_a = EntryTag::new("shared", "h", "/a/2", "");
        let tag_b = EntryTag::new("shared", "h", "/b/2", "");
        let before = Position { epoch: 7, n: 0 };
        let after = Position { epoch: 7, n: 1 };
        assert_eq!(bus.verdict(before, &tag_a), Verdict::Purged);
        assert_eq!(bus.verdict(before, &tag_b), Verdict::Fresh);
        assert_eq!(bus.verdict(after, &tag_a), Verdict::Fresh);
        assert_eq!(
            bus.verdict(Position { epoch: 8, n: 1 }, &tag_b),
            Verdict::Unprovable
        );
        assert_eq!(bus.position(), Some(after));
        // A repeated entry (a read overlapping the sync) is not applied twice.
        store(storage, "/a/3");
        bus.apply("1-0".into(), entry(1, prefix("/a/")));
        assert_eq!(storage.stats().entries, 2);
    }

    #[test]
    fn a_hole_in_the_stream_drops_the_store_and_raises_the_floor() {
        let (bus, storage) = bus(100);
        store(storage, "/a/1");
        store(storage, "/b/1");
        bus.apply("1-0".into(), entry(1, prefix("/z/")));
        bus.apply("9-0".into(), entry(5, prefix("/z/")));
        assert_eq!(storage.stats().entries, 0, "purges 2..4 were missed");
        let tag = EntryTag::new("shared", "h", "/b/1", "");
        assert_eq!(
            bus.verdict(Position { epoch: 7, n: 3 }, &tag),
            Verdict::Unprovable
        );
        assert_eq!(
            bus.verdict(Position { epoch: 7, n: 4 }, &tag),
            Verdict::Fresh
        );
    }

    #[test]
    fn the_ban_list_is_capped_and_what_falls_off_is_unprovable() {
        let (bus, _) = bus(3);
        for n in 1..=5 {
            bus.apply(format!("{n}-0"), entry(n, prefix("/z/")));
        }
        let tag = EntryTag::new("shared", "h", "/b", "");
        assert_eq!(bus.reader.lock().bans.len(), 3);
        assert_eq!(
            bus.verdict(Position { epoch: 7, n: 1 }, &tag),
            Verdict::Unprovable
        );
        assert_eq!(
            bus.verdict(Position { epoch: 7, n: 2 }, &tag),
            Verdict::Fresh
        );
    }

    #[test]
    fn own_purges_are_not_applied_twice_but_are_banned() {
        let (bus, storage) = bus(100);
        store(storage, "/a/1");
        let mut own = entry(1, prefix("/a/"));
        own.from = bus.link.replica().to_string();
        bus.apply("1-0".into(), own);
        assert_eq!(
            storage.stats().entries,
            1,
            "applied when it was made, not again"
        );
        let tag = EntryTag::new("shared", "h", "/a/1", "");
        assert_eq!(
            bus.verdict(Position { epoch: 7, n: 0 }, &tag),
            Verdict::Purged
        );
    }

    #[test]
    fn stream_ids_give_their_time() {
        assert_eq!(id_millis("1700000000123-4"), Some(1_700_000_000_123));
        assert_eq!(id_millis("x"), None);
        assert!(stream_id_after("10-1", "10-0"));
        assert!(stream_id_after("11-0", "9-5"));
        assert!(!stream_id_after("9-5", "11-0"));
        assert!(stream_id_after("1-0", "0-0"));
    }

    #[test]
    fn a_stream_that_rewinds_under_the_same_epoch_drops_the_store() {
        let (bus, storage) = bus(100);
        bus.apply("100-0".into(), entry(1, prefix("/z/")));
        bus.apply("101-0".into(), entry(2, prefix("/z/")));
        store(storage, "/a/1");
        // Redis lost entry 2 and the next purge is numbered 2 again, with a newer id.
        bus.apply("200-0".into(), entry(2, prefix("/q/")));
        assert_eq!(storage.stats().entries, 0);
        assert_eq!(bus.position(), Some(Position { epoch: 7, n: 2 }));
    }
}
