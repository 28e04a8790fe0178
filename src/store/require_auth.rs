//! libpq's `require_auth` (PostgreSQL 16+): which authentication methods the
//! server may ask for, checked on every request before anything is sent.
//!
//! The value is a comma-separated list of methods that are allowed
//! (`scram-sha-256,md5`) or, each with a `!`, of methods that are not
//! (`!password,!md5`); the two may not be mixed. `none` stands for a server
//! that lets the client in without asking. Without `require_auth` everything
//! is allowed, as in libpq.

/// What the server asks the client for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No authentication (`trust`): AuthenticationOk straight away.
    None,
    /// A cleartext password (AuthenticationCleartextPassword).
    Password,
    /// An MD5 hash of the password (AuthenticationMD5Password).
    Md5,
    Gss,
    Sspi,
    /// SASL with SCRAM-SHA-256 (with or without channel binding).
    ScramSha256,
}

impl AuthMethod {
    const ALL: [AuthMethod; 6] = [
        AuthMethod::None,
        AuthMethod::Password,
        AuthMethod::Md5,
        AuthMethod::Gss,
        AuthMethod::Sspi,
        AuthMethod::ScramSha256,
    ];

    fn name(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::Gss => "gss",
            AuthMethod::Sspi => "sspi",
            AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }

    /// What the server did, in the words of an error message.
    pub fn request(self) -> &'static str {
        match self {
            AuthMethod::None => "the server did not ask for authentication",
            AuthMethod::Password => "the server asks for a cleartext password",
            AuthMethod::Md5 => "the server asks for an MD5 password",
            AuthMethod::Gss => "the server asks for GSSAPI authentication",
            AuthMethod::Sspi => "the server asks for SSPI authentication",
            AuthMethod::ScramSha256 => "the server asks for SCRAM-SHA-256",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequireAuthError {
    #[error(
        "require_auth: unknown method {0:?} (expected password, md5, gss, sspi, scram-sha-256 \
         or none, each optionally with a leading !)"
    )]
    Unknown(String),
    #[error("require_auth: {0:?} mixes methods with negated (!) methods")]
    Mixed(String),
    #[error("require_auth: {0:?} names a method twice")]
    Twice(String),
    #[error("require_auth={setting} refuses this server: {request}")]
    Refused {
        setting: String,
        request: &'static str,
    },
}

/// The methods allowed; everything unless the connection string says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequireAuth {
    allowed: u8,
    /// The setting as written, for messages; None when not set.
    setting: Option<String>,
}

impl Default for RequireAuth {
    fn default() -> Self {
        RequireAuth {
            allowed: u8::MAX,
            setting: None,
        }
    }
}

impl RequireAuth {
    pub fn parse(value: &str) -> Result<Self, RequireAuthError> {
        let mut listed = 0u8;
        let mut negated = None;
        for item in value.split(',') {
            let (not, name) = match item.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, item),
            };
            if *negated.get_or_insert(not) != not {
                return Err(RequireAuthError::Mixed(value.to_string()));
            }
            let method = AuthMethod::ALL
                .into_iter()
                .find(|m| m.name() == name)
                .ok_or_else(|| RequireAuthError::Unknown(item.to_string()))?;
            if listed & method.bit() != 0 {
                return Err(RequireAuthError::Twice(value.to_string()));
            }
            listed |= method.bit();
        }
        let allowed = if negated == Some(true) {
            !listed
        } else {
            listed
        };
        Ok(RequireAuth {
            allowed,
            setting: Some(value.to_string()),
        })
    }

    /// Whether the connection string set `require_auth` at all.
    pub fn is_set(&self) -> bool {
        self.setting.is_some()
    }

    /// Ok when the server may ask for `method`.
    pub fn check(&self, method: AuthMethod) -> Result<(), RequireAuthError> {
        if self.allowed & method.bit() != 0 {
            return Ok(());
        }
        Err(RequireAuthError::Refused {
            setting: self.setting.clone().unwrap_or_default(),
            request: method.request(),
        })
    }
}

/// What the server's authentication request asks for; None for the
/// messages within one exchange (SASL continue/final) and AuthenticationOk.
pub fn method_of_request(code: i32) -> Option<AuthMethod> {
    match code {
        3 => Some(AuthMethod::Password),
        5 => Some(AuthMethod::Md5),
        7 | 8 => Some(AuthMethod::Gss),
        9 => Some(AuthMethod::Sspi),
        10 => Some(AuthMethod::ScramSha256),
        _ => None,
    }
}

/// Follows the server's side of a log-in as it is read (the bytes after the
/// TLS layer) and refuses the first request `require_auth` does not allow,
/// before the client answers it. Used for the connections tokio-postgres
/// makes, which cannot be asked to check this themselves.
#[derive(Debug)]
pub struct Watch {
    policy: RequireAuth,
    header: Vec<u8>,
    skip: usize,
    asked: bool,
    done: bool,
}

impl Watch {
    pub fn new(policy: RequireAuth) -> Self {
        Watch {
            policy,
            header: Vec::with_capacity(9),
            skip: 0,
            asked: false,
            done: false,
        }
    }

    /// Reads the next bytes from the server; an error ends the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), RequireAuthError> {
        while !self.done && !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let want = if self.header.first() == Some(&b'R') {
                9
            } else {
                5
            };
            let n = (want - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < want {
                continue;
            }
            if self.header[0] != b'R' {
                // An error, or the log-in is over: nothing more to check.
                self.done = true;
                break;
            }
            if want == 5 {
                continue;
            }
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize;
            let code = i32::from_be_bytes([
                self.header[5],
                self.header[6],
                self.header[7],
                self.header[8],
            ]);
            self.header.clear();
            self.skip = len.saturating_sub(8);
            if code == 0 {
                self.done = true;
                if !self.asked {
                    self.policy.check(AuthMethod::None)?;
                }
            } else if let Some(method) = method_of_request(code) {
                self.asked = true;
                self.policy.check(method)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_allow_what_they_name_and_negated_lists_the_rest() {
        let p = RequireAuth::parse("scram-sha-256").unwrap();
        assert!(p.check(AuthMethod::ScramSha256).is_ok());
        assert!(p.check(AuthMethod::Password).is_err());
        assert!(p.check(AuthMethod::None).is_err());
        let p = RequireAuth::parse("md5,none").unwrap();
        assert!(p.check(AuthMethod::Md5).is_ok());
        assert!(p.check(AuthMethod::None).is_ok());
        assert!(p.check(AuthMethod::ScramSha256).is_err());
        let p = RequireAuth::parse("!password,!md5").unwrap();
        assert!(p.check(AuthMethod::ScramSha256).is_ok());
        assert!(p.check(AuthMethod::None).is_ok());
        assert!(p.check(AuthMethod::Md5).is_err());
        let err = p.check(AuthMethod::Password).unwrap_err();
        assert_eq!(
            err.to_string(),
            "require_auth=!password,!md5 refuses this server: the server asks for a cleartext password"
        );
        assert!(RequireAuth::default().check(AuthMethod::Password).is_ok());
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(matches!(
            RequireAuth::parse("md5,!password"),
            Err(RequireAuthError::Mixed(_))
        ));
        assert!(matches!(
            RequireAuth::parse("scram"),
            Err(RequireAuthError::Unknown(_))
        ));
        assert!(matches!(
            RequireAuth::parse("md5,md5"),
            Err(RequireAuthError::Twice(_))
        ));
        assert!(matches!(
            RequireAuth::parse(""),
            Err(RequireAuthError::Unknown(_))
        ));
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn the_watch_refuses_a_request_even_when_it_arrives_byte_by_byte() {
        let mut sasl = 10i32.to_be_bytes().to_vec();
        sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
        let mut stream = message(b'R', &sasl);
        stream.extend(message(b'R', &3i32.to_be_bytes()));
        let mut watch = Watch::new(RequireAuth::parse("scram-sha-256").unwrap());
        let mut result = Ok(());
        for (i, b) in stream.iter().enumerate() {
            result = watch.feed(&[*b]);
            if i < stream.len() - 1 {
                assert!(result.is_ok(), "byte {i}");
            }
        }
        assert!(
            matches!(result, Err(RequireAuthError::Refused { request, .. }) if request.contains("cleartext"))
        );
    }

    #[test]
    fn the_watch_stops_after_the_log_in() {
        let mut stream = message(
            b'R',
            &5i32
                .to_be_bytes()
                .iter()
                .chain(b"salt")
                .copied()
                .collect::<Vec<_>>(),
        );
        stream.extend(message(b'R', &0i32.to_be_bytes()));
        // Later messages are data, never read as requests.
        stream.extend(message(b'R', &3i32.to_be_bytes()));
        let mut watch = Watch::new(RequireAuth::parse("md5").unwrap());
        assert!(watch.feed(&stream).is_ok());
        let mut trust = Watch::new(RequireAuth::parse("md5").unwrap());
        assert!(trust.feed(&message(b'R', &0i32.to_be_bytes())).is_err());
    }
}
