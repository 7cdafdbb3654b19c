//! The secrets a plugin's AWS calls are signed with, as every gantry plugin names them in its input:
//! the defaults below, and one constructor of [`Sigv4`]. The host signs; the plugin never sees a key.
//!
//! A pipeline grants either static keys (secrets named `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`, with a session token's secret if temporary) or one credential set
//! (`from: "aws-credentials:"`, the AWS SDK's default chain, renewed by the host before it
//! expires). When the step is granted no secret under the access key's name, the host signs with
//! the credential set granted for the request's origin, so a plugin's defaults fit both.

use crate::http::Sigv4;

/// Default name of the secret holding the access key id.
pub fn access_key_secret() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

/// Default name of the secret holding the secret access key.
pub fn secret_key_secret() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

impl Sigv4 {
    /// Signing for `service` in `region` with the secrets a plugin's input names.
    pub fn aws(
        service: &str,
        region: &str,
        access_key_secret: &str,
        secret_key_secret: &str,
        session_token_secret: Option<&str>,
    ) -> Self {
        Self {
            service: service.into(),
            region: region.into(),
            access_key_id_secret: access_key_secret.into(),
            secret_access_key_secret: secret_key_secret.into(),
            session_token_secret: session_token_secret.map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_sdks_variable_names() {
        let sigv4 = Sigv4::aws("ecs", "eu-west-1", &access_key_secret(), &secret_key_secret(), Some("TOKEN"));
        assert_eq!(
            (sigv4.service.as_str(), sigv4.access_key_id_secret.as_str(), sigv4.secret_access_key_secret.as_str()),
            ("ecs", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        );
        assert_eq!(sigv4.session_token_secret.as_deref(), Some("TOKEN"));
    }
}
