//! Bearer tokens: a registry that answers 401 with `WWW-Authenticate: Bearer realm=…` (Docker
//! Hub, GHCR, most registries but ECR) hands out a token for the scope at its token service,
//! anonymously or for the basic credentials the client has.

use http::{HeaderMap, HeaderValue, Method};

use super::{Registry, RegistryError, Target, classify};

impl Registry {
    /// A token from the registry's token service for the challenged scope, as `Bearer <token>`.
    pub(super) async fn fetch_token(
        &self,
        target: &Target,
        challenge: &BearerChallenge,
    ) -> Result<HeaderValue, RegistryError> {
        let invalid = |message: String| RegistryError::InvalidResponse {
            target: Box::new(target.clone()),
            message,
        };
        let query = serde_urlencoded::to_string(
            [("service", &challenge.service), ("scope", &challenge.scope)]
                .into_iter()
                .filter(|(_, value)| !value.is_empty())
                .collect::<Vec<_>>(),
        )
        .map_err(|err| invalid(err.to_string()))?;
        let url = match query.is_empty() {
            true => challenge.realm.clone(),
            false => format!("{}?{query}", challenge.realm),
        };
        let basic = self
            .inner
            .basic
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let response = self
            .timed(target, self.send(target, &Method::GET, &url, basic, None))
            .await?;
        if !response.status.is_success() {
            return Err(classify(target.clone(), response.status, &response.body));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&response.body)
            .map_err(|err| invalid(format!("the token service's answer: {err}")))?;
        let token = (answer.token.or(answer.access_token))
            .ok_or_else(|| invalid("the token service gave no token".to_owned()))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| invalid("the token service gave an unusable token".to_owned()))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// A `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` challenge.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BearerChallenge {
    realm: String,
    service: String,
    scope: String,
}

pub(super) fn bearer_challenge(headers: &HeaderMap) -> Option<BearerChallenge> {
    let value = headers.get(http::header::WWW_AUTHENTICATE)?.to_str().ok()?;
    let (scheme, params) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut challenge = BearerChallenge {
        realm: String::new(),
        service: String::new(),
        scope: String::new(),
    };
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        match key.as_str() {
            "realm" => challenge.realm = value.to_owned(),
            "service" => challenge.service = value.to_owned(),
            "scope" => challenge.scope = value.to_owned(),
            _ => {}
        }
        rest = after.trim_start_matches(',').trim();
    }
    let realm_ok =
        challenge.realm.starts_with("https://") || challenge.realm.starts_with("http://");
    realm_ok.then_some(challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_read_as_registries_send_them() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/node:pull""#,
            ),
        );
        assert_eq!(
            bearer_challenge(&headers),
            Some(BearerChallenge {
                realm: "https://auth.example/token".into(),
                service: "registry.example".into(),
                scope: "repository:library/node:pull".into(),
            })
        );
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Basic realm="https://123.dkr.ecr.eu-west-1.amazonaws.com/""#,
            ),
        );
        assert_eq!(bearer_challenge(&headers), None);
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="file:///etc/passwd""#),
        );
        assert_eq!(
            bearer_challenge(&headers),
            None,
            "only http(s) token services"
        );
    }
}
