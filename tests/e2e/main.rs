//! Kiln's end-to-end suite: one test binary (link time matters on 2 cores).
//!
//! - `gallery`: every curated recipe validates, carries complete metadata, and
//!   runs end to end through `kiln run` with its documented output.

mod gallery;
