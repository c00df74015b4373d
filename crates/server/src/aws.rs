//! The AWS settings gitcache takes from where AWS tools keep them: the shared credentials
//! and config files (`~/.aws/credentials`, `~/.aws/config`, or the files
//! `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` name), for the profile `AWS_PROFILE`
//! names (`default` otherwise), and the other `AWS_*` variables the object store client
//! understands (web identity, container credentials), passed on as they are.

use std::path::PathBuf;

/// A profile's keys and region, as far as the files give them.
#[derive(Default, PartialEq, Eq)]
pub(crate) struct Profile {
    pub(crate) access_key_id: Option<String>,
    pub(crate) secret_access_key: Option<String>,
    pub(crate) session_token: Option<String>,
    pub(crate) region: Option<String>,
}

impl std::fmt::Debug for Profile {
    /// Never shows the secret or the session token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The `key = value` pairs of the INI section `section` of `text`.
fn section<'a>(text: &'a str, section: &str) -> Vec<(&'a str, &'a str)> {
    let mut inside = false;
    let mut pairs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside && let Some((key, value)) = line.split_once('=') {
            pairs.push((key.trim(), value.trim()));
        }
    }
    pairs
}

/// The profile `name` of the credentials file's text and the config file's text (where
/// profiles other than `default` are `[profile <name>]`).
pub(crate) fn profile(credentials: &str, config: &str, name: &str) -> Profile {
    let mut found = Profile::default();
    for (key, value) in section(credentials, name) {
        let value = Some(value.to_owned()).filter(|v| !v.is_empty());
        match key {
            "aws_access_key_id" => found.access_key_id = value,
            "aws_secret_access_key" => found.secret_access_key = value,
            "aws_session_token" => found.session_token = value,
            _ => {}
        }
    }
    let config_section = if name == "default" {
        "default".to_owned()
    } else {
        format!("profile {name}")
    };
    for (key, value) in section(config, &config_section) {
        if key == "region" && !value.is_empty() {
            found.region = Some(value.to_owned());
        }
    }
    found
}

/// The profile the environment names, read from the files it names (or the usual ones).
pub(crate) fn profile_from_environment() -> Profile {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |variable: &str, usual: &str| {
        std::env::var_os(variable)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(usual)))
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    };
    let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_owned());
    profile(
        &file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
        &file("AWS_CONFIG_FILE", "config"),
        &name,
    )
}

/// The `AWS_*` variables that say where credentials come from (web identity, container and
/// instance roles), as the object store client's option names. Only these: others (an
/// endpoint, signing off, the bucket) would change where or how gitcache stores, which its
/// own flags decide.
pub(crate) fn options_from_environment() -> Vec<(String, String)> {
    const CREDENTIAL_SOURCES: [&str; 9] = [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_ENDPOINT_URL_STS",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_METADATA_ENDPOINT",
        "AWS_IMDSV1_FALLBACK",
    ];
    std::env::vars()
        .filter(|(key, _)| CREDENTIAL_SOURCES.contains(&key.as_str()))
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDENTIALS: &str = "\
# comment
[default]
aws_access_key_id = AKIDEFAULT
aws_secret_access_key = secret-default

[ci]
aws_access_key_id=AKICI
aws_secret_access_key=secret-ci
aws_session_token = token-ci
";
    const CONFIG: &str = "\
[default]
region = eu-west-1
[profile ci]
region = us-east-2
output = json
";

    #[test]
    fn profiles_are_read_as_aws_tools_write_them() {
        assert_eq!(
            profile(CREDENTIALS, CONFIG, "default"),
            Profile {
                access_key_id: Some("AKIDEFAULT".into()),
                secret_access_key: Some("secret-default".into()),
                session_token: None,
                region: Some("eu-west-1".into()),
            }
        );
        assert_eq!(
            profile(CREDENTIALS, CONFIG, "ci"),
            Profile {
                access_key_id: Some("AKICI".into()),
                secret_access_key: Some("secret-ci".into()),
                session_token: Some("token-ci".into()),
                region: Some("us-east-2".into()),
            }
        );
        assert_eq!(profile(CREDENTIALS, CONFIG, "other"), Profile::default());
        assert_eq!(profile("", "", "default"), Profile::default());
    }
}
