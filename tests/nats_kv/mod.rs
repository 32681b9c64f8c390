//! The KV gates (`rune::gate::kv`) against a real nats-server (`support::nats`): cluster-wide dedup claims and host
//! leases between several "instances" (separate NATS connections), expiry, release, reconnection.
//!
//! Nothing here asserts a wall-clock duration beyond "eventually, within a generous bound"; where a test checks
//! that something is still held, it checks only while the local clock proves the server cannot have expired it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rune::gate::dedup::DedupStore;
use rune::gate::kv::{KvDedup, KvDedupSettings, KvError, KvLease, KvLockSettings, KvLocks};
use tokio::time::Instant;

use crate::support::nats::NatsServer;

/// Bound on anything that should happen "soon" (expiry of a 1–3 s window, reconnection).
const EVENTUALLY: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);
const HOUR: Duration = Duration::from_secs(3600);

async fn connect(server: &NatsServer, instance: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .name(instance)
        .connect(server.url())
        .await
        .unwrap_or_else(|e| panic!("connect {instance} to {}: {e}", server.url()))
}

async fn dedup(server: &NatsServer, instance: &str) -> KvDedup {
    KvDedup::open(connect(server, instance).await, &KvDedupSettings::default())
        .await
        .unwrap_or_else(|e| panic!("open KvDedup for {instance}: {e}"))
}

fn lock_settings(ttl_secs: u64) -> KvLockSettings {
    let lease_ttl = Duration::from_secs(ttl_secs);
    KvLockSettings { lease_ttl, renew_every: lease_ttl / 4, ..KvLockSettings::default() }
}

async fn locks_on(client: async_nats::Client, instance: &str, settings: &KvLockSettings) -> KvLocks {
    KvLocks::open(client, instance, settings).await.unwrap_or_else(|e| panic!("open KvLocks for {instance}: {e}"))
}

/// Polls `probe` until it returns `Some`, or panics after [`EVENTUALLY`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {EVENTUALLY:?}: {what}");
        tokio::time::sleep(POLL).await;
    }
}

fn busy_holder(result: Result<KvLease, KvError>) -> String {
    match result {
        Err(KvError::Busy { holder_of_lock, .. }) => holder_of_lock,
        other => panic!("expected Busy, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_claims_of_one_key_across_instances_have_one_winner() {
    let server = NatsServer::start();
    let mut instances = Vec::new();
    for i in 0..4 {
        instances.push(Arc::new(dedup(&server, &format!("instance-{i}")).await));
    }
    let now = Instant::now();
    let claims: Vec<_> = (0..20)
        .map(|n| {
            let store = Arc::clone(&instances[n % instances.len()]);
            tokio::spawn(async move { store.claim("rule/DiskFull:web-1", HOUR, now).await })
        })
        .collect();
    let mut answers = Vec::new();
    for claim in claims {
        answers.push(claim.await.unwrap_or_else(|e| panic!("claim task: {e}")));
    }
    let winners = answers.iter().filter(|answer| **answer == Ok(true)).count();
    let losers = answers.iter().filter(|answer| **answer == Ok(false)).count();
    assert_eq!((winners, losers), (1, 19), "{answers:?}");
    for store in &instances {
        assert_eq!(store.is_held("rule/DiskFull:web-1", now).await, Ok(true));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_expires_after_its_window_and_can_be_claimed_again() {
    let server = NatsServer::start();
    let (a, b) = (dedup(&server, "a").await, dedup(&server, "b").await);
    let window = Duration::from_secs(1);
    assert_eq!(a.claim("k", window, Instant::now()).await, Ok(true));
    assert_eq!(b.claim("k", window, Instant::now()).await, Ok(false), "held for the other instance too");
    // Expires on the server; then another instance claims it (a tombstone or nothing is left behind).
    eventually("the 1 s claim expires and b claims it", || async {
        (b.claim("k", window, Instant::now()).await == Ok(true)).then_some(())
    })
    .await;
    assert_eq!(a.claim("k", window, Instant::now()).await, Ok(false), "b's new claim holds");
    eventually("b's claim expires too", || async { (a.is_held("k", Instant::now()).await == Ok(false)).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_allows_an_immediate_reclaim_from_any_instance() {
    let server = NatsServer::start();
    let (a, b) = (dedup(&server, "a").await, dedup(&server, "b").await);
    let now = Instant::now();
    assert_eq!(a.release("k").await, Ok(false), "nothing to release");
    assert_eq!(a.claim("k", HOUR, now).await, Ok(true));
    assert_eq!(b.release("k").await, Ok(true), "a resolved alert on another instance clears the key");
    assert_eq!(a.is_held("k", now).await, Ok(false));
    assert_eq!(b.claim("k", HOUR, now).await, Ok(true), "claimable again at once (over the tombstone)");
    assert_eq!(a.claim("k", HOUR, now).await, Ok(false));
    assert_eq!(a.release("k").await, Ok(true));
    assert_eq!(a.release("k").await, Ok(false));
    // Released keys claimed with a short window still expire (the claim over a tombstone carries its TTL).
    assert_eq!(a.claim("k", Duration::from_secs(1), now).await, Ok(true));
    eventually("a claim made over a tombstone expires", || async {
        (b.claim("k", HOUR, Instant::now()).await == Ok(true)).then_some(())
    })
    .await;
}

/// A pending claim (an admitted run not yet started) belongs to the message that carried the alert: its
/// redelivery to another instance takes it over, and the first holder can then neither commit nor roll it back.
/// Once committed (the run started), the key is held against everyone, the owner's redelivery included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_claim_is_taken_over_by_its_messages_redelivery_and_not_after_its_commit() {
    let server = NatsServer::start();
    let (a, b) = (dedup(&server, "a").await, dedup(&server, "b").await);
    let now = Instant::now();
    let owner = Some("RUNE_ALERTS:42:0#web-1");
    let first = a.claim_as("k", HOUR, owner, now).await.unwrap_or_else(|e| panic!("{e}"));
    let first = first.unwrap_or_else(|| panic!("a free key is claimed"));
    assert_eq!(b.is_held("k", now).await, Ok(true));
    assert_eq!(b.is_held_for("k", owner, now).await, Ok(false), "not held against its own message");
    assert_eq!(b.claim_as("k", HOUR, Some("RUNE_ALERTS:43:0#web-1"), now).await, Ok(None), "another message");
    assert_eq!(b.claim("k", HOUR, now).await, Ok(false));
    let second = b.claim_as("k", HOUR, owner, now).await.unwrap_or_else(|e| panic!("{e}"));
    let second = second.unwrap_or_else(|| panic!("the redelivery takes its pending claim over"));
    assert!(second.revision > first.revision);
    assert_eq!(a.commit(&first, now).await, Ok(false), "the first holder must not start its run");
    assert_eq!(a.release_claim(&first).await, Ok(false), "nor roll back the redelivery's claim");
    assert_eq!(b.commit(&second, now).await, Ok(true));
    assert_eq!(a.is_held_for("k", owner, now).await, Ok(true), "committed: held against its message too");
    assert_eq!(a.claim_as("k", HOUR, owner, now).await, Ok(None));
    // Keys and owners that JSON must escape (a key template over label values) behave the same.
    let (key, owner) = (r#"rule/C:\logs\"quoted""#, Some(r#"RUNE_ALERTS:7:0#host "x""#));
    let pending = a.claim_as(key, HOUR, owner, now).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(pending.is_some());
    assert_eq!(b.is_held_for(key, owner, now).await, Ok(false), "an escaped owner still owns its claim");
    let taken = b.claim_as(key, HOUR, owner, now).await.unwrap_or_else(|e| panic!("{e}"));
    let taken = taken.unwrap_or_else(|| panic!("taken over despite the escapes"));
    assert_eq!(b.commit(&taken, now).await, Ok(true));
    assert_eq!(a.is_held_for(key, owner, now).await, Ok(true));
    // A rollback needs no read: exactly its own claim goes.
    let other = a.claim_as("k2", HOUR, owner, now).await.unwrap_or_else(|e| panic!("{e}"));
    let other = other.unwrap_or_else(|| panic!("k2 is free"));
    assert_eq!(b.release_claim(&other).await, Ok(true));
    assert_eq!(a.is_held("k2", now).await, Ok(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_slashes_spaces_unicode_and_500_bytes_work_and_do_not_collide() {
    let server = NatsServer::start();
    let store = dedup(&server, "a").await;
    let long = "k".repeat(500);
    let long_twin = format!("{}j", "k".repeat(499));
    let keys = [
        "rule/DiskFull:web-1",
        "rule/DiskFull web-1",
        "rule/DiskFull:web-1 ",
        "rule/DiskFull:web-1/",
        "règle/Диск:日本語 ✓",
        "*.>",
        "",
        long.as_str(),
        long_twin.as_str(),
    ];
    let now = Instant::now();
    for key in keys {
        assert_eq!(store.claim(key, HOUR, now).await, Ok(true), "first claim of {key:?}");
    }
    for key in keys {
        assert_eq!(store.claim(key, HOUR, now).await, Ok(false), "second claim of {key:?}");
        assert_eq!(store.is_held(key, now).await, Ok(true), "{key:?}");
    }
    assert_eq!(store.release(long.as_str()).await, Ok(true));
    assert_eq!(store.is_held(long_twin.as_str(), now).await, Ok(true), "same readable prefix, other key");
    assert_eq!(store.is_held("rule/DiskFull:web-2", now).await, Ok(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_of_one_and_three_seconds_coexist() {
    let server = NatsServer::start();
    let store = dedup(&server, "a").await;
    let (short, long) = (Duration::from_secs(1), Duration::from_secs(3));
    assert_eq!(store.claim("short", short, Instant::now()).await, Ok(true));
    let long_sent = Instant::now();
    assert_eq!(store.claim("long", long, long_sent).await, Ok(true));
    eventually("the 1 s key expires", || async {
        (store.is_held("short", Instant::now()).await == Ok(false)).then_some(())
    })
    .await;
    let held = store.is_held("long", Instant::now()).await;
    // The server stored "long" after `long_sent`, so before `long_sent + 3 s` it cannot have expired.
    if Instant::now() < long_sent + long {
        assert_eq!(held, Ok(true), "the 3 s key outlives the 1 s key");
    }
    eventually("the 3 s key expires", || async {
        (store.claim("long", long, Instant::now()).await == Ok(true)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_refuses_a_bucket_without_per_key_ttl() {
    let server = NatsServer::start();
    let client = connect(&server, "a").await;
    let js = async_nats::jetstream::new(client.clone());
    let config = async_nats::jetstream::kv::Config { bucket: "plain".into(), ..Default::default() };
    js.create_key_value(config).await.unwrap_or_else(|e| panic!("create a plain bucket: {e}"));
    let settings = KvDedupSettings { bucket: "plain".into(), ..KvDedupSettings::default() };
    match KvDedup::open(client, &settings).await {
        Err(KvError::Unsupported(message)) => assert!(message.contains("per-message TTL"), "{message}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_exclusive_across_instances_and_lists_its_holder() {
    let server = NatsServer::start();
    let settings = lock_settings(30);
    let a = locks_on(connect(&server, "a").await, "instance-a", &settings).await;
    let b = locks_on(connect(&server, "b").await, "instance-b", &settings).await;

    let lease = a.try_acquire("web-1", "rule disk-full").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((lease.host(), lease.holder()), ("web-1", "instance-a rule disk-full"));
    assert_eq!(busy_holder(b.try_acquire("web-1", "chatops alice").await), "instance-a rule disk-full");
    assert_eq!(
        busy_holder(a.try_acquire("web-1", "rule disk-full").await),
        "instance-a rule disk-full",
        "not reentrant"
    );
    let other = b.try_acquire("web-2", "chatops alice").await.unwrap_or_else(|e| panic!("{e}"));

    let held = a.held().await.unwrap_or_else(|e| panic!("{e}"));
    let held: Vec<(&str, &str)> = held.iter().map(|h| (h.host.as_str(), h.holder.as_str())).collect();
    assert_eq!(held, [("web-1", "instance-a rule disk-full"), ("web-2", "instance-b chatops alice")]);

    assert_eq!(lease.release().await, Ok(()));
    let taken = b.try_acquire("web-1", "chatops alice").await.unwrap_or_else(|e| panic!("free after release: {e}"));
    assert!(!taken.is_lost() && !other.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_is_renewed_past_its_ttl() {
    let server = NatsServer::start();
    let settings = lock_settings(2);
    let a = locks_on(connect(&server, "a").await, "instance-a", &settings).await;
    let b = locks_on(connect(&server, "b").await, "instance-b", &settings).await;
    let lease = a.try_acquire("web-1", "rule r").await.unwrap_or_else(|e| panic!("{e}"));
    let until = Instant::now() + 3 * settings.lease_ttl;
    while Instant::now() < until {
        assert!(!lease.is_lost(), "lost while renewing: {:?}", lease.loss_reason());
        busy_holder(b.try_acquire("web-1", "rule r").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(lease.release().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lease_releases_the_host() {
    let server = NatsServer::start();
    let settings = lock_settings(30);
    let a = locks_on(connect(&server, "a").await, "instance-a", &settings).await;
    let b = locks_on(connect(&server, "b").await, "instance-b", &settings).await;
    let lease = a.try_acquire("web-1", "rule r").await.unwrap_or_else(|e| panic!("{e}"));
    let dropped_at = Instant::now();
    drop(lease);
    let taken =
        eventually("b takes web-1 after a dropped its lease", || async { b.try_acquire("web-1", "rule r").await.ok() })
            .await;
    // Released by the drop, not by expiry.
    assert!(dropped_at.elapsed() < settings.lease_ttl, "took {:?}", dropped_at.elapsed());
    assert_eq!(busy_holder(a.try_acquire("web-1", "rule r").await), "instance-b rule r");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_renewals_stop_is_lost_and_then_expires_for_others() {
    let server = NatsServer::start();
    let settings = lock_settings(3);
    let client_a = connect(&server, "a").await;
    let a = locks_on(client_a.clone(), "instance-a", &settings).await;
    let b = locks_on(connect(&server, "b").await, "instance-b", &settings).await;
    let lease = a.try_acquire("web-1", "rule r").await.unwrap_or_else(|e| panic!("{e}"));
    let lost = lease.lost();

    // Instance a loses its connection: renewals stop reaching the server.
    client_a.drain().await.unwrap_or_else(|e| panic!("drain a: {e}"));
    let taken = eventually("b takes web-1 once a's lease expired", || async {
        match b.try_acquire("web-1", "rule r").await {
            Ok(taken) => Some(taken),
            Err(KvError::Busy { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    // a's runner was told before b could take the host.
    assert!(lost.is_cancelled(), "b took web-1 while a's lease still counted as held");
    assert!(lease.loss_reason().is_some_and(|reason| reason.contains("not renewed")), "{:?}", lease.loss_reason());
    assert!(matches!(lease.release().await, Err(KvError::LeaseLost { .. })));
    assert!(!taken.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_keeps_leases_consistent_and_claims_work_after_reconnecting() {
    let mut server = NatsServer::start();
    let settings = lock_settings(4);
    let a = locks_on(connect(&server, "a").await, "instance-a", &settings).await;
    let b = locks_on(connect(&server, "b").await, "instance-b", &settings).await;
    let dedup_a = dedup(&server, "dedup-a").await;
    let dedup_b = dedup(&server, "dedup-b").await;
    assert_eq!(dedup_a.claim("before", HOUR, Instant::now()).await, Ok(true));
    let lease = a.try_acquire("web-1", "rule r").await.unwrap_or_else(|e| panic!("{e}"));
    let port = server.port();

    tokio::task::block_in_place(|| server.restart());
    assert_eq!(server.port(), port);

    // After reconnecting, the claim made before the restart is still there (file storage) and new claims work.
    eventually("dedup answers again after the restart", || async {
        dedup_b.is_held("before", Instant::now()).await.ok()
    })
    .await;
    assert_eq!(dedup_b.is_held("before", Instant::now()).await, Ok(true), "claims survive a restart");
    assert_eq!(dedup_b.claim("before", HOUR, Instant::now()).await, Ok(false));
    assert_eq!(dedup_b.claim("after", HOUR, Instant::now()).await, Ok(true));

    // The holder either keeps its lease (renewed after reconnecting; then nobody else gets it) or is told it
    // lost it. Checked for longer than a TTL.
    let until = Instant::now() + 2 * settings.lease_ttl;
    while Instant::now() < until {
        let still_held = !lease.is_lost();
        match b.try_acquire("web-1", "rule r").await {
            Ok(taken) => {
                assert!(!still_held || lease.is_lost(), "b took web-1 while a still held it");
                drop(taken);
                break;
            }
            Err(KvError::Busy { .. } | KvError::Unavailable(_)) => {}
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("restart: the lease {}", lease.loss_reason().map_or("was kept".to_owned(), |r| format!("was lost: {r}")));
    if !lease.is_lost() {
        assert_eq!(lease.release().await, Ok(()), "a kept its lease through the restart");
        let taken =
            eventually("b takes web-1 after a released it", || async { b.try_acquire("web-1", "rule r").await.ok() })
                .await;
        drop(taken);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_longer_than_the_ttl_loses_the_lease_and_then_frees_the_host() {
    let mut server = NatsServer::start();
    let settings = lock_settings(2);
    let a = locks_on(connect(&server, "a").await, "instance-a", &settings).await;
    let b = locks_on(connect(&server, "b").await, "instance-b", &settings).await;
    let lease = a.try_acquire("web-1", "rule r").await.unwrap_or_else(|e| panic!("{e}"));
    let lost = lease.lost();

    server.stop();
    let told = tokio::time::timeout(EVENTUALLY, lost.cancelled()).await;
    assert!(told.is_ok(), "the holder is told its lease is lost while NATS is down");
    assert!(lease.loss_reason().is_some_and(|reason| reason.contains("not renewed")), "{:?}", lease.loss_reason());

    tokio::task::block_in_place(|| server.restart());
    let taken =
        eventually("b takes web-1 after the restart", || async { b.try_acquire("web-1", "rule r").await.ok() }).await;
    assert!(matches!(lease.release().await, Err(KvError::LeaseLost { .. })));
    assert!(!taken.is_lost());
}

/// Regression guard for the revision check: a renewal must never overwrite an entry written by someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_never_overwrites_an_entry_someone_else_wrote() {
    let server = NatsServer::start();
    let settings = lock_settings(2);
    let a = locks_on(connect(&server, "a").await, "instance-a", &settings).await;
    let lease = a.try_acquire("web-1", "rule r").await.unwrap_or_else(|e| panic!("{e}"));
    let raw = async_nats::jetstream::new(connect(&server, "other").await)
        .get_key_value(a.bucket())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name = rune::gate::kv::kv_key_name("web-1");
    let other = br#"{"host":"web-1","holder":"instance-x rule q"}"#;
    raw.put(&name, other.as_slice().into()).await.unwrap_or_else(|e| panic!("{e}"));

    let told = tokio::time::timeout(EVENTUALLY, lease.lost().cancelled()).await;
    assert!(told.is_ok(), "the next renewal notices the foreign write");
    assert!(lease.loss_reason().is_some_and(|reason| reason.contains("changed")), "{:?}", lease.loss_reason());
    tokio::time::sleep(settings.renew_every * 2).await;
    let value = raw.get(&name).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(value.as_deref(), Some(other.as_slice()), "left as the other writer wrote it");
    assert!(matches!(lease.release().await, Err(KvError::LeaseLost { .. })));
    assert_eq!(raw.get(&name).await.ok().flatten().as_deref(), Some(other.as_slice()), "the release leaves it too");
}

/// Prints claim round-trip figures on loopback (one connection, sequential claims of distinct keys). No assertion
/// on time: it records what BENCHMARKS-style notes quote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_latency_on_loopback() {
    let server = NatsServer::start();
    let store = dedup(&server, "a").await;
    let mut seen = HashSet::new();
    let mut took = Vec::new();
    for n in 0..300 {
        let key = format!("rule/latency:host-{n}");
        let start = std::time::Instant::now();
        assert_eq!(store.claim(&key, HOUR, Instant::now()).await, Ok(true));
        took.push(start.elapsed());
        seen.insert(key);
    }
    let start = std::time::Instant::now();
    for key in &seen {
        assert_eq!(store.claim(key, HOUR, Instant::now()).await, Ok(false));
    }
    let refused = start.elapsed() / u32::try_from(seen.len()).unwrap_or(1);
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    eprintln!(
        "KvDedup claim on loopback: p50 {:?}, p99 {:?}, max {:?} (new key, 1 request); refused claim mean {refused:?} \
         (2 requests)",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// A remediation's lease taken in a message's name (its pending decision) is taken over by that message's
/// redelivery on another instance; the first holder is told its lease is lost. Any other holder still finds
/// the host busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_in_a_messages_name_is_taken_over_by_its_redelivery() {
    let server = NatsServer::start();
    let settings = lock_settings(2);
    let a = locks_on(connect(&server, "a").await, "instance-a", &settings).await;
    let b = locks_on(connect(&server, "b").await, "instance-b", &settings).await;
    let owner = Some("RUNE_ALERTS:42:0#web-1");
    let first = a.try_acquire_as("web-1", "rule r", owner).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        busy_holder(b.try_acquire_as("web-1", "rule r", Some("RUNE_ALERTS:43:0#web-1")).await).contains("instance-a")
    );
    assert!(busy_holder(b.try_acquire("web-1", "rule q").await).contains("instance-a"));
    let second = b.try_acquire_as("web-1", "rule r", owner).await.unwrap_or_else(|e| panic!("{e}"));
    let told = tokio::time::timeout(EVENTUALLY, first.lost().cancelled()).await;
    assert!(told.is_ok(), "the first holder's next renewal finds the takeover");
    assert!(busy_holder(a.try_acquire("web-1", "rule q").await).contains("instance-b"));
    assert!(second.release().await.is_ok());
    drop(first);
}
