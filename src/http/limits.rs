//! What one client may take of the HTTP surface: open event streams per
//! viewer, and wrong credentials per client address before it must wait.
use crate::http::auth::Viewer;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Open `/v1/events` streams per viewer (each user; the admin counts as one).
pub struct StreamSlots {
    max: usize,
    open: Mutex<HashMap<Viewer, usize>>,
}

/// One open stream; dropping it frees the slot.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    viewer: Viewer,
}

impl StreamSlots {
    pub fn new(max: usize) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `viewer`, or None when it holds `max` streams already.
    pub fn open(self: &Arc<Self>, viewer: &Viewer) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(viewer.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            slots: self.clone(),
            viewer: viewer.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.viewer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.viewer);
            }
        }
    }
}

/// Wrong credentials a client address may present before it must wait.
const FREE_FAILURES: u32 = 5;
/// The longest wait.
const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Client addresses remembered at most (the oldest are forgotten first).
const MAX_CLIENTS: usize = 10_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    /// Until when this client must wait, if at all: after [`FREE_FAILURES`],
    /// 1 s, doubling with each further failure, up to [`MAX_LOCKOUT`].
    fn locked_until(&self) -> Option<Instant> {
        let over = self.count.checked_sub(FREE_FAILURES)?;
        let wait = Duration::from_secs(1)
            .saturating_mul(1 << over.min(16))
            .min(MAX_LOCKOUT);
        Some(self.last + wait)
    }
}

/// Slows down guessing of the admin token (or users' tokens): per client
/// address (an IPv6 client by its /64), wrong credentials beyond a few make
/// the next attempt wait, longer each time.
#[derive(Default)]
pub struct FailedLogins {
    clients: Mutex<HashMap<IpAddr, Failures>>,
}

/// The key of a client: IPv4 as is, IPv6 by its /64 (one host's share).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl FailedLogins {
    /// How long `ip` must still wait before its credentials are looked at.
    pub fn wait(&self, ip: IpAddr) -> Option<Duration> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let until = clients.get(&client_key(ip))?.locked_until()?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// `ip` presented wrong credentials.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS {
            clients.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        }
        if clients.len() >= MAX_CLIENTS {
            if let Some(oldest) = clients.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k) {
                clients.remove(&oldest);
            }
        }
        let entry = clients.entry(client_key(ip)).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        metrics::counter!("reactor_http_auth_failures_total").increment(1);
    }

    /// `ip` presented the admin token: its failures are forgotten.
    pub fn admin_succeeded(&self, ip: IpAddr) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.remove(&client_key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_viewer_and_freed_when_dropped() {
        let slots = StreamSlots::new(2);
        let (a, b) = (Viewer::User(uuid::Uuid::new_v4()), Viewer::Admin);
        let first = slots.open(&a).unwrap();
        let _second = slots.open(&a).unwrap();
        assert!(slots.open(&a).is_none());
        assert!(slots.open(&b).is_some(), "others are not affected");
        drop(first);
        assert!(slots.open(&a).is_some());
    }

    #[test]
    fn failures_beyond_a_few_make_the_client_wait_longer_each_time() {
        let logins = FailedLogins::default();
        let (ip, other): (IpAddr, IpAddr) = (
            "203.0.113.7".parse().unwrap(),
            "203.0.113.8".parse().unwrap(),
        );
        for _ in 0..FREE_FAILURES {
            assert_eq!(logins.wait(ip), None);
            logins.failed(ip);
        }
        let first = logins.wait(ip).expect("a wait after the free failures");
        logins.failed(ip);
        assert!(logins.wait(ip).unwrap() > first);
        assert_eq!(logins.wait(other), None);
        logins.admin_succeeded(ip);
        assert_eq!(logins.wait(ip), None);
        // One IPv6 host is one client, whatever address of its /64 it uses.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 0..=FREE_FAILURES {
            logins.failed(v6(&format!("2001:db8:1:2::{i}")));
        }
        assert!(logins.wait(v6("2001:db8:1:2::ffff")).is_some());
    }
}
