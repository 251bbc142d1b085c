//! AXFR client against a real NSD and a real Knot serving the real root zone
//! on loopback (IPv4 and IPv6, high port), plus fake servers that misbehave.
//! Never contacts anything but 127.0.0.1 and ::1.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imrs_zone::axfr::{self, ServerError};
use imrs_zone::{AxfrConfig, AxfrError, Timestamp, TrustAnchors, WireName, Zone};

/// Stops the daemon this test started (by its own pid) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    // Both loopbacks must be free at the port.
    loop {
        let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l4.local_addr().unwrap().port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

fn config(servers: Vec<SocketAddr>) -> AxfrConfig {
    AxfrConfig {
        servers,
        zone: WireName::root(),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        transfer_timeout: Duration::from_secs(60),
        max_bytes: 16 * 1024 * 1024,
    }
}

fn start_nsd(dir: &Path, port: u16) -> Daemon {
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1@{port}\n  ip-address: ::1@{port}\n  port: {port}\n  \
         username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  \
         database: \"\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
         logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 1\n\
         remote-control:\n  control-enable: no\n\
         zone:\n  name: \".\"\n  zonefile: \"{d}/root.zone\"\n  \
         provide-xfr: 127.0.0.1 NOKEY\n  provide-xfr: ::1 NOKEY\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nsd.conf"), conf).unwrap();
    let child = Command::new("/usr/sbin/nsd")
        .arg("-d")
        .arg("-c")
        .arg(dir.join("nsd.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nsd");
    Daemon(child)
}

#[test]
fn transfer_from_nsd_with_fallback() {
    if !common::have("/usr/sbin/nsd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Serve the zone as this crate writes it: proves NSD loads our text form.
    let original = Zone::load(&common::data_dir().join("root.zone.2026073102")).unwrap();
    let mut text = Vec::new();
    original.write_text(&mut text).unwrap();
    std::fs::write(dir.path().join("root.zone"), &text).unwrap();
    let port = free_port();
    let _nsd = start_nsd(dir.path(), port);

    // The first server is a closed port: the client falls back.
    let dead = free_port();
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let servers = vec![format!("127.0.0.1:{dead}").parse().unwrap(), v4];
    let deadline = Instant::now() + Duration::from_secs(30);
    let t = loop {
        match axfr::transfer(&config(servers.clone())) {
            Ok(t) => break t,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!(
                "NSD never served the zone: {e}\nlog: {}",
                std::fs::read_to_string(dir.path().join("nsd.log")).unwrap_or_default()
            ),
        }
    };
    assert_eq!(t.server, v4);
    assert_eq!(t.zone.records(), original.records());
    let anchors = TrustAnchors::load(&common::data_dir().join("root-anchors.xml")).unwrap();
    let at: Timestamp = "2026-08-01T00:00:00Z".parse().unwrap();
    let v = imrs_zone::verify(&t.zone, &anchors, at);
    assert!(v.is_verified(), "{:?} {:?}", v.zonemd, v.dnssec);

    // IPv6, and the size limit.
    let t6 = axfr::transfer_from(v6, &config(vec![v6])).unwrap();
    assert_eq!(t6.zone.len(), original.len());
    let mut small = config(vec![v6]);
    small.max_bytes = 100_000;
    let err = axfr::transfer_from(v6, &small).unwrap_err();
    assert!(
        matches!(err, ServerError::TooLarge { limit: 100_000, .. }),
        "{err}"
    );
}

fn start_knot(dir: &Path, port: u16) -> Daemon {
    // Everything in the private directory; Knot needs its storage to exist.
    let db = dir.join("db");
    std::fs::create_dir_all(&db).unwrap();
    let conf = format!(
        "server:\n    rundir: \"{d}\"\n    user: root:root\n    pidfile: \"{d}/knot.pid\"\n    \
         listen: [ \"127.0.0.1@{port}\", \"::1@{port}\" ]\n\
         database:\n    storage: \"{db}\"\n\
         control:\n    listen: \"{d}/knot.sock\"\n\
         log:\n  - target: \"{d}/knot.log\"\n    any: info\n\
         acl:\n  - id: local-transfer\n    address: [ \"127.0.0.1\", \"::1\" ]\n    action: transfer\n\
         zone:\n  - domain: \".\"\n    storage: \"{d}\"\n    file: \"root.zone\"\n    \
         acl: local-transfer\n    zonefile-sync: -1\n    journal-content: none\n",
        d = dir.display(),
        db = db.display(),
    );
    std::fs::write(dir.join("knot.conf"), conf).unwrap();
    let child = Command::new("/usr/sbin/knotd")
        .arg("-c")
        .arg(dir.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start knotd");
    Daemon(child)
}

/// The serial of an authoritative NOERROR answer to a root SOA query over
/// UDP, or `None` while the server is not ready (Knot answers SERVFAIL
/// while it loads the zone).
fn authoritative_soa_serial(server: SocketAddr) -> Option<u32> {
    use domain::base::{Message, MessageBuilder, Name, Rtype, iana::Rcode};
    let sock = UdpSocket::bind(if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .ok()?;
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(0x4b4e);
    let mut q = b.question();
    q.push((Name::root_vec(), Rtype::SOA)).ok()?;
    sock.send_to(q.finish().as_slice(), server).ok()?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    let msg = Message::from_octets(&buf[..n]).ok()?;
    let h = msg.header();
    if h.id() != 0x4b4e || !h.qr() || !h.aa() || h.rcode() != Rcode::NOERROR {
        return None;
    }
    let soa = msg
        .answer()
        .ok()?
        .limit_to::<domain::rdata::Soa<_>>()
        .next()?
        .ok()?;
    Some(soa.data().serial().into_int())
}

#[test]
fn transfer_from_knot_and_verify() {
    if !common::have("/usr/sbin/knotd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Knot loads the zone file itself: the transfer then cross-checks this
    // crate's parser against Knot's.
    let source = common::data_dir().join("root.zone.2026073102");
    std::fs::copy(&source, dir.path().join("root.zone")).unwrap();
    let port = free_port();
    let _knot = start_knot(dir.path(), port);
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();

    // Ready: NOERROR, AA and the expected serial.
    let deadline = Instant::now() + Duration::from_secs(30);
    while authoritative_soa_serial(v4) != Some(2026073102) {
        assert!(
            Instant::now() < deadline,
            "Knot never served serial 2026073102\nlog: {}",
            std::fs::read_to_string(dir.path().join("knot.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let original = Zone::load(&source).unwrap();
    let anchors = TrustAnchors::load(&common::data_dir().join("root-anchors.xml")).unwrap();
    let at: Timestamp = "2026-08-01T00:00:00Z".parse().unwrap();
    for server in [v4, v6] {
        let t = axfr::transfer_from(server, &config(vec![server]))
            .unwrap_or_else(|e| panic!("AXFR from Knot at {server}: {e}"));
        assert_eq!(t.server, server);
        assert_eq!(t.zone.serial(), 2026073102);
        assert_eq!(t.zone.records(), original.records());
        let v = imrs_zone::verify(&t.zone, &anchors, at);
        assert!(v.is_verified(), "{:?} {:?}", v.zonemd, v.dnssec);
        let proof = v.proof().unwrap();
        assert_eq!(proof.signatures_verified, 2792);
        assert_eq!(proof.anchors_used, [20326]);
    }
}

/// A one-shot fake server answering the first connection with `respond`.
fn fake(respond: fn(&mut TcpStream, u16)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                return;
            }
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if s.read_exact(&mut q).is_err() {
                return;
            }
            respond(&mut s, u16::from_be_bytes([q[0], q[1]]));
        }
    });
    addr
}

/// A response message with our query's ID, QR set, and `answers` (wire).
fn response(id: u16, answers: &[&[u8]]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x84, 0x00]); // QR AA, NOERROR
    m.extend_from_slice(&[0, 0, 0, answers.len() as u8, 0, 0, 0, 0]);
    for a in answers {
        m.extend_from_slice(a);
    }
    let mut framed = (m.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&m);
    framed
}

fn soa_rr(serial: u32) -> Vec<u8> {
    let mut r = vec![0, 0, 6, 0, 1, 0, 1, 0x51, 0x80]; // ". SOA IN 86400"
    let mut rdata = vec![1, b'a', 0, 1, b'b', 0];
    rdata.extend_from_slice(&serial.to_be_bytes());
    for v in [1800u32, 900, 604800, 86400] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(&rdata);
    r
}

#[test]
fn misbehaving_servers_fail_cleanly() {
    // Garbage after a valid length prefix.
    let garbage = fake(|s, _| {
        let _ = s.write_all(&[0, 5, 0xde, 0xad, 0xbe, 0xef, 0x00]);
    });
    // Cut off mid-transfer: the opening SOA, then the connection closes.
    let cut = fake(|s, id| {
        let _ = s.write_all(&response(id, &[&soa_rr(7)]));
        let _ = s.write_all(&[0x10, 0x00, 1, 2, 3]); // promises 4096 bytes, sends 3
    });
    // Closing SOA differs from the opening one.
    let mismatch = fake(|s, id| {
        let _ = s.write_all(&response(id, &[&soa_rr(7), &soa_rr(8)]));
    });
    // Wrong query ID.
    let wrong_id = fake(|s, id| {
        let _ = s.write_all(&response(id.wrapping_add(1), &[&soa_rr(7), &soa_rr(7)]));
    });
    let err = axfr::transfer(&config(vec![garbage, cut, mismatch, wrong_id])).unwrap_err();
    let AxfrError::AllFailed { failures } = &err else {
        panic!("{err}")
    };
    assert!(
        matches!(failures[0], ServerError::BadMessage { .. }),
        "{}",
        failures[0]
    );
    assert!(
        matches!(failures[1], ServerError::Truncated { .. }),
        "{}",
        failures[1]
    );
    assert!(
        matches!(failures[2], ServerError::SoaMismatch { .. }),
        "{}",
        failures[2]
    );
    assert!(
        matches!(failures[3], ServerError::BadMessage { ref reason, .. } if reason.contains("ID")),
        "{}",
        failures[3]
    );
    let msg = err.to_string();
    assert!(msg.starts_with("all 4 transfer servers failed"), "{msg}");

    // A complete, consistent transfer of a tiny zone from a fake server works,
    // so the failures above are the checks, not the fake.
    let ok = fake(|s, id| {
        let _ = s.write_all(&response(id, &[&soa_rr(7)]));
        let _ = s.write_all(&response(id, &[&soa_rr(7)]));
    });
    let t = axfr::transfer(&config(vec![ok])).unwrap();
    assert_eq!(t.zone.serial(), 7);
    assert_eq!(t.messages, 2);

    // Idle timeout: a server that accepts and says nothing.
    let silent = fake(|_, _| std::thread::sleep(Duration::from_secs(3)));
    let mut c = config(vec![silent]);
    c.idle_timeout = Duration::from_millis(300);
    let start = Instant::now();
    let err = axfr::transfer_from(silent, &c).unwrap_err();
    assert!(matches!(err, ServerError::Read { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
}
