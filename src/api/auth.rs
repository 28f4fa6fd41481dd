//! Access control: bearer tokens with roles.
//!
//! | role | may |
//! |---|---|
//! | `read` | read lots, history, forecasts, the websocket and the dashboard |
//! | `ingest` | what `read` may, and post events and counts (`POST /v1/events`, `POST /v1/lots/{id}/count`), optionally only for a list of lots |
//! | `admin` | everything: register lots, change capacity, replay, known-events, the admin views |
//!
//! Tokens are kept as SHA-256 hashes (a token is 32 random bytes, so a fast hash is
//! enough), in a TOML file (`[auth] tokens_file`) or the `PARKADE_TOKENS` variable:
//!
//! ```toml
//! [[token]]
//! name = "gate-north"          # shown in audit lines, never the token
//! role = "ingest"
//! lots = ["north-1"]           # the only lots this token may move; "*" for every lot
//! sha256 = "9f86d0…"           # `parkade token new` prints it
//! ```
//!
//! An `ingest` token must say its lots (`"*"` for all), so that an entry cut short is
//! never an unrestricted one; a file with no tokens is refused unless it says
//! `no_tokens = true`, so that an empty or half-written file cannot revoke them all.
//!
//! A presented token is hashed and compared with every known hash in constant time. The
//! file is read again when it changes (checked every 2 seconds), so tokens are added and
//! revoked without a restart. With no tokens configured, parkade is open, and `serve`
//! refuses a non-loopback address unless `[auth] allow_open = true`.
//!
//! Browsers cannot put a header on a websocket, so `GET /v1/ws` and the dashboard's
//! requests also take the token as `?access_token=`; request logs never show query
//! strings.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::WWW_AUTHENTICATE;
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::LotId;

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Ingest,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Ingest => "ingest",
            Role::Admin => "admin",
        }
    }
}

/// The caller a request was authenticated as (in the request's extensions).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub role: Role,
    /// `Some`: the only lots this caller may post events and counts for.
    pub lots: Option<Arc<HashSet<LotId>>>,
}

impl Caller {
    /// Whether this caller may move `lot` (post events or counts for it).
    pub fn may_move(&self, lot: &LotId) -> bool {
        self.lots.as_ref().is_none_or(|l| l.contains(lot))
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    #[serde(default)]
    lots: Option<LotsEntry>,
    sha256: String,
}

/// `lots = "*"` (every lot, said explicitly) or `lots = ["north-1", ...]`.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum LotsEntry {
    All(String),
    Some(Vec<String>),
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    /// `no_tokens = true`: the file holds no tokens on purpose (every route that needs
    /// one is closed). Without it, a file with no tokens is refused: an empty or
    /// half-written file must not revoke every token.
    #[serde(default)]
    no_tokens: bool,
    #[serde(default)]
    token: Vec<TokenEntry>,
}

struct Known {
    hash: [u8; 32],
    caller: Caller,
}

/// Why a tokens file or variable was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, String),
}

fn parse_tokens(text: &str, origin: &str) -> Result<Vec<Known>, TokensError> {
    let file: TokenFile =
        toml::from_str(text).map_err(|e| TokensError::Parse(origin.into(), e.to_string()))?;
    match (file.no_tokens, file.token.is_empty()) {
        (false, true) => {
            return Err(TokensError::Parse(
                origin.into(),
                "holds no tokens; to run with none on purpose (every route that needs a token closed), write `no_tokens = true`".into(),
            ))
        }
        (true, false) => {
            return Err(TokensError::Parse(
                origin.into(),
                "says `no_tokens = true` but holds tokens".into(),
            ))
        }
        _ => {}
    }
    let mut names = HashSet::new();
    file.token
        .into_iter()
        .map(|t| {
            let bad =
                |m: String| TokensError::Parse(origin.into(), format!("token {:?}: {m}", t.name));
            if t.name.trim().is_empty() || !names.insert(t.name.clone()) {
                return Err(bad("every token needs its own non-empty name".into()));
            }
            let bytes = hex::decode(t.sha256.trim())
                .map_err(|e| bad(format!("sha256 is not hex ({e})")))?;
            let hash: [u8; 32] = bytes
                .try_into()
                .map_err(|_| bad("sha256 must be 64 hex digits".into()))?;
            let lots =
                match t.lots {
                    // An ingest token says which lots it moves, so that an entry cut short
                    // is never an unrestricted one.
                    None if t.role == Role::Ingest => return Err(bad(
                        "an ingest token needs `lots`: a list of lot ids, or \"*\" for every lot"
                            .into(),
                    )),
                    None => None,
                    Some(LotsEntry::All(star)) if star == "*" => None,
                    Some(LotsEntry::All(other)) => {
                        return Err(bad(format!(
                            "lots must be \"*\" or a list of lot ids (got {other:?})"
                        )))
                    }
                    Some(LotsEntry::Some(ls)) => Some(Arc::new(
                        ls.iter()
                            .map(|l| LotId::parse(l).map_err(|e| bad(format!("lots: {l:?}: {e}"))))
                            .collect::<Result<HashSet<_>, _>>()?,
                    )),
                };
            Ok(Known {
                hash,
                caller: Caller {
                    name: t.name.into(),
                    role: t.role,
                    lots,
                },
            })
        })
        .collect()
}

/// Where tokens come from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// No tokens: everything is open.
    None,
    File(PathBuf),
    /// The text of a tokens file, from `PARKADE_TOKENS`.
    Inline(String),
}

/// The known tokens and the rules for unauthenticated reads. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    known: Arc<RwLock<Arc<Vec<Known>>>>,
    source: TokenSource,
    /// Reads without a token are allowed.
    pub reads_open: bool,
}

/// The SHA-256 of a token, as the tokens file keeps it.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (32 bytes from the OS, hex) and its hash.
pub fn new_token() -> Result<(String, String), getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let token = format!("pk_{}", hex::encode(bytes));
    let hash = hash_token(&token);
    Ok((token, hash))
}

/// The file's text and its SHA-256, or why it cannot be read.
fn read_tokens_file(path: &Path) -> Result<(String, [u8; 32]), TokensError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokensError::Read(path.into(), e))?;
    let hash = Sha256::digest(text.as_bytes()).into();
    Ok((text, hash))
}

impl Auth {
    /// Load the tokens from `source`; an unreadable or invalid source is an error (the
    /// service does not start open by mistake).
    pub fn load(source: TokenSource, reads_open: bool) -> Result<Auth, TokensError> {
        let known = match &source {
            TokenSource::None => Vec::new(),
            TokenSource::File(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| TokensError::Read(p.clone(), e))?;
                parse_tokens(&text, &p.display().to_string())?
            }
            TokenSource::Inline(text) => parse_tokens(text, "PARKADE_TOKENS")?,
        };
        Ok(Auth {
            known: Arc::new(RwLock::new(Arc::new(known))),
            source,
            reads_open,
        })
    }

    /// No tokens at all: every route is open.
    pub fn is_open(&self) -> bool {
        matches!(self.source, TokenSource::None)
    }

    /// How many tokens are known now.
    pub fn count(&self) -> usize {
        self.known.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The caller a token belongs to. Every known hash is compared, in constant time.
    pub fn check(&self, token: &str) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let known = self.known.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut found = None;
        for k in known.iter() {
            if bool::from(k.hash.ct_eq(&hash)) {
                found = Some(k.caller.clone());
            }
        }
        found
    }

    /// Read the tokens file again whenever its content changes (checked every 2 s, by
    /// the content's hash, not its modification time), until `stop`. A new content is
    /// taken only once it has stayed the same for a moment (a file being written is not
    /// read half way) and parses completely; a file that became invalid or empty keeps
    /// the tokens that were loaded (and says so in the log).
    pub async fn watch(self, stop: CancellationToken) {
        let TokenSource::File(path) = self.source.clone() else {
            return;
        };
        let mut seen = read_tokens_file(&path).ok().map(|(_, h)| h);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.cancelled() => return,
            }
            let first = read_tokens_file(&path);
            if let Ok((_, h)) = &first {
                if Some(*h) == seen {
                    continue;
                }
                tokio::time::sleep(SETTLE).await;
            }
            let loaded = match (first, read_tokens_file(&path)) {
                (Ok((_, a)), Ok((text, b))) if a == b => {
                    seen = Some(b);
                    parse_tokens(&text, &path.display().to_string())
                }
                // Still being written: look again at the next check.
                (Ok(_), Ok(_)) => continue,
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            match loaded {
                Ok(known) => {
                    let n = known.len();
                    *self.known.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(known);
                    tracing::info!(file = %path.display(), tokens = n, "tokens reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "tokens file not reloaded; the previous tokens stay")
                }
            }
        }
    }
}

/// How long a changed tokens file must keep the same content before it is loaded.
const SETTLE: Duration = Duration::from_millis(300);

/// CORS for the read endpoints: pages of `origins` may `GET` (with a bearer token);
/// a preflight for anything else is refused, so a browser never sends a cross-origin
/// write. A request from another origin is served without CORS headers (the browser
/// keeps its reply from the page).
pub fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "HEAD"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::ACCEPT,
        ])
        .block_on_origin_mismatch(false)
        .max_age(3600);
    for o in origins {
        cors = cors.allowed_origin(o);
    }
    cors
}

/// Which web pages may open the websocket, by the same rule as CORS for reads: the
/// server's own pages (an `Origin` naming the `Host` the request came to) and those of
/// `[auth] cors_origins`. A request without `Origin` is not from a browser page and
/// passes (a browser always sends one on a websocket handshake).
#[derive(Debug, Clone, Default)]
pub struct Origins(pub Arc<Vec<String>>);

impl Origins {
    pub fn new(cors_origins: &[String]) -> Origins {
        Origins(Arc::new(cors_origins.to_vec()))
    }

    /// Whether a page of `origin` may open a websocket on a request to `host`.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin.map(str::trim) else {
            return true;
        };
        if self.0.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return true;
        }
        let Ok(url) = url::Url::parse(origin) else {
            return false;
        };
        let (Some(name), Some(host)) = (url.host_str(), host) else {
            return false;
        };
        if !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        let authority = match url.port() {
            Some(p) => format!("{name}:{p}"),
            None => name.to_owned(),
        };
        authority.eq_ignore_ascii_case(host.trim())
    }
}

/// An origin for `[auth] cors_origins`: `scheme://host[:port]`, nothing else.
pub fn check_origin(origin: &str) -> Result<(), String> {
    let url = url::Url::parse(origin).map_err(|e| format!("{origin:?}: {e}"))?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.path() == "/"
        && !origin.ends_with('/')
        && url.query().is_none()
        && url.username().is_empty();
    if !plain {
        return Err(format!(
            "{origin:?} is not an origin (scheme://host[:port], like \"https://maps.campus.example\")"
        ));
    }
    Ok(())
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Health checks and the 404 reply.
    Open,
    Role(Role),
}

/// The role a request needs, by its method and the pattern of the route the router
/// matches for it ([`route_pattern`]; `None`: no route, the 404 reply). Decided on the
/// pattern, never on the raw path, so a path spelled another way (`/v1/%61dmin/...`)
/// needs what the route it reaches needs; a pattern missing from this table needs
/// `admin`, so a route added later is closed until it is listed here.
pub fn need(method: &Method, pattern: Option<&str>) -> Need {
    let Some(pattern) = pattern else {
        return Need::Open;
    };
    let reads = matches!(*method, Method::GET | Method::HEAD);
    match pattern {
        // The dashboard's page and assets hold no data (it reads through the API).
        "/" | "/assets/{file}" | "/healthz" | "/readyz" => Need::Open,
        "/v1/events" | "/v1/lots/{id}/count" if *method == Method::POST => Need::Role(Role::Ingest),
        "/metrics"
        | "/openapi.json"
        | "/v1/lots"
        | "/v1/lots/{id}"
        | "/v1/lots/{id}/history"
        | "/v1/lots/{id}/forecast"
        | "/v1/lots/{id}/timespan"
        | "/v1/lots/{id}/recent"
        | "/v1/ws"
            if reads =>
        {
            Need::Role(Role::Read)
        }
        // The admin routes, every other write (registration, capacity changes), and
        // any route this table does not know.
        _ => Need::Role(Role::Admin),
    }
}

/// The pattern of the route the router matches for a request, found on the path as the
/// router reads it (percent-decoded, `crate::api` routes), not the raw one; `None` when
/// no route matches.
pub fn route_pattern(req: &ServiceRequest) -> Option<String> {
    // Found once per request (the metrics and access control both ask).
    if let Some(MatchedRoute(p)) = req.extensions().get::<MatchedRoute>() {
        return p.clone();
    }
    let p = req.resource_map().match_pattern(req.match_info().as_str());
    req.extensions_mut().insert(MatchedRoute(p.clone()));
    p
}

/// A request's [`route_pattern`], kept in its extensions.
#[derive(Clone)]
struct MatchedRoute(Option<String>);

/// The token a request presents: `Authorization: Bearer …`, or `?access_token=…`.
pub fn presented(req: &ServiceRequest) -> Option<String> {
    if let Some(h) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let v = h.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    req.query_string().split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "access_token").then(|| v.to_owned())
    })
}

fn deny(
    req: ServiceRequest,
    status: StatusCode,
    code: &str,
    message: String,
) -> ServiceResponse<BoxBody> {
    let mut reply = HttpResponse::build(status);
    if status == StatusCode::UNAUTHORIZED {
        reply.insert_header((WWW_AUTHENTICATE, "Bearer"));
    }
    req.into_response(reply.json(super::wire::ErrorBody::new(code, message)))
}

/// The middleware: 401 without a known token where one is needed, 403 when the token's
/// role is below the route's; the caller goes into the request's extensions; writes of
/// the admin role are logged with the token's name (target `parkade::audit`).
pub async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let auth = req
        .app_data::<web::Data<Auth>>()
        .cloned()
        .expect("Auth is registered as app data");
    let Need::Role(role) = need(req.method(), route_pattern(&req).as_deref()) else {
        // Open routes need no token, but one that is given and known is noted (the
        // health checks show their details to admins).
        if let Some(c) = presented(&req).and_then(|t| auth.check(&t)) {
            req.extensions_mut().insert(c);
        }
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let token = presented(&req);
    let caller = token.as_deref().and_then(|t| auth.check(t));
    let caller = match caller {
        None if role == Role::Read && auth.reads_open => {
            return Ok(next.call(req).await?.map_into_left_body())
        }
        None => {
            let message = match token {
                Some(_) => "the token is not known (revoked, or mistyped)".to_owned(),
                None => format!(
                    "this route needs a bearer token with role {} or higher (Authorization: Bearer …)",
                    role.as_str()
                ),
            };
            let r = deny(req, StatusCode::UNAUTHORIZED, "unauthorized", message);
            return Ok(r.map_into_right_body());
        }
        Some(c) if c.role < role => {
            let message = format!(
                "token {:?} has role {}; this route needs {}",
                &*c.name,
                c.role.as_str(),
                role.as_str()
            );
            let r = deny(req, StatusCode::FORBIDDEN, "forbidden", message);
            return Ok(r.map_into_right_body());
        }
        Some(c) => c,
    };
    let audit = (role == Role::Admin && req.method() != Method::GET).then(|| {
        (
            caller.name.clone(),
            req.method().clone(),
            req.path().to_owned(),
        )
    });
    req.extensions_mut().insert(caller);
    let res = next.call(req).await?;
    if let Some((name, method, path)) = audit {
        tracing::info!(
            target: "parkade::audit",
            token = %name, %method, %path, status = res.status().as_u16(),
            "admin action"
        );
    }
    Ok(res.map_into_left_body())
}

/// The names a client may use in `Host`; `None`: not checked.
#[derive(Debug, Clone)]
pub struct Hosts(pub Option<Arc<Vec<String>>>);

impl Hosts {
    /// The configured names; with none, the loopback names when `bind` is loopback.
    pub fn new(configured: &[String], bind: std::net::SocketAddr) -> Hosts {
        let names: Vec<String> = if configured.is_empty() {
            if !bind.ip().is_loopback() {
                return Hosts(None);
            }
            ["localhost", "127.0.0.1", "[::1]"]
                .map(str::to_owned)
                .to_vec()
        } else {
            configured
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect()
        };
        Hosts(Some(Arc::new(names)))
    }

    /// Whether a `Host` header value names this server (its port is not compared).
    pub fn allows(&self, host: &str) -> bool {
        let Some(names) = &self.0 else { return true };
        let host = host.trim();
        let name = match host.strip_prefix('[') {
            // [v6]:port
            // [v6] or [v6]:port, and nothing else after the bracket.
            Some(rest) => match rest.split_once(']') {
                Some((v6, after))
                    if after.is_empty()
                        || after.strip_prefix(':').is_some_and(|p| {
                            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
                        }) =>
                {
                    format!("[{v6}]")
                }
                _ => return false,
            },
            None => match host.rsplit_once(':') {
                Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n.to_owned(),
                _ => host.to_owned(),
            },
        };
        names.iter().any(|n| n.eq_ignore_ascii_case(&name))
    }
}

/// A write a web page could make cross-site without asking (a form post: no token, and
/// a body that is not JSON): the reason to refuse it. Browsers send a JSON body or an
/// `Authorization` header cross-site only after a CORS preflight, which writes never
/// pass (see [`cors`]).
fn form_write(req: &ServiceRequest) -> Option<String> {
    if matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || req
        .headers()
        .contains_key(actix_web::http::header::AUTHORIZATION)
    {
        return None;
    }
    let (ct, essence) = super::content_type(req.headers());
    let json = matches!(
        essence.as_str(),
        "application/json" | "application/x-ndjson" | "application/ndjson"
    );
    (!json).then(|| {
        format!(
            "a {} without a bearer token must carry a JSON body (Content-Type: application/json; got {:?}), so that no web page can make it with a form",
            req.method(),
            if ct.is_empty() { "none" } else { ct }
        )
    })
}

/// Refuse a request whose `Host` is not one of the server's names (421), before
/// anything else looks at it: a page that rebinds its own name to this address gets
/// nothing. A request without `Host` (HTTP/1.0, no browser) passes. Then refuse a
/// write a form could make (`form_write`, 415).
pub async fn check_host(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let refused = match (
        req.app_data::<web::Data<Hosts>>(),
        req.headers().get(actix_web::http::header::HOST),
    ) {
        (Some(hosts), Some(h)) => match h.to_str() {
            Ok(h) if hosts.allows(h) => None,
            Ok(h) => Some(h.to_owned()),
            Err(_) => Some("(not text)".to_owned()),
        },
        _ => None,
    };
    if refused.is_none() {
        if let Some(message) = form_write(&req) {
            let r = deny(
                req,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            );
            return Ok(r.map_into_right_body());
        }
    }
    match refused {
        None => Ok(next.call(req).await?.map_into_left_body()),
        Some(host) => {
            let message =
                format!("Host {host:?} is not one of this server's names ([auth] allowed_hosts)");
            let r = deny(
                req,
                StatusCode::MISDIRECTED_REQUEST,
                "unknown_host",
                message,
            );
            Ok(r.map_into_right_body())
        }
    }
}

/// Whether a request may see operators' details: the service is open (no tokens), or
/// the request carries an admin token.
pub fn sees_details(req: &actix_web::HttpRequest) -> bool {
    let open = req
        .app_data::<web::Data<Auth>>()
        .is_none_or(|a| a.is_open());
    open || caller(req).is_some_and(|c| c.role == Role::Admin)
}

/// The caller of a request, when it was authenticated.
pub fn caller(req: &actix_web::HttpRequest) -> Option<Caller> {
    req.extensions().get::<Caller>().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_roles_of_the_table() {
        let r = |m: Method, p: &str| need(&m, Some(p));
        assert_eq!(r(Method::GET, "/healthz"), Need::Open);
        assert_eq!(r(Method::POST, "/v1/events"), Need::Role(Role::Ingest));
        assert_eq!(
            r(Method::POST, "/v1/lots/{id}/count"),
            Need::Role(Role::Ingest)
        );
        assert_eq!(r(Method::POST, "/v1/lots"), Need::Role(Role::Admin));
        assert_eq!(r(Method::PATCH, "/v1/lots/{id}"), Need::Role(Role::Admin));
        assert_eq!(r(Method::POST, "/v1/admin/replay"), Need::Role(Role::Admin));
        assert_eq!(
            r(Method::GET, "/v1/admin/projections"),
            Need::Role(Role::Admin)
        );
        assert_eq!(r(Method::GET, "/v1/lots"), Need::Role(Role::Read));
        assert_eq!(r(Method::GET, "/v1/ws"), Need::Role(Role::Read));
        assert_eq!(r(Method::GET, "/metrics"), Need::Role(Role::Read));
        assert_eq!(r(Method::GET, "/"), Need::Open);
        assert_eq!(
            r(Method::GET, "/v1/lots/{id}/history"),
            Need::Role(Role::Read)
        );
        assert_eq!(r(Method::DELETE, "/v1/lots/{id}"), Need::Role(Role::Admin));
        // A pattern the table does not know is closed; no route at all is the 404.
        assert_eq!(r(Method::GET, "/v1/new-route"), Need::Role(Role::Admin));
        assert_eq!(need(&Method::GET, None), Need::Open);
    }

    #[test]
    fn hosts_are_checked_by_name_without_the_port() {
        let local = Hosts::new(&[], "127.0.0.1:8080".parse().unwrap());
        for ok in ["localhost:8080", "127.0.0.1", "LOCALHOST", "[::1]:8080"] {
            assert!(local.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "[::2]:80",
            "[::1]evil",
            "[::1]:evil",
            "[::1]:",
        ] {
            assert!(!local.allows(bad), "{bad}");
        }
        let any = Hosts::new(&[], "0.0.0.0:8080".parse().unwrap());
        assert!(any.allows("evil.example"));
        let named = Hosts::new(&["Parking.sfu.ca".into()], "0.0.0.0:80".parse().unwrap());
        assert!(named.allows("parking.sfu.ca:443") && !named.allows("localhost"));
    }

    #[test]
    fn tokens_are_found_by_hash_and_bad_files_are_refused() {
        let (token, hash) = new_token().unwrap();
        assert!(token.starts_with("pk_") && token.len() == 67);
        let text = format!(
            "[[token]]\nname = \"gate\"\nrole = \"ingest\"\nlots = [\"North 1\"]\nsha256 = \"{hash}\"\n"
        );
        let auth = Auth::load(TokenSource::Inline(text), true).unwrap();
        let c = auth.check(&token).unwrap();
        assert_eq!((&*c.name, c.role), ("gate", Role::Ingest));
        assert!(c.may_move(&LotId::parse("north-1").unwrap()));
        assert!(!c.may_move(&LotId::parse("south").unwrap()));
        assert!(auth.check("pk_wrong").is_none());
        for bad in [
            "",
            "# all tokens revoked\n",
            "no_tokens = true\n[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"00\"\n",
            // An ingest entry cut before its lots is not an unrestricted token.
            &format!("[[token]]\nname = \"a\"\nrole = \"ingest\"\nsha256 = \"{hash}\"\n"),
            &format!(
                "[[token]]\nname = \"a\"\nrole = \"ingest\"\nlots = \"all\"\nsha256 = \"{hash}\"\n"
            ),
            "[[token]]\nname = \"a\"\nrole = \"root\"\nsha256 = \"00\"\n",
            "[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"zz\"\n",
            "[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"00\"\n",
            "[[token]]\nname = \"\"\nrole = \"read\"\nsha256 = \"00\"\n",
        ] {
            assert!(
                Auth::load(TokenSource::Inline(bad.into()), true).is_err(),
                "{bad}"
            );
        }
        let none = Auth::load(TokenSource::Inline("no_tokens = true\n".into()), true).unwrap();
        assert_eq!(none.count(), 0);
        let every = format!(
            "[[token]]\nname = \"gate\"\nrole = \"ingest\"\nlots = \"*\"\nsha256 = \"{hash}\"\n"
        );
        let every = Auth::load(TokenSource::Inline(every), true).unwrap();
        assert!(every
            .check(&token)
            .unwrap()
            .may_move(&LotId::parse("south").unwrap()));
    }
}
