//! The operator console in a real browser (headless Chromium from Debian,
//! tests/src/browser.rs) against a real relay and real agents: sign in
//! (a wrong password first), two sites online, a third added on the page
//! and paired with the code it shows, seen online without a reload,
//! revoked from another tab and seen offline; a form posted without its
//! CSRF token changes nothing. Screenshots of the main pages are saved
//! (`target/tmp/screenshots/`, or `$KEYWAY_SCREENSHOTS`).

use std::path::PathBuf;
use std::time::Duration;

use keyway_tests::browser::Browser;
use keyway_tests::stack::off_runtime;

use crate::operator::{add_operator, console_stack, pair_and_run};

fn screenshots() -> PathBuf {
    std::env::var_os("KEYWAY_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let (stack, admin, cfg) = console_stack("").await;
    // A second site online before the operator looks.
    let annex = {
        let cfg = cfg.clone();
        off_runtime(move || keyway_relay::admin::add_site(&cfg, "annex"))
            .unwrap()
            .code
    };
    let (annex_stop, annex_agent, _annex_dir) = pair_and_run(&stack, &annex).await;
    let password = add_operator(&cfg, "ada");
    let wait = Duration::from_secs(15);
    let browser = Browser::start().await.unwrap();
    let base = format!("http://{admin}");
    let tab = browser.tab(&format!("{base}/console/")).await.unwrap();

    // Sent to the sign-in page; a wrong password is refused.
    tab.wait_for("location.pathname === '/console/login'", wait)
        .await
        .unwrap();
    tab.fill("input[name=name]", "ada").await.unwrap();
    tab.fill("input[name=password]", "not the password").await.unwrap();
    tab.click_and_wait("form button").await.unwrap();
    let refused = tab.eval("document.body.innerText").await.unwrap();
    assert!(
        refused.as_str().unwrap().contains("Wrong name or password"),
        "{refused}"
    );
    tab.fill("input[name=name]", "ada").await.unwrap();
    tab.fill("input[name=password]", &password).await.unwrap();
    tab.click_and_wait("form button").await.unwrap();
    tab.wait_for("location.pathname === '/console/'", wait).await.unwrap();

    // Both sites online.
    tab.wait_for("document.querySelectorAll('#sites tbody tr.online').length === 2", wait)
        .await
        .unwrap();

    // A third site, added on the page: its code, command and QR code.
    tab.fill("form.add input[name=name]", "lobby").await.unwrap();
    tab.click_and_wait("form.add button").await.unwrap();
    let code = tab.eval("document.getElementById('code').textContent").await.unwrap();
    let code = code.as_str().expect("the page shows a code").to_string();
    let command = tab
        .eval("document.getElementById('command').textContent")
        .await
        .unwrap();
    assert!(
        command.as_str().unwrap().contains(&format!("keyway-agent pair {code}")),
        "{command}"
    );
    assert_eq!(
        tab.eval("document.querySelectorAll('.qr svg').length").await.unwrap(),
        1
    );
    tab.screenshot(&screenshots().join("console-pairing.png"))
        .await
        .unwrap();

    // Back on the table, the Pi pairs with that code: the row turns
    // online without a reload.
    tab.goto(&format!("{base}/console/")).await.unwrap();
    tab.wait_for(
        "document.querySelector('#sites tr[data-site=lobby].offline') !== null",
        wait,
    )
    .await
    .unwrap();
    tab.eval("window.keywayNoReload = true").await.unwrap();
    let (lobby_stop, lobby_agent, _lobby_dir) = pair_and_run(&stack, &code).await;
    let online = tab
        .wait_for(
            "document.querySelector('#sites tr[data-site=lobby]').className === 'online'",
            wait,
        )
        .await
        .unwrap();
    assert_eq!(
        tab.eval("window.keywayNoReload === true").await.unwrap(),
        true,
        "no reload"
    );
    assert_eq!(
        tab.eval("document.getElementById('counts').textContent").await.unwrap(),
        "3 of 3 online"
    );
    eprintln!("lobby shown online {online:?} after its agent started");

    // Revoked from a second tab (its name typed to confirm); the first
    // sees it go offline.
    let other = browser.tab(&format!("{base}/console/sites/lobby")).await.unwrap();
    other.fill("form.danger input[name=confirm]", "lobby").await.unwrap();
    other.click_and_wait("form.danger button").await.unwrap();
    let said = other.eval("document.body.innerText").await.unwrap();
    assert!(said.as_str().unwrap().contains("Revoked"), "{said}");
    let offline = tab
        .wait_for(
            "document.querySelector('#sites tr[data-site=lobby]').className === 'offline'",
            wait,
        )
        .await
        .unwrap();
    eprintln!("lobby shown offline {offline:?} after the revocation");
    assert_eq!(
        tab.eval("window.keywayNoReload === true").await.unwrap(),
        true,
        "no reload"
    );

    // A form posted without its CSRF token, from the page itself, changes
    // nothing.
    let status = other
        .eval(
            "fetch('/console/sites', {method: 'POST', headers: {'content-type': \
             'application/x-www-form-urlencoded'}, body: 'name=rogue'}).then(r => r.status)",
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    let names: Vec<String> = {
        let cfg = cfg.clone();
        off_runtime(move || keyway_relay::admin::list(&cfg))
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    assert_eq!(names, ["annex", "hq", "lobby"]);

    // Traffic shows on the site pages: requests, the chart, and an
    // offline site's 503s by envelope code.
    let api = stack.api();
    for _ in 0..20 {
        assert_eq!(api.get("/api/v1/developer/doors").await.unwrap().status, 200);
    }
    let lobby = keyway_tests::client::Api::with_client(
        keyway_tests::stack::https_client_at(&stack.https_ca_der, stack.relay_addr.ip()),
        &format!(
            "https://lobby.{}:{}",
            keyway_tests::stack::DOMAIN,
            stack.relay_addr.port()
        ),
        keyway_tests::stack::TOKEN,
    );
    assert_eq!(lobby.get("/api/v1/developer/doors").await.unwrap().status, 503);
    other.goto(&format!("{base}/console/sites/lobby")).await.unwrap();
    let errors = other
        .eval("document.querySelector('table.errors').innerText")
        .await
        .unwrap();
    assert!(
        errors.as_str().unwrap().contains("CODE_KEYWAY_AGENT_OFFLINE"),
        "{errors}"
    );
    tab.wait_for(
        "Number(document.querySelector('#sites tr[data-site=hq] td:nth-child(9)').textContent) >= 20",
        wait,
    )
    .await
    .unwrap();
    tab.screenshot(&screenshots().join("console-sites.png")).await.unwrap();
    other.goto(&format!("{base}/console/sites/hq")).await.unwrap();
    assert!(
        other
            .eval("document.querySelectorAll('svg.chart rect').length")
            .await
            .unwrap()
            .as_u64()
            .unwrap()
            >= 1
    );
    // A site's limit set from its page, as an operator would.
    other.fill("#limit-client_rate", "100").await.unwrap();
    other.click_and_wait("#limits button").await.unwrap();
    let said = other
        .eval("document.getElementById('notice').textContent")
        .await
        .unwrap();
    assert!(said.as_str().unwrap().contains("Limits saved"), "{said}");
    let row = other
        .eval("document.getElementById('limit-client_rate').closest('tr').innerText")
        .await
        .unwrap();
    assert!(row.as_str().unwrap().contains("100\tsite"), "{row:?}");
    assert_eq!(api.get("/api/v1/developer/doors").await.unwrap().status, 200);
    other.screenshot(&screenshots().join("console-site.png")).await.unwrap();

    for (stop, task) in [(annex_stop, annex_agent), (lobby_stop, lobby_agent)] {
        stop.cancel();
        let _ = task.await;
    }
    stack.shutdown().await.unwrap();
}
