//! Webhooks as a console delivers them, registered through the tunnel:
//! over HTTPS with the receiver's certificate verified, with the endpoint's
//! custom headers, the `Signature` header and the unlock's `extra`; event
//! names a console does not know are refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use keyway_tests::console::{ConsoleOptions, DOOR_IDS};
use keyway_tests::stack::{Stack, TOKEN};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

const DEV: &str = "/api/v1/developer";

/// What an HTTPS receiver got: headers and JSON body of each delivery.
type Got = Arc<Mutex<Vec<(http::HeaderMap, Value)>>>;

/// An HTTPS receiver on loopback with a fresh self-signed certificate; its
/// URL, certificate and deliveries.
async fn https_receiver() -> (String, CertificateDer<'static>, Got) {
    let (cert, key) = keyway_certs::self_signed(&["127.0.0.1".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let tls = rustls::ServerConfig::builder_with_provider(keyway_certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
    let got: Got = Arc::default();
    let log = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        log.lock().unwrap().push((parts.headers, v));
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (url, cert, got)
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn deliveries_go_over_verified_https_with_custom_headers_and_the_unlocks_extra() {
    let (url, cert, got) = https_receiver().await;
    let mut opts = ConsoleOptions::new(TOKEN);
    opts.webhook_ca = Some(cert);
    let stack = Stack::builder().console(opts).start().await.unwrap();
    let api = stack.api();

    let r = api
        .json(
            Method::POST,
            &format!("{DEV}/webhooks/endpoints"),
            &json!({"name": "bad", "endpoint": url, "events": ["access.door.opened"]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["code"], "CODE_PARAMS_INVALID");
    assert!(
        r.json()["msg"].as_str().unwrap().contains("access.door.opened"),
        "{}",
        r.json()
    );

    let hook = api
        .json(
            Method::POST,
            &format!("{DEV}/webhooks/endpoints"),
            &json!({"name": "ours", "endpoint": url, "events": ["access.door.unlock"],
                      "headers": {"X-Api-Key": "integration-key-1"}}),
        )
        .await
        .unwrap()
        .data();
    let secret = hook["secret"].as_str().unwrap().to_string();
    let r = api
        .json(
            Method::PUT,
            &format!("{DEV}/doors/{}/unlock", DOOR_IDS[0]),
            &json!({"actor_id": "m-1", "actor_name": "Ada", "extra": {"booking": "B-42"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    eventually("the delivery arrives over HTTPS", || !got.lock().unwrap().is_empty()).await;
    let (headers, body) = got.lock().unwrap()[0].clone();
    assert_eq!(headers["x-api-key"], "integration-key-1");
    assert_eq!(body["event"], "access.door.unlock");
    assert_eq!(body["data"]["extra"]["booking"], "B-42");
    assert_eq!(body["data"]["actor"]["name"], "Ada");
    // The signature checks out with the endpoint's secret.
    let sig = headers["signature"].to_str().unwrap();
    let t: u64 = sig.split(',').next().unwrap().trim_start_matches("t=").parse().unwrap();
    let expected = keyway_tests::console::webhooks::signature(&secret, body.to_string().as_bytes(), t);
    assert_eq!(sig, expected);
    assert_eq!(stack.console.webhook_deliveries(), [200]);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_receiver_with_an_untrusted_certificate_gets_nothing() {
    let (url, _cert, got) = https_receiver().await;
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    api.json(
        Method::POST,
        &format!("{DEV}/webhooks/endpoints"),
        &json!({"name": "untrusted", "endpoint": url, "events": ["access.door.unlock"]}),
    )
    .await
    .unwrap()
    .data();
    let r = api
        .json(Method::PUT, &format!("{DEV}/doors/{}/unlock", DOOR_IDS[0]), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    eventually("the failed delivery is logged", || {
        !stack.console.webhook_deliveries().is_empty()
    })
    .await;
    assert_eq!(
        stack.console.webhook_deliveries(),
        [0],
        "not delivered: the certificate is not trusted"
    );
    assert!(got.lock().unwrap().is_empty());
    stack.shutdown().await.unwrap();
}
