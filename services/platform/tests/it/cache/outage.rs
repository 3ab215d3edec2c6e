//! Redis outages: a call never waits on Redis once it is known down, and no instance serves a
//! value older than a write acknowledged elsewhere for longer than the cache's stated bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crm_platform::cache::STALE_READ_BOUND;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::*;

/// A TCP proxy in front of Redis that can go silent, as a hung Redis or a network dropping
/// packets does: every connection stays open, but no byte is forwarded any more, so a client
/// learns nothing until its own timeout. It tells whether connections made after it went
/// silent are still open, i.e. whether the client is still waiting on them.
struct SilentProxy {
    addr: SocketAddr,
    silent: Arc<watch::Sender<bool>>,
    /// Connections accepted while silent: whether each is still open.
    held: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl SilentProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = Arc::new(watch::Sender::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (silent, held) = (silent.clone(), held.clone());
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if *silent.borrow() {
                        let open = Arc::new(AtomicBool::new(true));
                        held.lock().unwrap().push(open.clone());
                        tokio::spawn(hold(inbound, open));
                    } else {
                        tokio::spawn(forward_until_silent(inbound, target, silent.subscribe()));
                    }
                }
            }
        });
        Self {
            addr,
            silent,
            held,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn go_silent(&self) {
        self.silent.send_replace(true);
    }

    /// The connections accepted since the proxy went silent, each `true` while still open.
    fn held_open(&self) -> Vec<bool> {
        let held = self.held.lock().unwrap();
        held.iter()
            .map(|open| open.load(Ordering::SeqCst))
            .collect()
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward_until_silent(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut silent: watch::Receiver<bool>,
) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
        _ = silent.wait_for(|silent| *silent) => {}
    }
    drop(outbound);
    hold(inbound, Arc::new(AtomicBool::new(true))).await;
}

/// Reads and drops what the client sends, answering nothing, until it closes the connection.
async fn hold(mut socket: TcpStream, open: Arc<AtomicBool>) {
    let mut buf = [0u8; 4096];
    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
    open.store(false, Ordering::SeqCst);
}

#[tokio::test]
async fn once_redis_hangs_calls_skip_it_and_never_wait_for_the_reconnect() {
    let proxy = SilentProxy::start(redis_addr()).await;
    let prefix = unique_prefix();
    // Commands time out after 2 s; a connection attempt after 8 s.
    let cache = cache_on(&proxy.url(), &prefix, &[("CRM__REDIS__TIMEOUT_MS", "2000")]).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(1, "old"));
    within(cache.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    within(cache.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(row.loads(), 1, "the second read is served by Redis");

    proxy.go_silent();
    // The first call to meet the hung Redis waits for its command timeout, then marks it down.
    let first = within(cache.get_or_load(&key, || row.load())).await;
    assert_eq!(first.unwrap(), "old");
    assert!(!cache.redis_up(), "a timed-out command marks Redis down");
    eventually("the background reconnect is under way", || {
        let attempts = proxy.held_open();
        async move { attempts.first() == Some(&true) }
    })
    .await;

    // Many calls at once, reads and writes, while that reconnect hangs.
    row.commit(entry(2, "new"));
    let new = "new".to_string();
    let reads = futures::future::join_all((0..64).map(|_| cache.get_or_load(&key, || row.load())));
    let writes = futures::future::join_all((0..8).map(|_| cache.put(&key, 2, &new)));
    let (reads, _) = within(async { tokio::join!(reads, writes) }).await;

    for read in reads {
        assert_eq!(read.unwrap(), "new");
    }
    assert_eq!(
        proxy.held_open().first(),
        Some(&true),
        "every call finished while the reconnect they would have waited for was still hanging"
    );
    assert!(!cache.redis_up());
}

#[tokio::test]
async fn with_redis_cut_concurrent_calls_all_answer_from_the_rows() {
    let proxy = Outage::start(redis_addr()).await;
    let prefix = unique_prefix();
    let cache = cache_on(&format!("redis://{}", proxy.addr), &prefix, &[]).await;
    let _listening = live(&cache).await;
    let keys: Vec<_> = (0..16).map(|id| THINGS.key(id)).collect();
    let row = Row::new(entry(1, "old"));
    for key in &keys {
        within(cache.get_or_load(key, || row.load())).await.unwrap();
    }

    proxy.cut();
    row.commit(entry(2, "new"));
    let reads = futures::future::join_all(
        (0..128).map(|i| cache.get_or_load(&keys[i % keys.len()], || row.load())),
    );
    let reads = within(reads).await;

    for read in &reads {
        let read = read.as_ref().expect("no call fails because of Redis");
        assert!(read == "old" || read == "new", "{read}");
    }
    wait_until_live(&cache, false).await;
    eventually("the cut is noticed (a heartbeat fails)", || {
        let up = cache.redis_up();
        async move { !up }
    })
    .await;
    let after =
        within(futures::future::join_all((0..128).map(|i| {
            cache.get_or_load(&keys[i % keys.len()], || row.load())
        })))
        .await;
    for read in after {
        assert_eq!(
            read.unwrap(),
            "new",
            "with Redis known down every read loads"
        );
    }
}

#[tokio::test]
async fn an_instance_cut_off_from_redis_stops_serving_its_cached_value_within_the_stated_bound() {
    let (reader_proxy, writer_proxy) = (
        Outage::start(redis_addr()).await,
        Outage::start(redis_addr()).await,
    );
    let prefix = unique_prefix();
    let reader = cache_on(&format!("redis://{}", reader_proxy.addr), &prefix, &[]).await;
    let writer = cache_on(&format!("redis://{}", writer_proxy.addr), &prefix, &[]).await;

    stops_serving_v1_within_the_bound(&reader, &writer, || {
        reader_proxy.cut();
        writer_proxy.cut();
    })
    .await;
}

#[tokio::test]
async fn an_instance_whose_redis_stops_answering_stops_serving_its_cached_value_within_the_stated_bound()
 {
    let reader_proxy = SilentProxy::start(redis_addr()).await;
    let writer_proxy = Outage::start(redis_addr()).await;
    let prefix = unique_prefix();
    let reader = cache_on(&reader_proxy.url(), &prefix, &[]).await;
    let writer = cache_on(&format!("redis://{}", writer_proxy.addr), &prefix, &[]).await;

    // The reader's connections stay open but carry nothing: no error tells it anything.
    stops_serving_v1_within_the_bound(&reader, &writer, || {
        reader_proxy.go_silent();
        writer_proxy.cut();
    })
    .await;
}

/// The reader caches v1; `cut` takes Redis away from both instances; the writer commits v2 and
/// its put returns. Every read of the reader that starts [`STALE_READ_BOUND`] after that must
/// return v2.
async fn stops_serving_v1_within_the_bound(reader: &Cache, writer: &Cache, cut: impl FnOnce()) {
    let _listening = live(reader).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(1, "old"));
    within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(row.loads(), 1, "the reader serves v1 from its cache");

    cut();
    row.commit(entry(2, "new"));
    within(put(writer, &key, entry(2, "new"))).await;
    let acknowledged = Instant::now();

    // Read in a loop until well past the bound.
    let deadline = acknowledged + STALE_READ_BOUND * 2;
    let mut last_stale = None;
    let mut fresh_after_bound = 0;
    while Instant::now() < deadline {
        let started = Instant::now();
        let read = within(reader.get_or_load(&key, || row.load()))
            .await
            .unwrap();
        let after_ack = started - acknowledged;
        if read == "old" {
            last_stale = Some(after_ack);
            assert!(
                after_ack < STALE_READ_BOUND,
                "served v1 {after_ack:?} after v2 was acknowledged (bound {STALE_READ_BOUND:?})"
            );
        } else if after_ack >= STALE_READ_BOUND {
            fresh_after_bound += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(fresh_after_bound > 0, "reads were made past the bound");
    println!("last stale read started {last_stale:?} after the write (bound {STALE_READ_BOUND:?})");
}

#[tokio::test]
async fn after_redis_returns_values_written_meanwhile_are_not_served_stale() {
    let proxy = Outage::start(redis_addr()).await;
    let prefix = unique_prefix();
    let reader = cache_on(&format!("redis://{}", proxy.addr), &prefix, &[]).await;
    let writer = cache_on(&format!("redis://{}", proxy.addr), &prefix, &[]).await;
    let _listening = live(&reader).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(1, "old"));
    within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();

    proxy.cut();
    row.commit(entry(2, "new"));
    within(put(&writer, &key, entry(2, "new"))).await;
    assert_eq!(
        in_redis(&reader, &key).await,
        Some(redis_value(entry(1, "old"))),
        "Redis itself survived and still holds v1"
    );

    proxy.restore();
    wait_until_live(&reader, true).await;
    eventually("the writer is connected again", || {
        let up = writer.redis_up();
        async move { up }
    })
    .await;

    let read = within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(read, "new");
    let loads = row.loads();
    let again = within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(again, "new");
    assert_eq!(row.loads(), loads, "the tier serves the new value again");
}

#[tokio::test]
async fn a_write_that_missed_redis_reaches_other_instances_once_its_writer_reconnects() {
    let writer_proxy = Outage::start(redis_addr()).await;
    let prefix = unique_prefix();
    let reader = cache_on(&redis_url(), &prefix, &[]).await;
    let writer = cache_on(&format!("redis://{}", writer_proxy.addr), &prefix, &[]).await;
    let _listening = live(&reader).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(1, "old"));
    within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();

    // A partition: only the writer is cut off, so its invalidation reaches nobody.
    writer_proxy.cut();
    row.commit(entry(2, "new"));
    within(put(&writer, &key, entry(2, "new"))).await;
    writer_proxy.restore();

    eventually(
        "the reader serves the write made during the partition",
        || async {
            within(reader.get_or_load(&key, || row.load()))
                .await
                .is_ok_and(|read| read == "new")
        },
    )
    .await;
}
