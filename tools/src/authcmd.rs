//! etchctl's `auth`, `user` and `role` commands, with etcdctl v3.5's shapes and output.

use clap::Subcommand;

use etch_protocol::authpb::{Permission, permission::Type as PermType};
use etch_protocol::etcdserverpb::*;

use crate::client::prefix_end;
use crate::{Client, ClientError};

/// `etchctl auth ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum AuthCmd {
    /// Enables authentication (creates the `root` role and grants it to `root` if needed, as
    /// etcdctl does).
    Enable,
    /// Disables authentication.
    Disable,
    /// Returns authentication status.
    Status,
}

/// `etchctl user ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum UserCmd {
    /// Adds a new user: `name:password`, or `name` with `--new-user-password`.
    Add {
        /// `name` or `name:password`.
        user: String,
        /// The password (when not given after the colon).
        #[arg(long)]
        new_user_password: Option<String>,
        /// Create a user without a password (it can only use client-certificate auth).
        #[arg(long)]
        no_password: bool,
    },
    /// Deletes a user.
    Delete {
        /// User name.
        name: String,
    },
    /// Gets detailed information of a user.
    Get {
        /// User name.
        name: String,
    },
    /// Lists all users.
    List,
    /// Changes the password of a user.
    Passwd {
        /// User name.
        name: String,
        /// The new password.
        #[arg(long)]
        new_user_password: String,
    },
    /// Grants a role to a user.
    GrantRole {
        /// User name.
        user: String,
        /// Role name.
        role: String,
    },
    /// Revokes a role from a user.
    RevokeRole {
        /// User name.
        user: String,
        /// Role name.
        role: String,
    },
}

/// `etchctl role ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum RoleCmd {
    /// Adds a new role.
    Add {
        /// Role name.
        name: String,
    },
    /// Deletes a role.
    Delete {
        /// Role name.
        name: String,
    },
    /// Gets detailed information of a role.
    Get {
        /// Role name.
        name: String,
    },
    /// Lists all roles.
    List,
    /// Grants a key permission to a role: `read`, `write` or `readwrite` on a key, a range
    /// `[key, range_end)`, a prefix (`--prefix`) or every key from `key` (`--from-key`).
    GrantPermission {
        /// Role name.
        role: String,
        /// `read`, `write` or `readwrite`.
        perm: String,
        /// Key.
        key: String,
        /// End of the range (exclusive).
        range_end: Option<String>,
        /// Grant on every key with the prefix `key`.
        #[arg(long)]
        prefix: bool,
        /// Grant on every key >= `key`.
        #[arg(long)]
        from_key: bool,
    },
    /// Revokes a key permission from a role.
    RevokePermission {
        /// Role name.
        role: String,
        /// Key.
        key: String,
        /// End of the range (exclusive).
        range_end: Option<String>,
        /// Revoke the permission on the prefix `key`.
        #[arg(long)]
        prefix: bool,
        /// Revoke the permission on every key >= `key`.
        #[arg(long)]
        from_key: bool,
    },
}

fn e(err: ClientError) -> String {
    err.to_string()
}

/// `(key, range_end)` from etcdctl's permission arguments.
fn perm_range(
    key: &str,
    range_end: &Option<String>,
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    if prefix && from_key {
        return Err("--from-key and --prefix flags are mutually exclusive".into());
    }
    let mut k = key.as_bytes().to_vec();
    let end = if prefix {
        if k.is_empty() {
            k = vec![0];
            vec![0]
        } else {
            prefix_end(&k)
        }
    } else if from_key {
        if k.is_empty() {
            k = vec![0];
        }
        vec![0]
    } else {
        range_end.as_deref().unwrap_or("").as_bytes().to_vec()
    };
    Ok((k, end))
}

/// Runs an `auth` command.
///
/// # Errors
/// The server's error text.
pub async fn auth(c: &Client, cmd: &AuthCmd, out: &mut String) -> Result<(), String> {
    match cmd {
        AuthCmd::Enable => {
            loop {
                match c.auth_enable(AuthEnableRequest {}).await {
                    Err(ClientError::Status { message, .. })
                        if message == "etcdserver: root user does not have root role" =>
                    {
                        // etcdctl creates the root role and grants it, then retries.
                        match c
                            .role_add(AuthRoleAddRequest {
                                name: "root".into(),
                            })
                            .await
                        {
                            Ok(_) => {}
                            Err(ClientError::Status { message, .. })
                                if message == "etcdserver: role name already exists" => {}
                            Err(err) => return Err(e(err)),
                        }
                        c.user_grant_role(AuthUserGrantRoleRequest {
                            user: "root".into(),
                            role: "root".into(),
                        })
                        .await
                        .map_err(e)?;
                    }
                    Err(err) => return Err(e(err)),
                    Ok(_) => break,
                }
            }
            out.push_str("Authentication Enabled\n");
        }
        AuthCmd::Disable => {
            c.auth_disable(AuthDisableRequest {}).await.map_err(e)?;
            out.push_str("Authentication Disabled\n");
        }
        AuthCmd::Status => {
            let r = c.auth_status(AuthStatusRequest {}).await.map_err(e)?;
            out.push_str(&format!(
                "Authentication Status: {}\nAuthRevision: {}\n",
                r.enabled, r.auth_revision
            ));
        }
    }
    Ok(())
}

/// Runs a `user` command.
///
/// # Errors
/// The server's error text; a user without a password when one is needed.
pub async fn user(c: &Client, cmd: &UserCmd, out: &mut String) -> Result<(), String> {
    match cmd {
        UserCmd::Add {
            user,
            new_user_password,
            no_password,
        } => {
            let (name, password) = match user.split_once(':') {
                Some((n, p)) => (n.to_owned(), p.to_owned()),
                None => (user.clone(), new_user_password.clone().unwrap_or_default()),
            };
            if password.is_empty() && !no_password {
                return Err("password is required (name:password or --new-user-password)".into());
            }
            c.user_add(AuthUserAddRequest {
                name: name.clone(),
                password,
                options: Some(etch_protocol::authpb::UserAddOptions {
                    no_password: *no_password,
                }),
                hashed_password: String::new(),
            })
            .await
            .map_err(e)?;
            out.push_str(&format!("User {name} created\n"));
        }
        UserCmd::Delete { name } => {
            c.user_delete(AuthUserDeleteRequest { name: name.clone() })
                .await
                .map_err(e)?;
            out.push_str(&format!("User {name} deleted\n"));
        }
        UserCmd::Get { name } => {
            let r = c
                .user_get(AuthUserGetRequest { name: name.clone() })
                .await
                .map_err(e)?;
            out.push_str(&format!("User: {name}\nRoles: {}\n", r.roles.join(" ")));
        }
        UserCmd::List => {
            let r = c.user_list(AuthUserListRequest {}).await.map_err(e)?;
            for u in r.users {
                out.push_str(&format!("{u}\n"));
            }
        }
        UserCmd::Passwd {
            name,
            new_user_password,
        } => {
            c.user_change_password(AuthUserChangePasswordRequest {
                name: name.clone(),
                password: new_user_password.clone(),
                hashed_password: String::new(),
            })
            .await
            .map_err(e)?;
            out.push_str("Password updated\n");
        }
        UserCmd::GrantRole { user, role } => {
            c.user_grant_role(AuthUserGrantRoleRequest {
                user: user.clone(),
                role: role.clone(),
            })
            .await
            .map_err(e)?;
            out.push_str(&format!("Role {role} is granted to user {user}\n"));
        }
        UserCmd::RevokeRole { user, role } => {
            c.user_revoke_role(AuthUserRevokeRoleRequest {
                name: user.clone(),
                role: role.clone(),
            })
            .await
            .map_err(e)?;
            out.push_str(&format!("Role {role} is revoked from user {user}\n"));
        }
    }
    Ok(())
}

/// Runs a `role` command.
///
/// # Errors
/// The server's error text; a bad permission type.
pub async fn role(c: &Client, cmd: &RoleCmd, out: &mut String) -> Result<(), String> {
    match cmd {
        RoleCmd::Add { name } => {
            c.role_add(AuthRoleAddRequest { name: name.clone() })
                .await
                .map_err(e)?;
            out.push_str(&format!("Role {name} created\n"));
        }
        RoleCmd::Delete { name } => {
            c.role_delete(AuthRoleDeleteRequest { role: name.clone() })
                .await
                .map_err(e)?;
            out.push_str(&format!("Role {name} deleted\n"));
        }
        RoleCmd::Get { name } => {
            let r = c
                .role_get(AuthRoleGetRequest { role: name.clone() })
                .await
                .map_err(e)?;
            out.push_str(&format!("Role {name}\n"));
            for (title, want) in [("KV Read:", PermType::Read), ("KV Write:", PermType::Write)] {
                out.push_str(title);
                out.push('\n');
                for p in r.perm.iter().filter(|p| {
                    p.perm_type == want as i32 || p.perm_type == PermType::Readwrite as i32
                }) {
                    out.push_str(&format!("\t{}\n", describe(p)));
                }
            }
        }
        RoleCmd::List => {
            let r = c.role_list(AuthRoleListRequest {}).await.map_err(e)?;
            for role in r.roles {
                out.push_str(&format!("{role}\n"));
            }
        }
        RoleCmd::GrantPermission {
            role,
            perm,
            key,
            range_end,
            prefix,
            from_key,
        } => {
            let t = match perm.to_ascii_lowercase().as_str() {
                "read" => PermType::Read,
                "write" => PermType::Write,
                "readwrite" => PermType::Readwrite,
                other => return Err(format!("invalid permission type {other}")),
            };
            let (key, range_end) = perm_range(key, range_end, *prefix, *from_key)?;
            c.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: role.clone(),
                perm: Some(Permission {
                    perm_type: t as i32,
                    key: key.into(),
                    range_end: range_end.into(),
                }),
            })
            .await
            .map_err(e)?;
            out.push_str(&format!("Role {role} updated\n"));
        }
        RoleCmd::RevokePermission {
            role,
            key,
            range_end,
            prefix,
            from_key,
        } => {
            let (k, end) = perm_range(key, range_end, *prefix, *from_key)?;
            c.role_revoke_permission(AuthRoleRevokePermissionRequest {
                role: role.clone(),
                key: k.clone().into(),
                range_end: end.clone().into(),
            })
            .await
            .map_err(e)?;
            if end.is_empty() {
                out.push_str(&format!(
                    "Permission of key {key} is revoked from role {role}\n"
                ));
            } else {
                out.push_str(&format!(
                    "Permission of range [{}, {}) is revoked from role {role}\n",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&end)
                ));
            }
        }
    }
    Ok(())
}

/// etcdctl's rendering of one permission: a key, `[key, end) (prefix key)`, or
/// `[key, <open ended>`.
fn describe(p: &Permission) -> String {
    let k = String::from_utf8_lossy(&p.key);
    match &p.range_end[..] {
        [] => k.into_owned(),
        [0] => format!("[{k}, <open ended>"),
        end => {
            let e = String::from_utf8_lossy(end);
            if prefix_end(&p.key) == end {
                format!("[{k}, {e}) (prefix {k})")
            } else {
                format!("[{k}, {e})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_ranges_and_rendering() {
        assert_eq!(
            perm_range("/a/", &None, true, false).unwrap(),
            (b"/a/".to_vec(), b"/a0".to_vec())
        );
        assert_eq!(
            perm_range("k", &None, false, true).unwrap(),
            (b"k".to_vec(), vec![0])
        );
        assert!(perm_range("k", &None, true, true).is_err());
        let p = Permission {
            perm_type: 0,
            key: b"/a/".to_vec().into(),
            range_end: b"/a0".to_vec().into(),
        };
        assert_eq!(describe(&p), "[/a/, /a0) (prefix /a/)");
    }
}
