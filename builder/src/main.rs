//! imrs-build
fn main() {}
