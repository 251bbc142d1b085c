//! Shared helpers for the integration tests: the init as PID 1 of a namespace with a fixture
//! tree ([`appliance`]); network namespaces, the standard cable between the appliance and the
//! host, and the prerequisite rule ([`netns`]); the host-side daemons (router, transfer server,
//! any process) from `imrs_build::host`, with the tests' router configuration ([`daemons`]);
//! the RSSAC002 collector as the dnstap tests run it ([`collector`]).

// Test helpers: their names say what they are; documenting every one would repeat them.
#[allow(missing_docs)]
pub mod appliance;
pub mod collector;
#[allow(missing_docs)]
pub mod daemons;
#[allow(missing_docs)]
pub mod netns;
