//! Loads and fully verifies a zone file; the benchmark harness of
//! `bench/zone-verify.sh`. Usage: `zone-verify ZONE ANCHORS UNIX_TIME`.
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: zone-verify ZONE ANCHORS UNIX_TIME");
        std::process::exit(2);
    }
    let t = std::time::Instant::now();
    let anchors = imrs_zone::TrustAnchors::load(Path::new(&args[2])).expect("anchors");
    let at = imrs_zone::Timestamp::from_second(args[3].parse().expect("time")).expect("time");
    let zone = imrs_zone::Zone::load(Path::new(&args[1])).expect("load");
    let loaded = t.elapsed();
    if let Ok(out) = std::env::var("ZONE_VERIFY_WRITE_TEXT") {
        let mut f = std::io::BufWriter::new(std::fs::File::create(out).expect("create"));
        zone.write_text(&mut f).expect("write");
    }
    let v = imrs_zone::verify(&zone, &anchors, at);
    println!(
        "serial {} records {} load {:?} verify {:?} total {:?}",
        v.serial,
        v.records,
        loaded,
        v.elapsed,
        t.elapsed()
    );
    // As `imrs-build zone verify` does: the process ends next, the zone is not freed.
    std::mem::forget(zone);
    match v.proof() {
        Ok(_) => {}
        Err(e) => {
            eprintln!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            std::process::exit(1);
        }
    }
}
