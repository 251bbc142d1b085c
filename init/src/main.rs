//! imrs-init
fn main() {}
