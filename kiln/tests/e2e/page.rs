//! What people look at. The status page in a real headless browser
//! (Debian's chromium, driven over its DevTools protocol), build progress as a
//! pipeline of several crates compiles, and `kiln cancel` of a long build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{
    Farm, KILN, Member, examples, manifest, processes_mentioning, test_farm, text, wait_until, write_program,
};
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use kiln_core::api::{PipelineRecord, Status};

const API_TOKEN: &str = "page-test-api-token-0123456789";
const FORM: &str = "application/x-www-form-urlencoded";

/// Runs a `kiln` client command against `farm` with the API token.
fn kiln(farm: &Farm, args: &[&str]) -> std::process::Output {
    Command::new(KILN)
        .args(args)
        .arg(format!("--leader={}", farm.url()))
        .env("KILN_API_TOKEN", API_TOKEN)
        .output()
        .unwrap()
}

/// A typed client of `farm`'s leader that sends the API token.
fn leader(farm: &Farm) -> kiln_testkit::Leader {
    kiln_testkit::Leader { api_token: Some(API_TOKEN.into()), ..farm.leader() }
}

/// Debian's chromium, which `scripts/install-deps` installs.
fn chromium() -> Browser {
    let path = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("chromium is installed (scripts/install-deps installs Debian's package)");
    let options = LaunchOptions::default_builder()
        .path(Some(path))
        .headless(true)
        // Its own sandbox needs user namespaces that a root test run does not have.
        .sandbox(false)
        .window_size(Some((1280, 900)))
        .idle_browser_timeout(Duration::from_secs(600))
        .args(vec![std::ffi::OsStr::new("--disable-dev-shm-usage")])
        .build()
        .unwrap();
    Browser::new(options).expect("chromium starts")
}

/// Evaluates `js` in the page; its value as JSON (null when undefined).
fn eval(tab: &Tab, js: &str) -> serde_json::Value {
    let result = tab.evaluate(js, false).unwrap_or_else(|e| panic!("evaluating {js}: {e}"));
    result.value.unwrap_or(serde_json::Value::Null)
}

/// Waits until `js` evaluates to `true` in the page (the page updates itself).
async fn wait_in_page(tab: &Tab, what: &str, js: &str, timeout: Duration) {
    wait_until(what, timeout, Duration::from_millis(200), || {
        let value = eval(tab, js);
        let shown = eval(
            tab,
            "document.getElementById('live') ? document.getElementById('live').innerText : document.body.innerText",
        );
        async move {
            if value == serde_json::Value::Bool(true) {
                Ok(())
            } else {
                Err(format!("{value}; the page shows:\n{shown}"))
            }
        }
    })
    .await
}

/// The page, in a real browser, behind the token; members and
/// pipelines with their statuses; a new submission appears without a reload; a
/// hostile build log is shown as text and runs nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_the_farm_live_and_only_to_token_holders() {
    let mut farm = test_farm(2);
    for ordinal in 0..2 {
        farm.start(Member { ordinal, workers: 2, extra: vec![format!("--api-token={API_TOKEN}")] });
    }
    farm.wait_healthy(Duration::from_secs(300)).await;
    let url = farm.url();
    let http = farm.http.clone();

    // Without the token: the sign-in form, no farm data, and neither a guessed
    // cookie nor the page's own session can change anything through the API.
    let page = http.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(page.status(), 401);
    let body = page.text().await.unwrap();
    assert!(body.contains("name=\"token\"") && !body.contains("Members"), "the sign-in form, nothing else: {body}");
    assert_eq!(http.get(format!("{url}/ui/live/farm")).send().await.unwrap().status(), 401);
    let forged =
        http.get(format!("{url}/v0/pipelines")).header("cookie", "kiln_session=0123abcd").send().await.unwrap();
    assert_eq!(forged.status(), 401, "a made-up session reads nothing");
    let wrong = http
        .post(format!("{url}/ui/login"))
        .header("content-type", FORM)
        .body("token=not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none(), "a wrong token gets no session");

    let examples_dirs: Vec<PathBuf> =
        ["hello", "wordfreq", "primes", "json-report"].iter().map(|n| examples().join(n)).collect();
    let mut args: Vec<&str> = vec!["submit"];
    args.extend(examples_dirs.iter().map(|d| d.to_str().unwrap()));
    args.extend(["--wait", "--timeout=5m"]);
    let submitted = kiln(&farm, &args);
    assert!(submitted.status.success(), "{}", text(&submitted));

    let browser = chromium();
    let tab = browser.new_tab().unwrap();
    tab.navigate_to(&format!("{url}/")).unwrap().wait_until_navigated().unwrap();
    assert_eq!(eval(&tab, "document.querySelectorAll('tr[data-ordinal]').length"), 0, "nothing before sign-in");
    // Signed in with the keyboard alone: the token field has the focus, Enter sends.
    assert_eq!(eval(&tab, "document.activeElement.id"), "token", "the token field has the focus");
    tab.type_str(API_TOKEN).unwrap().press_key("Enter").unwrap();
    wait_in_page(
        &tab,
        "the farm is shown after sign-in",
        "document.querySelectorAll('tr[data-ordinal]').length === 2",
        Duration::from_secs(30),
    )
    .await;
    let cookie = eval(&tab, "document.cookie");
    assert_eq!(cookie, "", "the session cookie is HttpOnly, out of the page's scripts' reach");

    for (ordinal, row) in
        [0, 1].iter().map(|o| (o, format!("document.querySelector('tr[data-ordinal=\"{o}\"]').innerText")))
    {
        let shown = eval(&tab, &row);
        assert!(shown.as_str().unwrap_or("").contains('✓'), "member {ordinal} is shown healthy: {shown}");
    }
    for name in ["hello", "wordfreq", "primes", "json-report"] {
        let status = eval(&tab, &format!("document.querySelector('tr[data-pipeline=\"{name}\"]').dataset.status"));
        assert_eq!(status, "success", "{name} is shown as built");
        let row = eval(&tab, &format!("document.querySelector('tr[data-pipeline=\"{name}\"]').innerText"));
        let record = leader(&farm).pipeline(name).await;
        let sha = record.binary_sha256.expect("a built pipeline has a binary");
        assert!(row.as_str().unwrap().contains(&sha[..12]), "{name}'s row shows its binary's SHA-256: {row}");
    }
    if let Ok(path) = std::env::var("KILN_PAGE_SCREENSHOT") {
        let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
        std::fs::write(path, png).unwrap();
    }

    // A new submission appears without a reload: the marker set now survives.
    eval(&tab, "window.kilnNoReload = 'still here'");
    let hostile_log = "<script>window.kilnPwned = 1</script><img src=x onerror=\"window.kilnPwned = 2\">";
    let hostile = write_program(
        farm.dir.path(),
        "hostile-log",
        &[
            ("Cargo.toml", &manifest("hostile-log", "")),
            ("src/main.rs", &format!("compile_error!({hostile_log:?});\nfn main() {{}}")),
        ],
    );
    let submitted = kiln(&farm, &["submit", hostile.to_str().unwrap()]);
    assert!(submitted.status.success(), "{}", text(&submitted));
    wait_in_page(
        &tab,
        "the new submission is shown, failed, without a reload",
        "(document.querySelector('tr[data-pipeline=\"hostile-log\"]') || {dataset: {}}).dataset.status === 'compile_error' \
         && window.kilnNoReload === 'still here'",
        Duration::from_secs(120),
    )
    .await;

    // Its page shows the log as text: the markup in it is not markup.
    tab.navigate_to(&format!("{url}/ui/pipelines/hostile-log")).unwrap().wait_until_navigated().unwrap();
    wait_in_page(&tab, "the pipeline's log is shown", "!!document.getElementById('log')", Duration::from_secs(30))
        .await;
    let log = eval(&tab, "document.getElementById('log').textContent");
    assert!(
        log.as_str().unwrap().contains("<script>window.kilnPwned = 1</script>"),
        "the log is shown as it is: {log}"
    );
    assert_eq!(eval(&tab, "document.querySelectorAll('#log *').length"), 0, "nothing in the log became an element");
    assert_eq!(eval(&tab, "typeof window.kilnPwned"), "undefined", "nothing in the log ran");

    // The cancel form carries a token of the page: a form from elsewhere is refused
    // even with the browser's session.
    // (Not following the redirect, to see the answer that sets the cookie.)
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let session = no_redirects
        .post(format!("{url}/ui/login"))
        .header("content-type", FORM)
        .body(format!("token={API_TOKEN}"))
        .send()
        .await
        .unwrap()
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .expect("a right token gets a session");
    assert!(!session.contains(API_TOKEN), "the cookie holds a digest, not the token");
    let forged = http
        .post(format!("{url}/ui/pipelines/hostile-log/cancel"))
        .header("cookie", &session)
        .header("content-type", FORM)
        .body("form=guessed")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let write = http.delete(format!("{url}/v0/pipelines/hello")).header("cookie", &session).send().await.unwrap();
    assert_eq!(write.status(), 401, "the session reads; only the token changes anything");
    let read = http.get(format!("{url}/v0/pipelines/hello/log")).header("cookie", &session).send().await.unwrap();
    assert_eq!(read.status(), 200, "the page's links to logs work with the session");
    // Hostile filters and keys: shown as text, or refused in words.
    let filtered = http
        .get(format!("{url}/?name=%3Cscript%3Ealert(1)%3C%2Fscript%3E&status=%22%3E%3Cb%3E"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(filtered.status(), 200);
    let body = filtered.text().await.unwrap();
    assert!(!body.contains("<script>alert") && body.contains("&lt;script&gt;alert(1)"), "escaped: {body}");
    let missing = http.get(format!("{url}/ui/pipelines/%3Cscript%3E")).bearer_auth(API_TOKEN).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let said = missing.text().await.unwrap();
    assert!(!said.contains("<script>") && said.contains("&lt;script&gt;"), "the key is named, as text: {said}");
    let still = leader(&farm).pipeline("hello").await;
    assert_eq!(still.status, Status::Success, "nothing was lost: {still:?}");
}

/// The directories under the build root's sources whose build script waits for a
/// `go` file beside it.
fn gated_crates(build_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(build_root.join("src")) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        for candidate in std::iter::once(dir.clone())
            .chain(std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()))
        {
            if std::fs::read_to_string(candidate.join("build.rs")).is_ok_and(|b| b.contains("KILN-GATE")) {
                found.push(candidate);
            }
        }
    }
    found
}

/// Opens the gate of the crate whose manifest names `package`.
fn open_gate(build_root: &Path, package: &str) -> bool {
    let mut opened = false;
    for dir in gated_crates(build_root) {
        if std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|m| m.contains(&format!("name = \"{package}\""))) {
            std::fs::write(dir.join("go"), "").unwrap();
            opened = true;
        }
    }
    opened
}

/// A build script that waits until the test opens its gate (a file `go` beside
/// it; the crate's sources are bind-mounted into the sandbox, so it sees it).
const GATE: &str = r#"// KILN-GATE
fn main() {
    let go = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("go");
    println!("cargo::rerun-if-changed=build.rs");
    for _ in 0..6000 {
        if go.exists() { return; }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
"#;

/// A pipeline of five crates reports 0/5, then 4/5 while its
/// last build script waits; `kiln cancel` ends that long build `cancelled` within
/// seconds and leaves no process; the same program submitted again builds.
#[tokio::test(flavor = "multi_thread")]
async fn progress_goes_from_zero_to_n_and_cancel_stops_a_long_build() {
    let mut farm = test_farm(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: vec![format!("--api-token={API_TOKEN}")] });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let leader = leader(&farm);
    let ops = ["op1", "op2", "op3"];
    let mut files: Vec<(String, String)> = vec![
        (
            "Cargo.toml".into(),
            manifest(
                "crates",
                "op0 = { path = \"op0\" }\nop1 = { path = \"op1\" }\nop2 = { path = \"op2\" }\nop3 = { path = \"op3\" }",
            ),
        ),
        ("build.rs".into(), GATE.into()),
        ("src/main.rs".into(), "fn main() { println!(\"{}\", op1::f() + op2::f() + op3::f() + op0::f()); }".into()),
        ("op0/Cargo.toml".into(), manifest("op0", "")),
        ("op0/build.rs".into(), GATE.into()),
        ("op0/src/lib.rs".into(), "pub fn f() -> u64 { 1 }".into()),
    ];
    for op in ops {
        files.push((format!("{op}/Cargo.toml"), manifest(op, "op0 = { path = \"../op0\" }")));
        files.push((format!("{op}/src/lib.rs"), "pub fn f() -> u64 { op0::f() + 1 }".into()));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let program = write_program(farm.dir.path(), "crates", &files);
    let submitted = kiln(&farm, &["submit", program.to_str().unwrap()]);
    assert!(submitted.status.success(), "{}", text(&submitted));

    // Nothing is done while op0's build script waits.
    let progress = |record: &PipelineRecord| record.progress.map(|p| (p.crates_done, p.crates_total));
    let mut seen = Vec::new();
    let first =
        wait_until("progress 0/5 is reported", Duration::from_secs(120), Duration::from_millis(100), || async {
            let record = leader.try_pipeline("crates").await?;
            match progress(&record) {
                Some(p) => Ok(p),
                None => Err(format!("{} with no progress yet", record.status)),
            }
        })
        .await;
    seen.push(first);
    assert_eq!(first, (0, 5), "five crates to build, none built while op0's build script waits");
    let status = kiln(&farm, &["status"]);
    assert!(text(&status).contains("0/5 crates"), "kiln status shows it: {}", text(&status));
    let metrics = farm.http.get(format!("{}/metrics", farm.url())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("kiln_build_crates_total{ordinal=\"0\"} 5"), "/metrics shows it:\n{metrics}");

    // The gate opens: op0..op3 build, and the program's own build script waits.
    let build_root = farm.build_root(0);
    assert!(open_gate(&build_root, "op0"), "op0's sources are under {}", build_root.display());
    let held = wait_until("progress 4/5 is reported", Duration::from_secs(120), Duration::from_millis(100), || async {
        let record = leader.try_pipeline("crates").await?;
        let now = progress(&record).ok_or_else(|| format!("{} with no progress", record.status))?;
        if now == (4, 5) { Ok(now) } else { Err(format!("{now:?}")) }
    })
    .await;
    seen.push(held);
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "progress only grows: {seen:?}");

    // Cancelled in flight: within seconds, and no process of the build is left.
    let cancelled = kiln(&farm, &["cancel", "crates"]);
    assert!(cancelled.status.success(), "{}", text(&cancelled));
    assert!(text(&cancelled).contains("cancelled"), "{}", text(&cancelled));
    let record = leader.wait_status("crates", &[Status::Cancelled], Duration::from_secs(30)).await;
    assert!(record.binary_sha256.is_none(), "a cancelled build has no binary");
    wait_until(
        "the cancelled build's processes are gone",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let left: Vec<_> = processes_mentioning(build_root.to_str().unwrap())
                .into_iter()
                .filter(|(_, cmd)| cmd.contains("build-script-build") || cmd.contains("rustc"))
                .collect();
            if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
        },
    )
    .await;
    let again = kiln(&farm, &["cancel", "crates"]);
    assert!(!again.status.success(), "a cancelled pipeline cannot be cancelled again");
    assert!(text(&again).contains("cancelled"), "and says why: {}", text(&again));

    // Submitted again, it builds; the farm kept working.
    let resubmitted = kiln(&farm, &["submit", program.to_str().unwrap()]);
    assert!(resubmitted.status.success(), "{}", text(&resubmitted));
    let built =
        wait_until("the resubmitted program builds", Duration::from_secs(180), Duration::from_millis(200), || async {
            open_gate(&build_root, "op0");
            open_gate(&build_root, "crates");
            let record = leader.try_pipeline("crates").await?;
            if record.status.finished() { Ok(record) } else { Err(record.status.to_string()) }
        })
        .await;
    assert_eq!(built.status, Status::Success, "{:?}", built.error);
}
