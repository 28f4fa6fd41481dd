//! The dashboard at `/`: a page, a stylesheet and a script written for parkade, served
//! from the binary (no CDN). Live cards come from the websocket; charts are SVG drawn
//! by the script from `/recent`, `/timespan` and `/history`.

use actix_web::{web, HttpResponse};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The page loads only its own script and stylesheet, talks only to this server, and
/// may not be framed (clickjacking); no referrer leaves it.
const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
];

fn page(kind: &str, body: &'static str) -> HttpResponse {
    let mut reply = HttpResponse::Ok();
    reply
        .content_type(kind)
        .insert_header(("cache-control", "no-cache"));
    for h in SECURITY_HEADERS {
        reply.insert_header(h);
    }
    reply.body(body)
}

pub(super) async fn index() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX)
}

pub(super) async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, kind) = match file.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => {
            return HttpResponse::NotFound().json(super::wire::ErrorBody::new(
                "not_found",
                format!("no asset {:?}", file.as_str()),
            ))
        }
    };
    page(kind, body)
}
