//! `on_load!` registers a function that runs when the object is loaded, and a crate with
//! `#![forbid(unsafe_code)]` (as the agent is) accepts its expansion. Own process: the
//! check is about what ran before `main`.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

static RAN: AtomicBool = AtomicBool::new(false);

fn mark() {
    RAN.store(true, Ordering::SeqCst);
}

nonstop_probe::on_load!(mark);

#[test]
fn ran_before_main() {
    assert!(RAN.load(Ordering::SeqCst));
}
