//! The dashboard at `/`: a page, a stylesheet and a script written for parkade, served
//! from the binary (no CDN). Live cards come from the websocket; charts are SVG drawn
//! by the script from `/recent`, `/timespan` and `/history`.

use actix_web::{web, HttpResponse};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

pub(super) async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .body(INDEX)
}

pub(super) async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, kind) = match file.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => {
            return HttpResponse::NotFound().json(serde_json::json!({
                "error": "not_found", "message": format!("no asset {:?}", file.as_str())
            }))
        }
    };
    HttpResponse::Ok()
        .content_type(kind)
        .insert_header(("cache-control", "no-cache"))
        .body(body)
}
