//! A loopback TCP proxy in front of PostgreSQL that can go silent the way a
//! NAT gateway, a firewall or a failover does to flows it forgot: during a
//! partition it forwards nothing and closes nothing. Flows that were open
//! when the partition began, and flows opened during it (held: accepted, never
//! connected on), stay silent forever; once healed, new flows go through.
//! Kills and `pg_terminate_backend` close sockets; this fault closes none.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct SilentProxy {
    pub addr: SocketAddr,
    /// Cancelled when the flows born under it are cut off.
    current: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl SilentProxy {
    /// A proxy on a free loopback port that forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (flows, stopped) = (current.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                let cut = flows.lock().unwrap().clone();
                tokio::spawn(flow(client, upstream, cut, stopped.clone()));
            }
        });
        SilentProxy {
            addr,
            current,
            stop,
        }
    }

    /// A proxy in front of the server of `url` (a `postgres://…@host:port/…` URL).
    pub async fn in_front_of(url: &str) -> Self {
        let parsed = url::Url::parse(url).expect("a postgres:// URL");
        let host = parsed.host_str().expect("a host");
        let port = parsed.port().unwrap_or(5432);
        let upstream = tokio::net::lookup_host((host, port))
            .await
            .expect("resolve the database host")
            .next()
            .expect("an address");
        Self::start(upstream).await
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).expect("a postgres:// URL");
        parsed
            .set_host(Some(&self.addr.ip().to_string()))
            .expect("set host");
        parsed.set_port(Some(self.addr.port())).expect("set port");
        parsed.to_string()
    }

    /// Every open flow goes silent for good; new flows are held silent too.
    pub fn partition(&self) {
        self.current.lock().unwrap().cancel();
    }

    /// New flows go through again; the old ones stay silent.
    pub fn heal(&self) {
        *self.current.lock().unwrap() = CancellationToken::new();
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One flow: forwarded both ways until `cut`, then held open and silent
/// (until the proxy is dropped).
async fn flow(
    client: TcpStream,
    upstream: SocketAddr,
    cut: CancellationToken,
    stop: CancellationToken,
) {
    if !cut.is_cancelled() {
        if let Ok(server) = TcpStream::connect(upstream).await {
            let _ = server.set_nodelay(true);
            let _ = client.set_nodelay(true);
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::select! {
                _ = pump(&mut client_read, &mut server_write, &cut) => {}
                _ = pump(&mut server_read, &mut client_write, &cut) => {}
            }
            // Either side closed (pass it on by dropping both), or the flow was
            // cut: hold every socket open and say nothing.
            if cut.is_cancelled() {
                stop.cancelled().await;
            }
            return;
        }
        return;
    }
    // Born during a partition: accepted, never answered, never closed.
    stop.cancelled().await;
    drop(client);
}

/// Copies `from` to `to` until either closes or the flow is cut.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    cut: &CancellationToken,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = cut.cancelled() => return,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if cut.is_cancelled() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
