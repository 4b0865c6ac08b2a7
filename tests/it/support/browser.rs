//! A real headless Chromium driven over WebDriver (`fantoccini`): `chromedriver` is
//! spawned on an ephemeral port (it prints the one it took), Chromium runs with a fresh
//! profile directory and no background networking. Both come from the system (Debian
//! `chromium` and `chromium-driver`; `.ci/run` installs them); a missing one fails the
//! test — it never skips.

use fantoccini::{Client, ClientBuilder, Locator};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

pub struct Browser {
    pub c: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver and one Chromium session. Panics (fails the test) when either
    /// is not installed.
    pub async fn start() -> Browser {
        let chromium = on_path(&["chromium", "chromium-browser"]).expect(
            "Chromium is not installed (apt-get install chromium chromium-driver): the browser tests need it",
        );
        let driver_bin = on_path(&["chromedriver"]).expect(
            "chromedriver is not installed (apt-get install chromium-driver): the browser tests need it",
        );
        let mut driver = Command::new(driver_bin)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let out = driver.stdout.take().expect("chromedriver stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(p) = line
                    .rsplit_once("on port ")
                    .and_then(|(_, p)| p.trim_end_matches('.').trim().parse::<u16>().ok())
                    .filter(|p| *p != 0)
                {
                    let _ = tx.send(p);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("chromedriver did not say which port it listens on");
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
        conn.enforce_http(true);
        let c = ClientBuilder::new(conn)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session through chromedriver");
        Browser {
            c,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.c.goto(url).await.expect("navigate");
    }

    /// The page's visible text (read again while a navigation replaces the page).
    pub async fn text(&self) -> String {
        let mut last = None;
        for _ in 0..100 {
            match self.c.find(Locator::Css("body")).await {
                Ok(e) => match e.text().await {
                    Ok(t) => return t,
                    Err(err) => last = Some(err),
                },
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page's text could not be read: {last:?}")
    }

    pub async fn html(&self) -> String {
        self.c.source().await.expect("page source")
    }

    /// Waits (bounded) until the page's text contains `needle`; returns the text.
    pub async fn wait_text(&self, needle: &str, bound: Duration) -> String {
        let deadline = std::time::Instant::now() + bound;
        loop {
            let t = self.text().await;
            if t.contains(needle) {
                return t;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the page never showed {needle:?}; it shows:\n{t}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let e = self
            .c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        e.clear().await.ok();
        e.send_keys(value).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .expect("click");
    }

    pub async fn select(&self, css: &str, value: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .select_by_value(value)
            .await
            .expect("select");
    }

    pub async fn count(&self, css: &str) -> usize {
        self.c
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len())
    }

    pub async fn title(&self) -> String {
        self.c.title().await.expect("title")
    }

    /// Saves a PNG of the window: under the repository's `docs/` (the README's pictures)
    /// with `PORTCULLIS_UPDATE_SCREENSHOTS=1`, otherwise under the build's temp dir, so a
    /// plain test run leaves the working tree as it was.
    pub async fn screenshot(&self, name: &str) {
        let png = self.c.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = if std::env::var_os("PORTCULLIS_UPDATE_SCREENSHOTS").is_some() {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs")
        } else {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
        };
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let p = dir.join(name);
        std::fs::write(&p, png).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// Signs in on `/ui` with an operator token.
    pub async fn sign_in(&self, admin: std::net::SocketAddr, token: &str) {
        self.goto(&format!("http://{admin}/ui")).await;
        self.fill("#token", token).await;
        self.click("form[action='/ui/login'] button").await;
        self.wait_text("Sign out", Duration::from_secs(10)).await;
    }

    pub async fn sign_out(&self) {
        self.click("header form[action='/ui/logout'] button").await;
        self.wait_text("Operator token", Duration::from_secs(10))
            .await;
    }

    pub async fn close(self) {
        let _ = self.c.clone().close().await;
    }
}
