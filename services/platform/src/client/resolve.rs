//! Where a service's instances are: a name resolved to every address behind it (a headless
//! Service gives one per ready pod), kept fresh, and fed to tonic's balanced channel as one
//! endpoint per address.
//!
//! In all-in-one mode a service this process serves itself, with no endpoint configured, is
//! reached over loopback at the address the server bound ([`Loopback`]).

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic::transport::channel::Change;

/// Turns a host name and port into the addresses behind it.
pub trait Resolve: Send + Sync + 'static {
    /// Every address `host:port` stands for now.
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo`, through tokio), which asks DNS for every A/AAAA record.
#[derive(Debug, Clone, Copy, Default)]
pub struct DnsResolver;

impl Resolve for DnsResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// Where the resolver stands, as calls see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// Not resolved yet.
    Pending,
    /// This many endpoints are in the balancer.
    Ready(usize),
    /// The target cannot be reached at all, and why (naming the configuration key).
    Misconfigured(String),
}

/// The services this process serves and the address it serves them on, once its server has
/// bound its listener. Shared by every client built from one [`ServiceContext`].
///
/// [`ServiceContext`]: crate::server::ServiceContext
#[derive(Debug, Clone)]
pub struct Loopback {
    local: Arc<watch::Sender<Option<LocalServer>>>,
}

#[derive(Debug, Clone)]
struct LocalServer {
    addr: SocketAddr,
    services: BTreeSet<String>,
}

impl Default for Loopback {
    fn default() -> Self {
        Self {
            local: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl Loopback {
    /// Declares that this process serves `services` on `bound` (the listener's real address):
    /// clients of those services with no `clients.<service>.endpoint` call it over loopback.
    /// Call once the listener is bound, before serving.
    pub fn announce<'a>(&self, bound: SocketAddr, services: impl IntoIterator<Item = &'a str>) {
        let services = services.into_iter().map(str::to_string).collect();
        self.local.send_replace(Some(LocalServer {
            addr: loopback_of(bound),
            services,
        }));
    }

    /// Whether `service` is known not to be served here (`None`: nothing announced yet).
    pub(crate) fn serves(&self, service: &str) -> Option<bool> {
        self.local
            .borrow()
            .as_ref()
            .map(|local| local.services.contains(service))
    }
}

/// The address to dial for a listener bound to `bound`: an unspecified address (`0.0.0.0`,
/// `::`) is reached on the loopback interface.
fn loopback_of(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// Where a client finds its target's instances.
pub(crate) enum Source {
    /// `host:port` from `clients.<service>.endpoint`, re-resolved every `interval`.
    Name {
        host: String,
        port: u16,
        resolver: Arc<dyn Resolve>,
        interval: Duration,
    },
    /// The process's own server (all-in-one mode).
    Loopback(Loopback),
}

/// Keeps the balanced channel's endpoints equal to what `source` resolves to, until the
/// channel is dropped or `shutdown` is cancelled.
pub(crate) async fn follow(
    target: String,
    source: Source,
    make_endpoint: impl Fn(SocketAddr) -> Endpoint + Send,
    changes: mpsc::Sender<Change<SocketAddr, Endpoint>>,
    state: watch::Sender<Resolution>,
    shutdown: CancellationToken,
) {
    let mut current = BTreeSet::new();
    let mut next = Box::pin(next_addresses(&target, &source, Refresh::Now));
    loop {
        let found = tokio::select! {
            found = &mut next => found,
            () = changes.closed() => return,
            () = shutdown.cancelled() => return,
        };
        let refresh = match &found {
            Ok(addrs) if !addrs.is_empty() => Refresh::Scheduled,
            _ => Refresh::Soon,
        };
        match found {
            Ok(addrs) => {
                if apply(&current, &addrs, &make_endpoint, &changes)
                    .await
                    .is_err()
                {
                    return;
                }
                state.send_replace(Resolution::Ready(addrs.len()));
                current = addrs;
            }
            Err(Failure::Misconfigured(why)) => {
                state.send_replace(Resolution::Misconfigured(why));
            }
            Err(Failure::Transient(err)) => {
                // The previous endpoints stay: a DNS hiccup must not empty the balancer.
                tracing::warn!(target = %target, error = %err, "resolving the endpoint failed");
                if current.is_empty() {
                    state.send_replace(Resolution::Ready(0));
                }
            }
        }
        next = Box::pin(next_addresses(&target, &source, refresh));
    }
}

enum Failure {
    Misconfigured(String),
    Transient(io::Error),
}

/// When to resolve again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refresh {
    /// At once (the first time).
    Now,
    /// After the configured interval.
    Scheduled,
    /// Sooner than the interval: the last answer was a failure or empty, and the target's
    /// first pods (or DNS) may be moments away.
    Soon,
}

/// How soon a failed or empty resolution is tried again, when the interval is longer.
const RETRY_SOON: Duration = Duration::from_secs(1);

/// The addresses of `source`, once `refresh` says to look again.
async fn next_addresses(
    target: &str,
    source: &Source,
    refresh: Refresh,
) -> Result<BTreeSet<SocketAddr>, Failure> {
    match source {
        Source::Name {
            host,
            port,
            resolver,
            interval,
        } => {
            match refresh {
                Refresh::Now => {}
                Refresh::Scheduled => tokio::time::sleep(*interval).await,
                Refresh::Soon => tokio::time::sleep((*interval).min(RETRY_SOON)).await,
            }
            let addrs = resolver
                .resolve(host, *port)
                .await
                .map_err(Failure::Transient)?;
            Ok(addrs.into_iter().collect())
        }
        Source::Loopback(loopback) => {
            let mut local = loopback.local.subscribe();
            if refresh != Refresh::Now {
                // A later announcement (a restarted server) is the only change there can be.
                let _ = local.changed().await;
            }
            let announced = local
                .wait_for(Option::is_some)
                .await
                .map_err(|_| Failure::Misconfigured("the local server is gone".into()))?
                .clone();
            if let Some(server) = announced.filter(|s| s.services.contains(target)) {
                Ok(BTreeSet::from([server.addr]))
            } else {
                Err(Failure::Misconfigured(format!(
                    "clients.{target}.endpoint is not set and this process does not serve {target}"
                )))
            }
        }
    }
}

/// Sends the balancer the difference between `current` and `wanted`.
async fn apply(
    current: &BTreeSet<SocketAddr>,
    wanted: &BTreeSet<SocketAddr>,
    make_endpoint: &impl Fn(SocketAddr) -> Endpoint,
    changes: &mpsc::Sender<Change<SocketAddr, Endpoint>>,
) -> Result<(), mpsc::error::SendError<Change<SocketAddr, Endpoint>>> {
    for gone in current.difference(wanted) {
        changes.send(Change::Remove(*gone)).await?;
    }
    for new in wanted.difference(current) {
        changes
            .send(Change::Insert(*new, make_endpoint(*new)))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_resolves_to_the_loopback_address() {
        let addrs = DnsResolver.resolve("localhost", 7).await.unwrap();

        assert!(
            addrs.iter().any(|a| a.ip().is_loopback() && a.port() == 7),
            "{addrs:?}"
        );
    }

    #[test]
    fn an_unspecified_listen_address_is_dialled_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let v6: SocketAddr = "[::]:50051".parse().unwrap();
        let exact: SocketAddr = "10.1.2.3:50051".parse().unwrap();

        assert_eq!(loopback_of(v4), "127.0.0.1:50051".parse().unwrap());
        assert_eq!(loopback_of(v6), "[::1]:50051".parse().unwrap());
        assert_eq!(loopback_of(exact), exact);
    }

    #[test]
    fn the_loopback_knows_what_it_serves_once_announced() {
        let loopback = Loopback::default();
        assert_eq!(loopback.serves("customer"), None);

        loopback.announce("0.0.0.0:1".parse().unwrap(), ["customer"]);

        assert_eq!(loopback.serves("customer"), Some(true));
        assert_eq!(loopback.serves("sales"), Some(false));
    }
}
