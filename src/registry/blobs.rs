//! Blobs: an image config read, and a new one pushed, when an unchanged image is re-stamped for
//! another commit. Layers are never moved.

use bytes::Bytes;
use http::header::LOCATION;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::{Operation, Registry, RegistryError, classify, sha256_digest, verify_digest};

/// Redirects followed to a blob's storage (ECR answers a blob GET with one to S3).
const MAX_REDIRECTS: usize = 3;

impl Registry {
    /// Whether the repository holds the blob.
    pub(crate) async fn has_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let target = self.target(Operation::HeadBlob, repository, digest)?;
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let resp = self
            .request(&target, Method::HEAD, &url, true, None)
            .await?;
        match resp.status {
            StatusCode::NOT_FOUND => Ok(false),
            status if status.is_success() => Ok(true),
            status => Err(classify(target, status, &resp.body)),
        }
    }

    /// The blob's bytes, checked against its digest. A redirect to storage elsewhere is followed
    /// without the registry's credentials, which belong to the registry alone.
    pub(crate) async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Bytes, RegistryError> {
        let target = self.target(Operation::GetBlob, repository, digest)?;
        let mut url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let mut authorized = true;
        for _ in 0..=MAX_REDIRECTS {
            let resp = self
                .request(&target, Method::GET, &url, authorized, None)
                .await?;
            if resp.status.is_success() {
                return verify_digest(digest, &resp.body)
                    .map(|()| resp.body)
                    .map_err(|actual| RegistryError::DigestMismatch {
                        target: Box::new(target.clone()),
                        expected: digest.to_owned(),
                        actual,
                    });
            }
            match redirect(&url, resp.status, &resp.headers) {
                Some((next, same_origin)) => {
                    authorized &= same_origin;
                    url = next;
                }
                None => return Err(classify(target, resp.status, &resp.body)),
            }
        }
        Err(RegistryError::InvalidResponse {
            target: Box::new(target),
            message: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Uploads `bytes` as one blob: POST for an upload, then one PUT with the digest. Returns the
    /// digest.
    pub(crate) async fn push_blob(
        &self,
        repository: &str,
        bytes: Bytes,
    ) -> Result<String, RegistryError> {
        let digest = sha256_digest(&bytes);
        let target = self.target(Operation::PushBlob, repository, &digest)?;
        let start = self.url(&format!("/v2/{repository}/blobs/uploads/"));
        let resp = self
            .request(&target, Method::POST, &start, true, None)
            .await?;
        if resp.status != StatusCode::ACCEPTED {
            return Err(classify(target, resp.status, &resp.body));
        }
        let location = resp
            .headers
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| RegistryError::InvalidResponse {
                target: Box::new(target.clone()),
                message: "the upload was accepted without a Location".to_owned(),
            })?;
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self.url(&format!(
            "{location}{separator}digest={}",
            digest.replace(':', "%3A")
        ));
        let content = (HeaderValue::from_static("application/octet-stream"), bytes);
        let resp = self
            .request(&target, Method::PUT, &put, true, Some(content))
            .await?;
        if resp.status.is_success() {
            Ok(digest)
        } else {
            Err(classify(target, resp.status, &resp.body))
        }
    }
}

/// Where a redirect answer points, absolute, and whether it stays on the same scheme, host and port.
fn redirect(from: &str, status: StatusCode, headers: &HeaderMap) -> Option<(String, bool)> {
    if !status.is_redirection() {
        return None;
    }
    let location = headers.get(LOCATION)?.to_str().ok()?;
    let origin = |url: &str| {
        let after_scheme = url.find("://")? + 3;
        let end = url[after_scheme..]
            .find('/')
            .map_or(url.len(), |slash| after_scheme + slash);
        Some(url[..end].to_owned())
    };
    let from_origin = origin(from)?;
    let next = if location.starts_with('/') {
        format!("{from_origin}{location}")
    } else {
        location.to_owned()
    };
    let same = origin(&next).is_some_and(|o| o.eq_ignore_ascii_case(&from_origin));
    Some((next, same))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(location: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, HeaderValue::from_str(location).unwrap());
        headers
    }

    #[test]
    fn redirects_to_storage_drop_the_credentials_and_local_ones_keep_them() {
        let from = "https://1.dkr.ecr.eu-west-1.amazonaws.com/v2/app/blobs/sha256:ab";
        let s3 = "https://prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com/x?X-Amz-Signature=1";
        assert_eq!(
            redirect(from, StatusCode::TEMPORARY_REDIRECT, &located(s3)),
            Some((s3.to_owned(), false))
        );
        assert_eq!(
            redirect(from, StatusCode::FOUND, &located("/v2/app/blobs/other")),
            Some((
                "https://1.dkr.ecr.eu-west-1.amazonaws.com/v2/app/blobs/other".to_owned(),
                true
            ))
        );
        let other_port = "https://1.dkr.ecr.eu-west-1.amazonaws.com:8443/v2/x";
        assert_eq!(
            redirect(from, StatusCode::SEE_OTHER, &located(other_port)).map(|(_, same)| same),
            Some(false)
        );
        assert_eq!(redirect(from, StatusCode::OK, &located(s3)), None);
        assert_eq!(redirect(from, StatusCode::FOUND, &HeaderMap::new()), None);
    }
}
