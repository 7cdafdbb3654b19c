//! AWS Signature Version 4 for requests the host sends on a plugin's behalf.
//! The plugin names the service, region and the secrets holding the keys;
//! the host signs at send time, so the keys never enter the sandbox.

use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use std::time::SystemTime;
use url::Url;

/// Characters AWS leaves unencoded: `A-Z a-z 0-9 - _ . ~`.
const AWS: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// What a request is signed with.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// Service in the credential scope, e.g. `elasticloadbalancing`.
    pub service: &'a str,
    /// Region, e.g. `us-east-1`.
    pub region: &'a str,
    /// Access key id.
    pub access_key_id: &'a str,
    /// Secret access key.
    pub secret_access_key: &'a str,
    /// Session token of temporary credentials.
    pub session_token: Option<&'a str>,
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, AWS).to_string()
}

/// The `Host` header value reqwest sends for `url`.
fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

fn canonical_path(url: &Url, service: &str) -> String {
    let path = if url.path().is_empty() { "/" } else { url.path() };
    if service == "s3" {
        // S3 signs the path as sent; every other service encodes it once more.
        return path.to_string();
    }
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

fn canonical_query(url: &Url) -> String {
    let mut pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (encode(&k), encode(&v))).collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// Headers to add so the request carries a valid signature: `x-amz-date`,
/// `x-amz-security-token` with a session token, `x-amz-content-sha256` for S3,
/// and `authorization`. `headers` are the request's own; `content-type` and
/// any `x-amz-*` among them are signed too.
pub fn sign(
    creds: &Credentials<'_>,
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    body: &[u8],
    now: SystemTime,
) -> Vec<(String, String)> {
    let stamp = humantime::format_rfc3339_seconds(now).to_string().replace(['-', ':'], "");
    let date = &stamp[..8];
    let payload_hash = sha256_hex(body);

    let mut added = vec![("x-amz-date".to_string(), stamp.clone())];
    if let Some(token) = creds.session_token {
        added.push(("x-amz-security-token".into(), token.to_string()));
    }
    if creds.service == "s3" {
        added.push(("x-amz-content-sha256".into(), payload_hash.clone()));
    }
    let mut signed: Vec<(String, String)> = vec![("host".into(), host_header(url))];
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let ours = added.iter().any(|(n, _)| *n == name) || name == "authorization" || name == "host";
        if !ours && (name == "content-type" || name.starts_with("x-amz-")) {
            signed.push((name, value.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
    }
    signed.extend(added.iter().cloned());
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_names = signed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_names}\n{payload_hash}",
        method.to_ascii_uppercase(),
        canonical_path(url, creds.service),
        canonical_query(url),
    );
    let scope = format!("{date}/{}/{}/aws4_request", creds.region, creds.service);
    let string_to_sign = format!("AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()));
    let mut key = hmac(format!("AWS4{}", creds.secret_access_key).as_bytes(), date);
    for part in [creds.region, creds.service, "aws4_request"] {
        key = hmac(&key, part);
    }
    let signature = hex::encode(hmac(&key, &string_to_sign));
    added.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    added
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const CREDS: Credentials<'static> = Credentials {
        service: "service",
        region: "us-east-1",
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token: None,
    };

    /// 2015-08-30T12:36:00Z, the time of AWS's published test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn authorization(url: &str) -> String {
        let headers = sign(&CREDS, "GET", &Url::parse(url).unwrap(), &[], b"", suite_time());
        headers.into_iter().find(|(n, _)| n == "authorization").unwrap().1
    }

    #[test]
    fn matches_the_aws_test_suite() {
        assert_eq!(
            authorization("https://example.amazonaws.com/"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        // get-vanilla-query-order-key-case: the query is sorted before signing.
        assert!(authorization("https://example.amazonaws.com/?Param2=value2&Param1=value1")
            .ends_with("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"));
    }

    #[test]
    fn date_token_and_content_type_are_signed() {
        let creds = Credentials { session_token: Some("tok"), service: "elasticloadbalancing", ..CREDS };
        let url = Url::parse("http://127.0.0.1:5000/").unwrap();
        let headers =
            vec![("Content-Type".to_string(), "application/x-www-form-urlencoded; charset=utf-8".to_string())];
        let added = sign(&creds, "POST", &url, &headers, b"Action=DescribeListeners", suite_time());
        let get = |n: &str| added.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("x-amz-date").as_deref(), Some("20150830T123600Z"));
        assert_eq!(get("x-amz-security-token").as_deref(), Some("tok"));
        let auth = get("authorization").unwrap();
        assert!(auth.contains("/20150830/us-east-1/elasticloadbalancing/aws4_request"), "{auth}");
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"), "{auth}");
        // A different body gives a different signature.
        let other = sign(&creds, "POST", &url, &headers, b"Action=ModifyListener", suite_time());
        assert_ne!(other.last(), added.last());
    }
}
