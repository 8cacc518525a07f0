//! Issue 12: CONNECT for allowed clients to allowed ports, relayed or (opt-in) intercepted
//! and cached; plain HTTP inside a tunnel (undici's `ProxyAgent` for `http://` URLs)
//! cached too; curl through `https_proxy` with Larder's CA.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use larder_tests::{Origin, Reply, peer, pki};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a tunnel: the proxy's answer head, and the stream when it said 200.
async fn tunnel(proxy: SocketAddr, target: &str) -> (String, Option<TcpStream>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let ok = head.starts_with("HTTP/1.1 200");
    if !ok {
        // A refusal has a body: read it into the head for the assertions.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            s.read_to_end(&mut rest),
        )
        .await;
        return (head + &String::from_utf8_lossy(&rest), None);
    }
    (head, Some(s))
}

fn trusting(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One GET on an open stream (TLS or not): status, Cache-Status, body.
async fn get_on<S>(stream: S, host: &str, path: &str) -> (u16, String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let cs = resp
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, cs, String::from_utf8_lossy(&body).into_owned())
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("larder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_go_to_allowed_ports_only_and_are_counted() {
    let pki = pki();
    let origin = Origin::start_tls(pki.server.clone(), |_, _| {
        Reply::ok("secret", &[("cache-control", "max-age=60")])
    })
    .await;
    let port = origin.addr.port();
    let p = peer(|a| a.connect_port = vec![port]).await;
    // Another port: 403 with the reason.
    let (head, s) = tunnel(p.addr, "localhost:1").await;
    assert!(s.is_none() && head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("port 1 is not allowed"), "{head}");
    // The origin's own TLS end to end: Larder relays bytes (and stores nothing).
    for _ in 0..2 {
        let (head, s) = tunnel(p.addr, &format!("localhost:{port}")).await;
        let s = s.unwrap_or_else(|| panic!("{head}"));
        let tls = trusting(&pki.ca_pem)
            .connect("localhost".try_into().unwrap(), s)
            .await
            .unwrap();
        let (status, cs, body) = get_on(tls, &format!("localhost:{port}"), "/x").await;
        assert_eq!((status, cs.as_str(), body.as_str()), (200, "", "secret"));
    }
    assert_eq!(origin.hits(), 2, "a tunnel is never cached");
    let metrics = larder_tests::get(p.addr, &format!("http://{}/metrics", p.addr)).await;
    let text = metrics.text();
    assert!(
        text.contains("larder_connect_total{result=\"tunnel\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("larder_connect_total{result=\"refused\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("larder_tunnel_bytes_total{direction=\"down\"} 0\n"),
        "{text}"
    );
    // A destination the guard refuses stays refused through CONNECT.
    let strict = peer(|a| {
        a.connect_port = vec![port];
        a.allow_destination = Vec::new();
    })
    .await;
    let (head, _) = tunnel(strict.addr, &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("loopback"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_https_is_cached_and_keyed_by_the_tunnel() {
    let pki = pki();
    let origin = Origin::start_tls(pki.server.clone(), |seen, _| {
        Reply::ok(
            format!("file {}", seen.uri),
            &[("cache-control", "max-age=60")],
        )
    })
    .await;
    let port = origin.addr.port();
    let ca_file = std::env::temp_dir().join(format!("larder-origin-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let data = temp_dir("intercept");
    let p = {
        let (data, ca_file) = (data.clone(), ca_file.clone());
        peer(move |a| {
            a.connect_port = vec![port];
            a.intercept_host = vec!["localhost".into()];
            a.data_dir = Some(data.clone());
            // Upstream verification stays on: the origin's CA is given as usual.
            a.ca_file = vec![ca_file.clone()];
        })
        .await
    };
    let larder_ca = std::fs::read_to_string(data.join("ca.pem")).unwrap();
    let host = format!("localhost:{port}");
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let (head, s) = tunnel(p.addr, &host).await;
        let s = s.unwrap_or_else(|| panic!("{head}"));
        let tls = trusting(&larder_ca)
            .connect("localhost".try_into().unwrap(), s)
            .await
            .expect("Larder's certificate for localhost, from its CA");
        let (status, cs, body) = get_on(tls, &host, "/pkg.whl").await;
        assert_eq!((status, body.as_str()), (200, "file /pkg.whl"));
        statuses.push(cs);
    }
    assert!(
        statuses[0].contains("fwd=uri-miss") && statuses[0].contains("stored"),
        "{statuses:?}"
    );
    assert!(statuses[1].contains("hit"), "{statuses:?}");
    assert_eq!(origin.hits(), 1);
    // The same object is a hit for absolute-form https:// requests too: one key.
    let r = larder_tests::get(p.addr, &format!("https://localhost:{port}/pkg.whl")).await;
    assert!(r.is_hit(), "{}", r.cache_status());
    // A request inside the tunnel naming another host is refused, never cached as it.
    let (_, s) = tunnel(p.addr, &host).await;
    let tls = trusting(&larder_ca)
        .connect("localhost".try_into().unwrap(), s.unwrap())
        .await
        .unwrap();
    let (status, _, body) = get_on(tls, "victim.example", "/pkg.whl").await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(origin.hits(), 1);
    // A client that does not trust Larder's CA fails its handshake (and is counted).
    let (_, s) = tunnel(p.addr, &host).await;
    let refused = trusting(&pki.ca_pem)
        .connect("localhost".try_into().unwrap(), s.unwrap())
        .await;
    assert!(refused.is_err());
    std::fs::remove_dir_all(&data).ok();
    std::fs::remove_file(ca_file).ok();
}

/// undici's ProxyAgent sends `CONNECT host:80` for `http://` URLs and then plain HTTP:
/// served (and cached) like a forward-proxy request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_inside_a_tunnel_is_cached() {
    let origin = Origin::start(|_, _| Reply::ok("plain", &[("cache-control", "max-age=60")])).await;
    let port = origin.addr.port();
    let p = peer(|a| a.connect_port = vec![port]).await;
    let host = format!("127.0.0.1:{port}");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (head, s) = tunnel(p.addr, &host).await;
        let (status, cs, body) = get_on(s.unwrap_or_else(|| panic!("{head}")), &host, "/a").await;
        assert_eq!((status, body.as_str()), (200, "plain"));
        seen.push(cs);
    }
    assert!(seen[1].contains("hit"), "{seen:?}");
    assert_eq!(origin.hits(), 1);
    // CONNECT inside a tunnel: 405, with Allow.
    let (_, s) = tunnel(p.addr, &host).await;
    let mut s = s.unwrap();
    s.write_all(format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 405") && head.contains("\r\nallow: get, head"),
        "{head}"
    );
}

/// curl through `https_proxy`, trusting the CA `larder ca-cert` prints (the same file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_https_proxy_with_larders_ca() {
    let pki = pki();
    let origin = Origin::start_tls(pki.server.clone(), |_, _| {
        Reply::ok("via curl", &[("cache-control", "max-age=60")])
    })
    .await;
    let port = origin.addr.port();
    let ca_file = std::env::temp_dir().join(format!("larder-curl-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let data = temp_dir("curl");
    let p = {
        let (data, ca_file) = (data.clone(), ca_file.clone());
        peer(move |a| {
            a.connect_port = vec![port];
            a.intercept = Some(true);
            a.data_dir = Some(data.clone());
            a.ca_file = vec![ca_file.clone()];
        })
        .await
    };
    let url = format!("https://localhost:{port}/tool.tar.gz");
    let mut outs = Vec::new();
    for _ in 0..2 {
        let (ca, url, proxy) = (
            data.join("ca.pem"),
            url.clone(),
            format!("http://{}", p.addr),
        );
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "-D", "-", "--cacert"])
                .arg(ca)
                .arg(url)
                .env("https_proxy", proxy)
                .env_remove("no_proxy")
                .env_remove("NO_PROXY")
                .output()
                .expect("curl runs")
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        outs.push(String::from_utf8_lossy(&out.stdout).to_ascii_lowercase());
    }
    assert!(outs[1].contains("cache-status: larder; hit"), "{}", outs[1]);
    assert!(outs[1].ends_with("via curl"), "{}", outs[1]);
    assert_eq!(origin.hits(), 1);
    std::fs::remove_dir_all(&data).ok();
    std::fs::remove_file(ca_file).ok();
}
