//! The dashboard: server-rendered HTML from the same documents the API serves, and a
//! little plain JavaScript (`assets/app.js`) that swaps in fresh fragments when the event
//! stream says something changed. Everything is escaped except handoff markdown, which is
//! rendered with raw HTML turned into text and only http(s)/mailto/relative links kept.

use std::fmt::Write as _;

use serde_json::Value;

use super::Ctx;
use super::api::{self, RUN_STATUSES, run_document};
use super::http::{ApiError, Outcome, Query, header, reply};
use crate::report::{elapsed, human_ms, local_time};
use crate::store::visit_label;

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");
const FAVICON: &str = include_str!("assets/favicon.svg");

/// `GET /static/{name}`
pub fn asset(name: &str) -> Result<Outcome, ApiError> {
    let (ctype, body) = match name {
        "style.css" => ("text/css; charset=utf-8", STYLE),
        "app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "favicon.svg" => ("image/svg+xml", FAVICON),
        _ => return Err(ApiError::not_found(&format!("no asset {name:?}"))),
    };
    Ok(Outcome::Reply(reply(200, ctype, body.as_bytes().to_vec())))
}

/// Text for HTML (content and attribute values alike).
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

/// A path segment for a URL.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Handoff markdown as HTML: raw HTML is shown as text, unsafe link schemes dropped.
pub fn markdown(md: &str) -> String {
    use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};
    let safe = |url: &CowStr| -> CowStr<'static> {
        let u = url.trim().to_ascii_lowercase();
        let scheme = u.split_once(':').map(|(s, _)| s.to_string());
        let ok = match scheme {
            None => true,
            Some(s) if s.contains(['/', '?', '#']) => true,
            Some(s) => matches!(s.as_str(), "http" | "https" | "mailto"),
        };
        if ok { CowStr::from(url.to_string()) } else { CowStr::from("#") }
    };
    let opts = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let events = Parser::new_ext(md, opts).map(|ev| match ev {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Link { link_type, dest_url: safe(&dest_url), title, id })
        }
        Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Image { link_type, dest_url: safe(&dest_url), title, id })
        }
        other => other,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

fn page(title: &str, body_attrs: &str, main: &str) -> Outcome {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · runner</title><link rel=\"icon\" href=\"/favicon.ico\" type=\"image/svg+xml\">\
<link rel=\"stylesheet\" href=\"/static/style.css\"><script src=\"/static/app.js\" defer></script></head>\
<body {body_attrs}><a class=\"skip\" href=\"#main\">Skip to content</a>\
<header class=\"top\"><a class=\"brand\" href=\"/\">runner</a>\
<span id=\"conn\" class=\"conn\" role=\"status\" aria-live=\"polite\">connecting…</span></header>\
<main id=\"main\">{main}</main>\
<div id=\"toast\" class=\"toast\" role=\"status\" aria-live=\"polite\"></div>\
<dialog id=\"token-dialog\" aria-labelledby=\"token-title\"><form method=\"dialog\">\
<h2 id=\"token-title\">Token needed</h2>\
<p id=\"token-why\">Approving, rejecting, cancelling and resuming need the token that \
<code>runner serve</code> printed when it started (or its <code>--token</code>). It is kept in this tab only.</p>\
<label for=\"token-input\">API token</label>\
<input id=\"token-input\" name=\"token\" type=\"password\" autocomplete=\"off\" spellcheck=\"false\">\
<div class=\"buttons\"><button value=\"ok\" id=\"token-ok\">Save token</button>\
<button value=\"cancel\" formnovalidate>Cancel</button></div></form></dialog>\
</body></html>\n",
        title = esc(title)
    );
    html_reply(html)
}

fn html_reply(html: String) -> Outcome {
    let r = reply(200, "text/html; charset=utf-8", html.into_bytes()).with_header(header(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ));
    Outcome::Reply(r)
}

fn badge(status: &str) -> String {
    format!("<span class=\"badge s-{s}\">{s}</span>", s = esc(status))
}

fn duration_cell(v: &Value) -> String {
    let ms = v["duration_ms"].as_u64();
    let text = ms.map(human_ms).unwrap_or_default();
    match (v["live"].as_bool(), v["started_at"].as_str()) {
        (Some(true), Some(start)) => {
            format!("<span data-live-since=\"{}\">{}</span>", esc(start), esc(&text))
        }
        _ => esc(&text),
    }
}

/// `GET /` (with `partial=1`: just the table, for live updates).
pub fn runs_page(ctx: &Ctx, mut q: Query) -> Result<Outcome, ApiError> {
    let partial = q.take("partial").is_some();
    let flow = q.take("flow");
    let status = q.take("status");
    let since = q.take("since");
    let limit = q.take("limit");
    let offset = q.take("offset");
    q.ignore_rest();
    let mut params: Vec<(&str, String)> = Vec::new();
    for (k, v) in
        [("flow", &flow), ("status", &status), ("since", &since), ("limit", &limit), ("offset", &offset)]
    {
        if let Some(v) = v {
            params.push((k, v.clone()));
        }
    }
    let mut query =
        Query::parse(&params.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&"))?;
    let page_data = match api::run_page(ctx, &mut query) {
        Ok(d) => d,
        Err(e) if !partial && e.status == 400 => {
            let main = format!(
                "<h1>Runs</h1><p role=\"alert\">{}</p><p><a href=\"/\">All runs</a></p>",
                esc(&e.message)
            );
            let Outcome::Reply(r) = page("Runs", "data-page=\"error\"", &main) else { return Err(e) };
            return Ok(Outcome::Reply(r.with_status_code(400)));
        }
        Err(e) => return Err(e),
    };
    let qs = |extra: &[(&str, String)]| -> String {
        let mut all: Vec<(&str, String)> = params.iter().filter(|(k, _)| *k != "offset").cloned().collect();
        all.extend(extra.iter().cloned());
        all.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&")
    };
    let mut t = String::new();
    if page_data.runs.is_empty() {
        t.push_str(
            "<p class=\"empty\">No runs match. Start one with <code>runner run flows/NAME.toml</code>.</p>",
        );
    } else {
        t.push_str(
            "<table class=\"runs cards\"><caption class=\"sr-only\">Runs, newest first</caption><thead><tr>\
<th scope=\"col\">Status</th><th scope=\"col\">Run</th><th scope=\"col\">Flow</th><th scope=\"col\">Started</th>\
<th scope=\"col\">Duration</th><th scope=\"col\">Steps</th><th scope=\"col\">Waiting</th></tr></thead><tbody>",
        );
        for r in &page_data.runs {
            let id = r["run_id"].as_str().unwrap_or_default();
            let total = r["steps_total"].as_i64().unwrap_or(0);
            let done = r["steps_succeeded"].as_i64().unwrap_or(0);
            let failed = r["steps_failed"].as_i64().unwrap_or(0);
            let waiting: Vec<String> = r["waiting_for_approval"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str().map(esc))
                .collect();
            let _ = write!(
                t,
                "<tr data-run=\"{eid}\" data-status=\"{st}\"><td data-label=\"Status\">{badge}</td>\
<td data-label=\"Run\"><a href=\"/runs/{uid}\">{eid}</a></td><td data-label=\"Flow\">{flow}</td>\
<td data-label=\"Started\">{started}</td><td data-label=\"Duration\">{dur}</td>\
<td data-label=\"Steps\"><span class=\"progress\" role=\"img\" aria-label=\"{done} of {total} steps succeeded\">\
<span class=\"ok\" style=\"width:{okp}%\"></span><span class=\"bad\" style=\"width:{badp}%\"></span></span> {done}/{total}</td>\
<td data-label=\"Waiting\">{waiting}</td></tr>",
                eid = esc(id),
                uid = enc(id),
                st = esc(r["status"].as_str().unwrap_or_default()),
                badge = badge(r["status"].as_str().unwrap_or_default()),
                flow = esc(r["flow"].as_str().unwrap_or_default()),
                started = esc(&local_time(r["started_at"].as_str().unwrap_or_default())),
                dur = duration_cell(r),
                okp = if total > 0 { done * 100 / total } else { 0 },
                badp = if total > 0 { failed * 100 / total } else { 0 },
                waiting = if waiting.is_empty() {
                    String::new()
                } else {
                    format!("approve: {}", waiting.join(", "))
                },
            );
        }
        t.push_str("</tbody></table>");
    }
    let shown_to = page_data.offset + page_data.runs.len();
    let _ = write!(
        t,
        "<nav class=\"pager\" aria-label=\"Pages\"><span>{}–{} of {}</span>",
        if page_data.runs.is_empty() { 0 } else { page_data.offset + 1 },
        shown_to,
        page_data.total
    );
    if page_data.offset > 0 {
        let prev = page_data.offset.saturating_sub(page_data.limit);
        let _ = write!(t, " <a href=\"/?{}\">Newer</a>", esc(&qs(&[("offset", prev.to_string())])));
    }
    if shown_to < page_data.total {
        let _ = write!(t, " <a href=\"/?{}\">Older</a>", esc(&qs(&[("offset", shown_to.to_string())])));
    }
    t.push_str("</nav>");
    if partial {
        return Ok(html_reply(t));
    }
    let mut f = String::from(
        "<h1>Runs</h1><form class=\"filters\" method=\"get\" action=\"/\" role=\"search\" aria-label=\"Filter runs\">",
    );
    f.push_str("<label>Flow <select name=\"flow\"><option value=\"\">all flows</option>");
    for name in &page_data.flows {
        let sel = if flow.as_deref() == Some(name.as_str()) { " selected" } else { "" };
        let _ = write!(f, "<option{sel}>{}</option>", esc(name));
    }
    f.push_str(
        "</select></label><label>Status <select name=\"status\"><option value=\"\">any status</option>",
    );
    for s in RUN_STATUSES {
        let sel = if status.as_deref() == Some(s) { " selected" } else { "" };
        let _ = write!(f, "<option{sel}>{s}</option>");
    }
    f.push_str("</select></label><label>Started <select name=\"since\"><option value=\"\">any time</option>");
    for (v, label) in [
        ("1h", "in the last hour"),
        ("24h", "in the last day"),
        ("7d", "in the last week"),
        ("30d", "in the last 30 days"),
    ] {
        let sel = if since.as_deref() == Some(v) { " selected" } else { "" };
        let _ = write!(f, "<option value=\"{v}\"{sel}>{label}</option>");
    }
    f.push_str("</select></label><button type=\"submit\">Filter</button></form>");
    let partial_url = format!("/?{}", {
        let mut all: Vec<(&str, String)> = params.clone();
        all.push(("partial", "1".into()));
        all.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&")
    });
    let _ = write!(f, "<div id=\"live-region\" data-partial=\"{}\">{t}</div>", esc(&partial_url));
    Ok(page("Runs", "data-page=\"runs\" data-stream=\"/api/events\"", &f))
}

/// `GET /runs/{id}` (with `partial=1`: the part that changes, for live updates).
pub fn run_page(ctx: &Ctx, id: &str, mut q: Query) -> Result<Outcome, ApiError> {
    let partial = q.take("partial").is_some();
    q.ignore_rest();
    let doc = match run_document(ctx, id) {
        Ok(d) => d,
        Err(e) if !partial && (e.status == 404 || e.status == 400) => {
            let main =
                format!("<h1>No such run</h1><p>{}</p><p><a href=\"/\">All runs</a></p>", esc(&e.message));
            let Outcome::Reply(r) = page("No such run", "data-page=\"missing\"", &main) else {
                return Err(e);
            };
            return Ok(Outcome::Reply(r.with_status_code(e.status)));
        }
        Err(e) => return Err(e),
    };
    let body = run_body(&doc);
    if partial {
        return Ok(html_reply(body));
    }
    let uid = enc(id);
    let main = format!(
        "<nav class=\"crumbs\" aria-label=\"Breadcrumb\"><a href=\"/\">Runs</a> / <span>{eid}</span></nav>\
<div id=\"live-region\" data-partial=\"/runs/{uid}?partial=1\">{body}</div>\
<section class=\"logs\" aria-labelledby=\"logs-h\"><h2 id=\"logs-h\">Logs</h2>\
<form id=\"log-form\" class=\"filters\" aria-label=\"Choose a log\">\
<label>Step <select id=\"log-step\" name=\"step\"></select></label>\
<label>Visit and attempt <select id=\"log-attempt\" name=\"attempt\"></select></label>\
<label>Stream <select id=\"log-stream\" name=\"stream\"><option>stdout</option><option>stderr</option></select></label>\
<span id=\"log-state\" class=\"muted\" role=\"status\" aria-live=\"polite\"></span></form>\
<pre id=\"log-text\" class=\"log\" tabindex=\"0\" aria-label=\"Log output\"></pre></section>",
        eid = esc(id),
    );
    let attrs = format!(
        "data-page=\"run\" data-run=\"{}\" data-stream=\"/api/runs/{uid}/events?after={}\"",
        esc(id),
        doc["last_seq"].as_i64().unwrap_or(0)
    );
    Ok(page(&format!("Run {id}"), &attrs, &main))
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

/// The changing part of a run page.
fn run_body(d: &Value) -> String {
    let id = s(d, "run_id");
    let status = s(d, "status");
    let live = d["live"].as_bool().unwrap_or(false);
    let mut o = String::new();
    let _ = write!(
        o,
        "<div class=\"run-head\" data-status=\"{st}\" data-live=\"{live}\"><h1><span class=\"sr-only\">Run </span>{eid}</h1>{badge}",
        st = esc(status),
        eid = esc(id),
        badge = badge(status)
    );
    o.push_str("<div class=\"actions\">");
    if live {
        let _ = write!(
            o,
            "<button type=\"button\" class=\"danger\" data-action=\"cancel\" aria-label=\"Cancel run {0}\">Cancel run</button>",
            esc(id)
        );
    } else if status != "succeeded" {
        let _ = write!(
            o,
            "<button type=\"button\" data-action=\"resume\" aria-label=\"Resume run {0}\">Resume run</button>",
            esc(id)
        );
    }
    o.push_str("</div></div><dl class=\"facts\">");
    let total = d["steps_total"].as_i64().unwrap_or(0);
    let done = d["steps_succeeded"].as_i64().unwrap_or(0);
    let mut fact = |k: &str, v: String| {
        let _ = write!(o, "<div><dt>{k}</dt><dd>{v}</dd></div>");
    };
    fact("Flow", esc(s(d, "flow")));
    fact("Started", esc(&local_time(s(d, "started_at"))));
    fact("Duration", duration_cell(d));
    fact("Steps", format!("{done}/{total} succeeded"));
    if let Some(p) = d["params"].as_object().filter(|p| !p.is_empty()) {
        let text: Vec<String> = p
            .iter()
            .map(|(k, v)| {
                format!("{}={}", esc(k), esc(v.as_str().map_or(v.to_string(), str::to_string).as_str()))
            })
            .collect();
        fact("Params", text.join(", "));
    }
    if let Some(profile) = d["profile"].as_str() {
        fact("Profile", esc(profile));
    }
    fact("Sessions", d["sessions"].to_string());
    o.push_str("</dl>");

    // What waits for a person, first: it is why most people open the page.
    let waiting: Vec<&Value> =
        d["approvals"].as_array().into_iter().flatten().filter(|a| s(a, "status") == "requested").collect();
    if !waiting.is_empty() {
        o.push_str("<section class=\"approvals\" aria-labelledby=\"appr-h\"><h2 id=\"appr-h\">Waiting for approval</h2>");
        for a in waiting {
            let step = s(a, "step");
            let label = visit_label(step, a["visit"].as_u64().unwrap_or(1) as u32);
            let fid = format!("appr-{}", enc(step).replace('%', "_"));
            let _ = write!(
                o,
                "<form class=\"approval\" data-step=\"{es}\" aria-label=\"Approval of {el}\"><h3>{el}</h3>",
                es = esc(step),
                el = esc(&label)
            );
            if let Some(m) = a["message"].as_str() {
                let _ = write!(o, "<p class=\"message\">{}</p>", esc(m));
            }
            if let Some(list) = a["approvers"].as_array().filter(|l| !l.is_empty()) {
                let names: Vec<String> = list.iter().filter_map(|n| n.as_str().map(esc)).collect();
                let _ = write!(o, "<p class=\"muted\">Approvers: {}</p>", names.join(", "));
            }
            let _ = write!(
                o,
                "<div class=\"fields\"><label for=\"{fid}-by\">Your name</label><input id=\"{fid}-by\" name=\"by\" autocomplete=\"name\">\
<label for=\"{fid}-comment\">Comment</label><input id=\"{fid}-comment\" name=\"comment\"></div>\
<div class=\"buttons\"><button type=\"button\" class=\"ok\" data-action=\"approve\" aria-label=\"Approve {el}\">Approve</button>\
<button type=\"button\" class=\"danger\" data-action=\"reject\" aria-label=\"Reject {el}\">Reject</button></div></form>",
                el = esc(&label)
            );
        }
        o.push_str("</section>");
    }

    // The timeline: one row per step, one bar per attempt, on the run's time axis.
    let start = s(d, "started_at").to_string();
    let end = d["finished_at"].as_str().map(str::to_string).unwrap_or_else(crate::journal::now_ts);
    let span = elapsed(&start, &end).map(|x| x.as_millis() as f64).unwrap_or(0.0).max(1.0);
    o.push_str("<section aria-labelledby=\"steps-h\"><h2 id=\"steps-h\">Steps</h2><ol class=\"timeline\">");
    for st in d["steps"].as_array().into_iter().flatten() {
        let step = s(st, "step_id");
        let visit = st["visit"].as_u64().unwrap_or(1) as u32;
        let sstat = s(st, "status");
        let did = format!("step-{}", enc(step).replace('%', "_"));
        let _ = write!(
            o,
            "<li class=\"step\" data-step=\"{es}\" data-status=\"{ss}\"><div class=\"step-row\">\
<span class=\"name\">{label}</span>{badge}<span class=\"muted\">{att}</span><span class=\"dur\">{dur}</span>\
<span class=\"track\" role=\"img\" aria-label=\"{label}: {ss}\">",
            es = esc(step),
            ss = esc(sstat),
            label = esc(&visit_label(step, visit)),
            badge = badge(sstat),
            att = match st["attempts"].as_i64().unwrap_or(0) {
                0 => String::new(),
                1 => "1 attempt".into(),
                n => format!("{n} attempts"),
            },
            dur = st["duration_ms"].as_u64().map(human_ms).unwrap_or_default(),
        );
        for v in st["visits"].as_array().into_iter().flatten() {
            for a in v["attempts"].as_array().into_iter().flatten() {
                let Some(a_start) = a["started_at"].as_str() else { continue };
                let left =
                    elapsed(&start, a_start).map(|x| x.as_millis() as f64).unwrap_or(0.0) / span * 100.0;
                let width = match a["duration_ms"].as_f64() {
                    Some(ms) => ms / span * 100.0,
                    None => (span - left * span / 100.0) / span * 100.0,
                };
                let _ = write!(
                    o,
                    "<span class=\"bar s-{}\" style=\"left:{:.2}%;width:{:.2}%\" title=\"{}\"></span>",
                    esc(s(a, "status")),
                    left.clamp(0.0, 100.0),
                    width.clamp(0.4, 100.0 - left.clamp(0.0, 99.6)),
                    esc(&format!(
                        "{} attempt {}: {}",
                        visit_label(step, a["visit"].as_u64().unwrap_or(1) as u32),
                        a["attempt"],
                        s(a, "status")
                    ))
                );
            }
        }
        o.push_str("</span></div>");
        if let Some(m) = st["message"].as_str().filter(|m| !m.is_empty() && sstat != "succeeded") {
            let _ = write!(o, "<p class=\"step-msg\">{}</p>", esc(m));
        }
        let _ = write!(o, "<details id=\"{did}\"><summary>Details of {}</summary>", esc(step));
        step_details(&mut o, st, step);
        o.push_str("</details></li>");
    }
    o.push_str("</ol></section>");

    let routes = d["routing_decisions"].as_array().cloned().unwrap_or_default();
    if !routes.is_empty() {
        o.push_str("<section aria-labelledby=\"routes-h\"><h2 id=\"routes-h\">Routing decisions</h2><table class=\"cards\"><thead><tr>\
<th scope=\"col\">Router</th><th scope=\"col\">Source</th><th scope=\"col\">Chosen</th><th scope=\"col\">Candidates</th><th scope=\"col\">Decided</th></tr></thead><tbody>");
        for r in &routes {
            let cands: Vec<String> = r["candidates"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(esc))
                .collect();
            let chosen =
                r["chosen"].as_str().map(esc).unwrap_or_else(|| format!("<em>{}</em>", esc(s(r, "failure"))));
            let _ = write!(
                o,
                "<tr><td data-label=\"Router\">{}</td><td data-label=\"Source\">{}</td><td data-label=\"Chosen\"><strong>{chosen}</strong></td>\
<td data-label=\"Candidates\">{} ({})</td><td data-label=\"Decided\">{}</td></tr>",
                esc(&visit_label(s(r, "step"), r["visit"].as_u64().unwrap_or(1) as u32)),
                esc(s(r, "routing_source")),
                cands.join(", "),
                r["candidate_count"],
                esc(&local_time(s(r, "decided_at"))),
            );
        }
        o.push_str("</tbody></table></section>");
    }

    let frames = d["frames"].as_array().cloned().unwrap_or_default();
    if !frames.is_empty() {
        o.push_str(
            "<section aria-labelledby=\"stack-h\"><h2 id=\"stack-h\">Call stack</h2><ol class=\"stack\">",
        );
        for f in &frames {
            let open = f["returned_at"].is_null();
            let _ = write!(
                o,
                "<li class=\"{}\">frame {}: {} → <strong>{}</strong> ({}){}</li>",
                if open { "open" } else { "returned" },
                f["frame"],
                esc(&visit_label(s(f, "caller_step"), f["visit"].as_u64().unwrap_or(1) as u32)),
                esc(s(f, "flow")),
                esc(s(f, "reason")),
                if open {
                    " <span class=\"badge s-running\">open</span>".to_string()
                } else {
                    " returned".to_string()
                },
            );
        }
        o.push_str("</ol></section>");
    }
    let services = d["services"].as_array().cloned().unwrap_or_default();
    if !services.is_empty() {
        o.push_str("<section aria-labelledby=\"svc-h\"><h2 id=\"svc-h\">Services</h2><ul class=\"plain\">");
        for sv in &services {
            let _ = write!(
                o,
                "<li>{} {} {}</li>",
                esc(s(sv, "name")),
                badge(s(sv, "state")),
                esc(sv["message"].as_str().unwrap_or_default())
            );
        }
        o.push_str("</ul></section>");
    }
    o
}

fn step_details(o: &mut String, st: &Value, step: &str) {
    o.push_str("<table class=\"attempts cards\"><caption class=\"sr-only\">Attempts</caption><thead><tr><th scope=\"col\">Visit</th><th scope=\"col\">Attempt</th>\
<th scope=\"col\">Status</th><th scope=\"col\">Exit</th><th scope=\"col\">Duration</th><th scope=\"col\">Started</th><th scope=\"col\">Where</th><th scope=\"col\">Detail</th><th scope=\"col\">Logs</th></tr></thead><tbody>");
    let mut any = false;
    for v in st["visits"].as_array().into_iter().flatten() {
        for a in v["attempts"].as_array().into_iter().flatten() {
            any = true;
            let (visit, attempt) = (a["visit"].as_u64().unwrap_or(1), a["attempt"].as_u64().unwrap_or(1));
            let _ = write!(
                o,
                "<tr><td data-label=\"Visit\">{visit}</td><td data-label=\"Attempt\">{attempt}</td><td data-label=\"Status\">{}</td>\
<td data-label=\"Exit\">{}</td><td data-label=\"Duration\">{}</td><td data-label=\"Started\">{}</td><td data-label=\"Where\">{}</td><td data-label=\"Detail\">{}</td>\
<td data-label=\"Logs\"><button type=\"button\" class=\"link\" data-logs=\"{}\" data-visit=\"{visit}\" data-attempt=\"{attempt}\" \
aria-label=\"Show logs of {} attempt {attempt}\">Logs</button></td></tr>",
                badge(s(a, "status")),
                a["exit_code"].as_i64().map(|c| c.to_string()).unwrap_or_default(),
                a["duration_ms"].as_u64().map(human_ms).unwrap_or_default(),
                esc(&a["started_at"].as_str().map(local_time).unwrap_or_default()),
                esc(&crate::commands::status::step::job_where(a)),
                esc(a["message"].as_str().unwrap_or_default()),
                esc(step),
                esc(&visit_label(step, visit as u32)),
            );
        }
    }
    if !any {
        o.push_str("<tr><td colspan=\"9\" class=\"muted\">Not run yet</td></tr>");
    }
    o.push_str("</tbody></table>");
    let outputs = st["outputs"].as_array().cloned().unwrap_or_default();
    if !outputs.is_empty() {
        o.push_str("<h4>Outputs</h4><table class=\"kv\"><thead><tr><th scope=\"col\">Visit</th><th scope=\"col\">Key</th><th scope=\"col\">Value</th></tr></thead><tbody>");
        for out in &outputs {
            let _ = write!(
                o,
                "<tr><td>{}</td><td><code>{}</code></td><td><pre class=\"value\">{}</pre></td></tr>",
                out["visit"],
                esc(s(out, "key")),
                esc(s(out, "value"))
            );
        }
        o.push_str("</tbody></table>");
    }
    for h in st["handoffs"].as_array().into_iter().flatten() {
        let _ = write!(
            o,
            "<h4>Handoff ({} attempt {})</h4><div class=\"handoff\">{}</div>",
            esc(&visit_label(step, h["visit"].as_u64().unwrap_or(1) as u32)),
            h["attempt"],
            markdown(s(h, "content_md"))
        );
    }
    for g in st["gates"].as_array().into_iter().flatten() {
        let _ = write!(
            o,
            "<p>Gate: {} <code>pass: {}</code>{}</p>",
            badge(s(g, "outcome")),
            esc(s(g, "pass")),
            g["warn"].as_str().map(|w| format!(" <code>warn: {}</code>", esc(w))).unwrap_or_default()
        );
    }
    let decided: Vec<&Value> =
        st["approvals"].as_array().into_iter().flatten().filter(|a| s(a, "status") != "requested").collect();
    for a in decided {
        let _ = write!(
            o,
            "<p>Approval: {} by {}{}</p>",
            badge(s(a, "status")),
            esc(s(a, "decided_by")),
            a["comment"].as_str().map(|c| format!(": “{}”", esc(c))).unwrap_or_default()
        );
    }
}
