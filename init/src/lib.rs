//! imrs-init: PID 1 of the IMRS appliance and its first-boot pipeline, as a library the
//! `imrs-init` binary runs ([`boot::main`]) and the integration tests use.
//!
//! Layers, bottom up (nothing below imports anything above it):
//! - **Libraries** the stages use, each testable on its own: [`net`] (interfaces through
//!   netlink), [`dns`] (NSD and Knot configs, the readiness probe), [`bgp`] (BIRD config with
//!   the IMRS-only export filter, its control socket), [`health`] (what is announced and served,
//!   and the loop that decides it), [`phonehome`] (device key, outbox, delivery); and the PID 1
//!   core: `log`, `reaper` (the only `waitpid`), `command` (helper programs), `supervisor`,
//!   `signals`, `pid1`, `shutdown`, `cmdline`, `clock`, `modules`, `site`, `data_grow`, `hardware`,
//!   `rootzone`, `control`, `jitter` (timers spread across a fleet).
//! - **The boot's vocabulary**: stages and statuses come from [`imrs_config::stage`]; `outcome`
//!   (how a stage ended, with its reason) and `context` (what the boot knows, shared by the
//!   stages); `state` (saved outcomes).
//! - **Stage bodies**, one module per stage under `stages`, and `installation` (the
//!   installation report both the phone-home stage and a failed first boot queue); `slots`
//!   (the boot entry, blessing a healthy slot) and `slot_history` (`slots.json`: the last
//!   healthy slot, failed trials, `slot-changed` reports); `slot_update` (remote updates and
//!   rollbacks into the other slot); `heartbeat` (the signed heartbeat
//!   every `phone_home.heartbeat_s` once healthy).
//! - **The pipeline** (`pipeline`: the state machine over the stages; `retry`: when a failed
//!   stage runs again) and [`boot`] (start-up order, event loop, shutdown).
//!
//! PID 1 must not panic on data: strings from the disk, the network or the kernel are never
//! sliced by byte offset (`clippy::string_slice` is denied here; use `get`, `char_indices`,
//! `split_once` or `chars`).

#![deny(clippy::string_slice)]

pub mod bgp;
pub mod boot;
pub mod clock;
mod cmdline;
mod command;
mod context;
mod control;
mod data_grow;
pub mod dns;
mod entropy;
mod exposure;
mod fleet;
#[cfg(test)]
mod fuzzing;
mod hardware;
pub mod health;
mod heartbeat;
mod installation;
mod jitter;
mod log;
mod modules;
pub mod net;
mod outcome;
pub mod phonehome;
mod pid1;
mod pipeline;
mod privilege;
mod reaper;
mod retry;
mod rootzone;
mod shutdown;
mod signals;
mod site;
mod slot_history;
pub mod slot_update;
mod slots;
mod stages;
mod state;
mod summary;
mod supervisor;
pub mod telemetry;
