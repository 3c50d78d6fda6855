//! The server's HTTP API as the dashboard calls it: JSON requests with the session cookie, the CSRF header on
//! writes, streamed uploads with progress, and the one error shape (`{"error": {"code", "message", "details"}}`).
//! Requests and answers are `daig_shared::api`'s types, the ones the server serialises; an answer that does not
//! read as its type is an [`ApiError`] (`bad_answer`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{ProgressEvent, Request, RequestCredentials, RequestInit, Response, XmlHttpRequest};

use crate::dom;

/// The details of `validation_failed` (and of an invalid project, beside its model's problems): every request
/// field that breaks a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FieldProblems {
    #[serde(default)]
    pub fields: Vec<FieldProblem>,
}

/// One request field that breaks a rule (the server's `FieldError`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldProblem {
    /// The field as the request names it (`name`, `settings.epochs`).
    pub field: String,
    pub message: String,
}

/// The details of a conflict (`conflict`): the field whose value is taken.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Conflict {
    pub field: String,
}

/// The details of a refused body or dataset (`invalid_body`, `malformed_json`, `invalid_dataset`): why.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Refusal {
    pub reason: String,
}

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status; 0 when the server could not be reached.
    pub status: u16,
    /// The error's stable code (`validation_failed`, `not_found`, ...).
    pub code: String,
    /// A sentence for a person.
    pub message: String,
    /// The error's details, `null` when there are none.
    pub details: Value,
}

impl ApiError {
    /// Reads the server's error shape; anything else becomes a generic error with the status.
    pub fn from_body(status: u16, body: &str) -> ApiError {
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let error = parsed.as_ref().map(|v| &v["error"]);
        match error {
            Some(e) if e["code"].is_string() => ApiError {
                status,
                code: e["code"].as_str().unwrap_or_default().to_owned(),
                message: e["message"].as_str().unwrap_or_default().to_owned(),
                details: e["details"].clone(),
            },
            _ => ApiError {
                status,
                code: "http".into(),
                message: format!("the server answered {status}"),
                details: Value::Null,
            },
        }
    }

    /// The details read as `T`, the shape the error's code implies (see [`FieldProblems`], [`Refusal`]); `None`
    /// when they are not.
    pub fn details_as<T: DeserializeOwned>(&self) -> Option<T> {
        T::deserialize(&self.details).ok()
    }

    fn encode(error: &serde_json::Error) -> ApiError {
        ApiError {
            status: 0,
            code: "encode_failed".into(),
            message: format!("the request could not be written ({error})"),
            details: Value::Null,
        }
    }

    fn network(what: &str) -> ApiError {
        ApiError {
            status: 0,
            code: "network".into(),
            message: format!("cannot reach the server ({what}); check the connection and retry"),
            details: Value::Null,
        }
    }

    /// The message to show a person: the server's, with a hint for the cases a person can act on.
    pub fn describe(&self) -> String {
        match self.code.as_str() {
            "unauthenticated" => "You are not logged in, or your session has expired: log in again.".into(),
            "csrf_failed" => "Your session's security token is missing: log in again.".into(),
            "not_found" if self.message == "no such project" => {
                "No such project: it does not exist, or it belongs to another account.".into()
            }
            _ => capitalise(&self.message),
        }
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The `daig_csrf` cookie's value, echoed in `X-CSRF-Token` on writes.
pub fn csrf_token() -> Option<String> {
    let document: web_sys::HtmlDocument = dom::document().dyn_into().ok()?;
    let cookies = document.cookie().ok()?;
    csrf_from_cookies(&cookies)
}

/// The `daig_csrf` value in a `document.cookie` string.
pub fn csrf_from_cookies(cookies: &str) -> Option<String> {
    cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == "daig_csrf")
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

/// Sends a request (with `body` as its JSON, for POST/PUT) and returns the answer's text (empty for 204).
///
/// # Errors
/// The server's error, or a network error (status 0).
async fn send(method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), ApiError> {
    let init = RequestInit::new();
    init.set_method(method);
    init.set_credentials(RequestCredentials::SameOrigin);
    if let Some(body) = body {
        init.set_body(&JsValue::from_str(body));
    }
    let request = Request::new_with_str_and_init(path, &init).map_err(|e| ApiError::network(&dom::js_error(&e)))?;
    let headers = request.headers();
    let _ = headers.set("Accept", "application/json");
    if body.is_some() {
        let _ = headers.set("Content-Type", "application/json");
    }
    if method != "GET"
        && let Some(token) = csrf_token()
    {
        let _ = headers.set("X-CSRF-Token", &token);
    }
    let window = web_sys::window().ok_or_else(|| ApiError::network("no window"))?;
    let response =
        JsFuture::from(window.fetch_with_request(&request)).await.map_err(|e| ApiError::network(&dom::js_error(&e)))?;
    let response: Response = response.unchecked_into();
    let status = response.status();
    let text = match response.text() {
        Ok(promise) => JsFuture::from(promise).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    if (200..300).contains(&status) { Ok((status, text)) } else { Err(ApiError::from_body(status, &text)) }
}

/// Sends `body` (if any) as JSON and reads the answer as `T`.
async fn call_json<B: Serialize, T: DeserializeOwned>(
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<T, ApiError> {
    let body = body.map(|b| serde_json::to_string(b).map_err(|e| ApiError::encode(&e))).transpose()?;
    let (status, text) = send(method, path, body.as_deref()).await?;
    decode(status, &text)
}

/// Reads a successful answer as `T`.
///
/// # Errors
/// `bad_answer` when the text is not the JSON of a `T`.
pub fn decode<T: DeserializeOwned>(status: u16, text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError {
        status,
        code: "bad_answer".into(),
        message: format!("the server's answer could not be read ({e}); reload the page"),
        details: Value::Null,
    })
}

/// `GET path`, its answer read as `T`.
///
/// # Errors
/// The server's error, a network error (status 0), or an answer that is not a `T` (`bad_answer`).
pub async fn get_json<T: DeserializeOwned>(path: &str) -> Result<T, ApiError> {
    call_json::<(), T>("GET", path, None).await
}

/// `POST path` with `body` as JSON, its answer read as `T`.
///
/// # Errors
/// As [`get_json`].
pub async fn post_json<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> Result<T, ApiError> {
    call_json("POST", path, Some(body)).await
}

/// `POST path` without a body (the lifecycle actions), its answer read as `T`.
///
/// # Errors
/// As [`get_json`].
pub async fn post_empty<T: DeserializeOwned>(path: &str) -> Result<T, ApiError> {
    call_json::<(), T>("POST", path, None).await
}

/// `PUT path` with `body` as JSON, its answer read as `T`.
///
/// # Errors
/// As [`get_json`].
pub async fn put_json<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> Result<T, ApiError> {
    call_json("PUT", path, Some(body)).await
}

/// `DELETE path`; the answer (204) has no body.
///
/// # Errors
/// The server's error, or a network error (status 0).
pub async fn delete(path: &str) -> Result<(), ApiError> {
    send("DELETE", path, None).await.map(|_| ())
}

/// Uploads `file` with `PUT` to `path`, calling `progress(sent_bytes, total_bytes)` as it goes. An
/// `XMLHttpRequest`, because `fetch` reports no upload progress.
///
/// # Errors
/// The server's error, or a network error (status 0).
pub async fn upload<T: DeserializeOwned>(
    path: &str,
    file: &web_sys::File,
    progress: impl Fn(f64, f64) + 'static,
) -> Result<T, ApiError> {
    let xhr = XmlHttpRequest::new().map_err(|e| ApiError::network(&dom::js_error(&e)))?;
    xhr.open_with_async("PUT", path, true).map_err(|e| ApiError::network(&dom::js_error(&e)))?;
    xhr.set_with_credentials(true);
    let _ = xhr.set_request_header("Content-Type", "application/octet-stream");
    let _ = xhr.set_request_header("Accept", "application/json");
    if let Some(token) = csrf_token() {
        let _ = xhr.set_request_header("X-CSRF-Token", &token);
    }
    let on_progress = Closure::<dyn FnMut(ProgressEvent)>::new(move |e: ProgressEvent| {
        if e.length_computable() {
            progress(e.loaded(), e.total());
        }
    });
    if let Ok(upload) = xhr.upload() {
        upload.set_onprogress(Some(on_progress.as_ref().unchecked_ref()));
    }
    let done = {
        let xhr = xhr.clone();
        js_sys::Promise::new(&mut move |resolve, reject| {
            xhr.set_onload(Some(&resolve));
            xhr.set_onerror(Some(&reject));
            xhr.set_onabort(Some(&reject));
        })
    };
    xhr.send_with_opt_blob(Some(file)).map_err(|e| ApiError::network(&dom::js_error(&e)))?;
    let finished = JsFuture::from(done).await;
    if let Ok(upload) = xhr.upload() {
        upload.set_onprogress(None);
    }
    drop(on_progress);
    if finished.is_err() {
        return Err(ApiError::network("the upload was interrupted"));
    }
    let status = xhr.status().unwrap_or(0);
    let text = xhr.response_text().ok().flatten().unwrap_or_default();
    if (200..300).contains(&status) { decode(status, &text) } else { Err(ApiError::from_body(status, &text)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_cookie_is_found_among_others() {
        assert_eq!(csrf_from_cookies("a=1; daig_csrf=xyz; b=2").as_deref(), Some("xyz"));
        assert_eq!(csrf_from_cookies("daig_csrf="), None);
        assert_eq!(csrf_from_cookies("other=1"), None);
    }

    #[test]
    fn errors_are_read_from_the_server_shape() {
        let e = ApiError::from_body(404, r#"{"error":{"code":"not_found","message":"no such project"}}"#);
        assert_eq!(e.code, "not_found");
        assert!(e.describe().contains("another account"), "{}", e.describe());
        let e = ApiError::from_body(502, "<html>bad gateway</html>");
        assert_eq!(e.message, "the server answered 502");
        let e = ApiError::from_body(401, r#"{"error":{"code":"unauthenticated","message":"x"}}"#);
        assert!(e.describe().contains("log in"));
    }

    #[test]
    fn answers_are_read_as_their_types_and_a_wrong_shape_is_an_error() {
        use daig_shared::api::project::{ProjectList, ProjectState};
        let list: ProjectList = decode(
            200,
            r#"{"projects":[{"id":1,"name":"a","state":"running","epoch":0,"progress":0.5,"created_at_unix":9}]}"#,
        )
        .unwrap();
        assert_eq!(list.projects[0].state, ProjectState::Running);
        let e = decode::<ProjectList>(200, r#"{"projects":3}"#).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (200, "bad_answer"));
        assert!(e.describe().starts_with("The server's answer could not be read"), "{}", e.describe());
        assert_eq!(decode::<ProjectList>(200, "").unwrap_err().code, "bad_answer");
    }

    #[test]
    fn details_are_read_in_the_shape_of_their_code() {
        let e = ApiError::from_body(
            422,
            r#"{"error":{"code":"validation_failed","message":"m","details":{"fields":[{"field":"name","message":"too long"}]}}}"#,
        );
        let problems: FieldProblems = e.details_as().unwrap();
        assert_eq!(problems.fields, [FieldProblem { field: "name".into(), message: "too long".into() }]);
        assert_eq!(e.details_as::<Refusal>(), None);
        let e =
            ApiError::from_body(409, r#"{"error":{"code":"conflict","message":"taken","details":{"field":"email"}}}"#);
        assert_eq!(e.details_as::<Conflict>().map(|c| c.field).as_deref(), Some("email"));
    }
}
