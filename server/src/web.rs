//! The web pages, served from [`Settings::web_dir`](crate::config::Settings::web_dir) (what `cargo xtask web`
//! builds into `web/dist`): the dashboard at `/` (its client-side routes fall back to `index.html`), the
//! contribute page at `/contribute`, the site owners' page at `/sites`, the embed script at `/embed.js` and the
//! browser provider (a worker script and its wasm) under `/provider/`.
//!
//! Paths under `/api/` and `/ws/` never reach the pages: they answer the API's JSON 404. The embed script and the
//! provider are fetched by pages on other sites, so they carry `Access-Control-Allow-Origin: *` (they are public
//! files; which sites may *train* is decided at the provider socket, see `training::SocketOrigin`). The server's
//! own provider pages carry a strict Content-Security-Policy: the provider needs no more than it allows. Every
//! page, whatever path reaches it (`/contribute` or `/contribute.html`), carries a policy that forbids framing
//! (`frame-ancestors 'none'`, `X-Frame-Options: DENY`) and sends no referrer; the dashboard's policy allows its
//! one inline loader script (trunk's) by the hash of its text, read from the built `index.html`.

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

/// The dashboard's policy, before the hashes of its inline scripts are added to `script-src`.
const DASHBOARD_CSP: [&str; 2] = [
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'",
    "; connect-src 'self'; style-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'",
];

/// The `'sha256-…'` sources of the inline scripts (those without `src`) of `html`, for `script-src`.
fn inline_script_hashes(html: &str) -> Vec<String> {
    use base64::Engine as _;
    use sha2::{Digest as _, Sha256};
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find("<script") {
        let after = &rest[open..];
        let Some(tag_end) = after.find('>') else { break };
        let tag = &after[..tag_end];
        let body = &after[tag_end + 1..];
        let Some(close) = body.find("</script>") else { break };
        if !tag.contains(" src=") {
            let digest = Sha256::digest(&body.as_bytes()[..close]);
            hashes.push(format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest)));
        }
        rest = &body[close..];
    }
    hashes
}

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
        // The HTML file served, whichever path named it.
        let html: Option<String> = match file {
            Some(f) => Some(f.to_owned()),
            None if path.ends_with(".html") => Some(path.to_owned()),
            None => None,
        };
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
        if let Some(html) = html.filter(|_| response.status().is_success()) {
            let policy = if html == "/index.html" { self.dashboard_csp().await } else { PAGE_CSP.to_owned() };
            let headers = response.headers_mut();
            if let Ok(policy) = HeaderValue::try_from(policy) {
                headers.insert(header::CONTENT_SECURITY_POLICY, policy);
            }
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        }
        response
    }

    /// The dashboard's policy, with the hashes of the inline scripts of the `index.html` on disk now (so that a
    /// rebuild of the pages needs no restart).
    async fn dashboard_csp(&self) -> String {
        let html = tokio::fs::read_to_string(self.dir.join("index.html")).await.unwrap_or_default();
        let hashes: String = inline_script_hashes(&html).iter().map(|h| format!(" {h}")).collect();
        format!("{}{hashes}{}", DASHBOARD_CSP[0], DASHBOARD_CSP[1])
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
    use super::{inline_script_hashes, page_file};

    #[test]
    fn inline_scripts_are_hashed_and_external_ones_are_not() {
        // `echo -n "alert(1)" | openssl dgst -sha256 -binary | base64`, and the same of "x"
        let html = r#"<script type="module">alert(1)</script><script src="/a.js"></script><script>x</script>"#;
        assert_eq!(
            inline_script_hashes(html),
            vec![
                "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='".to_owned(),
                "'sha256-LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE='".to_owned()
            ]
        );
        assert!(inline_script_hashes("<p>no scripts</p><script>unclosed").is_empty());
    }

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
