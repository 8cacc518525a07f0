//! Issue 12: real package clients through Larder against loopback origins that look like
//! their registries, each run twice: the second run is served from the cache (the origin
//! sees no new request for what was already fetched). HTTPS goes through CONNECT with
//! interception, the clients trusting Larder's CA (`larder ca-cert`'s file).
//!
//! Needs python3 with pip, npm and node with undici in `tests/clients/node_modules`, and
//! apt-get with dpkg-deb: `scripts/test.sh` installs them.

use bytes::Bytes;
use larder_tests::{Origin, Reply, peer, pki};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("larder-client-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a client to completion off the runtime; panics with its output when it fails.
async fn run(mut cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{shown}: {e} (scripts/test.sh installs the clients)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown} failed:\n{text}");
    text
}

/// A client command that sees none of this machine's proxy, CA and package-index settings,
/// only what the test gives it.
fn client(program: &str) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars() {
        let upper = k.to_ascii_uppercase();
        let foreign = upper.starts_with("PIP_")
            || upper.starts_with("NPM_CONFIG_")
            || upper.contains("PROXY")
            || upper.contains("CA_BUNDLE")
            || upper.contains("CA_CERTS")
            || upper.starts_with("SSL_CERT");
        if foreign {
            c.env_remove(k);
        }
    }
    c.env("PIP_CONFIG_FILE", "/dev/null");
    c
}

/// How many requests for paths ending in `suffix` reached the origin.
fn fetched(origin: &Origin, suffix: &str) -> usize {
    origin
        .seen()
        .iter()
        .filter(|s| s.uri.ends_with(suffix))
        .count()
}

fn sh(script: &str, dir: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).current_dir(dir);
    c
}

/// An HTTPS origin, a CA file for it, and an intercepting peer trusting it.
struct Setup {
    origin: Origin,
    peer: larder_peer::Running,
    larder_ca: PathBuf,
    dir: PathBuf,
}

async fn setup(
    name: &str,
    presets: &[&str],
    handler: impl Fn(&larder_tests::Seen, usize) -> Reply + Send + Sync + 'static,
) -> Setup {
    let dir = temp_dir(name);
    let pki = pki();
    let origin = Origin::start_tls(pki.server.clone(), handler).await;
    let origin_ca = dir.join("origin-ca.pem");
    std::fs::write(&origin_ca, &pki.ca_pem).unwrap();
    let data = dir.join("larder");
    let presets: Vec<String> = presets.iter().map(|s| s.to_string()).collect();
    let peer = {
        let (data, origin_ca, port) = (data.clone(), origin_ca.clone(), origin.addr.port());
        peer(move |a| {
            a.connect_port = vec![port];
            a.intercept_host = vec!["localhost".into()];
            a.data_dir = Some(data.clone());
            a.ca_file = vec![origin_ca.clone()];
            a.preset = presets.clone();
        })
        .await
    };
    Setup {
        origin,
        peer,
        larder_ca: data.join("ca.pem"),
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_download_twice_the_second_from_cache() {
    // A real wheel, made by Python itself.
    let work = temp_dir("wheel");
    let made = run(sh(
        r#"python3 - <<'PY'
import hashlib, zipfile
name = "demo_pkg-1.0-py3-none-any.whl"
files = {
    "demo_pkg/__init__.py": "VALUE = 1\n",
    "demo_pkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
    "demo_pkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: larder-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = "".join(f"{p},,\n" for p in files) + "demo_pkg-1.0.dist-info/RECORD,,\n"
files["demo_pkg-1.0.dist-info/RECORD"] = record
with zipfile.ZipFile(name, "w") as z:
    for p, text in files.items():
        z.writestr(p, text)
print(hashlib.sha256(open(name, "rb").read()).hexdigest())
PY"#,
        &work,
    ))
    .await;
    let sha = made.trim().to_owned();
    let wheel = Bytes::from(std::fs::read(work.join("demo_pkg-1.0-py3-none-any.whl")).unwrap());
    let index = format!(
        "<!DOCTYPE html><html><body>\
         <a href=\"../../packages/ab/cd/demo_pkg-1.0-py3-none-any.whl#sha256={sha}\">demo_pkg-1.0-py3-none-any.whl</a>\
         </body></html>"
    );
    let s = setup("pip", &["pypi"], move |seen, _| {
        if seen.uri.starts_with("/simple/demo-pkg") {
            Reply::ok(
                index.clone(),
                &[
                    ("content-type", "text/html"),
                    ("cache-control", "max-age=600"),
                ],
            )
        } else if seen.uri.ends_with(".whl") {
            // As archives serve them: no freshness, no validator.
            Reply::ok(
                wheel.clone(),
                &[("content-type", "application/octet-stream")],
            )
        } else {
            Reply::ok("not here", &[]).status(404)
        }
    })
    .await;
    let index_url = format!("https://localhost:{}/simple/", s.origin.addr.port());
    for round in 0..2 {
        let dest = s.dir.join(format!("dl{round}"));
        let mut c = client("python3");
        c.args([
            "-m",
            "pip",
            "download",
            "demo-pkg==1.0",
            "--no-deps",
            "--no-cache-dir",
        ])
        .args(["--disable-pip-version-check", "--index-url", &index_url])
        .args(["--proxy", &format!("http://{}", s.peer.addr)])
        .arg("--cert")
        .arg(&s.larder_ca)
        .arg("-d")
        .arg(&dest);
        run(c).await;
        assert!(dest.join("demo_pkg-1.0-py3-none-any.whl").exists());
        // pip asks for index pages with `max-age=0` (revalidated every run, as it should);
        // the wheel (no freshness, no validator at the origin) comes from the cache.
        assert_eq!(fetched(&s.origin, ".whl"), 1, "round {round}");
    }
    std::fs::remove_dir_all(&work).ok();
    std::fs::remove_dir_all(&s.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_pack_twice_the_second_from_cache() {
    let work = temp_dir("tgz");
    let made = run(sh(
        r#"mkdir -p package && printf '{"name":"demo-pkg","version":"1.0.0"}' > package/package.json \
           && tar czf demo-pkg-1.0.0.tgz package && python3 - <<'PY'
import base64, hashlib
b = open("demo-pkg-1.0.0.tgz", "rb").read()
print(hashlib.sha1(b).hexdigest(), "sha512-" + base64.b64encode(hashlib.sha512(b).digest()).decode())
PY"#,
        &work,
    ))
    .await;
    let mut sums = made.split_whitespace();
    let (sha1, integrity) = (
        sums.next().unwrap().to_owned(),
        sums.next().unwrap().to_owned(),
    );
    let tgz = Bytes::from(std::fs::read(work.join("demo-pkg-1.0.0.tgz")).unwrap());
    let port = Arc::new(std::sync::atomic::AtomicU16::new(0));
    let p2 = port.clone();
    let s = setup("npm", &["npm"], move |seen, _| {
        let port = p2.load(std::sync::atomic::Ordering::SeqCst);
        if seen.uri == "/demo-pkg" {
            let doc = format!(
                r#"{{"name":"demo-pkg","dist-tags":{{"latest":"1.0.0"}},"versions":{{"1.0.0":{{"name":"demo-pkg","version":"1.0.0","dist":{{"tarball":"https://localhost:{port}/demo-pkg/-/demo-pkg-1.0.0.tgz","shasum":"{sha1}","integrity":"{integrity}"}}}}}}}}"#
            );
            Reply::ok(
                doc,
                &[("content-type", "application/json"), ("cache-control", "max-age=300")],
            )
        } else if seen.uri.ends_with(".tgz") {
            Reply::ok(tgz.clone(), &[("content-type", "application/octet-stream")])
        } else {
            Reply::ok("{}", &[]).status(404)
        }
    })
    .await;
    port.store(s.origin.addr.port(), std::sync::atomic::Ordering::SeqCst);
    let registry = format!("https://localhost:{}/", s.origin.addr.port());
    let proxy = format!("http://{}", s.peer.addr);
    let npmrc = s.dir.join("npmrc");
    std::fs::write(&npmrc, "").unwrap();
    for round in 0..2 {
        let dest = s.dir.join(format!("pack{round}"));
        std::fs::create_dir_all(&dest).unwrap();
        let mut c = client("npm");
        c.args(["pack", "demo-pkg@1.0.0", "--registry", &registry])
            .args(["--proxy", &proxy, "--https-proxy", &proxy])
            .arg("--cafile")
            .arg(&s.larder_ca)
            .arg("--userconfig")
            .arg(&npmrc)
            // A fresh npm cache each run: npm's own cache must not answer for Larder.
            .arg("--cache")
            .arg(s.dir.join(format!("npm-cache{round}")))
            .args(["--no-audit", "--no-fund", "--loglevel", "warn"])
            .current_dir(&dest);
        run(c).await;
        assert!(dest.join("demo-pkg-1.0.0.tgz").exists(), "round {round}");
        assert_eq!(fetched(&s.origin, ".tgz"), 1, "round {round}");
        assert_eq!(
            fetched(&s.origin, "/demo-pkg"),
            1,
            "round {round}: metadata from cache"
        );
    }
    std::fs::remove_dir_all(&work).ok();
    std::fs::remove_dir_all(&s.dir).ok();
}

/// Node's undici `ProxyAgent` tunnels every request with CONNECT, `http://` ones too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undici_proxy_agent_for_http_and_https() {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/node_modules");
    assert!(
        modules.join("undici").exists(),
        "undici missing in {}: scripts/test.sh installs it",
        modules.display()
    );
    let s = setup("undici", &[], |_, _| {
        Reply::ok("over https", &[("cache-control", "max-age=60")])
    })
    .await;
    let plain =
        Origin::start(|_, _| Reply::ok("over http", &[("cache-control", "max-age=60")])).await;
    // Plain http:// through a tunnel to a non-default port needs that port opened too.
    let p2 = {
        let (data, port, hport) = (
            s.dir.join("larder"),
            s.origin.addr.port(),
            plain.addr.port(),
        );
        let origin_ca = s.dir.join("origin-ca.pem");
        peer(move |a| {
            a.connect_port = vec![port, hport];
            a.intercept_host = vec!["localhost".into()];
            a.data_dir = Some(data.clone());
            a.ca_file = vec![origin_ca.clone()];
        })
        .await
    };
    let script = r#"
const { ProxyAgent, request } = require('undici');
const fs = require('fs');
const [proxy, ca, ...urls] = process.argv.slice(1);
const agent = new ProxyAgent({ uri: proxy, requestTls: { ca: fs.readFileSync(ca) } });
(async () => {
  for (const url of urls) {
    const r = await request(url, { dispatcher: agent });
    const body = await r.body.text();
    console.log(`${r.statusCode} ${r.headers['cache-status']} ${body}`);
  }
  await agent.close();
})().catch((e) => { console.error(e); process.exit(1); });
"#;
    let https = format!("https://localhost:{}/a", s.origin.addr.port());
    let http = format!("http://127.0.0.1:{}/b", plain.addr.port());
    let mut c = client("node");
    c.arg("-e")
        .arg(script)
        .arg(format!("http://{}", p2.addr))
        .arg(&s.larder_ca)
        .args([&https, &http, &https, &http])
        .env("NODE_PATH", &modules);
    let out = run(c).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with("200 ") && lines[0].ends_with("over https"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("200 ") && lines[1].ends_with("over http"),
        "{out}"
    );
    assert!(
        lines[2].contains("; hit") && lines[3].contains("; hit"),
        "{out}"
    );
    assert_eq!((s.origin.hits(), plain.hits()), (1, 1));
    std::fs::remove_dir_all(&s.dir).ok();
}

/// apt against a local archive through the forward door (`Acquire::http::Proxy`), with the
/// `debian` preset: the second `apt-get download` gets the `.deb` from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_get_download_twice_the_second_from_cache() {
    let root = temp_dir("apt");
    let archive = root.join("www");
    let arch = run(sh("dpkg --print-architecture", &root))
        .await
        .trim()
        .to_owned();
    // A real package, a Packages index and a Release file listing it (unsigned: the source
    // is marked trusted, as for any local archive).
    run(sh(
        &format!(
            r#"set -e
mkdir -p pkg/DEBIAN pkg/usr/share/doc/larder-demo www/debian/pool/main/l/larder-demo \
         www/debian/dists/stable/main/binary-{arch}
printf 'Package: larder-demo\nVersion: 1.0\nArchitecture: all\nMaintainer: Larder <l@example.invalid>\nDescription: a test package\n' > pkg/DEBIAN/control
echo demo > pkg/usr/share/doc/larder-demo/README
dpkg-deb --build -Zgzip pkg www/debian/pool/main/l/larder-demo/larder-demo_1.0_all.deb >/dev/null
python3 - <<'PY'
import hashlib, os
deb = "debian/pool/main/l/larder-demo/larder-demo_1.0_all.deb"
b = open("www/" + deb, "rb").read()
pk = ("Package: larder-demo\nVersion: 1.0\nArchitecture: all\n"
      "Maintainer: Larder <l@example.invalid>\nDescription: a test package\n"
      f"Filename: pool/main/l/larder-demo/larder-demo_1.0_all.deb\nSize: {{len(b)}}\n"
      f"SHA256: {{hashlib.sha256(b).hexdigest()}}\n\n")
rel = "main/binary-{arch}/Packages"
open("www/debian/dists/stable/" + rel, "w").write(pk)
pkb = pk.encode()
open("www/debian/dists/stable/Release", "w").write(
    "Suite: stable\nCodename: stable\nArchitectures: {arch} all\nComponents: main\n"
    f"SHA256:\n {{hashlib.sha256(pkb).hexdigest()}} {{len(pkb)}} {{rel}}\n")
PY
"#
        ),
        &root,
    ))
    .await;
    let served = archive.clone();
    let origin = Origin::start(move |seen, _| {
        let path = seen.uri.split('?').next().unwrap_or("/");
        match std::fs::read(served.join(path.trim_start_matches('/'))) {
            // As archives often serve them: no freshness, no validator.
            Ok(b) => Reply::ok(b, &[]),
            Err(_) => Reply::ok("", &[]).status(404),
        }
    })
    .await;
    let p = peer(|a| a.preset = vec!["debian".into()]).await;
    std::fs::create_dir_all(root.join("etc/parts")).unwrap();
    std::fs::create_dir_all(root.join("state/lists/partial")).unwrap();
    std::fs::create_dir_all(root.join("cache/archives/partial")).unwrap();
    std::fs::write(root.join("status"), "").unwrap();
    std::fs::write(
        root.join("etc/sources.list"),
        format!(
            "deb [trusted=yes] http://127.0.0.1:{}/debian stable main\n",
            origin.addr.port()
        ),
    )
    .unwrap();
    let apt = |args: &[&str], dir: &Path| {
        let mut c = client("apt-get");
        c.arg("-q")
            .arg("-o")
            .arg(format!(
                "Dir::Etc::SourceList={}",
                root.join("etc/sources.list").display()
            ))
            .arg("-o")
            .arg(format!(
                "Dir::Etc::SourceParts={}",
                root.join("etc/parts").display()
            ))
            .arg("-o")
            .arg(format!("Dir::State={}", root.join("state").display()))
            .arg("-o")
            .arg(format!(
                "Dir::State::status={}",
                root.join("status").display()
            ))
            .arg("-o")
            .arg(format!("Dir::Cache={}", root.join("cache").display()))
            .args(["-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"])
            .arg("-o")
            .arg(format!("Acquire::http::Proxy=http://{}", p.addr))
            .args(args)
            .current_dir(dir);
        c
    };
    for round in 0..2 {
        let dest = root.join(format!("dl{round}"));
        std::fs::create_dir_all(&dest).unwrap();
        run(apt(&["update"], &root)).await;
        run(apt(&["download", "larder-demo"], &dest)).await;
        assert!(
            dest.join("larder-demo_1.0_all.deb").exists(),
            "round {round}"
        );
        assert_eq!(fetched(&origin, ".deb"), 1, "round {round}: the .deb once");
    }
    std::fs::remove_dir_all(&root).ok();
}
