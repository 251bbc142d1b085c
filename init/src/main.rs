//! The `imrs-init` binary: PID 1 of the IMRS appliance. Everything lives in the library
//! ([`imrs_init`]); [`imrs_init::boot`] is the start-up order and the event loop.

fn main() {
    imrs_init::boot::main()
}
