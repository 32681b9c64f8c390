//! Cluster-wide dedup keys and host locks on NATS JetStream KV, for several `rune serve` instances sharing one NATS:
//! [`KvDedup`] (a [`DedupStore`]) and [`KvLocks`] (exclusive per-host leases, renewed while held).
//!
//! # Dedup windows: one bucket, a TTL per key
//!
//! Rules have different windows, and a claim must expire after its own. [`KvDedup`] keeps every key in **one**
//! bucket with per-message TTL enabled (`allow_msg_ttl`, nats-server ≥ 2.11) and gives each claim a `Nats-TTL`
//! equal to its window. The alternative, one bucket per distinct window with `max_age` = window, was rejected:
//! [`DedupStore::is_held`] and [`DedupStore::release`] are not told the window, so they would have to search every
//! window bucket, including buckets that only other instances (or an earlier rule version) created; and a key
//! claimed under a 10-minute window would not stop a claim after a reload changed the window to 5 minutes (another
//! bucket). One bucket keeps "is this key held?" a single read and the claim a single atomic write.
//!
//! Per-key TTL is a feature an old server would silently ignore (keys would never expire), so [`KvDedup::open`]
//! refuses a server older than 2.11 and a bucket whose configuration, as the server reports it back, does not have
//! per-message TTL on, keeps more than one value per key, or has a `max_age` (which would cut long windows short).
//!
//! Facts relied on (async-nats 0.51, nats-server 2.15; see also `shared/FIELD-NOTES.md`):
//! - A claim is one publish with `Nats-Expected-Last-Subject-Sequence` (0 = "no message for this key", or the
//!   sequence of the tombstone left by a release): JetStream accepts exactly one of concurrent writers. A loser
//!   reads the key; a live value means "held" (`Ok(false)`), a tombstone means "retry against its sequence".
//!   async-nats' own `create_with_ttl` is not used: on a tombstoned key it re-creates the key *without* the TTL.
//! - The server keeps `Nats-TTL` in whole seconds (a shorter or fractional value is truncated or refused), so a
//!   window is rounded **up** to whole seconds, at least 1 s: a key may be held up to a second longer than its
//!   window, never shorter. The hold starts at the server's timestamp of the write.
//! - A pending claim ([`crate::gate::dedup`]: owned by the message that carried the alert) stores
//!   `{"key": …, "owner": …}`; its commit rewrites it as `{"key": …}` conditioned on the claim's sequence (so a
//!   takeover by the owner's redelivery makes the first holder's commit fail), and restarts the TTL. A rollback
//!   purges conditioned on that sequence too, without reading first.
//! - A release purges the key with a tombstone that itself expires ([`TOMBSTONE_TTL`]); expired keys leave a
//!   marker with the same TTL (`subject_delete_marker_ttl`). Released and expired keys therefore cost nothing
//!   after a minute.
//!
//! # Time
//!
//! Expiry is the server's clock: the `now` (a process-local `tokio::time::Instant`) that [`DedupStore`] passes
//! means nothing to another instance and is ignored here. A window is measured from when the server stored the
//! claim and ends when the server removes it (at or shortly after `window`, rounded up to a second).
//!
//! # Failure
//!
//! Every NATS error or timeout (bounded by `request_timeout`) is [`DedupError::Unavailable`] and the engine fails
//! closed (suppresses). A claim whose write timed out may still have been stored: the key then stays held for the
//! window although nothing ran — a missed run, never a double one.
//!
//! # Host locks
//!
//! [`KvLocks`] keeps one entry per host in a bucket whose `max_age` is the lease TTL: an entry nobody renews
//! disappears after the TTL. [`KvLocks::try_acquire`] creates the entry (one winner); a background task renews it
//! every `renew_every` with an update conditioned on the revision it last wrote, so a lease that expired and was
//! taken by another instance is never overwritten. The lease counts as lost — [`KvLease::lost`] is cancelled and
//! the runner must stop touching the host — when a renewal is refused (the revision moved: expired, taken or
//! deleted), or when no renewal has succeeded for 90 % of the TTL (NATS unreachable), measured from when the
//! last successful write was *sent*: the server cannot have expired the entry before then. Releasing (or
//! dropping) the lease deletes the entry, again only if the revision is still ours.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{HeaderMap, header};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::gate::dedup::{ClaimRef, DedupError, DedupStore};

/// The oldest nats-server with per-message TTL.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 11);
/// How long a release's tombstone (and the marker the server leaves for an expired key) stays in the bucket.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Readable characters of the original key kept in the front of a KV key name; the rest is a hash.
pub const READABLE_KEY_CHARS: usize = 48;
/// A claim retries this many times when its key changes between its write and its read (e.g. expires).
const CLAIM_ATTEMPTS: usize = 4;
/// Pause between renewals that failed for want of an answer (not refused), until the lease's validity ends.
const RENEW_RETRY: Duration = Duration::from_millis(250);

/// Why a KV gate could not be opened or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The settings contradict themselves (e.g. renewals not more frequent than the TTL).
    #[error("invalid KV gate settings: {0}")]
    InvalidSettings(String),
    /// The server or an existing bucket cannot give the guarantees these gates rely on.
    #[error("NATS cannot serve this KV gate: {0}")]
    Unsupported(String),
    /// A NATS request failed or timed out.
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
    /// `host` is leased by someone else.
    #[error("host {host} is busy: locked by {holder_of_lock}")]
    Busy { host: String, holder_of_lock: String },
    /// The lease on `host` was lost before it was released.
    #[error("lease on host {host} lost: {reason}")]
    LeaseLost { host: String, reason: String },
}

impl From<KvError> for DedupError {
    fn from(error: KvError) -> DedupError {
        DedupError::Unavailable(error.to_string())
    }
}

/// The KV key name for `text` (a dedup key or a host name), valid in any bucket and at most
/// [`READABLE_KEY_CHARS`] + 65 characters: the first characters of `text` with everything but ASCII letters,
/// digits, `-` and `_` replaced by `_` (for people reading the bucket), a dot, and the SHA-256 of all of `text`
/// in hex (distinct texts never share a name). The stored value carries `text` itself, so nothing is lost.
pub fn kv_key_name(text: &str) -> String {
    let mut readable: String = text
        .chars()
        .take(READABLE_KEY_CHARS)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if readable.is_empty() {
        readable.push('_');
    }
    format!("{readable}.{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// A window as the server keeps it: whole seconds, rounded up, at least one.
pub fn ttl_seconds(window: Duration) -> u64 {
    (window.as_secs() + u64::from(window.subsec_nanos() > 0)).max(1)
}

/// Settings of [`KvDedup`].
#[derive(Debug, Clone)]
pub struct KvDedupSettings {
    /// Bucket name (`[A-Za-z0-9_-]+`); created with the right settings if absent.
    pub bucket: String,
    /// Copies of the bucket in a JetStream cluster (1 on a single server).
    pub replicas: usize,
    /// Bound on every NATS request; a claim makes one to three.
    pub request_timeout: Duration,
}

impl Default for KvDedupSettings {
    fn default() -> KvDedupSettings {
        KvDedupSettings { bucket: "rune_dedup".into(), replicas: 1, request_timeout: Duration::from_secs(2) }
    }
}

/// Settings of [`KvLocks`]. Every instance sharing a bucket must use the same `lease_ttl` (the bucket's
/// `max_age`); [`KvLocks::open`] refuses a bucket that has another.
#[derive(Debug, Clone)]
pub struct KvLockSettings {
    /// Bucket name (`[A-Za-z0-9_-]+`); created with the right settings if absent.
    pub bucket: String,
    /// How long a lease outlives its last renewal (the bucket's `max_age`); at least one second.
    pub lease_ttl: Duration,
    /// How often a held lease is renewed; at most a third of `lease_ttl`, so two renewals can fail in a row.
    pub renew_every: Duration,
    /// Copies of the bucket in a JetStream cluster (1 on a single server).
    pub replicas: usize,
    /// Bound on every NATS request.
    pub request_timeout: Duration,
}

impl Default for KvLockSettings {
    fn default() -> KvLockSettings {
        KvLockSettings {
            bucket: "rune_host_locks".into(),
            lease_ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            replicas: 1,
            request_timeout: Duration::from_secs(2),
        }
    }
}

impl KvLockSettings {
    fn validate(&self) -> Result<(), KvError> {
        let mut problems = Vec::new();
        if self.lease_ttl < Duration::from_secs(1) {
            problems.push(format!("lease_ttl {:?} is below one second", self.lease_ttl));
        }
        if self.renew_every.is_zero() || self.renew_every.saturating_mul(3) > self.lease_ttl {
            problems.push(format!(
                "renew_every {:?} must be above zero and at most a third of lease_ttl {:?}",
                self.renew_every, self.lease_ttl
            ));
        }
        if self.request_timeout.is_zero() {
            problems.push("request_timeout is zero".into());
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(KvError::InvalidSettings(problems.join("; "))),
        }
    }

    /// How long after sending a successful write the lease still counts as held: 90 % of the TTL.
    fn validity(&self) -> Duration {
        self.lease_ttl.saturating_sub(self.lease_ttl / 10)
    }
}

/// A JetStream context whose requests and publish acknowledgements are bounded by `timeout`.
fn context(client: async_nats::Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new().timeout(timeout).ack_timeout(timeout).build(client)
}

/// Refuses a server older than [`MIN_SERVER_VERSION`] (the one this client is connected to).
fn check_server_version(client: &async_nats::Client) -> Result<(), KvError> {
    let version = client.server_info().version;
    let parsed = semver::Version::parse(version.trim_start_matches('v'))
        .map_err(|e| KvError::Unsupported(format!("cannot read the server version {version:?}: {e}")))?;
    if (parsed.major, parsed.minor) < MIN_SERVER_VERSION {
        return Err(KvError::Unsupported(format!(
            "nats-server {version} is older than {}.{}, which per-key TTL and these gates need",
            MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
        )));
    }
    Ok(())
}

/// Creates the bucket (a no-op when it exists with the same settings) or opens the existing one, then checks the
/// configuration the server reports with `check`.
async fn open_bucket(
    js: &jetstream::Context,
    config: kv::Config,
    timeout: Duration,
    check: impl Fn(&stream::Config) -> Result<(), String>,
) -> Result<kv::Store, KvError> {
    let bucket = config.bucket.clone();
    let created = with_timeout(timeout, js.create_key_value(config)).await?;
    let store = match created {
        Ok(store) => store,
        Err(create_error) => match with_timeout(timeout, js.get_key_value(bucket.as_str())).await? {
            // Exists with other settings: say precisely which below.
            Ok(store) => store,
            Err(_) => {
                return Err(KvError::Unavailable(format!("cannot create KV bucket {bucket}: {create_error}")));
            }
        },
    };
    check(&store.stream.cached_info().config).map_err(|problem| {
        KvError::Unsupported(format!(
            "KV bucket {bucket}: {problem} (delete the bucket to let RUNE create it, or fix its settings)"
        ))
    })?;
    Ok(store)
}

async fn with_timeout<T>(timeout: Duration, future: impl Future<Output = T>) -> Result<T, KvError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| KvError::Unavailable(format!("no answer within {timeout:?}")))
}

fn check_bucket_name(bucket: &str) -> Result<(), KvError> {
    let valid = !bucket.is_empty() && bucket.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match valid {
        true => Ok(()),
        false => Err(KvError::InvalidSettings(format!("bucket name {bucket:?} is not [A-Za-z0-9_-]+"))),
    }
}

// ---- dedup ---------------------------------------------------------------------------------------------------

/// The cluster-wide [`DedupStore`]: one JetStream KV bucket, one entry per held key, expiring by per-key TTL.
/// Cloning gives another handle to the same bucket. See the module documentation.
#[derive(Clone)]
pub struct KvDedup {
    store: kv::Store,
    /// The context `store` was opened with: claims and releases publish through it with their own headers.
    js: jetstream::Context,
    /// Bound on each request, on top of the JetStream context's own timeouts.
    request_timeout: Duration,
}

impl fmt::Debug for KvDedup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvDedup").field("bucket", &self.store.name).finish_non_exhaustive()
    }
}

/// What one conditional write found.
enum Write {
    /// Stored with this sequence (the key's new revision).
    Stored(u64),
    /// The key's last sequence was not the expected one.
    Raced,
}

/// A dedup entry's value: the key itself (the KV name is shortened), the claim's owner, and whether the claim is
/// committed. Written from borrowed strings; read borrowed too, except where a key or owner with `"` or `\` is
/// escaped in the JSON and has to be copied out (`Cow`). An entry that is not this JSON (written by an older RUNE:
/// the bare key) counts as committed.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    owner: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    committed: bool,
}

impl<'a> Stored<'a> {
    fn value(key: &str, owner: Option<&str>, committed: bool) -> Vec<u8> {
        let stored = Stored { key: Cow::Borrowed(key), owner: owner.map(Cow::Borrowed), committed };
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    fn read(value: &'a [u8]) -> Option<Stored<'a>> {
        serde_json::from_slice(value).ok()
    }
}

/// The owner of a live entry's *pending* claim (None: committed, unowned, or not RUNE's JSON).
fn pending_owner(value: &[u8]) -> Option<Cow<'_, str>> {
    Stored::read(value).filter(|s| !s.committed).and_then(|s| s.owner)
}

impl KvDedup {
    /// Opens (creating if absent) the dedup bucket on the server `client` is connected to; refuses a server or
    /// bucket that would not expire keys by their TTL.
    pub async fn open(client: async_nats::Client, settings: &KvDedupSettings) -> Result<KvDedup, KvError> {
        check_bucket_name(&settings.bucket)?;
        if settings.request_timeout.is_zero() {
            return Err(KvError::InvalidSettings("request_timeout is zero".into()));
        }
        check_server_version(&client)?;
        let js = context(client, settings.request_timeout);
        let config = kv::Config {
            bucket: settings.bucket.clone(),
            description: "RUNE dedup keys (per-key TTL = the rule's window)".into(),
            history: 1,
            max_age: Duration::ZERO,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas.max(1),
            limit_markers: Some(TOMBSTONE_TTL),
            ..Default::default()
        };
        let store = open_bucket(&js, config, settings.request_timeout, |config| {
            if !config.allow_message_ttl {
                return Err("per-message TTL (allow_msg_ttl) is off, so claims would never expire".into());
            }
            if config.max_messages_per_subject != 1 {
                return Err(format!(
                    "it keeps {} values per key; 1 is needed (the server stretches short TTLs otherwise)",
                    config.max_messages_per_subject
                ));
            }
            if !config.max_age.is_zero() {
                return Err(format!("its max_age {:?} would end long windows early", config.max_age));
            }
            Ok(())
        })
        .await?;
        Ok(KvDedup { store, js, request_timeout: settings.request_timeout })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.store.name
    }

    fn subject(&self, name: &str) -> String {
        format!("{}{name}", self.store.put_prefix.as_ref().unwrap_or(&self.store.prefix))
    }

    /// Publishes to key `name` if its last sequence is `expected` (0: no message).
    async fn write_if(
        &self,
        name: &str,
        expected: u64,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<Write, KvError> {
        let mut headers = headers;
        headers.insert(header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
        let js = &self.js;
        let publish = async { js.publish_with_headers(self.subject(name), headers, payload.into()).await?.await };
        match with_timeout(self.request_timeout, publish).await? {
            Ok(ack) => Ok(Write::Stored(ack.sequence)),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(Write::Raced),
            Err(e) => Err(KvError::Unavailable(format!("write to KV bucket {}: {e}", self.bucket()))),
        }
    }

    async fn entry(&self, name: &str) -> Result<Option<kv::Entry>, KvError> {
        with_timeout(self.request_timeout, self.store.entry(name))
            .await?
            .map_err(|e| KvError::Unavailable(format!("read from KV bucket {}: {e}", self.bucket())))
    }

    async fn claim_for(&self, key: &str, window: Duration, owner: Option<&str>) -> Result<Option<ClaimRef>, KvError> {
        let claimed = |revision| ClaimRef { key: key.to_owned(), window, revision, owner: owner.map(str::to_owned) };
        // A zero window holds nothing (as in `MemoryDedup`).
        if window.is_zero() {
            return Ok(Some(claimed(0)));
        }
        let name = kv_key_name(key);
        let ttl = ttl_seconds(window).to_string();
        let value = Stored::value(key, owner, owner.is_none());
        let mut expected = 0;
        for _ in 0..CLAIM_ATTEMPTS {
            let mut headers = HeaderMap::new();
            headers.insert(header::NATS_MESSAGE_TTL, ttl.as_str());
            if let Write::Stored(revision) = self.write_if(&name, expected, headers, value.clone()).await? {
                return Ok(Some(claimed(revision)));
            }
            match self.entry(&name).await? {
                // The owner's own pending claim (its message was redelivered): take it over.
                Some(entry) if entry.operation == kv::Operation::Put => match owner {
                    Some(owner) if pending_owner(&entry.value).as_deref() == Some(owner) => expected = entry.revision,
                    _ => return Ok(None),
                },
                // A tombstone (released or expired): claim against its sequence.
                Some(tombstone) => expected = tombstone.revision,
                // Removed between the write and the read.
                None => expected = 0,
            }
        }
        Err(KvError::Unavailable(format!("claim of {key:?} kept racing with other writers")))
    }

    /// Rewrites the claim as committed, if it is still the one `claim` wrote; the TTL starts again. When the
    /// write's answer is lost (timeout, reconnection), the entry is read back: a committed entry of this owner,
    /// written after the claim, is this commit.
    async fn commit_claim(&self, claim: &ClaimRef) -> Result<bool, KvError> {
        if claim.revision == 0 {
            return Ok(true);
        }
        let name = kv_key_name(&claim.key);
        let owner = claim.owner.as_deref();
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_TTL, ttl_seconds(claim.window).to_string().as_str());
        let value = Stored::value(&claim.key, owner, true);
        match self.write_if(&name, claim.revision, headers, value).await {
            Ok(write) => Ok(matches!(write, Write::Stored(_))),
            Err(error) => match self.entry(&name).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put && e.revision > claim.revision => {
                    // Only an owned claim can recognise its own commit.
                    let ours = owner.is_some()
                        && Stored::read(&e.value).is_some_and(|s| s.committed && s.owner.as_deref() == owner);
                    Ok(ours)
                }
                _ => Err(error),
            },
        }
    }

    /// Purges the key if its last write is `revision`.
    async fn purge_if(&self, name: &str, revision: u64) -> Result<bool, KvError> {
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "PURGE");
        headers.insert(header::NATS_ROLLUP, "sub");
        headers.insert(header::NATS_MESSAGE_TTL, TOMBSTONE_TTL.as_secs().to_string().as_str());
        let write = self.write_if(name, revision, headers, Vec::new()).await?;
        Ok(matches!(write, Write::Stored(_)))
    }

    async fn release_key(&self, key: &str) -> Result<bool, KvError> {
        let name = kv_key_name(key);
        let Some(entry) = self.entry(&name).await? else {
            return Ok(false);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(false);
        }
        // Purge only the claim we saw: one made after it (the alert fired again) stays.
        self.purge_if(&name, entry.revision).await?;
        Ok(true)
    }
}

impl DedupStore for KvDedup {
    /// `now` is ignored: the server's clock decides (see the module documentation).
    async fn is_held_for(&self, key: &str, owner: Option<&str>, _now: Instant) -> Result<bool, DedupError> {
        let entry = self.entry(&kv_key_name(key)).await?;
        Ok(entry.is_some_and(|entry| {
            entry.operation == kv::Operation::Put
                && (owner.is_none() || pending_owner(&entry.value).as_deref() != owner)
        }))
    }

    /// Atomic across every instance on the bucket; the key expires `window` (rounded up to whole seconds) after
    /// the server stored it. `now` is ignored.
    async fn claim_as(
        &self,
        key: &str,
        window: Duration,
        owner: Option<&str>,
        _now: Instant,
    ) -> Result<Option<ClaimRef>, DedupError> {
        Ok(self.claim_for(key, window, owner).await?)
    }

    /// One conditional write: refused if anyone wrote the key since the claim.
    async fn commit(&self, claim: &ClaimRef, _now: Instant) -> Result<bool, DedupError> {
        Ok(self.commit_claim(claim).await?)
    }

    /// One conditional purge, no read.
    async fn release_claim(&self, claim: &ClaimRef) -> Result<bool, DedupError> {
        if claim.revision == 0 {
            return Ok(false);
        }
        Ok(self.purge_if(&kv_key_name(&claim.key), claim.revision).await?)
    }

    /// Ok(true) if a live claim was found and purged; a claim made after the read stays.
    async fn release(&self, key: &str) -> Result<bool, DedupError> {
        Ok(self.release_key(key).await?)
    }
}

// ---- host locks ----------------------------------------------------------------------------------------------

/// What a lock entry holds (JSON).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LockRecord {
    host: String,
    holder: String,
    /// The decision's owner (the message that carried the alert, see [`crate::gate::dedup`]), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

/// One held host lock, as [`KvLocks::held`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldLock {
    pub host: String,
    /// `<instance> <holder>` as given to [`KvLocks::try_acquire`].
    pub holder: String,
}

/// Cluster-wide exclusive per-host leases on a JetStream KV bucket. Cloning gives another handle to the same bucket.
#[derive(Clone)]
pub struct KvLocks {
    store: kv::Store,
    /// Names this instance in every holder text (e.g. host name and process id of `rune serve`).
    instance: Arc<str>,
    settings: Arc<KvLockSettings>,
}

impl fmt::Debug for KvLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvLocks")
            .field("bucket", &self.store.name)
            .field("instance", &self.instance)
            .field("lease_ttl", &self.settings.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl KvLocks {
    /// Opens (creating if absent) the locks bucket; `instance` names this process in holder texts. Refuses a
    /// bucket whose `max_age` is not `settings.lease_ttl`.
    pub async fn open(
        client: async_nats::Client,
        instance: &str,
        settings: &KvLockSettings,
    ) -> Result<KvLocks, KvError> {
        check_bucket_name(&settings.bucket)?;
        settings.validate()?;
        check_server_version(&client)?;
        let js = context(client, settings.request_timeout);
        let config = kv::Config {
            bucket: settings.bucket.clone(),
            description: "RUNE host locks (max_age = lease TTL)".into(),
            history: 1,
            max_age: settings.lease_ttl,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas.max(1),
            ..Default::default()
        };
        let lease_ttl = settings.lease_ttl;
        let store = open_bucket(&js, config, settings.request_timeout, |config| {
            if config.max_age != lease_ttl {
                return Err(format!(
                    "its max_age {:?} is not the lease TTL {lease_ttl:?}; all instances must use one lease TTL",
                    config.max_age
                ));
            }
            if config.max_messages_per_subject != 1 {
                return Err(format!("it keeps {} values per host; 1 is needed", config.max_messages_per_subject));
            }
            Ok(())
        })
        .await?;
        Ok(KvLocks { store, instance: instance.into(), settings: Arc::new(settings.clone()) })
    }

    pub fn bucket(&self) -> &str {
        &self.store.name
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn lease_ttl(&self) -> Duration {
        self.settings.lease_ttl
    }

    /// Takes the lease on `host` for `holder` (a rule name or a chatops requester; stored as
    /// `<instance> <holder>`). Not reentrant: a second acquisition, even by the same holder, is [`KvError::Busy`].
    /// The lease is renewed in the background until it is released or dropped; watch [`KvLease::lost`].
    pub async fn try_acquire(&self, host: &str, holder: &str) -> Result<KvLease, KvError> {
        self.try_acquire_as(host, holder, None).await
    }

    /// [`KvLocks::try_acquire`] in the name of `owner` (the message that carried the alert): a lease held in the
    /// same owner's name — its earlier delivery, decided by an instance that died or stalled before the run
    /// started — is taken over (a conditional update, so the earlier holder's renewal fails and its lease is
    /// lost) instead of answering busy.
    pub async fn try_acquire_as(&self, host: &str, holder: &str, owner: Option<&str>) -> Result<KvLease, KvError> {
        let name = kv_key_name(host);
        let holder = format!("{} {holder}", self.instance);
        let record = LockRecord { host: host.to_owned(), holder: holder.clone(), owner: owner.map(str::to_owned) };
        let value = serde_json::to_vec(&record).map_err(|e| KvError::Unavailable(format!("encode lock: {e}")))?;
        let timeout = self.settings.request_timeout;
        let sent = Instant::now();
        match with_timeout(timeout, self.store.create(&name, value.clone().into())).await? {
            Ok(revision) => Ok(KvLease::start(self, host, holder, name, value, revision, sent)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = with_timeout(timeout, self.store.entry(&name))
                    .await?
                    .map_err(|e| KvError::Unavailable(format!("read lock {name}: {e}")))?
                    .filter(|entry| entry.operation == kv::Operation::Put);
                let current = entry.as_ref().and_then(|e| serde_json::from_slice::<LockRecord>(&e.value).ok());
                if let (Some(entry), Some(current), Some(owner)) = (&entry, &current, owner)
                    && current.owner.as_deref() == Some(owner)
                {
                    let sent = Instant::now();
                    let update = self.store.update(&name, value.clone().into(), entry.revision);
                    if let Ok(revision) = with_timeout(timeout, update).await? {
                        return Ok(KvLease::start(self, host, holder, name, value, revision, sent));
                    }
                }
                let holder_of_lock = match current {
                    Some(record) => record.holder,
                    None => "someone who just released it".into(),
                };
                Err(KvError::Busy { host: host.to_owned(), holder_of_lock })
            }
            Err(e) => Err(KvError::Unavailable(format!("create lock for {host} in {}: {e}", self.bucket()))),
        }
    }

    /// The live record under key `name`, if any.
    async fn record(&self, name: &str) -> Result<Option<LockRecord>, KvError> {
        let entry = with_timeout(self.settings.request_timeout, self.store.entry(name))
            .await?
            .map_err(|e| KvError::Unavailable(format!("read lock {name}: {e}")))?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .and_then(|entry| serde_json::from_slice(&entry.value).ok()))
    }

    /// Every held lock (any instance), sorted by host; for diagnostics.
    pub async fn held(&self) -> Result<Vec<HeldLock>, KvError> {
        let timeout = self.settings.request_timeout;
        let mut keys = with_timeout(timeout, self.store.keys())
            .await?
            .map_err(|e| KvError::Unavailable(format!("list {}: {e}", self.bucket())))?;
        let mut names = Vec::new();
        while let Some(name) = with_timeout(timeout, keys.next()).await? {
            names.push(name.map_err(|e| KvError::Unavailable(format!("list {}: {e}", self.bucket())))?);
        }
        let mut held = Vec::new();
        for name in names {
            if let Some(record) = self.record(&name).await? {
                held.push(HeldLock { host: record.host, holder: record.holder });
            }
        }
        held.sort();
        Ok(held)
    }
}

/// An exclusive, cluster-wide lease on one host. Renewed in the background while held; dropping it releases the
/// host (in the background), [`KvLease::release`] releases it and reports the outcome.
#[must_use = "dropping a host lease releases the host at once"]
pub struct KvLease {
    host: String,
    holder: String,
    since: Instant,
    /// Cancelled by the renewer when the lease is lost; the runner must then stop touching the host. Never
    /// cancelled by a release.
    lost: CancellationToken,
    /// Why the lease was lost; set just before `lost` is cancelled.
    loss: Arc<OnceLock<String>>,
    /// Cancelled by `release` and `Drop`: the renewer then deletes the entry (if still ours) and ends.
    release: CancellationToken,
    /// The renewer task: ends on release (returning the delete's outcome) or when the lease is lost.
    renewer: Option<JoinHandle<Result<(), KvError>>>,
}

impl KvLease {
    fn start(
        locks: &KvLocks,
        host: &str,
        holder: String,
        name: String,
        value: Vec<u8>,
        revision: u64,
        sent: Instant,
    ) -> KvLease {
        let lost = CancellationToken::new();
        let loss = Arc::new(OnceLock::new());
        let release = CancellationToken::new();
        let renewer = Renewer {
            store: locks.store.clone(),
            settings: Arc::clone(&locks.settings),
            host: host.to_owned(),
            name,
            value,
            revision,
            valid_until: sent + locks.settings.validity(),
            lost: lost.clone(),
            loss: Arc::clone(&loss),
            release: release.clone(),
        };
        let renewer = tokio::spawn(renewer.run());
        KvLease { host: host.to_owned(), holder, since: sent, lost, loss, release, renewer: Some(renewer) }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `<instance> <holder>`.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// When the acquiring request was sent (this process's clock).
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Cancelled when the lease is lost (`lost().cancelled().await` in a `select!` beside the run).
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Why the lease was lost, once it is.
    pub fn loss_reason(&self) -> Option<&str> {
        self.loss.get().map(String::as_str)
    }

    /// Releases the host: deletes the entry if it is still this lease's. [`KvError::LeaseLost`] if the lease had
    /// been lost before; [`KvError::Unavailable`] if the delete failed (the entry then expires after the TTL).
    pub async fn release(mut self) -> Result<(), KvError> {
        self.release.cancel();
        let Some(renewer) = self.renewer.take() else {
            return Ok(());
        };
        renewer.await.map_err(|e| KvError::Unavailable(format!("lease renewer for {} failed: {e}", self.host)))?
    }
}

impl fmt::Debug for KvLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvLease")
            .field("host", &self.host)
            .field("holder", &self.holder)
            .field("since", &self.since)
            .field("lost", &self.loss.get())
            .finish_non_exhaustive()
    }
}

impl Drop for KvLease {
    fn drop(&mut self) {
        // The renewer deletes the entry and ends; it is detached, not awaited.
        self.release.cancel();
    }
}

/// The background half of a [`KvLease`].
struct Renewer {
    store: kv::Store,
    settings: Arc<KvLockSettings>,
    host: String,
    name: String,
    value: Vec<u8>,
    /// Revision of the entry this lease last wrote.
    revision: u64,
    /// Until when the lease surely holds: when the last successful write was sent + 90 % of the TTL.
    valid_until: Instant,
    lost: CancellationToken,
    loss: Arc<OnceLock<String>>,
    release: CancellationToken,
}

impl Renewer {
    async fn run(mut self) -> Result<(), KvError> {
        let mut next = Instant::now() + self.settings.renew_every;
        loop {
            tokio::select! {
                biased;
                () = self.release.cancelled() => return self.delete().await,
                () = tokio::time::sleep_until(self.valid_until) => {
                    return Err(self.mark_lost(format!(
                        "not renewed within {:?} (NATS unreachable?)",
                        self.settings.validity()
                    )));
                }
                () = tokio::time::sleep_until(next) => {}
            }
            let sent = Instant::now();
            let budget = self.settings.request_timeout.min(self.valid_until.saturating_duration_since(sent));
            let update = self.store.update(&self.name, self.value.clone().into(), self.revision);
            match tokio::time::timeout(budget, update).await {
                Ok(Ok(revision)) => {
                    self.revision = revision;
                    self.valid_until = sent + self.settings.validity();
                    next = sent + self.settings.renew_every;
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    return Err(self.mark_lost("the entry changed: it expired, or another instance took it".into()));
                }
                // Unanswered or failed (NATS down, reconnecting): retry until the validity ends.
                Ok(Err(e)) => {
                    tracing::debug!(host = %self.host, error = %e, "host lease renewal failed; retrying");
                    next = (Instant::now() + RENEW_RETRY).min(self.valid_until);
                }
                Err(_) => {
                    tracing::debug!(host = %self.host, "host lease renewal timed out; retrying");
                    next = (Instant::now() + RENEW_RETRY).min(self.valid_until);
                }
            }
        }
    }

    /// Deletes the entry if it is still ours; the one place a release happens.
    async fn delete(&self) -> Result<(), KvError> {
        let delete = self.store.delete_expect_revision(&self.name, Some(self.revision));
        match tokio::time::timeout(self.settings.request_timeout, delete).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {
                Err(KvError::LeaseLost { host: self.host.clone(), reason: "taken before the release".into() })
            }
            Ok(Err(e)) => Err(KvError::Unavailable(format!("release {}: {e} (expires after the TTL)", self.host))),
            Err(_) => Err(KvError::Unavailable(format!(
                "release {}: no answer within {:?} (expires after the TTL)",
                self.host, self.settings.request_timeout
            ))),
        }
    }

    /// The one place a loss is recorded, logged and signalled.
    fn mark_lost(&self, reason: String) -> KvError {
        tracing::warn!(host = %self.host, reason = %reason, "host lease lost");
        let _ = self.loss.set(reason.clone());
        self.lost.cancel();
        KvError::LeaseLost { host: self.host.clone(), reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_valid_bounded_and_distinct() {
        let long = "x".repeat(500);
        let texts =
            ["rule/alert:web-1", "rule/alert web-1", "rule/alert:web-1 ", "日本語/ключ", "", ".", long.as_str()];
        let names: Vec<String> = texts.iter().map(|text| kv_key_name(text)).collect();
        for (text, name) in texts.iter().zip(&names) {
            assert!(name.len() <= READABLE_KEY_CHARS + 65, "{name}");
            let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            assert!(valid_chars && !name.starts_with('.') && !name.ends_with('.'), "{text:?} -> {name}");
            assert!(!name.contains(".."), "{name}");
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(names[0].starts_with("rule_alert_web-1."), "{}", names[0]);
        assert_eq!(kv_key_name("a/b"), kv_key_name("a/b"), "stable");
    }

    #[test]
    fn windows_round_up_to_whole_seconds() {
        let cases = [(0, 1), (1, 1), (999, 1), (1_000, 1), (1_001, 2), (1_500, 2), (600_000, 600)];
        for (ms, secs) in cases {
            assert_eq!(ttl_seconds(Duration::from_millis(ms)), secs, "{ms} ms");
        }
    }

    #[test]
    fn lock_settings_are_checked_together() {
        assert_eq!(KvLockSettings::default().validate(), Ok(()));
        let bad = KvLockSettings {
            lease_ttl: Duration::from_millis(500),
            renew_every: Duration::from_secs(1),
            ..KvLockSettings::default()
        };
        let Err(KvError::InvalidSettings(message)) = bad.validate() else {
            panic!("accepted {bad:?}");
        };
        assert!(message.contains("below one second") && message.contains("renew_every"), "{message}");
        assert!(check_bucket_name("rune_dedup-1").is_ok());
        assert!(check_bucket_name("a.b").is_err() && check_bucket_name("").is_err());
    }
}
