//! Background jobs of a running collector: housekeeping (session purge, raw-sample retention)
//! rating runs, and the listener for commands relayed by other collectors sharing PostgreSQL.
//! They sit on the store and are started by `serve`.

pub mod housekeeping;
pub mod rating;
pub mod relay;
