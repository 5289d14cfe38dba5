//! The console's pages, rendered on the server: HTML with every value
//! escaped, one stylesheet and one script (no inline script or style, so
//! the Content-Security-Policy forbids both).

use std::fmt::Write as _;

use serde::Serialize;

use crate::admin::CodeIssued;

/// `s` safe inside HTML text and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Who is signed in, for the header and the forms.
pub struct Viewer<'a> {
    /// The operator.
    pub operator: &'a str,
    /// The session's CSRF token.
    pub csrf: &'a str,
}

fn layout(title: &str, viewer: Option<&Viewer>, body: &str) -> String {
    let nav = match viewer {
        Some(v) => format!(
            r#"<nav><a href="/console/">Sites</a><span class="who">{}</span>
<form method="post" action="/console/logout"><input type="hidden" name="csrf" value="{}"><button>Sign out</button></form></nav>"#,
            esc(v.operator),
            esc(v.csrf)
        ),
        None => String::new(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · Keyway</title><link rel="stylesheet" href="/console/assets/console.css"></head>
<body><header><h1>Keyway</h1>{nav}</header><main>{body}</main>
<script src="/console/assets/console.js"></script></body></html>"#,
        esc(title)
    )
}

/// The sign-in page, with what went wrong last, if anything.
pub fn sign_in(form_token: &str, problem: Option<&str>, no_operators: bool) -> String {
    let problem = problem.map_or(String::new(), |p| {
        format!(r#"<p class="problem" role="alert">{}</p>"#, esc(p))
    });
    let hint = if no_operators {
        r#"<p class="hint">No operator yet. On the relay, run <code>keyway-relay operator add NAME</code>: it prints a password.</p>"#
    } else {
        ""
    };
    layout(
        "Sign in",
        None,
        &format!(
            r#"<section class="signin"><h2>Sign in</h2>{problem}{hint}
<form method="post" action="/console/login">
<input type="hidden" name="csrf" value="{}">
<label>Operator <input name="name" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button>Sign in</button></form></section>"#,
            esc(form_token)
        ),
    )
}

/// One row of the sites table (also what the live stream sends).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SiteRow {
    /// The site.
    pub name: String,
    /// Whether an agent link is up (on this node or another).
    pub online: bool,
    /// Unix seconds the agent was last seen (connected or left).
    pub last_seen: Option<i64>,
    /// "quic" or "tcp" while online.
    pub transport: Option<String>,
    /// The agent's version.
    pub agent_version: Option<String>,
    /// Whether the agent reaches its console; what is wrong if not.
    pub console_ok: Option<bool>,
    /// What the agent said is wrong with the console.
    pub console_problem: Option<String>,
    /// Paired (an agent certificate is current).
    pub paired: bool,
    /// A pairing code is waiting, until then (unix seconds).
    pub code_expires: Option<i64>,
    /// Two agents seen with one identity.
    pub duplicate: Option<String>,
}

fn when(secs: Option<i64>) -> String {
    match secs {
        Some(s) if s > 0 => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64))
                .to_string()
                .replace('T', " ")
                .replace('Z', " UTC")
        }
        _ => "—".into(),
    }
}

fn console_cell(r: &SiteRow) -> String {
    match (r.console_ok, &r.console_problem) {
        (Some(true), _) => "reachable".into(),
        (Some(false), Some(p)) => format!("unreachable: {p}"),
        (Some(false), None) => "unreachable".into(),
        (None, _) => "—".into(),
    }
}

fn pairing_cell(r: &SiteRow) -> String {
    match (r.paired, r.code_expires) {
        (_, Some(t)) => format!("code waiting until {}", when(Some(t))),
        (true, None) => "paired".into(),
        (false, None) => "not paired".into(),
    }
}

/// The table body (also rebuilt by the script from live rows).
pub fn site_rows(rows: &[SiteRow]) -> String {
    let mut out = String::with_capacity(rows.len() * 400);
    for r in rows {
        let state = if r.online { "online" } else { "offline" };
        let _ = write!(
            out,
            r#"<tr data-site="{name}" class="{state}"><td><a href="/console/sites/{name}">{name}</a></td><td class="state">{state}{dup}</td><td>{seen}</td><td>{transport}</td><td>{version}</td><td>{console}</td><td>{pairing}</td></tr>"#,
            name = esc(&r.name),
            dup = if r.duplicate.is_some() {
                " · duplicate agent"
            } else {
                ""
            },
            seen = esc(&when(r.last_seen)),
            transport = esc(r.transport.as_deref().unwrap_or("—")),
            version = esc(r.agent_version.as_deref().unwrap_or("—")),
            console = esc(&console_cell(r)),
            pairing = esc(&pairing_cell(r)),
        );
    }
    out
}

/// Every site at a glance, live.
pub fn sites(viewer: &Viewer, rows: &[SiteRow], problem: Option<&str>) -> String {
    let online = rows.iter().filter(|r| r.online).count();
    let problem = problem.map_or(String::new(), |p| {
        format!(r#"<p class="problem" role="alert">{}</p>"#, esc(p))
    });
    layout(
        "Sites",
        Some(viewer),
        &format!(
            r#"<section><h2>Sites <small id="counts">{online} of {total} online</small></h2>{problem}
<div class="bar"><input id="filter" type="search" placeholder="Filter sites" aria-label="Filter sites">
<form method="post" action="/console/sites" class="add"><input type="hidden" name="csrf" value="{csrf}">
<input name="name" placeholder="new-site" required pattern="[a-z0-9-]{{1,63}}" aria-label="New site name"><button>Add site</button></form></div>
<table id="sites" data-live="/console/live"><thead><tr><th>Site</th><th>State</th><th>Last seen</th><th>Transport</th><th>Agent</th><th>Console</th><th>Pairing</th></tr></thead>
<tbody>{rows}</tbody></table></section>"#,
            total = rows.len(),
            csrf = esc(viewer.csrf),
            rows = site_rows(rows),
        ),
    )
}

/// One site: its state, a new code, revocation.
pub fn site(viewer: &Viewer, row: &SiteRow, links: &[String]) -> String {
    let links = if links.is_empty() {
        "none on this node".to_string()
    } else {
        links.iter().map(|l| esc(l)).collect::<Vec<_>>().join(", ")
    };
    layout(
        &row.name,
        Some(viewer),
        &format!(
            r#"<section><h2>{name}</h2>
<table class="facts" id="site" data-site="{name}">
<tr><th>State</th><td>{state}</td></tr>
<tr><th>Last seen</th><td>{seen}</td></tr>
<tr><th>Transport</th><td>{transport}</td></tr>
<tr><th>Links on this node</th><td>{links}</td></tr>
<tr><th>Agent version</th><td>{version}</td></tr>
<tr><th>Console</th><td>{console}</td></tr>
<tr><th>Pairing</th><td>{pairing}</td></tr>
</table>
<form method="post" action="/console/sites/{name}/code"><input type="hidden" name="csrf" value="{csrf}">
<button>New pairing code</button> <span class="hint">The previous code stops working.</span></form>
<form method="post" action="/console/sites/{name}/revoke" class="danger"><input type="hidden" name="csrf" value="{csrf}">
<label>Revoke {name}'s agent: type <b>{name}</b> to confirm <input name="confirm" required autocomplete="off"></label>
<button>Revoke</button></form></section>"#,
            name = esc(&row.name),
            state = if row.online { "online" } else { "offline" },
            seen = esc(&when(row.last_seen)),
            transport = esc(row.transport.as_deref().unwrap_or("—")),
            version = esc(row.agent_version.as_deref().unwrap_or("—")),
            console = esc(&console_cell(row)),
            pairing = esc(&pairing_cell(row)),
            csrf = esc(viewer.csrf),
        ),
    )
}

/// A pairing code just issued: the command to run on the Pi, and its QR code.
pub fn code(viewer: &Viewer, issued: &CodeIssued, qr_svg: &str) -> String {
    layout(
        &format!("Pairing {}", issued.site),
        Some(viewer),
        &format!(
            r#"<section><h2>Pair {site}</h2>
<p>Pairing code <b id="code">{code}</b>, single use, valid until {until}.</p>
<p>On the machine next to the console, run:</p><pre id="command">{command}</pre>
<div class="qr" aria-label="QR code of the command">{qr_svg}</div>
<p>It will answer at <code>{url}</code>.</p>
<p><a href="/console/sites/{site}">Back to {site}</a></p></section>"#,
            site = esc(&issued.site),
            code = esc(&issued.code),
            until = esc(&when(Some(issued.expires_at))),
            command = esc(&issued.command),
            url = esc(&issued.url),
        ),
    )
}

/// A page saying what happened (a revocation, a refusal).
pub fn message(viewer: Option<&Viewer>, title: &str, text: &str) -> String {
    layout(
        title,
        viewer,
        &format!(
            r#"<section><h2>{}</h2><p>{}</p><p><a href="/console/">Sites</a></p></section>"#,
            esc(title),
            esc(text)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_everywhere() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let row = SiteRow {
            name: "hq".into(),
            online: false,
            last_seen: None,
            transport: None,
            agent_version: Some("<script>alert(1)</script>".into()),
            console_ok: Some(false),
            console_problem: Some("\"><img src=x>".into()),
            paired: true,
            code_expires: None,
            duplicate: None,
        };
        let html = site_rows(&[row]);
        assert!(!html.contains("<script>") && !html.contains("<img"), "{html}");
    }
}
