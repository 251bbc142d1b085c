//! The operators' pages of `home serve` (issue 17) over HTTPS as operators and strangers meet
//! them: refused without the token, the fleet table and a device's page with it (bearer or the
//! login's session cookie), `/metrics`, `/healthz`; HTML sent in a site name and a failure
//! reason comes back as text; forged device ids get the same 404; a receiver started without
//! `--operator-token` serves none of it; a weak token file stops the start, named.

use std::path::Path;

use super::client::{agent, pki, post};
use super::{OPEN, Serve, heartbeat, refused_start, sample};
use imrs_config::keys;
use imrs_config::report::{self, Event, ReportId};

const TOKEN: &str = "lab-operators-token-0123456789abcdefghij";

/// GET with optional `Authorization` and `Cookie`: status, headers' `set-cookie`, body.
fn get(
    agent: &ureq::Agent,
    url: &str,
    bearer: Option<&str>,
    cookie: Option<&str>,
) -> (u16, String) {
    let mut req = agent.get(url);
    if let Some(t) = bearer {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

fn start(dir: &Path, db: &Path) -> Serve {
    let token = dir.join("operators.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut flags: Vec<&str> = OPEN.to_vec();
    flags.extend([
        "--operator-token",
        token.to_str().unwrap(),
        "--stale-after",
        "3600",
    ]);
    Serve::start(dir, db, &flags)
}

#[test]
fn operators_see_the_fleet_strangers_see_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let serve = start(dir.path(), &db);
    let agent = agent(&ca);
    let base = format!("https://{}", serve.addr);
    // Reports carry the receiver's time of arrival; created times only need to be plausible.
    let now = jiff::Timestamp::now().as_second();

    // A: installed, then a heartbeat: live on the newest serial, both sessions up.
    let (ka, kb, kc) = (
        keys::generate().unwrap(),
        keys::generate().unwrap(),
        keys::generate().unwrap(),
    );
    let mut a = sample("SN-A");
    a.created_unix = now;
    a.site.instance = "xx-lab-01.l.root-servers.org".into();
    for r in [a.clone(), heartbeat(&a, 2026073102, false, true)] {
        let (s, _) = post(&agent, &serve.url, &report::sign(&r, &ka).to_json());
        assert_eq!(s, 201);
    }
    // B: an installation that failed, with HTML in its site and reason.
    let mut b = sample("SN-B");
    b.created_unix = now;
    b.site.site_id = "<img src=x onerror=alert(1)>".into();
    b.site.instance = "xx-lab-02.l.root-servers.org".into();
    b.event = Event::InstallFailed {
        stage: imrs_config::stage::Stage::Zone,
        reason: "</td><script>alert('owned')</script>".into(),
    };
    let (s, _) = post(&agent, &serve.url, &report::sign(&b, &kb).to_json());
    assert_eq!(s, 201);
    // C: drained and one serial behind.
    let mut c = sample("SN-C");
    c.created_unix = now;
    c.site.instance = "xx-lab-03.l.root-servers.org".into();
    let (s, _) = post(
        &agent,
        &serve.url,
        &report::sign(&heartbeat(&c, 2026073101, true, true), &kc).to_json(),
    );
    assert_eq!(s, 201);
    // A's telemetry for a finished day: 100 queries per second over UDP IPv4, a tenth of
    // them answered NXDOMAIN.
    let mut metrics = imrs_config::rssac002::DayMetrics::default();
    metrics.udp_queries[0] = 8_640_000;
    metrics.rcodes.insert(0, 7_776_000);
    metrics.rcodes.insert(3, 864_000);
    let mut t = a.clone();
    t.id = ReportId::random().unwrap();
    t.event = Event::Telemetry {
        day: "2026-11-27".into(),
        complete: true,
        metrics: Box::new(metrics),
    };
    let (s, body) = post(&agent, &serve.url, &report::sign(&t, &ka).to_json());
    assert_eq!(s, 201, "{body}");
    let (ida, idc) = (
        keys::key_id(&ka.verifying_key()),
        keys::key_id(&kc.verifying_key()),
    );

    // Strangers: a login form and nothing about the fleet.
    for path in ["/fleet", "/", &format!("/fleet/device/{ida}")] {
        let (s, body) = get(&agent, &format!("{base}{path}"), None, None);
        assert_eq!(s, 401, "{path}");
        assert!(body.contains("name=\"token\""), "{path}: {body}");
        assert!(
            !body.contains(&ida) && !body.contains("SN-A"),
            "{path}: {body}"
        );
    }
    let (s, body) = get(&agent, &format!("{base}/fleet"), Some("wrong-token"), None);
    assert_eq!(s, 401, "{body}");
    let (s, body) = get(&agent, &format!("{base}/metrics"), None, None);
    assert_eq!(s, 401, "{body}");
    assert!(!body.contains("imrs_fleet"), "{body}");
    let (s, body) = get(&agent, &format!("{base}/healthz"), None, None);
    assert_eq!((s, body.as_str()), (200, "ok\n"));

    // Operators: the fleet, troubled first, every device in the state it reported.
    let (s, page) = get(&agent, &format!("{base}/fleet"), Some(TOKEN), None);
    assert_eq!(s, 200, "{page}");
    let row = |key: &str| {
        page.lines()
            .find(|l| l.contains(&format!("data-device=\"{key}\"")))
            .unwrap_or_else(|| panic!("no row for {key} in\n{page}"))
            .to_string()
    };
    let ra = row(&ida);
    assert!(ra.starts_with("<tr class=\"live\""), "{ra}");
    assert!(
        ra.contains("<td class=\"n zone\">2026073102</td>") && ra.contains(">2/2<"),
        "{ra}"
    );
    let rc = row(&idc);
    assert!(rc.starts_with("<tr class=\"drained\""), "{rc}");
    let idb = keys::key_id(&kb.verifying_key());
    let rb = row(&idb);
    assert!(rb.starts_with("<tr class=\"failed\""), "{rb}");
    assert!(
        page.find(&format!("data-device=\"{idb}\"")) < page.find(&format!("data-device=\"{ida}\"")),
        "failed before live"
    );
    // The injected markup is text.
    assert!(
        !page.contains("<script>") && !page.contains("<img"),
        "{page}"
    );
    assert!(rb.contains("&lt;img src=x onerror=alert(1)&gt;"), "{rb}");
    assert!(
        rb.contains("&lt;/td&gt;&lt;script&gt;alert(&#39;owned&#39;)"),
        "{rb}"
    );
    assert!(page.contains("id=\"count-live\">live: 1<"), "{page}");

    // A device's page: its timeline and nothing of the others.
    let (s, dpage) = get(
        &agent,
        &format!("{base}/fleet/device/{ida}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(s, 200, "{dpage}");
    assert!(dpage.contains("<tr class=\"ev-heartbeat\">"), "{dpage}");
    assert!(
        dpage.contains("<tr class=\"ev-install-passed\">"),
        "{dpage}"
    );
    assert!(dpage.contains("id=\"state\">live<"), "{dpage}");
    assert!(
        dpage.contains("<title>2026-11-27 UDP IPv4: 100 q/s</title>")
            && dpage.contains("<title>2026-11-27 NXDOMAIN: 10.0 q/s</title>"),
        "{dpage}"
    );
    let (s, traffic) = get(&agent, &format!("{base}/fleet/traffic"), Some(TOKEN), None);
    assert_eq!(s, 200);
    assert!(
        traffic.contains("<title>2026-11-27 UDP IPv4: 100 q/s</title>"),
        "{traffic}"
    );
    let (s, _) = get(&agent, &format!("{base}/fleet/traffic"), None, None);
    assert_eq!(s, 401);
    assert!(!dpage.contains(&idc) && !dpage.contains("SN-C"), "{dpage}");
    // Forged ids: one 404 for all, naming nothing.
    for forged in [
        "ffffffffffffffff".to_string(),
        format!("{ida}00"),
        "..%2f..%2fetc%2fpasswd".into(),
        "%3Cscript%3E".into(),
        format!("{ida}'%20OR%20'1'='1"),
    ] {
        let (s, body) = get(
            &agent,
            &format!("{base}/fleet/device/{forged}"),
            Some(TOKEN),
            None,
        );
        assert_eq!(s, 404, "{forged}: {body}");
        assert!(
            !body.contains(&ida) && !body.contains("script>"),
            "{forged}: {body}"
        );
    }

    // The login form: a wrong token is refused, the right one opens a session.
    let login = |token: &str| {
        let mut resp = agent
            .post(&format!("{base}/login"))
            .config()
            .max_redirects(0)
            .build()
            .content_type("application/x-www-form-urlencoded")
            .send(format!("token={token}").as_bytes())
            .unwrap();
        let cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let _ = resp.body_mut().read_to_string();
        (resp.status().as_u16(), cookie, location)
    };
    let (s, cookie, _) = login("nope");
    assert_eq!((s, cookie), (401, None));
    let (s, cookie, location) = login(TOKEN);
    assert_eq!((s, location.as_deref()), (303, Some("/fleet")));
    let cookie = cookie.expect("a session cookie");
    assert!(
        cookie.contains("Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let (s, again) = get(&agent, &format!("{base}/fleet"), None, Some(session));
    assert_eq!(s, 200);
    assert!(again.contains(&ida), "{again}");

    // Metrics.
    let (s, m) = get(&agent, &format!("{base}/metrics"), Some(TOKEN), None);
    assert_eq!(s, 200, "{m}");
    for line in [
        "imrs_fleet_devices{state=\"live\"} 1",
        "imrs_fleet_devices{state=\"failed\"} 1",
        "imrs_fleet_devices{state=\"drained\"} 1",
        "imrs_home_reports_total{outcome=\"stored\"} 5",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
    assert!(
        m.lines().any(
            |l| l.starts_with(&format!("imrs_fleet_serial_lag{{device=\"{idc}\""))
                && l.ends_with(" 1")
        ),
        "{m}"
    );
    drop(serve);
}

#[test]
fn without_a_token_file_the_pages_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let serve = Serve::start(dir.path(), &db, OPEN);
    let agent = agent(&ca);
    let base = format!("https://{}", serve.addr);
    for path in ["/fleet", "/metrics", "/login"] {
        let (s, body) = get(&agent, &format!("{base}{path}"), Some(TOKEN), None);
        assert_eq!(s, 405, "{path}: {body}");
    }
    let (s, _) = get(&agent, &format!("{base}/healthz"), None, None);
    assert_eq!(s, 200);
}

#[test]
fn a_weak_or_missing_token_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let weak = dir.path().join("weak.token");
    std::fs::write(&weak, "letmein\n").unwrap();
    for (file, says) in [
        (weak.clone(), "7 bytes"),
        (dir.path().join("absent.token"), "cannot read"),
    ] {
        let err = refused_start(dir.path(), &["--operator-token", file.to_str().unwrap()]);
        assert!(
            err.contains(file.to_str().unwrap()) && err.contains(says),
            "{err}"
        );
    }
}
