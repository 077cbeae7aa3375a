//! cargo xtask: build, run, test and bench automation.
fn main() {}
