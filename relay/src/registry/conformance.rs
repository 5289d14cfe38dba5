//! What every [`SiteStore`] must do, as functions a test calls with a way
//! to open the store under test (again, on the same database, as another
//! relay or the admin CLI would). The SQLite and PostgreSQL stores run the
//! same cases (`keyway-tests`, `registry` tests); a case panics on failure.
#![doc(hidden)]

use super::{AgentAdmission, CodeRefusal, RegistryError, SiteStore};

/// Opens the store under test; each call is a new connection to one database.
pub type Open<'a> = &'a (dyn Fn() -> Box<dyn SiteStore> + Sync);

fn code_err(r: Result<impl std::fmt::Debug, RegistryError>) -> CodeRefusal {
    match r {
        Err(RegistryError::Code(c)) => c,
        other => panic!("expected a code refusal, got {other:?}"),
    }
}

/// A code pairs once, then is used; admission follows the certificate.
pub fn a_code_pairs_once_then_is_used(open: Open) {
    let s = open();
    s.add_site("hq", 0).unwrap();
    assert!(matches!(s.add_site("hq", 0), Err(RegistryError::SiteExists(_))));
    s.set_code("hq", "ABC", &[1; 32], 900, 0).unwrap();
    let pending = s.begin_pairing("ABC", 5, 10).unwrap();
    assert_eq!((pending.site.as_str(), pending.hash), ("hq", [1; 32]));
    assert_eq!(s.complete_pairing("ABC", "serial-1", 11).unwrap(), "hq");
    assert_eq!(code_err(s.begin_pairing("ABC", 5, 12)), CodeRefusal::Used);
    assert_eq!(code_err(s.complete_pairing("ABC", "serial-2", 12)), CodeRefusal::Used);
    assert_eq!(s.agent_admission("hq", "serial-1").unwrap(), AgentAdmission::Allowed);
    assert_eq!(s.agent_admission("hq", "serial-2").unwrap(), AgentAdmission::Revoked);
    assert_eq!(
        s.agent_admission("nope", "serial-1").unwrap(),
        AgentAdmission::UnknownSite
    );
    let list = s.list_sites().unwrap();
    assert!(list[0].paired && list[0].code_expires.is_none());
    assert_eq!(list[0].cert_serial.as_deref(), Some("serial-1"));
    assert_eq!(list[0].cert_expires, super::cert_expiry(true, Some(11)));
    assert!(list[0].cert_expires.is_some());
}

/// Codes expire, burn after `max_tries`, and die when replaced; a live
/// code's id is taken.
pub fn codes_expire_burn_and_die_when_replaced(open: Open) {
    let s = open();
    s.add_site("hq", 0).unwrap();
    s.set_code("hq", "ABC", &[1; 32], 900, 0).unwrap();
    assert_eq!(s.list_sites().unwrap()[0].code_expires, Some(900));
    assert_eq!(code_err(s.begin_pairing("ABC", 5, 900)), CodeRefusal::Expired);
    assert_eq!(code_err(s.begin_pairing("XYZ", 5, 1)), CodeRefusal::Unknown);

    s.set_code("hq", "DEF", &[2; 32], 900, 0).unwrap();
    assert_eq!(
        code_err(s.begin_pairing("ABC", 5, 1)),
        CodeRefusal::Unknown,
        "the old code died"
    );
    for _ in 0..5 {
        s.begin_pairing("DEF", 5, 1).unwrap();
    }
    assert_eq!(code_err(s.begin_pairing("DEF", 5, 1)), CodeRefusal::Burned);
    assert!(matches!(
        s.set_code("ghost", "GGG", &[0; 32], 9, 0),
        Err(RegistryError::NoSuchSite(_))
    ));
    // Another site's live code with the same public id blocks the id.
    s.add_site("branch", 0).unwrap();
    assert!(matches!(
        s.set_code("branch", "DEF", &[3; 32], 900, 1),
        Err(RegistryError::CodeIdTaken)
    ));
}

/// Tries at one code through several connections count in one counter.
pub fn tries_through_every_connection_are_one_counter(open: Open) {
    let s = open();
    s.add_site("hq", 0).unwrap();
    s.set_code("hq", "ABC", &[1; 32], 900, 0).unwrap();
    let ok: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| open().begin_pairing("ABC", 5, 1).is_ok() as usize))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(ok, 5, "five tries in all, whoever makes them");
    assert_eq!(code_err(s.begin_pairing("ABC", 5, 1)), CodeRefusal::Burned);
}

/// Of concurrent completions of one code, exactly one wins.
pub fn concurrent_completions_have_exactly_one_winner(open: Open) {
    let s = open();
    s.add_site("hq", 0).unwrap();
    s.set_code("hq", "ABC", &[1; 32], 900, 0).unwrap();
    let wins: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| scope.spawn(move || open().complete_pairing("ABC", &format!("s{i}"), 5).is_ok() as usize))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(wins, 1);
    let serial = s.list_sites().unwrap()[0].cert_serial.clone().unwrap();
    assert_eq!(s.agent_admission("hq", &serial).unwrap(), AgentAdmission::Allowed);
}

/// A revocation by another connection is seen (the data version moves)
/// and survives reopening.
pub fn revoke_refuses_the_certificate_and_survives_reopen(open: Open) {
    let s = open();
    s.add_site("hq", 0).unwrap();
    s.set_code("hq", "ABC", &[1; 32], 900, 0).unwrap();
    s.begin_pairing("ABC", 5, 1).unwrap();
    s.complete_pairing("ABC", "serial-1", 1).unwrap();
    let v0 = s.data_version().unwrap();
    let other = open();
    assert_eq!(other.revoke("hq", 2).unwrap().as_deref(), Some("serial-1"));
    assert_ne!(s.data_version().unwrap(), v0, "the relay sees another process's change");
    assert_eq!(s.agent_admission("hq", "serial-1").unwrap(), AgentAdmission::Revoked);
    assert!(matches!(other.revoke("ghost", 2), Err(RegistryError::NoSuchSite(_))));
    drop(s);
    let reopened = open();
    assert!(!reopened.list_sites().unwrap()[0].paired);
}

/// What the relay records about an agent reads back in `site list`.
pub fn agent_reports_read_back(open: Open) {
    let s = open();
    s.add_site("hq", 0).unwrap();
    s.record_seen("hq", "0.1.0", Some("tcp"), 40).unwrap();
    s.record_console("hq", false, Some("certificate changed")).unwrap();
    s.record_duplicate("hq", Some("two machines")).unwrap();
    let site = &s.list_sites().unwrap()[0];
    assert!(site.online);
    assert_eq!(site.last_seen, Some(40));
    assert_eq!(site.agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(site.transport.as_deref(), Some("tcp"));
    assert_eq!(site.console_ok, Some(false));
    assert_eq!(site.console_problem.as_deref(), Some("certificate changed"));
    assert_eq!(site.duplicate.as_deref(), Some("two machines"));
    s.record_seen("hq", "0.1.0", None, 50).unwrap();
    s.record_duplicate("hq", None).unwrap();
    let site = &s.list_sites().unwrap()[0];
    assert!(!site.online && site.transport.is_none() && site.duplicate.is_none());
}

/// One case of the suite.
pub type Case = fn(Open);

/// Every case, by name, for a test that runs them all on one store kind.
/// Operators: set, read back, failures lock at the threshold, a sign-in
/// or a new password clears them, removal.
pub fn operators_lock_after_failures_and_unlock(open: Open) {
    let s = open();
    assert_eq!(s.operator("ada").unwrap(), None);
    s.operator_set("ada", "$argon2id$one", 10).unwrap();
    let ada = s.operator("ada").unwrap().unwrap();
    assert_eq!((ada.failures, ada.locked_until, ada.last_sign_in), (0, 0, None));
    s.operator_failed("ada", 3, 500).unwrap();
    s.operator_failed("ada", 3, 500).unwrap();
    assert_eq!(s.operator("ada").unwrap().unwrap().locked_until, 0, "two of three");
    // Another connection counts into the same row.
    open().operator_failed("ada", 3, 500).unwrap();
    let locked = s.operator("ada").unwrap().unwrap();
    assert_eq!((locked.failures, locked.locked_until), (3, 500));
    s.operator_signed_in("ada", 600).unwrap();
    let back = s.operator("ada").unwrap().unwrap();
    assert_eq!((back.failures, back.locked_until, back.last_sign_in), (0, 0, Some(600)));
    s.operator_failed("ada", 1, 900).unwrap();
    s.operator_set("ada", "$argon2id$two", 700).unwrap();
    let reset = s.operator("ada").unwrap().unwrap();
    assert_eq!((reset.password_hash.as_str(), reset.locked_until), ("$argon2id$two", 0));
    s.operator_set("bob", "$argon2id$b", 10).unwrap();
    let names: Vec<String> = s.operators().unwrap().into_iter().map(|o| o.name).collect();
    assert_eq!(names, ["ada", "bob"]);
    assert!(s.operator_remove("bob").unwrap());
    assert!(!s.operator_remove("bob").unwrap());
    assert_eq!(s.operator("bob").unwrap(), None);
}

/// A site's limits: stored, read back by another connection (with a
/// change the relays can see), cleared; an unknown site is an error, and a
/// stored value that no longer reads is ignored rather than fatal.
pub fn site_limits_read_back_and_clear(open: Open) {
    let s = open();
    s.add_site("hq", 0).unwrap();
    s.add_site("annex", 0).unwrap();
    let mut limits = crate::limits::Overrides::default();
    limits.set("site_rate", "7").unwrap();
    limits.set("allow", "203.0.113.0/24, 2001:db8::1").unwrap();
    let json = super::limits_json(&limits).unwrap();
    let before = s.data_version().unwrap();
    let other = open();
    other.set_limits("hq", Some(&json)).unwrap();
    assert_ne!(s.data_version().unwrap(), before, "a change the relays see");
    let list = s.list_sites().unwrap();
    assert_eq!(list[1].name, "hq");
    assert_eq!(list[1].limits, limits);
    assert!(list[0].limits.is_empty(), "annex has none");
    assert!(matches!(
        s.set_limits("ghost", Some(&json)),
        Err(RegistryError::NoSuchSite(_))
    ));
    s.set_limits("hq", Some("{\"site_rate\": \"many\"}")).unwrap();
    assert!(s.list_sites().unwrap()[1].limits.is_empty(), "unreadable: ignored");
    s.set_limits("hq", None).unwrap();
    assert!(s.list_sites().unwrap()[1].limits.is_empty());
}

pub const CASES: &[(&str, Case)] = &[
    ("site_limits_read_back_and_clear", site_limits_read_back_and_clear),
    (
        "operators_lock_after_failures_and_unlock",
        operators_lock_after_failures_and_unlock,
    ),
    ("a_code_pairs_once_then_is_used", a_code_pairs_once_then_is_used),
    (
        "codes_expire_burn_and_die_when_replaced",
        codes_expire_burn_and_die_when_replaced,
    ),
    (
        "tries_through_every_connection_are_one_counter",
        tries_through_every_connection_are_one_counter,
    ),
    (
        "concurrent_completions_have_exactly_one_winner",
        concurrent_completions_have_exactly_one_winner,
    ),
    (
        "revoke_refuses_the_certificate_and_survives_reopen",
        revoke_refuses_the_certificate_and_survives_reopen,
    ),
    ("agent_reports_read_back", agent_reports_read_back),
];
