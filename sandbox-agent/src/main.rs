//! kiln-agent: see lib docs.
fn main() {}
