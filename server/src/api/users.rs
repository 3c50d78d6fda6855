//! Accounts: `POST /api/users` (sign up) and `GET /api/me`, with the rules for usernames, e-mail addresses and
//! passwords.

use axum::extract::State;
use axum::http::StatusCode;

pub use daig_shared::api::accounts::{EMAIL_MAX_BYTES, Me, PASSWORD_CHARS, SignUp, USERNAME_CHARS, UserView};

use crate::auth::{CurrentUser, password};
use crate::db::{self, now_unix};
use crate::error::{AppError, ErrorBody, FieldError};
use crate::extract::Json;
use crate::limits::AuthRateLimit;
use crate::state::AppState;

/// Creates an account. Rate-limited per client IP.
#[utoipa::path(post, path = "/api/users", tag = "accounts", request_body = SignUp, responses(
    (status = 201, description = "The account was created", body = UserView),
    (status = 409, description = "The username or e-mail address is taken", body = ErrorBody),
    (status = 422, description = "Invalid fields, all listed in `details.fields`", body = ErrorBody),
    (status = 429, description = "Too many attempts from this IP", body = ErrorBody),
))]
pub async fn sign_up(
    _: AuthRateLimit,
    State(state): State<AppState>,
    Json(body): Json<SignUp>,
) -> Result<(StatusCode, Json<UserView>), AppError> {
    let email = body.email.to_lowercase();
    let mut errors = Vec::new();
    validate_username(&body.username, &mut errors);
    validate_email(&email, &mut errors);
    validate_password(&body.password, &mut errors);
    if !errors.is_empty() {
        return Err(AppError::Validation(errors));
    }
    if let Some(username_taken) = db::accounts::name_or_email_taken(state.db(), &body.username, &email).await? {
        return Err(taken_error(username_taken));
    }
    let hash = password::hash(body.password).await?;
    let now = now_unix();
    let inserted = db::accounts::insert_user(state.db(), &body.username, &email, &hash, now).await;
    let id = match inserted {
        Ok(id) => id,
        // A sign-up with the same name that raced this one between the check and the insert.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(taken_error(e.message().contains("username")));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(user_id = id, "account created");
    Ok((StatusCode::CREATED, Json(UserView { id, username: body.username, email, created_at_unix: now })))
}

fn taken_error(username: bool) -> AppError {
    if username {
        AppError::Conflict { message: "this username is taken".to_owned(), field: "username" }
    } else {
        AppError::Conflict { message: "an account with this e-mail address exists".to_owned(), field: "email" }
    }
}

/// The authenticated user.
#[utoipa::path(get, path = "/api/me", tag = "accounts", security(("bearer" = []), ("session" = [])), responses(
    (status = 200, description = "The authenticated user", body = Me),
    (status = 401, description = "No valid credentials", body = ErrorBody),
))]
pub async fn me(State(state): State<AppState>, user: CurrentUser) -> Result<Json<Me>, AppError> {
    let created_at_unix = db::accounts::user_created_at(state.db(), user.id).await?;
    Ok(Json(Me {
        user: UserView { id: user.id, username: user.username, email: user.email, created_at_unix },
        auth: user.auth,
    }))
}

fn validate_username(username: &str, errors: &mut Vec<FieldError>) {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let ok = USERNAME_CHARS.contains(&username.chars().count())
        && username.chars().all(allowed)
        && username.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        errors.push(FieldError {
            field: "username",
            message: "must be 3 to 32 ASCII letters, digits, '_' or '-', starting with a letter or digit".to_owned(),
        });
    }
}

fn validate_email(email: &str, errors: &mut Vec<FieldError>) {
    let ok = email.len() <= EMAIL_MAX_BYTES
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.split('.').count() >= 2
                && domain.split('.').all(|label| !label.is_empty())
        });
    if !ok {
        errors.push(FieldError {
            field: "email",
            message: format!("must be an e-mail address like name@example.org, at most {EMAIL_MAX_BYTES} bytes"),
        });
    }
}

/// Checks the password rules.
pub fn validate_password(password: &str, errors: &mut Vec<FieldError>) {
    if !PASSWORD_CHARS.contains(&password.chars().count()) {
        errors.push(FieldError { field: "password", message: "must be 8 to 128 characters".to_owned() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(username: &str, email: &str, password: &str) -> Vec<&'static str> {
        let mut errors = Vec::new();
        validate_username(username, &mut errors);
        validate_email(email, &mut errors);
        validate_password(password, &mut errors);
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn rules() {
        assert!(errors_of("ada", "ada@example.org", "12345678").is_empty());
        assert!(errors_of("a-b_c9", "x@a.b", &"p".repeat(128)).is_empty());
        assert_eq!(errors_of("ab", "ada@example.org", "12345678"), ["username"]);
        assert_eq!(errors_of("_ada", "ada@example", "1234567"), ["username", "email", "password"]);
        assert_eq!(errors_of("adé", "a@@b.c", &"p".repeat(129)), ["username", "email", "password"]);
        assert_eq!(errors_of("ada", "a b@c.d", "12345678"), ["email"]);
        assert_eq!(errors_of("ada", "ab@c..d", "12345678"), ["email"]);
        // Characters, not bytes: eight two-byte characters are a valid password.
        assert!(errors_of("ada", "ada@example.org", "éééééééé").is_empty());
    }
}
