//! The web pages, served from [`Settings::web_dir`](crate::config::Settings::web_dir) (what `cargo xtask web`
//! builds into `web/dist`): the dashboard at `/` (its client-side routes fall back to `index.html`), the
//! contribute page at `/contribute`, the site owners' page at `/sites`, the embed script at `/embed.js` and the
//! browser provider (a worker script and its wasm) under `/provider/`.
//!
//! Paths under `/api/` and `/ws/` never reach the pages: they answer the API's JSON 404. The embed script and the
//! provider are fetched by pages on other sites, so they carry `Access-Control-Allow-Origin: *` (they are public
//! files; which sites may *train* is decided at the provider socket, see `training::SocketOrigin`). The server's
//! own provider pages carry a strict Content-Security-Policy: the provider needs no more than it allows.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;
use tower_http::services::ServeDir;

use crate::error::AppError;

/// The policy of the contribute and site-owner pages: scripts, styles and the worker from this server only,
/// WebAssembly compilation, and sockets back to it.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; \
                            connect-src 'self'; style-src 'self'; img-src 'self' data:; base-uri 'none'; \
                            form-action 'self'; frame-ancestors 'none'";

/// The built pages.
#[derive(Clone, Debug)]
pub struct Pages {
    dir: PathBuf,
    files: ServeDir,
}

impl Pages {
    pub fn new(dir: &Path) -> Pages {
        Pages { dir: dir.to_owned(), files: ServeDir::new(dir).precompressed_gzip() }
    }

    /// Answers a request no API route took.
    pub async fn serve(self, request: Request) -> Response {
        let path = request.uri().path();
        if path == "/api" || path.starts_with("/api/") || path.starts_with("/ws/") || path == "/metrics" {
            return AppError::NotFound("route").into_response();
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return AppError::MethodNotAllowed.into_response();
        }
        let file = page_file(path);
        let page = file.map(|f| f.ends_with(".html")).unwrap_or(false);
        let shared = path == "/embed.js" || path.starts_with("/provider/");
        let (mut parts, body) = request.into_parts();
        if let Some(file) = file {
            let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            parts.uri = Uri::try_from(format!("{file}{query}")).unwrap_or_else(|_| Uri::from_static("/index.html"));
        }
        let Ok(response) = self.files.clone().oneshot(Request::from_parts(parts, body)).await;
        if response.status() == StatusCode::NOT_FOUND && page {
            return self.not_built(file.unwrap_or_default());
        }
        let mut response = response.map(Body::new);
        let headers = response.headers_mut();
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if shared {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            headers.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
        }
        if matches!(file, Some("/contribute.html" | "/sites.html")) {
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
            headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        }
        response
    }

    /// A page that is missing because nobody built the pages: say how to.
    fn not_built(&self, file: &str) -> Response {
        let message = format!(
            "{} is not in {}: the web pages are not built. Run `cargo xtask web` in the DAIG checkout (or start the \
             server with `cargo xtask serve`), or point --web-dir at the built pages.\n",
            file.trim_start_matches('/'),
            self.dir.display()
        );
        (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
    }
}

/// The file a page path is served from: `/contribute` and `/sites` are pages of their own, other paths without
/// a file extension are the dashboard's client-side routes (its `index.html`); `None` serves the path as it is.
fn page_file(path: &str) -> Option<&'static str> {
    match path.trim_end_matches('/') {
        "/contribute" => Some("/contribute.html"),
        "/sites" => Some("/sites.html"),
        p if p.starts_with("/provider") => None,
        p if p.rsplit('/').next().is_some_and(|last| last.contains('.')) => None,
        _ => Some("/index.html"),
    }
}

#[cfg(test)]
mod tests {
    use super::page_file;

    #[test]
    fn paths_map_to_pages() {
        assert_eq!(page_file("/"), Some("/index.html"));
        assert_eq!(page_file("/projects/7"), Some("/index.html"));
        assert_eq!(page_file("/contribute"), Some("/contribute.html"));
        assert_eq!(page_file("/contribute/"), Some("/contribute.html"));
        assert_eq!(page_file("/sites"), Some("/sites.html"));
        assert_eq!(page_file("/embed.js"), None);
        assert_eq!(page_file("/provider/daig_provider_bg.wasm"), None);
        assert_eq!(page_file("/index.html"), None);
    }
}
