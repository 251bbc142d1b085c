//! The operators' fleet page in a real browser (issue 17): Debian's Chromium, headless, driven
//! through WebDriver (`chromedriver`, fantoccini). Without credentials the browser gets the
//! sign-in form and no fleet; signed in with the operators' token it sees one row per device
//! that matches the database (state, zone serial), follows a device's link to its page, and a
//! screenshot of the fleet page is kept in `target/artefacts/fleet-page.png` for CI.
//!
//! The receiver's certificate comes from the test's own CA, which the browser does not know:
//! the session accepts it (`acceptInsecureCerts`, WebDriver's capability for test
//! certificates); TLS itself is the receiver's, exercised by every other test here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fantoccini::{ClientBuilder, Locator};

use super::client::{agent, pki, post};
use super::{OPEN, Serve, free_port, heartbeat, sample, wait_listening};
use imrs_build::home::store;
use imrs_config::keys;
use imrs_config::report;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "browser-operators-token-0123456789abcdefghij";

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free loopback port, or `None` (a skip outside CI) when it is missing.
fn driver(dir: &Path) -> Option<Driver> {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs {CHROMIUM} and {CHROMEDRIVER} (chromium, chromium-driver)"
        );
        eprintln!(
            "skip: needs {CHROMIUM} and {CHROMEDRIVER} (apt install chromium chromium-driver)"
        );
        return None;
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg(format!(
            "--log-path={}",
            dir.join("chromedriver.log").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port, "chromedriver", 30);
    Some(Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

fn artefacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("artefacts")
}

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
    let profile = d.join("chromium-profile");

    let rt = super::runtime();
    let shot = rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert("acceptInsecureCerts".into(), true.into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1600,900",
                         format!("--user-data-dir={}", profile.display())]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a WebDriver session");

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
        let sign_in = |token: &'static str| {
            let c = c.clone();
            async move {
                let field = c.find(Locator::Id("token")).await.unwrap();
                field.send_keys(token).await.unwrap();
                c.find(Locator::Id("sign-in"))
                    .await
                    .unwrap()
                    .click()
                    .await
                    .unwrap();
            }
        };
        sign_in("not-the-token").await;
        let err = c.find(Locator::Id("error")).await.unwrap();
        assert_eq!(err.text().await.unwrap(), "Wrong token.");
        sign_in(TOKEN).await;
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
        let state = c
            .find(Locator::Id("state"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(state, "live");
        let events = c
            .find_all(Locator::Css("#timeline tbody tr"))
            .await
            .unwrap();
        assert_eq!(events.len(), 2, "install-passed and one heartbeat");
        c.close().await.unwrap();
        png
    });
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    let out = artefacts();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("fleet-page.png"), &shot).unwrap();
    eprintln!("screenshot: {}", out.join("fleet-page.png").display());
    drop(serve);
}
