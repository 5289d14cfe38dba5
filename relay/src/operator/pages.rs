//! The console's pages, rendered on the server: HTML with every value
//! escaped, one stylesheet and one script (no inline script or style, so
//! the Content-Security-Policy forbids both).

use std::fmt::Write as _;

use serde::Serialize;

use super::traffic::{Bucket, RecentError};
use crate::admin::{CodeIssued, SiteLimits};

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
    /// When the agent's certificate expires (unix seconds).
    pub cert_expires: Option<i64>,
    /// Requests answered in the last hour (on this node).
    pub requests_hour: u64,
    /// Of which 5xx.
    pub errors_hour: u64,
    /// Limits set for the site in the registry.
    pub limits: crate::limits::Overrides,
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

/// The day of `secs` (`2031-12-06`), or a dash.
fn day_of(secs: Option<i64>) -> String {
    let full = when(secs);
    full.split(' ').next().unwrap_or("—").to_string()
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
            r#"<tr data-site="{name}" class="{state}"><td><a href="/console/sites/{name}">{name}</a></td><td class="state">{state}{dup}</td><td>{seen}</td><td>{transport}</td><td>{version}</td><td>{console}</td><td>{pairing}</td><td>{cert}</td><td class="num">{requests}</td><td class="num{bad}">{errors}</td></tr>"#,
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
            cert = esc(&day_of(r.cert_expires)),
            requests = r.requests_hour,
            errors = r.errors_hour,
            bad = if r.errors_hour > 0 { " bad" } else { "" },
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
<table id="sites" data-live="/console/live"><thead><tr><th>Site</th><th>State</th><th>Last seen</th><th>Transport</th><th>Agent</th><th>Console</th><th>Pairing</th><th>Certificate until</th><th class="num">Requests 1 h</th><th class="num">5xx 1 h</th></tr></thead>
<tbody>{rows}</tbody></table></section>"#,
            total = rows.len(),
            csrf = esc(viewer.csrf),
            rows = site_rows(rows),
        ),
    )
}

/// Requests (bars, 5xx in red) and mean latency (line) per 15 minutes
/// over 24 hours, as an SVG drawn here.
pub fn chart(day: &[Bucket]) -> String {
    let (w, h, pad) = (960.0_f64, 180.0_f64, 28.0_f64);
    let max_req = day.iter().map(|b| b.requests).max().unwrap_or(0).max(1) as f64;
    let mean = |b: &Bucket| {
        if b.requests == 0 {
            0.0
        } else {
            b.latency_ms_sum as f64 / b.requests as f64
        }
    };
    let max_ms = day.iter().map(mean).fold(0.0_f64, f64::max).max(1.0);
    let step = (w - 2.0 * pad) / day.len().max(1) as f64;
    let y = |v: f64, max: f64| h - pad - v / max * (h - 2.0 * pad);
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="Requests and latency, last 24 hours">"#
    );
    let _ = write!(
        svg,
        r##"<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#d9dee3"/>"##,
        b = h - pad,
        r = w - pad
    );
    for (i, b) in day.iter().enumerate() {
        let x = pad + i as f64 * step;
        if b.requests > 0 {
            let top = y(b.requests as f64, max_req);
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{top:.1}" width="{bw:.1}" height="{bh:.1}" fill="#9fb3c8"><title>{n} requests</title></rect>"##,
                bw = (step - 1.0).max(1.0),
                bh = h - pad - top,
                n = b.requests
            );
        }
        if b.errors > 0 {
            let top = y(b.errors as f64, max_req);
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{top:.1}" width="{bw:.1}" height="{bh:.1}" fill="#b42318"><title>{n} 5xx</title></rect>"##,
                bw = (step - 1.0).max(1.0),
                bh = h - pad - top,
                n = b.errors
            );
        }
    }
    let points: Vec<String> = day
        .iter()
        .enumerate()
        .filter(|(_, b)| b.requests > 0)
        .map(|(i, b)| format!("{:.1},{:.1}", pad + (i as f64 + 0.5) * step, y(mean(b), max_ms)))
        .collect();
    if points.len() > 1 {
        let _ = write!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#1d2125" stroke-width="1.5"/>"##,
            points.join(" ")
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{pad}" y="14" font-size="12" fill="#5f6b76">max {max_req} requests / 15 min · mean latency up to {max_ms:.0} ms</text><text x="{pad}" y="{ly}" font-size="11" fill="#5f6b76">24 h ago</text><text x="{rx}" y="{ly}" font-size="11" fill="#5f6b76" text-anchor="end">now</text></svg>"##,
        ly = h - 8.0,
        rx = w - pad
    );
    svg
}

/// One site: its state, traffic, recent errors, a new code, revocation.
pub fn site(viewer: &Viewer, row: &SiteRow, detail: &SiteDetail, notice: Option<Notice>) -> String {
    let SiteDetail {
        links,
        hub,
        day,
        errors,
        limits,
    } = detail;
    let links = if links.is_empty() {
        "none on this node".to_string()
    } else {
        links.iter().map(|l| esc(l)).collect::<Vec<_>>().join(", ")
    };
    layout(
        &row.name,
        Some(viewer),
        &format!(
            r#"<section><h2>{name}</h2>{notice}
<table class="facts" id="site" data-site="{name}">
<tr><th>State</th><td>{state}</td></tr>
<tr><th>Last seen</th><td>{seen}</td></tr>
<tr><th>Transport</th><td>{transport}</td></tr>
<tr><th>Links on this node</th><td>{links}</td></tr>
<tr><th>Agent version</th><td>{version}</td></tr>
<tr><th>Console</th><td>{console}</td></tr>
<tr><th>Event hub</th><td id="hub">{hub}</td></tr>
<tr><th>Pairing</th><td>{pairing}</td></tr>
<tr><th>Agent certificate until</th><td>{cert}</td></tr>
<tr><th>Last hour</th><td>{requests} requests, {errors_hour} 5xx (this node)</td></tr>
</table>
<h3>Last 24 hours</h3>{chart}
<h3>Recent errors</h3>{errors}
<h3>Limits</h3>{limits}
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
            hub = esc(&hub_cell(hub.as_ref())),
            pairing = esc(&pairing_cell(row)),
            csrf = esc(viewer.csrf),
            cert = esc(&day_of(row.cert_expires)),
            requests = row.requests_hour,
            errors_hour = row.errors_hour,
            chart = chart(day),
            errors = recent_errors(errors),
            limits = limits_form(viewer, limits),
            notice = notice
                .map(|n| {
                    let class = if n.problem { "notice bad" } else { "notice" };
                    format!(r#"<p class="{class}" id="notice">{}</p>"#, esc(n.text))
                })
                .unwrap_or_default(),
        ),
    )
}

/// What a site page shows beyond its row of the table.
pub struct SiteDetail<'a> {
    /// This node's links to the agent, described.
    pub links: Vec<String>,
    /// The agent's event hub as it last reported it on this node's link.
    pub hub: Option<keyway_proto::control::HubReport>,
    /// Traffic over the last 24 hours.
    pub day: Vec<Bucket>,
    /// The latest errors.
    pub errors: Vec<RecentError>,
    /// The limits in force.
    pub limits: &'a SiteLimits,
}

fn hub_cell(hub: Option<&keyway_proto::control::HubReport>) -> String {
    let Some(h) = hub else {
        return "— (off, or not reported to this node)".into();
    };
    let upstream = if h.upstream {
        "receiving the console's events"
    } else {
        "NOT connected to the console's events"
    };
    let plural = |n: u64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    format!(
        "{upstream}; {}; {}",
        plural(h.subscribers.into(), "subscriber", "subscribers"),
        plural(h.last_seq, "event", "events")
    )
}

/// What an action on a site page did, shown above the page.
pub struct Notice<'a> {
    /// The text.
    pub text: &'a str,
    /// Whether it says what went wrong.
    pub problem: bool,
}

/// The site's limits: the value in force and where it comes from, and a
/// field to set each for this site (empty: relay.toml's applies).
fn limits_form(viewer: &Viewer, limits: &SiteLimits) -> String {
    let mut out = format!(
        r#"<form method="post" action="/console/sites/{site}/limits" id="limits"><input type="hidden" name="csrf" value="{csrf}">
<table class="limits"><thead><tr><th>Limit</th><th>In force</th><th>From</th><th>Set for this site</th></tr></thead><tbody>"#,
        site = esc(&limits.site),
        csrf = esc(viewer.csrf),
    );
    for row in &limits.limits {
        let _ = write!(
            out,
            r#"<tr><td><label for="limit-{field}" title="{about}">{field}</label></td><td>{value}</td><td>{source}</td><td><input id="limit-{field}" name="{field}" value="{set}" autocomplete="off"></td></tr>"#,
            field = esc(row.field),
            about = esc(row.about),
            value = esc(&row.value),
            source = esc(row.source),
            set = esc(row.set.as_deref().unwrap_or("")),
        );
    }
    out.push_str(
        r#"</tbody></table><button>Save limits</button> <span class="hint">An empty field takes relay.toml's value; every relay applies a change within a second.</span></form>"#,
    );
    out
}

fn recent_errors(errors: &[RecentError]) -> String {
    if errors.is_empty() {
        return r#"<p class="hint">None since this relay started.</p>"#.into();
    }
    let mut out = String::from(
        r#"<table class="errors"><thead><tr><th>When</th><th>Status</th><th>Code</th></tr></thead><tbody>"#,
    );
    for e in errors {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&when(Some(e.at))),
            e.status,
            esc(&e.code)
        );
    }
    out.push_str("</tbody></table>");
    out
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
            cert_expires: None,
            limits: Default::default(),
            requests_hour: 0,
            errors_hour: 0,
        };
        let html = site_rows(&[row]);
        assert!(!html.contains("<script>") && !html.contains("<img"), "{html}");
    }

    #[test]
    fn the_chart_draws_requests_errors_and_latency() {
        let mut day = vec![Bucket::default(); 96];
        day[90] = Bucket {
            start: 0,
            requests: 40,
            errors: 4,
            latency_ms_sum: 400,
        };
        day[95] = Bucket {
            start: 0,
            requests: 10,
            errors: 0,
            latency_ms_sum: 300,
        };
        let svg = chart(&day);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 3, "two request bars, one 5xx bar");
        assert!(svg.contains("<polyline") && svg.contains("max 40 requests"), "{svg}");
        assert!(chart(&vec![Bucket::default(); 96]).contains("max 1 requests"));
    }
}
