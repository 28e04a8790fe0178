//! Per-handler inboxes: where hints (notifications, outbox entries, retry
//! requests) land until the handler's worker takes them, and rows whose wait
//! is over (a retry's backoff, a route's turn) until a claim takes them.
use super::listener::Event;
use super::Shared;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

/// Ids an inbox holds before further notifications turn into a rescan.
const INBOX_CAPACITY: usize = 10_000;

pub(super) struct Inbox {
    ids: Mutex<VecDeque<String>>,
    /// Rows this reactor set aside whose wait is over: they join the claim
    /// the worker is busy with, if any (see [`Inbox::take_due`]).
    due: Mutex<Vec<String>>,
    /// When the oldest id still queued arrived (for notify-to-start latency).
    oldest: Mutex<Option<std::time::Instant>>,
    pub(super) scan: AtomicBool,
    pub(super) wake: Notify,
}

impl Inbox {
    pub(super) fn new() -> Self {
        Inbox {
            ids: Mutex::new(VecDeque::new()),
            due: Mutex::new(Vec::new()),
            oldest: Mutex::new(None),
            scan: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    pub(super) fn push(&self, id: String) {
        {
            let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            if ids.len() < INBOX_CAPACITY {
                ids.push_back(id);
                self.oldest
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(std::time::Instant::now);
            } else {
                self.scan.store(true, Ordering::SeqCst);
            }
        }
        self.wake.notify_one();
    }

    /// A row this reactor set aside whose wait is over.
    pub(super) fn push_due(&self, id: String) {
        self.due.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        self.wake.notify_one();
    }

    /// Up to `max` rows whose wait is over, oldest first.
    pub(super) fn take_due(&self, max: usize) -> Vec<String> {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let n = due.len().min(max);
        due.drain(..n).collect()
    }

    pub(super) fn request_scan(&self) {
        self.scan.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Up to `max` ids (rows due first, then hints), and when the oldest
    /// hint among them arrived.
    pub(super) fn take(&self, max: usize) -> (Vec<String>, Option<std::time::Instant>) {
        let mut batch = self.take_due(max);
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let n = ids.len().min(max - batch.len());
        batch.extend(ids.drain(..n));
        let mut oldest = self.oldest.lock().unwrap_or_else(|e| e.into_inner());
        let arrived = if n == 0 {
            None
        } else if ids.is_empty() {
            oldest.take()
        } else {
            *oldest
        };
        drop(oldest);
        batch.sort();
        batch.dedup();
        (batch, arrived)
    }

    pub(super) fn clear(&self) {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.due.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Shared {
    pub(super) fn scan_all(&self) {
        for slot in &self.slots {
            slot.inbox.request_scan();
        }
    }

    pub(super) fn route(&self, event: Event) {
        match event {
            Event::Connected => {
                self.readiness.listening.store(true, Ordering::SeqCst);
                self.sessions_kept.store(true, Ordering::SeqCst);
                self.scan_all();
            }
            Event::Disconnected => {
                metrics::counter!("reactor_listener_reconnects_total").increment(1);
                self.readiness.listening.store(false, Ordering::SeqCst);
            }
            Event::Status(change) => self.status_feed.hint(change),
            Event::Retry { handler, id } => {
                for slot in self.slots.iter().filter(|s| s.handler.spec.name == handler) {
                    if slot.handler.spec.key_type.accepts(&id) {
                        slot.inbox.push(id.clone());
                    }
                }
            }
            Event::Quiet { table, for_ms } => self.heard_quiet(&table, for_ms),
            Event::Change(change) => {
                self.quiet.heard(&change.table);
                for slot in &self.slots {
                    let spec = &slot.handler.spec;
                    if !spec.wants(&change.table, change.status.as_deref()) {
                        continue;
                    }
                    if spec.key_type.accepts(&change.id) {
                        slot.inbox.push(change.id.clone());
                    } else {
                        tracing::warn!(table = %change.table, id = %change.id, "ignoring a notification whose id is not a valid key");
                    }
                }
            }
        }
    }
}
