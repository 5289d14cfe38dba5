//! Responses the relay produces itself, in the console's envelope.

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use keyway_proto::envelope::ErrorCode;

/// The body type of every relay response: streamed from the tunnel, or ours.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

/// An error response with the envelope for `code`.
pub fn error(code: ErrorCode, msg: &str) -> Response<ProxyBody> {
    keyway_proto::envelope::response(code, msg).map(|b| Full::new(b).map_err(|never| match never {}).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    #[tokio::test]
    async fn error_responses_carry_status_type_and_envelope() {
        for code in [
            ErrorCode::SiteNotFound,
            ErrorCode::AgentOffline,
            ErrorCode::TunnelFailed,
            ErrorCode::Timeout,
        ] {
            let resp = error(code, "why");
            assert_eq!(resp.status(), code.status());
            assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["code"], code.as_str());
            assert_eq!(v["msg"], "why");
        }
    }
}
