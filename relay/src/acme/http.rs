//! The ACME client's HTTP: hyper + rustls (ring) toward the directory.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use keyway_certs::files::certs_from_pem;

use super::AcmeConfig;

/// hyper + rustls (ring) toward the directory, trusting the web PKI and
/// `ca_file`.
pub(super) struct AcmeHttp(Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

pub(super) fn http_client(cfg: &AcmeConfig) -> anyhow::Result<AcmeHttp> {
    let mut roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &cfg.ca_file {
        for cert in certs_from_pem(&ca.display().to_string(), &read(ca)?)? {
            roots.add(cert).with_context(|| format!("{}", ca.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(keyway_certs::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(AcmeHttp(Client::builder(TokioExecutor::new()).build(connector)))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("could not read {}", path.display()))
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.0.request(req);
        Box::pin(async move {
            fut.await
                .map(BytesResponse::from)
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))
        })
    }
}
