//! The relay serves the operator's apt repository at `https://<domain>/apt/`
//! when `apt_repository` is set: files only, from inside the folder, on the
//! relay's own names; every other name and path still reaches the site.

use http::header::{CONTENT_LENGTH, IF_MODIFIED_SINCE, LAST_MODIFIED};
use http::{Method, StatusCode};
use keyway_tests::client::{Api, Reply};
use keyway_tests::stack::{empty, Stack, DOMAIN, SITE};

async fn send(api: &Api, method: Method, path: &str, host: Option<&str>, ims: Option<&str>) -> Reply {
    let mut req = api.request(method, path);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    if let Some(v) = ims {
        req = req.header(IF_MODIFIED_SINCE, v);
    }
    api.send(req.body(empty()).unwrap()).await.unwrap()
}

/// A repository folder as build-repo.sh lays it out, a secret beside it and
/// a symlink from inside pointing at the secret.
fn repository(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let repo = dir.join("apt");
    std::fs::create_dir_all(repo.join("dists/stable")).unwrap();
    std::fs::create_dir_all(repo.join("pool/main")).unwrap();
    std::fs::write(repo.join("dists/stable/InRelease"), "Origin: Keyway\n").unwrap();
    let deb: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(repo.join("pool/main/keyway-agent_0.1.0+1-1_arm64.deb"), &deb).unwrap();
    std::fs::write(dir.join("secret"), "tunnel CA key").unwrap();
    std::os::unix::fs::symlink(dir.join("secret"), repo.join("pool/main/escape.deb")).unwrap();
    (repo, deb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_its_apt_repository_files_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, deb) = repository(dir.path());
    let stack = Stack::builder()
        .relay_extra(&format!("apt_repository = {:?}\n", repo.to_str().unwrap()))
        .start()
        .await
        .unwrap();
    // The relay's own files, whatever the site's mode.
    let api = stack.relay_api();
    let relay_host = Some(DOMAIN);

    // The files, whole, streamed; HEAD gives the length alone.
    let release = send(&api, Method::GET, "/apt/dists/stable/InRelease", relay_host, None).await;
    assert_eq!(release.status, StatusCode::OK);
    assert_eq!(&release.body[..], b"Origin: Keyway\n");
    let modified = release.headers[LAST_MODIFIED].to_str().unwrap().to_string();
    let package = "/apt/pool/main/keyway-agent_0.1.0%2B1-1_arm64.deb";
    let got = send(&api, Method::GET, package, relay_host, None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        got.body[..] == deb[..],
        "the package came back changed ({} bytes)",
        got.body.len()
    );
    let head = send(&api, Method::HEAD, package, relay_host, None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers[CONTENT_LENGTH], deb.len().to_string().as_str());
    assert!(head.body.is_empty());
    // apt's If-Modified-Since for an index it already has.
    let again = send(
        &api,
        Method::GET,
        "/apt/dists/stable/InRelease",
        relay_host,
        Some(&modified),
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    // The bare IP (the default client's host) is the relay too.
    assert_eq!(
        send(&api, Method::GET, "/apt/dists/stable/InRelease", None, None)
            .await
            .status,
        StatusCode::OK
    );

    // Nothing else: folders, missing files, a symlink out, dot-segments in
    // any spelling, writes.
    for (path, status) in [
        ("/apt/pool/main", StatusCode::NOT_FOUND),
        ("/apt/", StatusCode::BAD_REQUEST),
        ("/apt/pool/main/missing.deb", StatusCode::NOT_FOUND),
        ("/apt/pool/main/escape.deb", StatusCode::NOT_FOUND),
        ("/apt/pool/%2e%2e/%2e%2e/secret", StatusCode::BAD_REQUEST),
        ("/apt/pool/..%2F..%2Fsecret", StatusCode::BAD_REQUEST),
    ] {
        let r = send(&api, Method::GET, path, relay_host, None).await;
        assert_eq!(r.status, status, "GET {path}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("tunnel CA key"),
            "GET {path} leaked the secret"
        );
    }
    let put = send(&api, Method::PUT, "/apt/dists/stable/InRelease", relay_host, None).await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        std::fs::read(repo.join("dists/stable/InRelease")).unwrap(),
        b"Origin: Keyway\n"
    );

    // A site's own name still reaches its console, /apt/ or not.
    let site_host = format!("{SITE}.{DOMAIN}");
    let r = send(
        &stack.api(),
        Method::GET,
        "/apt/dists/stable/InRelease",
        Some(&site_host),
        None,
    )
    .await;
    assert_ne!(&r.body[..], b"Origin: Keyway\n");
    let seen = stack.console.requests_seen();
    assert!(
        seen.iter().any(|s| s.contains("/apt/dists/stable/InRelease")),
        "the console never saw the site's request: {seen:?}"
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_apt_repository_nothing_is_served_from_disk() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let r = send(&api, Method::GET, "/apt/dists/stable/InRelease", Some(DOMAIN), None).await;
    assert_ne!(r.status, StatusCode::OK);
    let seen = stack.console.requests_seen();
    assert!(
        seen.iter().any(|s| s.contains("/apt/dists/stable/InRelease")),
        "the request did not go to the default site: {seen:?}"
    );
    stack.shutdown().await.unwrap();
}
