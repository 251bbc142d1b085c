//! Headless Chromium for the tests that look at the operators' pages (issue 17): Debian's
//! `chromium` driven through WebDriver (`chromedriver` on a loopback port, fantoccini), a
//! session that accepts the receiver's test certificate (`acceptInsecureCerts`, WebDriver's
//! capability for test certificates: the test CAs are not in the browser's store), signing in
//! with the operators' token, and screenshots kept under `target/artefacts/` for CI.
//! Included by path by the tests that need it (`home`, `lab`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A free TCP port on 127.0.0.1 (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to `secs` for something to listen on loopback `port`.
pub fn wait_listening(port: u16, what: &str, secs: u64) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what} never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// chromedriver, killed when dropped.
pub struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free loopback port (its log in `dir`), or `None` (a skip outside CI) when
/// Chromium or chromedriver is missing.
pub fn driver(dir: &Path) -> Option<Driver> {
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

impl Driver {
    /// A headless browser session (profile in `dir/chromium-profile`) that accepts the
    /// receiver's test certificate.
    pub async fn session(&self, dir: &Path) -> Client {
        let profile = dir.join("chromium-profile");
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
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

/// Types `token` into the sign-in form and sends it.
pub async fn sign_in(c: &Client, token: &str) {
    let field = c.find(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The text of the element with id `id`.
pub async fn text_of(c: &Client, id: &str) -> String {
    c.find(Locator::Id(id)).await.unwrap().text().await.unwrap()
}

/// Keeps a PNG screenshot as `target/artefacts/NAME` (CI keeps the folder); returns its path.
pub fn save_artefact(name: &str, png: &[u8]) -> PathBuf {
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let out = target.join("artefacts");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    path
}

/// A tokio runtime for the WebDriver client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
