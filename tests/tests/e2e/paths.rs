//! One canonical path: no spelling of a denied or rate-limited call gets
//! past the door rules, and the console and the audit log see the one
//! spelling the rules saw.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyway_tests::console::DOOR_IDS;
use keyway_tests::procs::cli;
use keyway_tests::stack::{Stack, TOKEN};

use super::errors::raw_exchange;

const DEV: &str = "/api/v1/developer";

/// Spellings of `PUT /api/v1/developer/doors/{door}/unlock` that canonicalise
/// to it (the rules must catch each).
fn same_call(door: &str) -> Vec<String> {
    vec![
        format!("{DEV}/doors/{door}/unlock/"),
        format!("{DEV}//doors/{door}/unlock"),
        format!("/{DEV}/doors/{door}//unlock//"),
        format!("{DEV}/doors/{door}/%75nlock"),
        format!("{DEV}/doors/{door}/%75%6E%6c%6F%63%6b"),
        format!("/%61pi/v1/developer/doors/{door}/unlock"),
        format!("{DEV}/doors/{door}/UNLOCK"),
        format!("/API/V1/Developer/Doors/{door}/Unlock"),
        format!("{DEV}/doors/{door}/unlock?via=query"),
    ]
}

/// Spellings that have no canonical form: refused at the relay with 400.
fn ambiguous(door: &str) -> Vec<String> {
    vec![
        format!("{DEV}/doors/{door}/unlock/."),
        format!("{DEV}/doors/{door}/unlock/./"),
        format!("{DEV}/doors/x/../{door}/unlock"),
        format!("{DEV}/doors/{door}/%2e%2e/{door}/unlock"),
        format!("{DEV}/doors/{door}/%2E/unlock"),
        format!("{DEV}/doors%2F{door}/unlock"),
        format!("{DEV}/doors%2f{door}%2Funlock"),
        format!("{DEV}/doors/{door}%5Cunlock"),
        format!("{DEV}/doors/{door}/unlock;jsessionid=1"),
        format!("{DEV}/doors/{door}/unlock%00"),
        format!("{DEV}/doors/{door}/unl%zzock"),
    ]
}

/// Status line and envelope code of a raw `PUT path` with the console token.
async fn put(stack: &Stack, path: &str) -> (u16, String) {
    let raw = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    let answer = raw_exchange(stack, raw.as_bytes()).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{path}: no status line in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, code)
}

/// Requests that reached the console whose path names an unlock.
fn unlocks_seen(stack: &Stack) -> Vec<String> {
    stack
        .console
        .requests_seen()
        .into_iter()
        .filter(|r| r.to_ascii_lowercase().contains("unlock"))
        .collect()
}

#[tokio::test]
async fn no_spelling_of_a_denied_path_reaches_the_console() {
    let crossed = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = crossed.clone();
    let stack = Stack::builder()
        .agent_extra("passthrough_deny = [\"PUT /api/v1/developer/doors/*/unlock\"]")
        .observe_relay(Arc::new(move |parts: &http::request::Parts| {
            log.lock().unwrap().push(parts.uri.to_string());
        }))
        .start()
        .await
        .unwrap();
    let door = DOOR_IDS[0];
    for path in same_call(door) {
        assert_eq!(
            put(&stack, &path).await,
            (403, "CODE_KEYWAY_POLICY_DENIED".to_string()),
            "{path}"
        );
    }
    for path in ambiguous(door) {
        assert_eq!(
            put(&stack, &path).await,
            (400, "CODE_KEYWAY_BAD_REQUEST".to_string()),
            "{path}"
        );
    }
    assert_eq!(
        unlocks_seen(&stack),
        Vec::<String>::new(),
        "no unlock reached the console"
    );

    // What crossed the tunnel is the canonical path only; the ambiguous
    // spellings never entered it. (For a zero-knowledge site nothing
    // crosses it readable; the agent made the same refusals.)
    let crossed = crossed.lock().unwrap().clone();
    let expected = if stack.is_sealed() { 0 } else { same_call(door).len() };
    assert_eq!(crossed.len(), expected, "{crossed:?}");
    for uri in &crossed {
        let path = uri.split('?').next().unwrap();
        assert!(
            path.eq_ignore_ascii_case(&format!("{DEV}/doors/{door}/unlock")),
            "{uri} crossed the tunnel"
        );
    }

    // The audit log shows the canonical path (ids templated) for each refusal.
    let config = stack.agent_config.to_str().unwrap();
    let n = same_call(door).len();
    // A zero-knowledge site's agent also made the 400s (the relay makes
    // them for other sites), and audits them.
    let malformed = if stack.is_sealed() { ambiguous(door).len() } else { 0 };
    let mut recs = vec![];
    for _ in 0..200 {
        let out = cli(
            "keyway-agent",
            &["audit", "tail", "--json", "-n", "100", "--config", config],
        )
        .await
        .unwrap();
        recs = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        if recs.len() >= n + malformed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recs.len(), n + malformed, "{recs:?}");
    let (denied, bad): (Vec<_>, Vec<_>) = recs.iter().partition(|r| r["status"] == 403);
    assert_eq!(bad.len(), malformed, "{recs:?}");
    assert!(bad.iter().all(|r| r["status"] == 400), "{bad:?}");
    for r in denied {
        assert_eq!(r["status"], 403, "{r}");
        // Named: who was refused, not "anonymous".
        assert!(r["credential"].as_str().unwrap().starts_with("passthrough:"), "{r}");
        assert!(
            r["path"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case("/api/v1/developer/doors/{id}/unlock"),
            "{r}"
        );
    }
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_unlock_limit_counts_every_spelling_as_one_call() {
    let stack = Stack::builder()
        .agent_extra("unlock_per_minute = 2\nunlock_site_per_minute = 100")
        .start()
        .await
        .unwrap();
    let door = DOOR_IDS[0];
    let plain = format!("{DEV}/doors/{door}/unlock");
    assert_eq!(put(&stack, &plain).await.0, 200);
    assert_eq!(put(&stack, &plain).await.0, 200);
    for path in same_call(door) {
        assert_eq!(
            put(&stack, &path).await,
            (429, "CODE_KEYWAY_RATE_LIMITED".to_string()),
            "{path}"
        );
    }
    for path in ambiguous(door) {
        assert_eq!(put(&stack, &path).await.0, 400, "{path}");
    }
    assert_eq!(unlocks_seen(&stack).len(), 2, "{:?}", unlocks_seen(&stack));
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_console_receives_the_canonical_path_with_the_query_untouched() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let r = api
        .get(&format!("/{DEV}//users/?page_size=5&q=%2F..%2F"))
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = stack.console.requests_seen();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("GET /api/v1/developer/users?page_size=5&q=%2F..%2F"),
        "{seen:?}"
    );
    stack.shutdown().await.unwrap();
}
