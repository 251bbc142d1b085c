//! The operators' fleet page in a real browser (issue 17): Debian's Chromium, headless, driven
//! through WebDriver (`chromedriver`, fantoccini). Without credentials the browser gets the
//! sign-in form and no fleet; signed in with the operators' token it sees one row per device
//! that matches the database (state, zone serial), follows a device's link to its page, and a
//! screenshot of the fleet page is kept in `target/artefacts/fleet-page.png` for CI.
//!
//! The receiver's certificate comes from the test's own CA, which the browser does not know:
//! the session accepts it (`acceptInsecureCerts`, WebDriver's capability for test
//! certificates); TLS itself is the receiver's, exercised by every other test here.

use fantoccini::Locator;

use super::chrome::{self, driver, save_artefact, sign_in, text_of};
use super::client::{agent, pki, post};
use super::{OPEN, Serve, heartbeat, sample};
use imrs_build::home::store;
use imrs_config::keys;
use imrs_config::report;

const TOKEN: &str = "browser-operators-token-0123456789abcdefghij";

#[test]
fn the_fleet_page_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki(d);
    let Some(driver) = driver(d) else {
        return;
    };
    let token = d.join("operators.token");
    std::fs::write(&token, TOKEN).unwrap();
    let db = d.join("home.sqlite");
    let mut flags: Vec<&str> = OPEN.to_vec();
    flags.extend(["--operator-token", token.to_str().unwrap()]);
    let serve = Serve::start(d, &db, &flags);
    let agent = agent(&ca);
    let now = jiff::Timestamp::now().as_second();
    // A live box on 2026073102 with both sessions up; a second one, one serial behind.
    for (serial, zone, instance) in [
        ("SN-WEB-1", 2026073102, "xx-lab-01.l.root-servers.org"),
        ("SN-WEB-2", 2026073101, "xx-lab-02.l.root-servers.org"),
    ] {
        let k = keys::generate().unwrap();
        let mut r = sample(serial);
        r.created_unix = now;
        r.site.instance = instance.into();
        let hb = heartbeat(&r, zone, false, true);
        for rep in [r, hb] {
            let (s, _) = post(&agent, &serve.url, &report::sign(&rep, &k).to_json());
            assert_eq!(s, 201);
        }
    }
    let fleet = store::fleet(&db, 0).unwrap();
    let base = format!("https://{}", serve.addr);

    let rt = chrome::runtime();
    let shot = rt.block_on(async {
        let c = driver.session(d).await;

        // No credentials: the sign-in form, no fleet.
        c.goto(&format!("{base}/fleet")).await.unwrap();
        assert_eq!(c.title().await.unwrap(), "IMRS fleet: sign in");
        assert!(
            c.find(Locator::Id("fleet")).await.is_err(),
            "no table before signing in"
        );
        let source = c.source().await.unwrap();
        assert!(!source.contains("SN-WEB-1"), "{source}");

        // A wrong token, then the right one.
        sign_in(&c, "not-the-token").await;
        assert_eq!(text_of(&c, "error").await, "Wrong token.");
        sign_in(&c, TOKEN).await;
        assert_eq!(c.current_url().await.unwrap().path(), "/fleet");
        assert_eq!(c.title().await.unwrap(), "IMRS fleet");

        // One row per device, as the database has them.
        let rows = c.find_all(Locator::Css("#fleet tbody tr")).await.unwrap();
        assert_eq!(rows.len(), fleet.devices.len());
        for row in &rows {
            let key = row.attr("data-device").await.unwrap().unwrap();
            let d = fleet
                .devices
                .iter()
                .find(|d| d.device == key)
                .expect("a known device");
            let zone = row
                .find(Locator::Css("td.zone"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(zone, d.zone_serial.unwrap().to_string());
            let state = row.attr("class").await.unwrap().unwrap();
            let want = if d.serial == "SN-WEB-1" {
                "live"
            } else {
                "lagging"
            };
            assert_eq!(state, want, "{key}");
        }
        let png = c.screenshot().await.unwrap();

        // The live device's link: its page.
        let live = fleet
            .devices
            .iter()
            .find(|d| d.serial == "SN-WEB-1")
            .unwrap();
        c.find(Locator::Css(&format!(
            "a[href=\"/fleet/device/{}\"]",
            live.device
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
        assert_eq!(
            c.current_url().await.unwrap().path(),
            format!("/fleet/device/{}", live.device)
        );
        assert_eq!(text_of(&c, "state").await, "live");
        let events = c
            .find_all(Locator::Css("#timeline tbody tr"))
            .await
            .unwrap();
        assert_eq!(events.len(), 2, "install-passed and one heartbeat");
        c.close().await.unwrap();
        png
    });
    save_artefact("fleet-page.png", &shot);
    drop(serve);
}
