//! Times loading a zone file (temporary benchmark harness).
fn main() {
    let path = std::env::args().nth(1).expect("zone file");
    let t = std::time::Instant::now();
    let zone = imrs_zone::Zone::load(std::path::Path::new(&path)).expect("load");
    println!("{} records in {:?}", zone.len(), t.elapsed());
}
