//! What a unit of work is: a handler (a pending query plus an action), the
//! lease that fences its attempt, and what happens when it fails.
pub mod error;
pub mod handler;
pub mod lease;
pub mod status;
