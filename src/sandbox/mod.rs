//! Throwaway databases for `reactor demo` and the tests: a PostgreSQL server
//! that lives as long as this process ([`cluster`]), and a database in it
//! shaped as a Supabase project looks to its `postgres` role ([`supabase_like`]).
//! Nothing here runs in `reactor run`.
pub mod cluster;
pub mod supabase_like;
