//! Transfers a root zone by AXFR from one server and fully verifies it; the
//! AXFR half of `bench/zone-verify.sh`.
//! Usage: `axfr-verify SERVER:PORT ANCHORS UNIX_TIME`.
use std::path::Path;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: axfr-verify SERVER:PORT ANCHORS UNIX_TIME");
        std::process::exit(2);
    }
    let t = std::time::Instant::now();
    let server: std::net::SocketAddr = args[1].parse().expect("server address");
    let anchors = imrs_zone::TrustAnchors::load(Path::new(&args[2])).expect("anchors");
    let at = imrs_zone::Timestamp::from_second(args[3].parse().expect("time")).expect("time");
    let config = imrs_zone::AxfrConfig {
        servers: vec![server],
        zone: imrs_zone::WireName::root(),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        transfer_timeout: Duration::from_secs(60),
        max_bytes: 16 * 1024 * 1024,
    };
    let transfer = imrs_zone::axfr::transfer_from(server, &config).expect("transfer");
    let transferred = t.elapsed();
    let v = imrs_zone::verify(&transfer.zone, &anchors, at);
    println!(
        "serial {} records {} transfer {:?} ({} bytes, {} messages) verify {:?} total {:?}",
        v.serial,
        v.records,
        transferred,
        transfer.bytes,
        transfer.messages,
        v.elapsed,
        t.elapsed()
    );
    if let Err(e) = v.proof() {
        eprintln!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        std::process::exit(1);
    }
}
