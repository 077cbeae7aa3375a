//! Kiln's end-to-end suite: one test binary (link time matters on 2 cores).
//!
//! - `gallery`: every curated recipe validates, carries complete metadata, and
//!   runs end to end through `kiln run` with its documented output.
//! - `security`: the hostile-recipe catalogue on runc and runsc, a host-side
//!   hostile client, and a 100-execution soak (issue 5).

mod gallery;
mod security;
