//! Background jobs of a running collector: housekeeping (session purge, raw-sample retention)
//! and rating runs. They sit on the store and are started by `serve`.

pub mod housekeeping;
pub mod rating;
