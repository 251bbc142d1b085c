//! The host organisation's side of the appliance's cable: what the lab and the tests start
//! around an appliance. Network namespaces with their links ([`netns`]), child processes in their
//! own process groups ([`process`]), the router that peers with the appliance, FRR or GoBGP
//! ([`router`]), the root zone transfer server ([`xfr`]), an NTS server ([`nts`]), and the host
//! organisation's inboxes for the receiver's notices ([`inbox`]). `imrs-build lab` and the
//! integration tests (`tests/`) both build on these; what differs between them (the lab's plan,
//! the tests' fixed addresses and prerequisite rule) stays with each.
//!
//! Errors are `anyhow` errors naming what failed (the command, the namespace, the daemon and the
//! end of its log). Everything started here is stopped by `Drop`, on success, on error and, for
//! wait loops, on Ctrl-C ([`signal`]).

pub mod inbox;
pub mod netns;
pub mod nts;
pub mod process;
pub mod router;
pub mod signal;
pub mod xfr;
