//! Commands other than `reactor run`: the offline demo, `reactor watch` and `reactor doctor`.
pub mod demo;
pub mod doctor;
pub mod watch;
