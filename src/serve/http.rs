//! The small HTTP vocabulary of the server: replies, JSON errors, query strings, bodies,
//! the bearer token and the Host check.

use std::io::Read;

use serde_json::{Value, json};
use tiny_http::{Header, Request, Response};

use super::Ctx;

/// Bodies larger than this are refused (413) before they are read.
pub const MAX_BODY: usize = 64 * 1024;

pub type Reply = Response<std::io::Cursor<Vec<u8>>>;

/// What a route produces: a whole reply, or an event stream to hand to its own thread.
pub enum Outcome {
    Reply(Reply),
    Stream(super::sse::StreamSpec),
}

/// A 4xx/5xx answer: `{"error": {"status", "code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: &str) -> ApiError {
        ApiError { status, code, message: message.to_string() }
    }

    pub fn bad_request(message: &str) -> ApiError {
        ApiError::new(400, "bad_request", message)
    }

    pub fn not_found(message: &str) -> ApiError {
        ApiError::new(404, "not_found", message)
    }

    pub fn conflict(message: &str) -> ApiError {
        ApiError::new(409, "conflict", message)
    }

    pub fn internal(message: &str) -> ApiError {
        ApiError::new(500, "internal", message)
    }

    pub fn response(&self) -> Reply {
        let body = json!({"error": {"status": self.status, "code": self.code, "message": self.message}});
        let mut r = json_reply(self.status, &body);
        if self.status == 401 {
            r.add_header(header("WWW-Authenticate", "Bearer realm=\"runner\""));
        }
        r
    }
}

/// How store and projection failures reach a client: unknown run 404, bad id 400, a
/// rebuild in progress 503, the rest 500 with the reason.
impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> ApiError {
        use crate::error::Error;
        use crate::projection::ProjectionError;
        use crate::store::StoreError;
        let msg = e.to_string();
        match &e {
            Error::Store(StoreError::BadRunId(_))
            | Error::Projection(ProjectionError::Store(StoreError::BadRunId(_))) => {
                ApiError::bad_request(&msg)
            }
            Error::Store(StoreError::NotFound { .. })
            | Error::Projection(ProjectionError::Store(StoreError::NotFound { .. })) => {
                ApiError::not_found(&msg)
            }
            Error::Projection(ProjectionError::Busy { .. }) => ApiError::new(503, "busy", &msg),
            Error::Projection(ProjectionError::Load(_)) | Error::Load(_) => {
                ApiError::new(422, "unreadable_run", &msg)
            }
            _ => ApiError::internal(&msg),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        crate::error::Error::from(e).into()
    }
}

impl From<crate::projection::ProjectionError> for ApiError {
    fn from(e: crate::projection::ProjectionError) -> ApiError {
        crate::error::Error::from(e).into()
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
        ApiError::internal(&format!("projection query failed: {e}"))
    }
}

pub fn header(name: &str, value: &str) -> Header {
    // Names and values here are ours and plain ASCII.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|_| {
        Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).unwrap_or_else(|_| unreachable!())
    })
}

pub fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
    Response::from_data(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
}

pub fn json_reply(status: u16, v: &Value) -> Reply {
    reply(status, "application/json", v.to_string().into_bytes())
}

pub fn json_ok(v: &Value) -> Result<Outcome, ApiError> {
    Ok(Outcome::Reply(json_reply(200, v)))
}

/// The query string, decoded; every handler takes what it knows and refuses the rest.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: &str) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode_form(k)?, decode_form(v)?));
        }
        Ok(Query { pairs })
    }

    /// The value of `name` (the last one if repeated), removed from the query.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        self.pairs.retain(|(k, v)| {
            if k == name {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found.filter(|v| !v.is_empty())
    }

    /// `name` as a number within `range`, or a 400 that says so.
    pub fn take_num(
        &mut self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.take(name) else { return Ok(None) };
        match v.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::bad_request(&format!(
                "`{name}` must be a whole number from {} to {}, not {v:?}",
                range.start(),
                range.end()
            ))),
        }
    }

    /// Refuses parameters nobody took: a typo should not silently mean "no filter".
    pub fn finish(self) -> Result<(), ApiError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((k, _)) => Err(ApiError::bad_request(&format!("unknown query parameter `{k}`"))),
        }
    }

    /// Like `finish`, but lenient (pages keep parameters a browser or an old link adds).
    pub fn ignore_rest(self) {}
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-decoding; `plus` also turns `+` into a space (forms).
fn percent_decode(s: &str, plus: bool) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(h), Some(l)) =
                    (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
                else {
                    return Err(ApiError::bad_request("malformed percent-encoding in the URL"));
                };
                out.push(h * 16 + l);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("the URL is not UTF-8"))
}

fn decode_form(s: &str) -> Result<String, ApiError> {
    percent_decode(s, true)
}

/// One path segment, decoded.
pub fn decode(seg: &str) -> Result<String, ApiError> {
    percent_decode(seg, false)
}

/// A step id from the path: sub-flow steps are named `caller/callee`, so it may span
/// segments (or arrive with `%2F`). `.`/`..`/empty parts are refused: it becomes a path.
pub fn decode_step(segs: &[&str]) -> Result<String, ApiError> {
    let joined = segs.iter().map(|s| decode(s)).collect::<Result<Vec<_>, _>>()?.join("/");
    let ok = !joined.is_empty()
        && joined.len() <= 512
        && joined.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
        && !joined.contains(['\\', '\0']);
    if ok { Ok(joined) } else { Err(ApiError::bad_request(&format!("invalid step id {joined:?}"))) }
}

/// The bearer token check for anything that changes a run: 401 and nothing happens.
pub fn authorize(ctx: &Ctx, req: &Request) -> Result<(), ApiError> {
    let given = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().trim().to_string());
    let Some(given) = given else {
        return Err(ApiError::new(
            401,
            "unauthorized",
            "this action needs the server's token: send `Authorization: Bearer TOKEN`",
        ));
    };
    let token = given.strip_prefix("Bearer ").map(str::trim).unwrap_or("");
    if constant_time_eq(token.as_bytes(), ctx.token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(401, "unauthorized", "the token is not this server's"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare hashes: equal length, and no early exit that leaks a prefix.
    let (ha, hb) = (blake3::hash(a), blake3::hash(b));
    ha == hb
}

/// Whether the Host header names this machine (a page elsewhere cannot rebind a name to
/// 127.0.0.1 and read the API through the victim's browser).
pub fn local_host(req: &Request) -> bool {
    let Some(host) = req.headers().iter().find(|h| h.field.equiv("Host")) else {
        return true; // HTTP/1.0 without Host: not a browser
    };
    let host = host.value.as_str().trim().to_ascii_lowercase();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().map(|h| format!("[{h}]")).unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host.clone(), |(h, _)| h.to_string())
    };
    matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]") || name.starts_with("127.")
}

/// The body of a POST, as a JSON object (an empty body is `{}`).
pub fn json_body(req: &mut Request) -> Result<serde_json::Map<String, Value>, ApiError> {
    if let Some(len) = req.body_length()
        && len > MAX_BODY
    {
        return Err(ApiError::new(413, "too_large", &format!("the body is larger than {MAX_BODY} bytes")));
    }
    let mut bytes = Vec::new();
    req.as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::bad_request(&format!("cannot read the body: {e}")))?;
    if bytes.len() > MAX_BODY {
        return Err(ApiError::new(413, "too_large", &format!("the body is larger than {MAX_BODY} bytes")));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(&format!("the body is not valid JSON: {e}"))),
    }
}

/// The string and boolean fields of a body, by name.
pub type Fields = (std::collections::HashMap<String, String>, std::collections::HashMap<String, bool>);

/// A string field of a body, refusing other types and fields nobody asked for.
pub fn body_fields(
    mut body: serde_json::Map<String, Value>,
    strings: &[&str],
    bools: &[&str],
) -> Result<Fields, ApiError> {
    let mut s = std::collections::HashMap::new();
    let mut b = std::collections::HashMap::new();
    for name in strings {
        match body.remove(*name) {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if v.len() <= 4096 => {
                s.insert(name.to_string(), v);
            }
            Some(_) => {
                return Err(ApiError::bad_request(&format!(
                    "`{name}` must be a string of at most 4096 bytes"
                )));
            }
        }
    }
    for name in bools {
        match body.remove(*name) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(v)) => {
                b.insert(name.to_string(), v);
            }
            Some(_) => return Err(ApiError::bad_request(&format!("`{name}` must be true or false"))),
        }
    }
    if let Some(k) = body.keys().next() {
        return Err(ApiError::bad_request(&format!("unknown field `{k}` in the body")));
    }
    Ok((s, b))
}

/// Whether some method is served at this path (for 405 rather than 404).
pub fn known_path(segs: &[&str]) -> bool {
    match segs {
        [""] | ["health"] | ["api", "runs"] | ["api", "events"] | ["api", "openapi.json"] => true,
        ["runs", _] | ["api", "runs", _] | ["api", "runs", _, "events" | "cancel" | "resume"] => true,
        ["api", "runs", _, "steps", rest @ .., "logs" | "approve" | "reject"] => !rest.is_empty(),
        _ => false,
    }
}

/// `Last-Event-ID`, if the client sent one.
pub fn last_event_id(req: &Request) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv("Last-Event-ID"))
        .map(|h| h.value.as_str().trim().to_string())
        .filter(|v| !v.is_empty())
}
