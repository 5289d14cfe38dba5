//! Integration tokens, route policy, unlock limits and the audit log: the
//! agent decides who may call what, and the console token stays on the LAN.

use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use keyway_tests::client::{Api, EventListener, Reply};
use keyway_tests::console::{DOOR_IDS, HELLO_FRAME};
use keyway_tests::procs::cli;
use keyway_tests::stack::{Stack, TOKEN};
use serde_json::json;

const DEV: &str = "/api/v1/developer";

fn assert_refused(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], code, "{}", String::from_utf8_lossy(&r.body));
}

/// `keyway-agent token add NAME ARGS…`; the printed token.
async fn issue(stack: &Stack, name: &str, args: &[&str]) -> String {
    let config = stack.agent_config.to_str().unwrap();
    let mut all = vec!["token", "add", name, "--config", config];
    all.extend_from_slice(args);
    let out = cli("keyway-agent", &all).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let token = out.stdout.lines().next().unwrap().to_string();
    assert!(token.starts_with("kw_"), "{}", out.stdout);
    token
}

fn api_with(stack: &Stack, token: &str) -> Api {
    stack.api_with_token(token)
}

#[tokio::test]
async fn an_integration_token_reaches_the_console_as_the_console_token_which_never_crosses_the_relay() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let stack = Stack::builder()
        .observe_relay(Arc::new(move |parts: &http::request::Parts| {
            let auth = parts
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("").to_string());
            log.lock().unwrap().push(auth.unwrap_or_default());
        }))
        .start()
        .await
        .unwrap();
    let token = issue(&stack, "coworks", &[]).await;
    let api = api_with(&stack, &token);
    // The simulated console accepts only its own token: a 200 means the
    // agent swapped it in.
    let r = api.get(&format!("{DEV}/doors")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let r = api
        .json(
            Method::POST,
            &format!("{DEV}/users"),
            &json!({"first_name": "Ada", "last_name": "L"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let mut l = EventListener::connect(stack.relay_addr, &stack.site_tls().0, stack.site_tls().1, &token)
        .await
        .unwrap();
    assert_eq!(
        l.next_text(std::time::Duration::from_secs(10)).await.unwrap(),
        HELLO_FRAME
    );

    let crossed = seen.lock().unwrap().clone();
    if stack.is_sealed() {
        // Nothing crosses a zero-knowledge site's relay in plain text.
        assert!(crossed.is_empty(), "{crossed:?}");
        return stack.shutdown().await.unwrap();
    }
    assert_eq!(crossed.len(), 3, "{crossed:?}");
    assert!(crossed.iter().all(|a| *a == format!("Bearer {token}")), "{crossed:?}");
    assert!(
        !crossed.iter().any(|a| a.contains(TOKEN)),
        "the console token never crossed the relay"
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn revoked_expired_and_unknown_tokens_get_401() {
    let stack = Stack::start().await.unwrap();
    let token = issue(&stack, "coworks", &[]).await;
    let api = api_with(&stack, &token);
    assert_eq!(api.get(&format!("{DEV}/doors")).await.unwrap().status, StatusCode::OK);
    let config = stack.agent_config.to_str().unwrap();
    let out = cli("keyway-agent", &["token", "revoke", "coworks", "--config", config])
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_refused(
        &api.get(&format!("{DEV}/doors")).await.unwrap(),
        401,
        "CODE_KEYWAY_TOKEN_INVALID",
    );

    let expired = issue(&stack, "old", &["--expires", "0s"]).await;
    let r = api_with(&stack, &expired).get(&format!("{DEV}/doors")).await.unwrap();
    assert_refused(&r, 401, "CODE_KEYWAY_TOKEN_INVALID");
    assert!(r.json()["msg"].as_str().unwrap().contains("expired"));
    let forged = format!("kw_{}", "0".repeat(48));
    assert_refused(
        &api_with(&stack, &forged).get(&format!("{DEV}/doors")).await.unwrap(),
        401,
        "CODE_KEYWAY_TOKEN_INVALID",
    );
    // The audit log names each refused credential.
    let mut credentials = Vec::new();
    for _ in 0..200 {
        let out = cli(
            "keyway-agent",
            &["audit", "tail", "--json", "-n", "20", "--config", config],
        )
        .await
        .unwrap();
        credentials = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["status"] == 401)
            .map(|r| r["credential"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>();
        if credentials.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        credentials,
        ["integration:unknown", "integration:old", "integration:unknown"],
        "revoked, expired and forged tokens, each named"
    );
    let list = cli("keyway-agent", &["token", "list", "--config", config])
        .await
        .unwrap();
    assert!(
        list.stdout.contains("old") && list.stdout.contains("EXPIRED"),
        "{}",
        list.stdout
    );
    assert!(!list.stdout.contains(&expired), "tokens are never listed");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn presets_and_rules_refuse_with_403_before_the_console() {
    let stack = Stack::start().await.unwrap();
    let read_only = api_with(&stack, &issue(&stack, "dashboard", &["--preset", "read-only"]).await);
    assert_eq!(
        read_only.get(&format!("{DEV}/users")).await.unwrap().status,
        StatusCode::OK
    );
    let r = read_only
        .json(
            Method::POST,
            &format!("{DEV}/users"),
            &json!({"first_name": "No", "last_name": "Way"}),
        )
        .await
        .unwrap();
    assert_refused(&r, 403, "CODE_KEYWAY_POLICY_DENIED");

    let mv = api_with(
        &stack,
        &issue(
            &stack,
            "coworks",
            &[
                "--preset",
                "members-and-visitors",
                "--deny",
                "PUT /api/v1/developer/doors/*/unlock",
            ],
        )
        .await,
    );
    let ok = mv
        .json(
            Method::POST,
            &format!("{DEV}/users"),
            &json!({"first_name": "Yes", "last_name": "Member"}),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    for (m, path, body) in [
        (
            Method::PUT,
            format!("{DEV}/doors/settings/emergency"),
            json!({"lockdown": true, "evacuation": false}),
        ),
        (
            Method::POST,
            format!("{DEV}/webhooks/endpoints"),
            json!({"name": "x", "endpoint": "http://127.0.0.1:1/", "events": []}),
        ),
        (Method::PUT, format!("{DEV}/doors/{}/unlock", DOOR_IDS[0]), json!({})),
    ] {
        assert_refused(
            &mv.json(m, &path, &body).await.unwrap(),
            403,
            "CODE_KEYWAY_POLICY_DENIED",
        );
    }
    let direct = stack.direct_api();
    let users = direct.get(&format!("{DEV}/users?page_size=100")).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&users.body).contains("\"No\""),
        "a denied call never reaches the console"
    );
    let hooks = direct.get(&format!("{DEV}/webhooks/endpoints")).await.unwrap();
    assert_eq!(hooks.data(), json!([]));
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn passthrough_has_its_own_policy_and_can_be_turned_off() {
    let stack = Stack::builder()
        .agent_extra("passthrough_policy = \"read-only\"")
        .start()
        .await
        .unwrap();
    let api = stack.api();
    assert_eq!(api.get(&format!("{DEV}/doors")).await.unwrap().status, StatusCode::OK);
    let r = api
        .json(Method::PUT, &format!("{DEV}/doors/{}/unlock", DOOR_IDS[0]), &json!({}))
        .await
        .unwrap();
    assert_refused(&r, 403, "CODE_KEYWAY_POLICY_DENIED");
    stack.shutdown().await.unwrap();

    let stack = Stack::builder()
        .agent_extra("passthrough = false")
        .start()
        .await
        .unwrap();
    assert_refused(
        &stack.api().get(&format!("{DEV}/doors")).await.unwrap(),
        401,
        "CODE_KEYWAY_TOKEN_INVALID",
    );
    let token = issue(&stack, "coworks", &[]).await;
    assert_eq!(
        api_with(&stack, &token)
            .get(&format!("{DEV}/doors"))
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn door_unlocks_have_a_stricter_limit_per_credential_and_per_site() {
    let stack = Stack::builder()
        .agent_extra("unlock_per_minute = 2\nunlock_site_per_minute = 3")
        .start()
        .await
        .unwrap();
    let a = api_with(&stack, &issue(&stack, "a", &[]).await);
    let b = api_with(&stack, &issue(&stack, "b", &[]).await);
    let unlock = format!("{DEV}/doors/{}/unlock", DOOR_IDS[0]);
    for _ in 0..2 {
        assert_eq!(
            a.json(Method::PUT, &unlock, &json!({})).await.unwrap().status,
            StatusCode::OK
        );
    }
    let r = a.json(Method::PUT, &unlock, &json!({})).await.unwrap();
    assert_refused(&r, 429, "CODE_KEYWAY_RATE_LIMITED");
    assert!(r.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(r.json()["msg"].as_str().unwrap().contains("this credential"));
    // b has its own allowance, but the site's is nearly spent.
    assert_eq!(
        b.json(Method::PUT, &unlock, &json!({})).await.unwrap().status,
        StatusCode::OK
    );
    let r = b.json(Method::PUT, &unlock, &json!({})).await.unwrap();
    assert_refused(&r, 429, "CODE_KEYWAY_RATE_LIMITED");
    assert!(r.json()["msg"].as_str().unwrap().contains("this site"));
    // Other calls are not limited by it.
    assert_eq!(a.get(&format!("{DEV}/doors")).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_audit_log_records_who_did_what_without_secrets() {
    let stack = Stack::start().await.unwrap();
    let token = issue(&stack, "coworks", &[]).await;
    let api = api_with(&stack, &token);
    let user = api
        .json(
            Method::POST,
            &format!("{DEV}/users"),
            &json!({"first_name": "Ada", "last_name": "L"}),
        )
        .await
        .unwrap()
        .data();
    let id = user["id"].as_str().unwrap();
    api.get(&format!("{DEV}/users/{id}?secret=hunter2")).await.unwrap();
    stack.api().get(&format!("{DEV}/doors")).await.unwrap();
    let config = stack.agent_config.to_str().unwrap();
    let mut lines = vec![];
    for _ in 0..100 {
        let out = cli(
            "keyway-agent",
            &["audit", "tail", "--json", "-n", "10", "--config", config],
        )
        .await
        .unwrap();
        lines = out.stdout.lines().map(str::to_string).collect::<Vec<_>>();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    let recs: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs[0]["credential"], "integration:coworks");
    assert_eq!(recs[0]["method"], "POST");
    assert_eq!(recs[0]["status"], 200);
    assert_eq!(recs[1]["path"], "/api/v1/developer/users/{id}");
    assert_eq!(recs[1]["client_ip"], "127.0.0.1");
    assert_eq!(recs[1]["request_id"].as_str().unwrap().len(), 24);
    assert!(recs[2]["credential"].as_str().unwrap().starts_with("passthrough:"));
    let all = lines.join("\n");
    for secret in [token.as_str(), TOKEN, "hunter2", id] {
        assert!(!all.contains(secret), "{secret} in the audit log");
    }
    let human = cli("keyway-agent", &["audit", "tail", "--config", config])
        .await
        .unwrap();
    assert!(human.stdout.contains("integration:coworks"), "{}", human.stdout);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn passthrough_allow_admits_only_what_it_lists() {
    let stack = Stack::builder()
        .agent_extra("passthrough_allow = [\"GET /api/v1/developer/doors\", \"GET /api/v1/developer/users/*\"]")
        .start()
        .await
        .unwrap();
    let api = stack.api();
    assert_eq!(api.get(&format!("{DEV}/doors")).await.unwrap().status, StatusCode::OK);
    let r = api.get(&format!("{DEV}/users/nobody")).await.unwrap();
    assert_ne!(r.status.as_u16(), 403, "allowed through to the console");
    for (method, path) in [
        (Method::GET, format!("{DEV}/users")),
        (Method::POST, format!("{DEV}/users")),
        (Method::PUT, format!("{DEV}/doors/{}/unlock", DOOR_IDS[0])),
    ] {
        let r = api.json(method.clone(), &path, &json!({})).await.unwrap();
        assert_refused(&r, 403, "CODE_KEYWAY_POLICY_DENIED");
        assert!(
            r.json()["msg"].as_str().unwrap().contains("no allow rule matches"),
            "{method} {path}: {}",
            r.json()
        );
    }
    assert!(
        !stack
            .console
            .requests_seen()
            .iter()
            .any(|r| r.starts_with("POST ") || r.contains("unlock")),
        "nothing refused reached the console"
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn emergency_settings_share_the_unlock_limit() {
    let stack = Stack::builder()
        .agent_extra("unlock_per_minute = 2\nunlock_site_per_minute = 100")
        .start()
        .await
        .unwrap();
    let api = stack.api();
    let emergency = format!("{DEV}/doors/settings/emergency");
    let unlock = format!("{DEV}/doors/{}/unlock", DOOR_IDS[0]);
    let body = json!({"lockdown": false, "evacuation": false});
    assert_eq!(
        api.json(Method::PUT, &emergency, &body).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(
        api.json(Method::PUT, &unlock, &json!({})).await.unwrap().status,
        StatusCode::OK
    );
    // Two door-control calls spent the credential's two a minute: both kinds are refused now.
    for path in [&emergency, &unlock] {
        let r = api.json(Method::PUT, path, &body).await.unwrap();
        assert_refused(&r, 429, "CODE_KEYWAY_RATE_LIMITED");
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // Reading the settings is not door control.
    assert_eq!(api.get(&emergency).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}
