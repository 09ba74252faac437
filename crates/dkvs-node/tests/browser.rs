//! The gateway as a user's browser meets it: Debian's Chromium (headless, on loopback only),
//! driven by playwright-core, both installed by `.ci/browser` (the test runs it: a registry
//! out of reach fails it, loudly). `dkvs node` runs as a process, on its default configuration
//! but for a loopback listen address.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Reaped, dkvs, ok, repo, run_for};

const STEP: Duration = Duration::from_secs(120);

/// How long the browser's installation may take: `.ci/browser` bounds each of its steps
/// (apt, npm) within it, so that none is cut off halfway holding a lock.
const INSTALL: Duration = Duration::from_secs(1500);

/// Runs `command` to its end, at most [`STEP`].
fn run(command: Command) -> Output {
    run_for(command, STEP)
}

/// A node from `home`, on loopback; its API's URL.
fn start(home: &Path) -> (Reaped, String) {
    std::fs::create_dir_all(home).expect("home");
    let config = home.join("test-config.toml");
    std::fs::write(&config, "listen = [\"/ip4/127.0.0.1/tcp/0\"]\n").expect("config");
    let mut command = dkvs(home, &["node", "--api", "127.0.0.1:0", "--config"]);
    command.arg(&config);
    let log = std::fs::File::create(home.join("node.log")).expect("log");
    let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().expect("node starts");
    let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let child = Reaped(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("api: ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx.recv_timeout(STEP).expect("the node prints its API address");
    (child, url)
}

/// 30 s of a 440 Hz tone, 16-bit stereo at 44.1 kHz: a WAV file of 5.3 MB, six leaves.
fn tone() -> Vec<u8> {
    let (rate, seconds) = (44_100u32, 30u32);
    let samples = rate * seconds;
    let data_len = samples * 4;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&2u16.to_le_bytes()); // stereo
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 4).to_le_bytes());
    wav.extend_from_slice(&4u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..samples {
        let t = f64::from(i) / f64::from(rate);
        let v = (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16;
        wav.extend_from_slice(&v.to_le_bytes());
        wav.extend_from_slice(&v.to_le_bytes());
    }
    wav
}

/// Opens `url` in the browser (`what`: "sound", "page" or "click" with the link's text in
/// `more`, see play.mjs): what it reported.
fn browse(driver: &Path, what: &str, url: &str, more: &[&str]) -> serde_json::Value {
    let mut command = Command::new("node");
    command.arg(driver.join("play.mjs")).args([what, url]).args(more).current_dir(driver);
    let out = ok(run(command));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn a_browser_plays_and_seeks_a_sound_runs_no_script_of_a_page_and_opens_a_listed_file() {
    let driver = repo().join("target/browser");
    let installed = run_for(
        {
            let mut c = Command::new("bash");
            c.arg(repo().join(".ci/browser")).arg(&driver);
            c
        },
        INSTALL,
    );
    assert!(
        installed.status.success(),
        "the browser could not be installed (registry unreachable?):\n{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("node");
    ok(run(dkvs(&home, &["account", "new"])));
    let (_node, api) = start(&home);
    let add = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("file");
        let path = path.to_str().expect("utf-8").to_owned();
        ok(run(dkvs(&home, &["ipfs", "add", "--plain", &path]))).trim().to_owned()
    };
    let sound = tone();
    let cid = add("tone.wav", &sound);

    // The browser's own player: it asks for the sound, then for the part it seeks to.
    let played = browse(&driver, "sound", &format!("{api}/ipfs/{cid}?filename=tone.wav"), &[]);
    assert_eq!(played["error"], serde_json::Value::Null, "{played}");
    let time = played["time"].as_f64().unwrap_or_default();
    assert!((24.9..30.0).contains(&time), "the player is where it sought to: {played}");
    let responses = played["responses"].as_array().expect("responses");
    assert!(responses.iter().all(|r| r["status"] == 200 || r["status"] == 206), "{played}");
    let seek = responses.iter().find(|r| {
        r["range"].as_str().is_some_and(|range| range != "bytes=0-") && r["status"] == 206
    });
    assert!(seek.is_some(), "a part asked for past the start, and given: {played}");

    // A site, added as a directory: its page shows its image, loaded from the sandboxed
    // page, but runs no script of it (one its policy lets a page load); a page of another
    // root shows its image too.
    let tree = dir.path().join("root");
    std::fs::create_dir_all(tree.join("site")).expect("site");
    let page = b"<title>kept</title><script src=\"s.js\"></script>";
    for (name, bytes) in [
        ("site/pic.png", &PIXEL[..]),
        ("site/s.js", b"document.title = 'ran';"),
        ("site/index.html", b"<title>site</title><img src=\"pic.png\">"),
        ("site/page.html", page),
        ("a page.html", page),
    ] {
        std::fs::write(tree.join(name), bytes).expect("file");
    }
    let add_dir = |path: &std::path::Path| {
        let path = path.to_str().expect("utf-8");
        ok(run(dkvs(&home, &["ipfs", "add", "--plain", path]))).trim().to_owned()
    };
    let (root, site) = (add_dir(&tree), add_dir(&tree.join("site")));
    let other = format!("<title>other</title><img src=\"/ipfs/{site}/pic.png\">");
    let other = add("other.html", other.as_bytes());
    let shown = browse(&driver, "page", &format!("{api}/ipfs/{root}/site/"), &[]);
    assert_eq!(
        (&shown["title"], &shown["images"]),
        (&"site".into(), &serde_json::json!([1])),
        "{shown}"
    );
    let opened = browse(&driver, "page", &format!("{api}/ipfs/{root}/site/page.html"), &[]);
    assert_eq!(opened["title"], "kept", "{opened}");
    let elsewhere = browse(&driver, "page", &format!("{api}/ipfs/{other}?filename=o.html"), &[]);
    assert_eq!(elsewhere["images"], serde_json::json!([1]), "{elsewhere}");
    // The same page with scripts allowed shows the driver can tell: not served so, but as a
    // data: URL.
    let html = "<title>kept</title><script>document.title = 'ran'</script>";
    let allowed = browse(&driver, "page", &format!("data:text/html,{html}"), &[]);
    assert_eq!(allowed["title"], "ran", "{allowed}");
    // A listing: a click on an entry opens it, though the page is sandboxed.
    let clicked = browse(&driver, "click", &format!("{api}/ipfs/{root}"), &["a page.html"]);
    assert_eq!(clicked["status"], 200, "{clicked}");
    assert_eq!(clicked["url"], format!("{api}/ipfs/{root}/a%20page.html"), "{clicked}");

    // A dapp on another origin that holds the token writes and reads through the API; without
    // the token it reads nothing, not even the refusal, nor the metrics.
    let api_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("api.json")).expect("api.json"))
            .expect("json");
    let token = api_json["token"].as_str().expect("a token");
    let called = browse(&driver, "dapp", &api, &[token]);
    assert_eq!(called["put"], 200, "{called}");
    assert_eq!(
        (&called["got"]["status"], &called["got"]["value"], &called["got"]["seq"]),
        (&200.into(), &"hello from a dapp".into(), &"1".into()),
        "{called}"
    );
    for blocked in ["refused", "metrics"] {
        let said = called[blocked].as_str().unwrap_or_default();
        assert!(said.starts_with("blocked: "), "{blocked}: {called}");
    }
}

/// A PNG of one transparent pixel.
const PIXEL: [u8; 67] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];
