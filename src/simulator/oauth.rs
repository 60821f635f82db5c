//! The simulated OAuth2 token endpoint (`POST /token` on the FCM port): the standard
//! form-encoded JWT-bearer grant, checked against the public key of the service account the
//! assertion names (its `iss`). A revoked account's assertions are refused.

use http::StatusCode;
use jsonwebtoken::{Algorithm, Validation};
use rand::distributions::{Alphanumeric, DistString};
use serde::Deserialize;
use serde_json::{json, Value};

use super::exchange::{json_response, Handled, Received, Reply};
use super::record::Side;
use super::state::State;
use crate::push::fcm::wire::{JWT_GRANT, MAX_ASSERTION_LIFETIME_SECS, SCOPE};

/// The token endpoint's path.
pub(super) const TOKEN_PATH: &str = "/token";

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    scope: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Answers a token request: an access token for a valid assertion, an OAuth2 error otherwise.
pub(super) fn handle(state: &State, req: &Received) -> Handled {
    let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let body = Value::Object(
        form.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    );
    let reply = if req.method != http::Method::POST {
        oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "POST only",
        )
    } else if field("grant_type") != Some(JWT_GRANT) {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type",
        )
    } else {
        match field("assertion").map(|a| verify_assertion(state, a)) {
            None => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing assertion",
            ),
            Some(Err(why)) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
            Some(Ok(client_email)) => issue_access_token(state, &client_email),
        }
    };
    Handled {
        side: Side::Token,
        token: None,
        body,
        reply,
    }
}

/// The account a valid assertion is from; `Err` is Google's `error_description`.
fn verify_assertion(state: &State, assertion: &str) -> Result<String, &'static str> {
    const BAD_SIGNATURE: &str = "Invalid JWT Signature.";
    const BAD_TIMEFRAME: &str =
        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe";
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    validation.leeway = 60;
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let issuer = {
        let mut unverified = validation.clone();
        unverified.insecure_disable_signature_validation();
        unverified.validate_exp = false;
        jsonwebtoken::decode::<AssertionClaims>(
            assertion,
            &jsonwebtoken::DecodingKey::from_secret(&[]),
            &unverified,
        )
        .map_err(|_| BAD_SIGNATURE)?
        .claims
        .iss
    };
    let account = match state.identities.fcm_account(&issuer) {
        Some(account) => account,
        None if state
            .identities
            .fcm_accounts()
            .iter()
            .any(|a| a.client_email == issuer) =>
        {
            // Revoked: Google answers a deleted key this way.
            return Err(BAD_SIGNATURE);
        }
        None => return Err("Invalid JWT: unknown issuer"),
    };
    // The simulator's clock decides expiry, so tests can move it.
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &account.verifier, &validation)
        .map_err(|_| BAD_SIGNATURE)?
        .claims;
    if !claims.scope.split_whitespace().any(|s| s == SCOPE) {
        return Err("Invalid OAuth scope or ID token audience provided.");
    }
    let aud_is_token_uri = claims
        .aud
        .parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("https") && u.path() == TOKEN_PATH);
    if !aud_is_token_uri {
        return Err("Invalid JWT: audience must be the token endpoint");
    }
    let now = state.now_secs();
    if claims.exp - claims.iat > MAX_ASSERTION_LIFETIME_SECS
        || claims.iat > now + 60
        || claims.exp < now - 60
    {
        return Err(BAD_TIMEFRAME);
    }
    Ok(claims.iss)
}

fn issue_access_token(state: &State, client_email: &str) -> Reply {
    let token = format!(
        "ya29.sim-{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 48)
    );
    let ttl = state.access_token_ttl_secs;
    state.issue_access_token(token.clone(), client_email, state.now_secs() + ttl as i64);
    Reply::Respond(json_response(
        StatusCode::OK,
        &json!({ "access_token": token, "expires_in": ttl, "token_type": "Bearer" }),
    ))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Reply {
    Reply::Respond(json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    ))
}
