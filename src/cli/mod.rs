//! Commands other than `reactor run`: the offline demo and `reactor watch`.
pub mod demo;
pub mod doctor;
pub mod watch;
