//! What a unit of work is: a handler (a pending query plus an action), the
//! lease that fences its attempt, and what happens when it fails.
pub(crate) mod error;
pub mod handler;
pub(crate) mod lease;
pub mod limits;
pub(crate) mod status;
