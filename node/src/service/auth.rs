//! Authentication on the client APIs: etcd's simple tokens, bcrypt password hashing, and the
//! identity of a request (token, else the TLS client certificate's Common Name, as in etcd's
//! `AuthInfoFromCtx`).
//!
//! Simple tokens (etcd `--auth-token simple`): the member that checks a password proposes an
//! `InternalAuthenticate` with a random prefix; every member learns `<prefix>.<raft index>` at
//! apply, so a token works on every member. Tokens live in memory only (a restarted member
//! answers `invalid auth token` and clients authenticate again, as with etcd) and expire after
//! `--auth-token-ttl` without use. Deleting a user or changing its password drops its tokens;
//! disabling auth drops all.
//!
//! Secrets (passwords, tokens, hashes) are never logged: log lines name the user only.

use std::time::Duration;

use rand::Rng as _;

pub use crate::config::DEFAULT_BCRYPT_COST;

/// Simple-token lifetime without use, etcd's default `--auth-token-ttl` (300 s).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

pub use crate::state::Tokens;

/// How tokens are issued and checked: the simple tokens this member knows (always kept: apply
/// records them), and the JWT keys when `--auth-token jwt,...` is set (then tokens are JWTs).
#[derive(Debug, Clone)]
pub struct TokenProvider {
    /// Simple tokens, assigned at apply.
    pub simple: std::sync::Arc<Tokens>,
    /// JWT keys.
    pub jwt: Option<std::sync::Arc<Jwt>>,
}

/// JWT tokens (etcd `--auth-token jwt,...`): `{"username", "revision", "exp"}` signed with the
/// member's private key. Self-contained: any member with the public key verifies them, nothing
/// goes through consensus. The auth revision in the token makes requests made with a token
/// issued before an auth change fail with `revision of auth store is old` (clients then
/// authenticate again, as etcd's do).
pub struct Jwt {
    alg: jsonwebtoken::Algorithm,
    enc: jsonwebtoken::EncodingKey,
    dec: jsonwebtoken::DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Jwt")
            .field("alg", &self.alg)
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

impl Jwt {
    /// Loads the keys of a [`crate::config::AuthToken::Jwt`].
    ///
    /// # Errors
    /// Unreadable key files, keys that do not fit the algorithm, an algorithm etch does not
    /// sign with (HMAC, `none`), or a simple-token configuration.
    pub fn load(t: &crate::config::AuthToken) -> Result<Jwt, String> {
        use jsonwebtoken::{Algorithm as A, DecodingKey, EncodingKey};
        let crate::config::AuthToken::Jwt {
            pub_key,
            priv_key,
            sign_method,
            ttl,
        } = t
        else {
            return Err("not a jwt configuration".into());
        };
        let alg: A = sign_method
            .parse()
            .map_err(|_| format!("unknown sign-method {sign_method:?}"))?;
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let (pubk, privk) = (read(pub_key)?, read(priv_key)?);
        let bad = |what: &std::path::Path, e: jsonwebtoken::errors::Error| {
            format!("{}: {e}", what.display())
        };
        let (enc, dec) = match alg {
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => (
                EncodingKey::from_rsa_pem(&privk).map_err(|e| bad(priv_key, e))?,
                DecodingKey::from_rsa_pem(&pubk).map_err(|e| bad(pub_key, e))?,
            ),
            A::ES256 | A::ES384 => (
                EncodingKey::from_ec_pem(&privk).map_err(|e| bad(priv_key, e))?,
                DecodingKey::from_ec_pem(&pubk).map_err(|e| bad(pub_key, e))?,
            ),
            A::EdDSA => (
                EncodingKey::from_ed_pem(&privk).map_err(|e| bad(priv_key, e))?,
                DecodingKey::from_ed_pem(&pubk).map_err(|e| bad(pub_key, e))?,
            ),
            other => return Err(format!("sign-method {other:?} is not supported")),
        };
        let jwt = Jwt {
            alg,
            enc,
            dec,
            ttl: *ttl,
        };
        // The pair must match: a token signed now verifies.
        let probe = jwt
            .sign("probe", 0)
            .map_err(|e| format!("cannot sign: {e}"))?;
        jwt.verify(&probe)
            .ok_or("the public key does not verify the private key's signatures")?;
        Ok(jwt)
    }

    /// A token for `username` at auth `revision`, expiring after the TTL.
    ///
    /// # Errors
    /// Signing failures.
    pub fn sign(
        &self,
        username: &str,
        revision: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + self.ttl;
        let claims = Claims {
            username: username.to_owned(),
            revision,
            exp: exp.as_secs(),
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(self.alg), &claims, &self.enc)
    }

    /// The (user, auth revision) a valid, unexpired token names; `None` otherwise.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut v = jsonwebtoken::Validation::new(self.alg);
        v.leeway = 0;
        let d = jsonwebtoken::decode::<Claims>(token, &self.dec, &v).ok()?;
        Some((d.claims.username, d.claims.revision))
    }
}

/// A random token prefix: 16 ASCII letters (etcd's simple token prefix shape).
pub fn token_prefix() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
        .collect()
}

/// The bcrypt hash of `password` at `cost` (4..=31). CPU-heavy: call on the blocking pool.
///
/// # Errors
/// A cost out of range.
pub fn hash_password(password: &str, cost: u32) -> Result<String, bcrypt::BcryptError> {
    bcrypt::hash(password, cost)
}

/// Whether `password` matches bcrypt `hash` (false for a malformed hash or a no-password user's
/// empty hash). CPU-heavy: call on the blocking pool.
pub fn verify_password(password: &str, hash: &[u8]) -> bool {
    let Ok(hash) = std::str::from_utf8(hash) else {
        return false;
    };
    !hash.is_empty() && bcrypt::verify(password, hash).unwrap_or(false)
}

pub use crate::tls::common_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_and_are_dropped_per_user() {
        let t = Tokens::new(Duration::from_secs(60));
        t.assign("a.1".into(), "alice".into());
        t.assign("b.2".into(), "bob".into());
        assert_eq!(t.user("a.1").as_deref(), Some("alice"));
        t.invalidate_user("alice");
        assert_eq!(t.user("a.1"), None);
        assert_eq!(t.user("b.2").as_deref(), Some("bob"));
        t.clear();
        assert_eq!(t.user("b.2"), None);
        let short = Tokens::new(Duration::ZERO);
        short.assign("c.3".into(), "carol".into());
        assert_eq!(short.user("c.3"), None);
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("s3cret", 4).expect("hash");
        assert!(!h.contains("s3cret"));
        assert!(verify_password("s3cret", h.as_bytes()));
        assert!(!verify_password("wrong", h.as_bytes()));
        assert!(!verify_password("", b""));
        assert_eq!(token_prefix().len(), 16);
    }

    #[test]
    fn common_name_of_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));
    }
}

/// The Auth service (etcd `etcdserverpb.Auth`), over the one [`Service`]: changes go through
/// consensus and are checked at apply (root needed once auth is enabled); reads are served
/// after a ReadIndex from this member's auth state. Passwords are hashed here, on the
/// blocking pool, before proposing: only the hash is replicated and stored.
mod api {
    use etch_protocol::etcdserverpb::*;
    use etch_protocol::etchpb::InternalAuthenticate;
    use etch_protocol::etchpb::internal_request::Request;
    use etch_storage::mvcc::{RequestError, WriteResponse};

    use crate::error::ApiError;
    use crate::service::{AuthInfo, Service};

    type Res<T> = Result<T, ApiError>;

    /// How often Authenticate re-checks a password that an auth change made stale.
    const AUTHENTICATE_ATTEMPTS: usize = 3;

    impl Service {
        async fn auth_change(
            &self,
            who: &AuthInfo,
            r: Request,
        ) -> Res<(Option<ResponseHeader>, Option<String>)> {
            match self.propose(Some(who), r).await? {
                WriteResponse::Auth { header, token } => Ok((self.header(header), token)),
                _ => Err(ApiError::Unimplemented),
            }
        }

        async fn hash_secret(&self, password: String) -> Res<String> {
            let cost = self.limits().bcrypt_cost;
            tokio::task::spawn_blocking(move || super::hash_password(&password, cost))
                .await
                .map_err(|_| ApiError::Stopped)?
                .map_err(|e| {
                    tracing::error!(error = %e, "password hashing failed");
                    ApiError::Stopped
                })
        }

        /// AuthEnable: needs a `root` user holding the `root` role.
        ///
        /// # Errors
        /// `root user does not exist`, `root user does not have root role`, permission errors.
        pub async fn auth_enable(&self, who: &AuthInfo) -> Res<AuthEnableResponse> {
            let (header, _) = self
                .auth_change(who, Request::AuthEnable(AuthEnableRequest {}))
                .await?;
            tracing::info!(by = %who.username, "auth enabled");
            Ok(AuthEnableResponse { header })
        }

        /// AuthDisable: root only.
        ///
        /// # Errors
        /// Permission errors.
        pub async fn auth_disable(&self, who: &AuthInfo) -> Res<AuthDisableResponse> {
            let (header, _) = self
                .auth_change(who, Request::AuthDisable(AuthDisableRequest {}))
                .await?;
            tracing::info!(by = %who.username, "auth disabled");
            Ok(AuthDisableResponse { header })
        }

        /// AuthStatus: whether auth is enabled and the auth revision (root once auth is
        /// enabled, as etcd v3.5's `needAdminPermission`).
        ///
        /// # Errors
        /// Permission errors, no leader, timeout.
        pub async fn auth_status(&self, who: &AuthInfo) -> Res<AuthStatusResponse> {
            self.linearizable().await?;
            let a = self.store().auth();
            a.check_admin(who)?;
            Ok(AuthStatusResponse {
                header: self.local_header(),
                enabled: a.enabled(),
                auth_revision: a.revision(),
            })
        }

        /// Authenticate: checks the password here, then assigns a simple token through
        /// consensus so every member knows it.
        ///
        /// # Errors
        /// `authentication is not enabled`, `authentication failed, invalid user ID or
        /// password` (unknown user, wrong password, no-password user).
        pub async fn authenticate(&self, req: AuthenticateRequest) -> Res<AuthenticateResponse> {
            if self.jwt().is_some() {
                // Checked against the state every member agrees on, then signed here.
                self.linearizable().await?;
            }
            for _ in 0..AUTHENTICATE_ATTEMPTS {
                let a = self.store().auth();
                if !a.enabled() {
                    return Err(RequestError::AuthNotEnabled.into());
                }
                let Some(user) = a.user(&req.name) else {
                    tracing::info!(user = %req.name, "authentication failed: no such user");
                    return Err(RequestError::AuthFailed.into());
                };
                let (password, hash) = (req.password.clone(), user.password.clone());
                let ok =
                    tokio::task::spawn_blocking(move || super::verify_password(&password, &hash))
                        .await
                        .map_err(|_| ApiError::Stopped)?;
                if !ok {
                    tracing::info!(user = %req.name, "authentication failed: wrong password");
                    return Err(RequestError::AuthFailed.into());
                }
                if let Some(jwt) = self.jwt() {
                    let token = jwt.sign(&req.name, a.revision()).map_err(|e| {
                        tracing::error!(error = %e, "cannot sign a token");
                        ApiError::Stopped
                    })?;
                    tracing::debug!(user = %req.name, "authenticated (jwt)");
                    return Ok(AuthenticateResponse {
                        header: self.local_header(),
                        token,
                    });
                }
                let who = AuthInfo {
                    username: req.name.clone(),
                    auth_revision: a.revision(),
                };
                let r = Request::Authenticate(InternalAuthenticate {
                    name: req.name.clone(),
                    token: super::token_prefix(),
                });
                match self.auth_change(&who, r).await {
                    Ok((header, Some(token))) => {
                        tracing::debug!(user = %req.name, "authenticated");
                        return Ok(AuthenticateResponse { header, token });
                    }
                    Ok((_, None)) => return Err(ApiError::Unimplemented),
                    // The user changed between the check and apply: check again.
                    Err(ApiError::Request(RequestError::AuthOldRevision)) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(RequestError::AuthOldRevision.into())
        }

        /// UserAdd (root once auth is enabled).
        ///
        /// # Errors
        /// `user name is empty`, `user name already exists`, permission errors.
        pub async fn user_add(
            &self,
            who: &AuthInfo,
            mut req: AuthUserAddRequest,
        ) -> Res<AuthUserAddResponse> {
            self.check_admin(who)?;
            if req.name.is_empty() {
                return Err(RequestError::UserEmpty.into());
            }
            let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
            let password = std::mem::take(&mut req.password);
            req.hashed_password = if no_password {
                String::new()
            } else {
                self.hash_secret(password).await?
            };
            let name = req.name.clone();
            let (header, _) = self.auth_change(who, Request::UserAdd(req)).await?;
            tracing::info!(user = %name, by = %who.username, "user added");
            Ok(AuthUserAddResponse { header })
        }

        /// UserGet: root, or the user itself.
        ///
        /// # Errors
        /// `user name not found`, permission errors.
        pub async fn user_get(
            &self,
            who: &AuthInfo,
            req: AuthUserGetRequest,
        ) -> Res<AuthUserGetResponse> {
            self.linearizable().await?;
            let a = self.store().auth();
            if let Err(e) = a.check_admin(who)
                && req.name != who.username
            {
                return Err(e.into());
            }
            let u = a.user(&req.name).ok_or(RequestError::UserNotFound)?;
            Ok(AuthUserGetResponse {
                header: self.local_header(),
                roles: u.roles.clone(),
            })
        }

        /// UserList (root).
        ///
        /// # Errors
        /// Permission errors.
        pub async fn user_list(&self, who: &AuthInfo) -> Res<AuthUserListResponse> {
            self.linearizable().await?;
            let a = self.store().auth();
            a.check_admin(who)?;
            Ok(AuthUserListResponse {
                header: self.local_header(),
                users: a.user_names(),
            })
        }

        /// UserDelete (root; not `root` itself while auth is enabled).
        ///
        /// # Errors
        /// `user name not found`, `invalid auth management`, permission errors.
        pub async fn user_delete(
            &self,
            who: &AuthInfo,
            req: AuthUserDeleteRequest,
        ) -> Res<AuthUserDeleteResponse> {
            let name = req.name.clone();
            let (header, _) = self.auth_change(who, Request::UserDelete(req)).await?;
            tracing::info!(user = %name, by = %who.username, "user deleted");
            Ok(AuthUserDeleteResponse { header })
        }

        /// UserChangePassword (root); the user's tokens stop working.
        ///
        /// # Errors
        /// `user name not found`, permission errors.
        pub async fn user_change_password(
            &self,
            who: &AuthInfo,
            mut req: AuthUserChangePasswordRequest,
        ) -> Res<AuthUserChangePasswordResponse> {
            self.check_admin(who)?;
            let password = std::mem::take(&mut req.password);
            req.hashed_password = self.hash_secret(password).await?;
            let name = req.name.clone();
            let (header, _) = self
                .auth_change(who, Request::UserChangePassword(req))
                .await?;
            tracing::info!(user = %name, by = %who.username, "password changed");
            Ok(AuthUserChangePasswordResponse { header })
        }

        /// UserGrantRole (root).
        ///
        /// # Errors
        /// `user name not found`, `role name not found`, permission errors.
        pub async fn user_grant_role(
            &self,
            who: &AuthInfo,
            req: AuthUserGrantRoleRequest,
        ) -> Res<AuthUserGrantRoleResponse> {
            let (header, _) = self.auth_change(who, Request::UserGrantRole(req)).await?;
            Ok(AuthUserGrantRoleResponse { header })
        }

        /// UserRevokeRole (root; not `root` from `root` while auth is enabled).
        ///
        /// # Errors
        /// `user name not found`, `role is not granted to the user`, `invalid auth
        /// management`, permission errors.
        pub async fn user_revoke_role(
            &self,
            who: &AuthInfo,
            req: AuthUserRevokeRoleRequest,
        ) -> Res<AuthUserRevokeRoleResponse> {
            let (header, _) = self.auth_change(who, Request::UserRevokeRole(req)).await?;
            Ok(AuthUserRevokeRoleResponse { header })
        }

        /// RoleAdd (root).
        ///
        /// # Errors
        /// `role name is empty`, `role name already exists`, permission errors.
        pub async fn role_add(
            &self,
            who: &AuthInfo,
            req: AuthRoleAddRequest,
        ) -> Res<AuthRoleAddResponse> {
            let (header, _) = self.auth_change(who, Request::RoleAdd(req)).await?;
            Ok(AuthRoleAddResponse { header })
        }

        /// RoleGet: root, or a user holding the role.
        ///
        /// # Errors
        /// `role name not found`, permission errors.
        pub async fn role_get(
            &self,
            who: &AuthInfo,
            req: AuthRoleGetRequest,
        ) -> Res<AuthRoleGetResponse> {
            self.linearizable().await?;
            let a = self.store().auth();
            if let Err(e) = a.check_admin(who)
                && !a.has_role(&who.username, &req.role)
            {
                return Err(e.into());
            }
            let r = a.role(&req.role).ok_or(RequestError::RoleNotFound)?;
            Ok(AuthRoleGetResponse {
                header: self.local_header(),
                perm: r.key_permission.clone(),
            })
        }

        /// RoleList (root).
        ///
        /// # Errors
        /// Permission errors.
        pub async fn role_list(&self, who: &AuthInfo) -> Res<AuthRoleListResponse> {
            self.linearizable().await?;
            let a = self.store().auth();
            a.check_admin(who)?;
            Ok(AuthRoleListResponse {
                header: self.local_header(),
                roles: a.role_names(),
            })
        }

        /// RoleDelete (root; not `root` while auth is enabled): users lose the role.
        ///
        /// # Errors
        /// `role name not found`, `invalid auth management`, permission errors.
        pub async fn role_delete(
            &self,
            who: &AuthInfo,
            req: AuthRoleDeleteRequest,
        ) -> Res<AuthRoleDeleteResponse> {
            let (header, _) = self.auth_change(who, Request::RoleDelete(req)).await?;
            Ok(AuthRoleDeleteResponse { header })
        }

        /// RoleGrantPermission (root): a permission on the same key and range end changes
        /// type, others are added.
        ///
        /// # Errors
        /// `role name not found`, `permission not given`, permission errors.
        pub async fn role_grant_permission(
            &self,
            who: &AuthInfo,
            req: AuthRoleGrantPermissionRequest,
        ) -> Res<AuthRoleGrantPermissionResponse> {
            if req.perm.is_none() {
                return Err(RequestError::PermissionNotGiven.into());
            }
            let (header, _) = self
                .auth_change(who, Request::RoleGrantPermission(req))
                .await?;
            Ok(AuthRoleGrantPermissionResponse { header })
        }

        /// RoleRevokePermission (root).
        ///
        /// # Errors
        /// `role name not found`, `permission is not granted to the role`, permission errors.
        pub async fn role_revoke_permission(
            &self,
            who: &AuthInfo,
            req: AuthRoleRevokePermissionRequest,
        ) -> Res<AuthRoleRevokePermissionResponse> {
            let (header, _) = self
                .auth_change(who, Request::RoleRevokePermission(req))
                .await?;
            Ok(AuthRoleRevokePermissionResponse { header })
        }
    }
}
