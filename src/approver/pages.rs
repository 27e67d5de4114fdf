//! The inbox's HTML: server-rendered, no JavaScript, no external assets, readable on a phone.
//!
//! Owns turning entries into pages. Pure: no I/O, no clock (times come in). It must never put
//! a byte of a notification into a page unescaped: tool arguments are the agent's, and the
//! agent may be hostile.

use std::fmt::Write as _;

use crate::canonical::{write_canonical, Value};

use super::store::{Entry, InboxPage, Status};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;padding:1rem;max-width:56rem;\
margin-inline:auto;line-height:1.4;color:#111;background:#fafafa}\
h1{font-size:1.3rem}h2{font-size:1.1rem;margin-top:1.5rem}\
a{color:#0645ad}table{width:100%;border-collapse:collapse}\
td,th{text-align:left;padding:.4rem;border-bottom:1px solid #ddd;vertical-align:top}\
pre{background:#fff;border:1px solid #ccc;padding:.6rem;overflow-x:auto;white-space:pre-wrap;word-break:break-word}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem}dt{font-weight:600}dd{margin:0;word-break:break-all}\
form{margin:.8rem 0;padding:.8rem;background:#fff;border:1px solid #ccc}\
input,select,textarea,button{font-size:1rem;padding:.4rem;margin:.2rem 0;max-width:100%}\
textarea{width:100%;box-sizing:border-box}\
.approve{background:#0a7d2c;color:#fff;border:0}.reject{background:#b3261e;color:#fff;border:0}\
.status{font-weight:700}.pending{color:#8a5a00}.approved{color:#0a7d2c}.rejected{color:#b3261e}\
.bar{display:flex;justify-content:space-between;align-items:center;flex-wrap:wrap;gap:.5rem}\
td code{font-size:.8rem;word-break:break-all}.msg{padding:.6rem;border:1px solid #b3261e;background:#fdecea}.ok{border-color:#0a7d2c;background:#e8f5e9}";

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

/// A whole page. `identity` and `csrf` show the sign-out form when someone is signed in.
pub fn layout(title: &str, identity: Option<(&str, &str)>, body: &str) -> String {
    let user = match identity {
        Some((name, csrf)) => format!(
            "<form method=\"post\" action=\"/logout\" style=\"border:0;padding:0;margin:0;background:none\">\
             <span>{}</span> <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            escape(name),
            escape(csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · ecl-gate approvals</title><style>{STYLE}</style></head><body>\
         <div class=\"bar\"><a href=\"/\"><strong>ecl-gate approvals</strong></a>{user}</div>\
         <main>{body}</main></body></html>",
        escape(title)
    )
}

pub fn message(title: &str, identity: Option<(&str, &str)>, text: &str, ok: bool) -> String {
    layout(
        title,
        identity,
        &format!(
            "<h1>{}</h1><p class=\"msg{}\" id=\"message\">{}</p><p><a href=\"/\">Back to the inbox</a></p>",
            escape(title),
            if ok { " ok" } else { "" },
            escape(text)
        ),
    )
}

pub fn login(nonce: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"msg\" id=\"message\">{}</p>", escape(e)))
        .unwrap_or_default();
    layout(
        "Sign in",
        None,
        &format!(
            "<h1>Sign in</h1>{error}<form method=\"post\" action=\"/login\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <p><label>Name<br><input name=\"user\" id=\"user\" autocomplete=\"username\" required></label></p>\
             <p><label>Password<br><input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <p><button type=\"submit\" id=\"sign-in\">Sign in</button></p></form>",
            escape(nonce)
        ),
    )
}

fn status_cell(status: &Status) -> &'static str {
    match status {
        Status::Pending => "<span class=\"status pending\">pending</span>",
        Status::Approved { .. } => "<span class=\"status approved\">approved</span>",
        Status::Rejected { .. } => "<span class=\"status rejected\">rejected</span>",
    }
}

/// The inbox: one page of pending escalations, newest first, with an "Older" link to the next
/// page (a plain link carrying the cursor: no JavaScript); on the first page, recent decisions.
pub fn inbox(page: &InboxPage, paged: bool, now: u64, identity: (&str, &str)) -> String {
    let mut body = format!(
        "<h1 id=\"pending\">Pending escalations ({})</h1>",
        page.pending_total
    );
    if page.pending.is_empty() {
        if paged {
            body.push_str("<p id=\"empty\">Nothing older waits for a decision.</p>");
        } else {
            body.push_str("<p id=\"empty\">Nothing waits for a decision.</p>");
        }
    } else {
        table(&mut body, &page.pending, now);
    }
    let mut links = Vec::new();
    if paged {
        links.push("<a href=\"/\" id=\"newest\">Newest</a>".to_owned());
    }
    if let Some(older) = &page.older {
        links.push(format!(
            "<a href=\"/?before={}\" id=\"older\" rel=\"next\">Older</a>",
            escape(&older.to_param())
        ));
    }
    if !links.is_empty() {
        let _ = write!(body, "<p class=\"pager\">{}</p>", links.join(" · "));
    }
    if !page.decided.is_empty() {
        body.push_str("<h2>Decided</h2>");
        table(&mut body, &page.decided, now);
    }
    layout("Inbox", Some(identity), &body)
}

fn table(body: &mut String, entries: &[Entry], now: u64) {
    body.push_str("<table><thead><tr><th>Tool</th><th>Actor</th><th>Asked</th><th>Status</th></tr></thead><tbody>");
    for entry in entries {
        let n = &entry.notification;
        let _ = write!(
            body,
            "<tr class=\"escalation\"><td><a href=\"/escalations/{}\">{}</a><br><code>{}</code><br><small>{}@{}</small></td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&n.intent_hash),
            escape(&n.tool_name),
            escape(&preview(&n.tool_args)),
            escape(&n.profile_id),
            escape(&n.profile_version),
            escape(principal(&n.actor)),
            escape(&ago(now, n.decided_at)),
            status_cell(&entry.status)
        );
    }
    body.push_str("</tbody></table>");
}

/// The arguments on one short line: enough to tell two calls of one tool apart.
fn preview(args: &Value) -> String {
    const MAX_CHARS: usize = 60;
    let text = String::from_utf8_lossy(&crate::canonical::to_canonical(args)).into_owned();
    if text.chars().count() <= MAX_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_CHARS).collect();
    cut.push('…');
    cut
}

/// Who called the gate, as authenticated there: `id` (how), and the issuer for a JWT.
fn caller_text(caller: Option<&crate::caller::Caller>) -> String {
    let Some(caller) = caller else {
        return "<em>not reported (the gate predates callers in notifications)</em>".into();
    };
    let how = match caller.method {
        crate::caller::CallerMethod::None => "not authenticated".to_owned(),
        crate::caller::CallerMethod::Mtls => "client certificate".to_owned(),
        crate::caller::CallerMethod::Jwt => match &caller.issuer {
            Some(issuer) => format!("JWT from {issuer}"),
            None => "JWT".to_owned(),
        },
    };
    format!(
        "<code>{}</code> <small>({}; method <code>{}</code>)</small>",
        escape(&caller.id),
        escape(&how),
        caller.method.as_str()
    )
}

fn principal(actor: &Value) -> &str {
    actor
        .get("principal_id")
        .and_then(Value::as_str)
        .unwrap_or("?")
}

fn ago(now: u64, then: u64) -> String {
    let secs = now.saturating_sub(then);
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

pub fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// What an approver may choose as the token's lifetime, up to `max_ttl` seconds.
pub fn ttl_choices(max_ttl: u64) -> Vec<u64> {
    let mut choices: Vec<u64> = [300, 900, 3600, 4 * 3600, 24 * 3600]
        .into_iter()
        .filter(|&c| c < max_ttl)
        .collect();
    choices.push(max_ttl);
    choices
}

fn ttl_label(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// The detail view: exactly what would run, why it was escalated, and the two forms.
pub fn detail(entry: &Entry, now: u64, max_ttl: u64, identity: (&str, &str)) -> String {
    let n = &entry.notification;
    let csrf = escape(identity.1);
    let hash = escape(&n.intent_hash);
    let mut body = format!(
        "<h1>{} <small>{}</small></h1>\
         <h2>Arguments</h2><pre id=\"args\">{}</pre>\
         <h2>Why it needs approval</h2><p id=\"detail\">{}</p><ul id=\"rules\">",
        escape(&n.tool_name),
        status_cell(&entry.status),
        escape(&pretty(&n.tool_args)),
        escape(&n.detail),
    );
    for rule in &n.rules {
        let _ = write!(body, "<li><code>{}</code></li>", escape(rule));
    }
    let _ = write!(
        body,
        "</ul><h2>Request</h2><dl>\
         <dt>Caller</dt><dd id=\"caller\">{}</dd>\
         <dt>Actor</dt><dd><pre>{}</pre></dd>\
         <dt>Profile</dt><dd>{}@{} <small>{}</small></dd>\
         <dt>Asked</dt><dd>{} ({})</dd>\
         <dt>Expires</dt><dd>{}</dd>\
         <dt>Request id</dt><dd>{}</dd>\
         <dt>Intent hash</dt><dd><code>{hash}</code></dd>\
         <dt>Gate record</dt><dd><code>{}</code> seq {} <small>{}</small></dd></dl>",
        caller_text(n.caller.as_ref()),
        escape(&pretty(&n.actor)),
        escape(&n.profile_id),
        escape(&n.profile_version),
        escape(&n.profile_ref_hash),
        utc(n.decided_at),
        escape(&ago(now, n.decided_at)),
        utc(entry.expires_at()),
        escape(&n.request_id),
        escape(&n.record.stream),
        n.record.seq,
        escape(&n.record.record_hash),
    );
    match &entry.status {
        Status::Pending => {
            let mut options = String::new();
            let choices = ttl_choices(max_ttl);
            let default = choices
                .iter()
                .copied()
                .find(|&c| c >= 900)
                .unwrap_or(max_ttl);
            for choice in choices {
                let _ = write!(
                    options,
                    "<option value=\"{choice}\"{}>{}</option>",
                    if choice == default { " selected" } else { "" },
                    ttl_label(choice)
                );
            }
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/escalations/{hash}/approve\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <label>Approval valid for <select name=\"ttl\" id=\"ttl\">{options}</select></label>\
                 <button type=\"submit\" class=\"approve\" id=\"approve\">Approve</button></form>\
                 <form method=\"post\" action=\"/escalations/{hash}/reject\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <label>Reason<br><textarea name=\"reason\" id=\"reason\" rows=\"2\" maxlength=\"500\" required></textarea></label>\
                 <button type=\"submit\" class=\"reject\" id=\"reject\">Reject</button></form>"
            );
        }
        Status::Approved {
            by, at, expires_at, ..
        } => {
            let _ = write!(
                body,
                "<p id=\"outcome\">Approved by <strong>{}</strong> at {}; the token is valid until {}.</p>",
                escape(by),
                utc(*at),
                utc(*expires_at)
            );
        }
        Status::Rejected { by, at, reason } => {
            let _ = write!(
                body,
                "<p id=\"outcome\">Rejected by <strong>{}</strong> at {}: {}</p>",
                escape(by),
                utc(*at),
                escape(reason)
            );
        }
    }
    layout(&n.tool_name, Some(identity), &body)
}

/// JSON with two-space indentation; scalars exactly as canonical JSON writes them, so what the
/// approver reads is what the tool will receive (big integers keep every digit).
pub fn pretty(value: &Value) -> String {
    let mut out = Vec::new();
    write_pretty(value, 0, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn write_pretty(value: &Value, depth: usize, out: &mut Vec<u8>) {
    let indent = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.extend(std::iter::repeat_n(b' ', depth * 2));
    };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                indent(out, depth + 1);
                write_pretty(item, depth + 1, out);
            }
            indent(out, depth);
            out.push(b']');
        }
        Value::Object(members) if !members.is_empty() => {
            out.push(b'{');
            for (i, (key, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                indent(out, depth + 1);
                crate::canonical::write_str(key, out);
                out.extend_from_slice(b": ");
                write_pretty(item, depth + 1, out);
            }
            indent(out, depth);
            out.push(b'}');
        }
        scalar => write_canonical(scalar, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn pretty_keeps_big_integers_and_nests() {
        let value =
            crate::canonical::parse(br#"{"b":[1,{"c":12345678901234567890123}],"a":"x"}"#).unwrap();
        assert_eq!(
            pretty(&value),
            "{\n  \"a\": \"x\",\n  \"b\": [\n    1,\n    {\n      \"c\": 12345678901234567890123\n    }\n  ]\n}"
        );
    }

    #[test]
    fn ttl_choices_never_exceed_the_maximum() {
        assert_eq!(ttl_choices(3600), vec![300, 900, 3600]);
        assert_eq!(ttl_choices(600), vec![300, 600]);
    }
}
