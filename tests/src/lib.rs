//! Shared helpers for the integration tests: the init as PID 1 of a namespace with a fixture
//! tree ([`appliance`]), network namespaces and veths ([`netns`]), the host-side daemons (FRR,
//! NSD, Knot, BIRD) in their own process groups ([`daemons`]).

// Test helpers: their names say what they are; documenting every one would repeat them.
#[allow(missing_docs)]
pub mod appliance;
#[allow(missing_docs)]
pub mod daemons;
#[allow(missing_docs)]
pub mod netns;
