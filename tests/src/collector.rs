//! The RSSAC002 collector (`imrs_init::telemetry::Collector`) as the dnstap tests run it: on
//! its own runtime thread, listening on a socket the daemon under test writes to, and a wait
//! for the daemon's buffered frames to stop arriving.

use std::path::Path;
use std::time::{Duration, Instant};

use imrs_config::rssac002::SourceKey;
use imrs_init::telemetry::Collector;

/// A collector hashing sources with `key`, accepting writers on `sock` (bound before this
/// returns).
pub fn start(sock: &Path, key: [u8; 32]) -> Collector {
    let c = Collector::new(SourceKey::new(key));
    let (c2, sock, (tx, rx)) = (c.clone(), sock.to_path_buf(), std::sync::mpsc::channel());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let l = tokio::net::UnixListener::bind(&sock).expect("bind the dnstap socket");
            tx.send(()).expect("the test waits");
            c2.serve(l).await
        });
    });
    rx.recv().expect("the collector thread started");
    c
}

/// Waits until `c` has counted at least `at_least` payloads (30 s at most) and then nothing
/// more for 3 s (the daemons' dnstap writers buffer); returns the count.
pub fn settled(c: &Collector, at_least: u64) -> u64 {
    let t = Instant::now() + Duration::from_secs(30);
    while c.stats().counted < at_least && Instant::now() < t {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut last = c.stats().counted;
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let now = c.stats().counted;
        if now == last {
            return now;
        }
        last = now;
    }
}
