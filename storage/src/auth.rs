//! The auth state machine, a room of its own in storage (the MVCC store keeps and applies it;
//! it needs nothing of the key-value data): users, roles, key permissions, the enabled flag and
//! the auth revision, with
//! etcd v3.5's rules (`server/auth/store.go`). Kept in the `auth` keyspace, changed only by
//! applying raft entries (so every member holds the same state at the same index), read by
//! the API layer through [`MvccStore::auth`](crate::mvcc::MvccStore::auth) as an immutable
//! [`AuthState`] snapshot.
//!
//! Layout of the `auth` keyspace: `enabled` -> 1 byte (0/1); `revision` -> u64 BE;
//! `user/<name>` -> `authpb.User` (password = bcrypt hash, computed by the member that took the
//! request: apply never sees a clear password); `role/<name>` -> `authpb.Role`.
//!
//! Permissions: a user holding the `root` role may do everything. Otherwise the union of its
//! roles' permissions must cover the whole key range a request touches: `READ` for ranges,
//! compares and `prev_kv`, `WRITE` for puts and deletes, `READWRITE` both.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prost::Message;

use etch_protocol::authpb::permission::Type as PermType;
use etch_protocol::authpb::{Role, User};
use etch_protocol::etcdserverpb::TxnRequest;
use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etchpb::AuthInfo;
use etch_protocol::etchpb::internal_request::Request;

use crate::error::{Error, Result};
use crate::mvcc::MAX_KEY_BYTES;
use crate::mvcc::RequestError;

/// The role (and the user) with every permission (etcd `rootRole`, `rootUser`).
pub const ROOT: &str = "root";

pub(super) const ENABLED_KEY: &[u8] = b"enabled";
pub(super) const REVISION_KEY: &[u8] = b"revision";
pub(super) const USER_PREFIX: &[u8] = b"user/";
pub(super) const ROLE_PREFIX: &[u8] = b"role/";

type Check = std::result::Result<(), RequestError>;

/// One immutable version of the auth state. Cheap to read concurrently; every change makes a
/// new one (with the next revision).
#[derive(Debug, Default)]
pub struct AuthState {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Merged permissions per user, computed on first use.
    cache: Mutex<HashMap<String, Arc<UserPerms>>>,
}

impl Clone for AuthState {
    fn clone(&self) -> AuthState {
        AuthState {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.clone(),
            roles: self.roles.clone(),
            cache: Mutex::default(),
        }
    }
}

/// End of a key interval: exclusive key, or past every key (`range_end` "\0").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Unbounded,
}

/// `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: End,
}

/// The interval a (key, range_end) pair names, with etcd's conventions: empty `range_end` = the
/// key alone, `"\0"` = every key >= `key`. `None` for an empty range.
fn interval(key: &[u8], range_end: &[u8]) -> Option<Interval> {
    let end = match range_end {
        [] => {
            let mut e = key.to_vec();
            e.push(0);
            End::Key(e)
        }
        [0] => End::Unbounded,
        e if e <= key => return None,
        e => End::Key(e.to_vec()),
    };
    Some(Interval {
        start: key.to_vec(),
        end,
    })
}

/// Sorted, disjoint, non-adjacent intervals.
fn merge(mut v: Vec<Interval>) -> Vec<Interval> {
    v.sort_by(|a, b| a.start.cmp(&b.start).then(a.end.cmp(&b.end)));
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for iv in v {
        match out.last_mut() {
            Some(last) if last.end >= End::Key(iv.start.clone()) => {
                if iv.end > last.end {
                    last.end = iv.end;
                }
            }
            _ => out.push(iv),
        }
    }
    out
}

fn covers(set: &[Interval], want: &Interval) -> bool {
    let i = set.partition_point(|iv| iv.start <= want.start);
    i > 0 && set[i - 1].end >= want.end
}

/// A user's permissions, merged over its roles.
#[derive(Debug, Default)]
struct UserPerms {
    root: bool,
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl AuthState {
    /// Reads the state from the `auth` keyspace (empty keyspace: auth disabled, revision 0,
    /// no users or roles).
    ///
    /// # Errors
    /// [`Error::Fjall`]; [`Error::CorruptStore`] for records that do not decode.
    pub(super) fn load(ks: &fjall::Keyspace) -> Result<AuthState> {
        let mut s = AuthState::default();
        let bad = |what: &str| Error::CorruptStore(format!("auth record {what} does not decode"));
        for g in ks.iter() {
            let (k, v) = g.into_inner()?;
            if k.as_ref() == ENABLED_KEY {
                s.enabled = v.first() == Some(&1);
            } else if k.as_ref() == REVISION_KEY {
                s.revision =
                    u64::from_be_bytes(v.as_ref().try_into().map_err(|_| bad("revision"))?);
            } else if let Some(name) = k.strip_prefix(USER_PREFIX) {
                let u = User::decode(v.as_ref()).map_err(|_| bad("user"))?;
                s.users
                    .insert(String::from_utf8_lossy(name).into_owned(), u);
            } else if let Some(name) = k.strip_prefix(ROLE_PREFIX) {
                let r = Role::decode(v.as_ref()).map_err(|_| bad("role"))?;
                s.roles
                    .insert(String::from_utf8_lossy(name).into_owned(), r);
            }
        }
        Ok(s)
    }

    /// Whether auth is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: bumped by every change of users, roles, permissions or the flag.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// User `name` (its `password` is the bcrypt hash; empty for a no-password user).
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Role `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// Whether user `user` holds role `role`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    fn perms(&self, user: &str) -> Option<Arc<UserPerms>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(user) {
            return Some(p.clone());
        }
        let u = self.users.get(user)?;
        let mut p = UserPerms {
            root: u.roles.iter().any(|r| r == ROOT),
            ..Default::default()
        };
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for perm in u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.key_permission)
        {
            let Some(iv) = interval(&perm.key, &perm.range_end) else {
                continue;
            };
            match PermType::try_from(perm.perm_type) {
                Ok(PermType::Read) => read.push(iv),
                Ok(PermType::Write) => write.push(iv),
                Ok(PermType::Readwrite) => {
                    read.push(iv.clone());
                    write.push(iv);
                }
                Err(_) => {}
            }
        }
        p.read = merge(read);
        p.write = merge(write);
        let p = Arc::new(p);
        cache.insert(user.to_owned(), p.clone());
        Some(p)
    }

    /// The identity check every permission check starts with (etcd `isOpPermitted`).
    fn identify(&self, who: &AuthInfo) -> std::result::Result<Arc<UserPerms>, RequestError> {
        if who.username.is_empty() {
            return Err(RequestError::UserEmpty);
        }
        if who.auth_revision < self.revision {
            return Err(RequestError::AuthOldRevision);
        }
        self.perms(&who.username)
            .ok_or(RequestError::PermissionDenied)
    }

    /// May `who` read (`write` = false) or write the keys `[key, range_end)` (etcd's
    /// conventions for `range_end`)?
    ///
    /// # Errors
    /// Auth enabled and: [`RequestError::UserEmpty`] without identity,
    /// [`RequestError::AuthOldRevision`] for an identity checked before an auth change,
    /// [`RequestError::PermissionDenied`] otherwise.
    pub fn check(&self, who: &AuthInfo, key: &[u8], range_end: &[u8], write: bool) -> Check {
        if !self.enabled {
            return Ok(());
        }
        let p = self.identify(who)?;
        if p.root {
            return Ok(());
        }
        let set = if write { &p.write } else { &p.read };
        match interval(key, range_end) {
            Some(iv) if covers(set, &iv) => Ok(()),
            _ => Err(RequestError::PermissionDenied),
        }
    }

    /// Is `who` an administrator (holds `root`)? Always yes when auth is disabled (etcd
    /// `IsAdminPermitted`).
    ///
    /// # Errors
    /// [`RequestError::UserEmpty`], [`RequestError::UserNotFound`],
    /// [`RequestError::PermissionDenied`].
    pub fn check_admin(&self, who: &AuthInfo) -> Check {
        if !self.enabled {
            return Ok(());
        }
        if who.username.is_empty() {
            return Err(RequestError::UserEmpty);
        }
        match self.users.get(&who.username) {
            None => Err(RequestError::UserNotFound),
            Some(u) if u.roles.iter().any(|r| r == ROOT) => Ok(()),
            Some(_) => Err(RequestError::PermissionDenied),
        }
    }

    /// Checks every key a Txn touches, in both branches whatever the compares will say, and
    /// the compares themselves (etcd `checkTxnAuth`); `lease` checks the keys already attached
    /// to a lease a put names.
    ///
    /// # Errors
    /// As [`AuthState::check`].
    pub fn check_txn(
        &self,
        who: &AuthInfo,
        t: &TxnRequest,
        lease: &mut dyn FnMut(i64) -> Check,
    ) -> Check {
        if !self.enabled {
            return Ok(());
        }
        for c in &t.compare {
            self.check(who, &c.key, &c.range_end, false)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                None => {}
                Some(Op::RequestRange(r)) => self.check(who, &r.key, &r.range_end, false)?,
                Some(Op::RequestPut(p)) => {
                    self.check(who, &p.key, &[], true)?;
                    if p.prev_kv {
                        self.check(who, &p.key, &[], false)?;
                    }
                    if p.lease != 0 {
                        lease(p.lease)?;
                    }
                }
                Some(Op::RequestDeleteRange(d)) => {
                    self.check(who, &d.key, &d.range_end, true)?;
                    if d.prev_kv {
                        self.check(who, &d.key, &d.range_end, false)?;
                    }
                }
                Some(Op::RequestTxn(inner)) => self.check_txn(who, inner, lease)?,
            }
        }
        Ok(())
    }

    /// The next version: same content, revision + 1.
    pub(super) fn next(&self) -> AuthState {
        let mut s = self.clone();
        s.revision += 1;
        s
    }
}

/// An auth change applied: the new state and the records to write (`None` = delete).
#[derive(Debug)]
pub(super) struct AuthChange {
    pub(super) state: AuthState,
    pub(super) records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What an auth request applied to: a change (state + records) and, for Authenticate, the
/// token assigned.
pub(super) type AuthApplied = (Option<AuthChange>, Option<String>);

fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

/// Applies one auth request to `cur` with etcd v3.5's rules (`server/auth/store.go`); `who`
/// proposed it (`None`: the server itself), `index` is its raft index (simple tokens end with
/// it, as etcd's do). Every mutation needs an administrator once auth is enabled.
///
/// # Errors
/// etcd's auth errors ([`RequestError`]); nothing changes then.
pub(super) fn apply(
    cur: &AuthState,
    who: Option<&AuthInfo>,
    req: &Request,
    index: u64,
) -> std::result::Result<AuthApplied, RequestError> {
    use etch_protocol::authpb::UserAddOptions;
    let anonymous = AuthInfo::default();
    let who = who.unwrap_or(&anonymous);
    if !matches!(req, Request::Authenticate(_)) {
        cur.check_admin(who)?;
    }
    let mut next = cur.next();
    let mut records = Vec::new();
    let put_user = |records: &mut Vec<_>, name: &str, u: &User| {
        records.push((user_key(name), Some(u.encode_to_vec())));
    };
    let put_role = |records: &mut Vec<_>, name: &str, r: &Role| {
        records.push((role_key(name), Some(r.encode_to_vec())));
    };
    match req {
        Request::Authenticate(a) => {
            if !cur.enabled {
                return Err(RequestError::AuthNotEnabled);
            }
            // The password was checked by the proposing member at `who.auth_revision`; a
            // change since (password, deletion) makes it retry.
            if who.auth_revision < cur.revision {
                return Err(RequestError::AuthOldRevision);
            }
            if !cur.users.contains_key(&a.name) {
                return Err(RequestError::AuthFailed);
            }
            return Ok((None, Some(format!("{}.{index}", a.token))));
        }
        Request::AuthEnable(_) => {
            if cur.enabled {
                return Ok((None, None));
            }
            let root = cur.users.get(ROOT).ok_or(RequestError::RootUserNotExist)?;
            if !root.roles.iter().any(|r| r == ROOT) {
                return Err(RequestError::RootRoleNotExist);
            }
            next.enabled = true;
        }
        Request::AuthDisable(_) => {
            if !cur.enabled {
                return Ok((None, None));
            }
            next.enabled = false;
        }
        Request::UserAdd(r) => {
            if r.name.is_empty() {
                return Err(RequestError::UserEmpty);
            }
            // The name is part of a fjall key (`user/<name>`).
            if r.name.len() > MAX_KEY_BYTES {
                return Err(RequestError::KeyTooLarge);
            }
            if cur.users.contains_key(&r.name) {
                return Err(RequestError::UserAlreadyExist);
            }
            let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
            let u = User {
                name: r.name.as_bytes().to_vec().into(),
                password: if no_password {
                    Default::default()
                } else {
                    r.hashed_password.as_bytes().to_vec().into()
                },
                roles: Vec::new(),
                options: Some(UserAddOptions { no_password }),
            };
            put_user(&mut records, &r.name, &u);
            next.users.insert(r.name.clone(), u);
        }
        Request::UserDelete(r) => {
            if cur.enabled && r.name == ROOT {
                return Err(RequestError::InvalidAuthMgmt);
            }
            if next.users.remove(&r.name).is_none() {
                return Err(RequestError::UserNotFound);
            }
            records.push((user_key(&r.name), None));
        }
        Request::UserChangePassword(r) => {
            let u = next
                .users
                .get_mut(&r.name)
                .ok_or(RequestError::UserNotFound)?;
            u.password = r.hashed_password.as_bytes().to_vec().into();
            put_user(&mut records, &r.name, u);
        }
        Request::UserGrantRole(r) => {
            if r.role != ROOT && !cur.roles.contains_key(&r.role) {
                return Err(RequestError::RoleNotFound);
            }
            let u = next
                .users
                .get_mut(&r.user)
                .ok_or(RequestError::UserNotFound)?;
            if u.roles.contains(&r.role) {
                return Ok((None, None));
            }
            u.roles.push(r.role.clone());
            u.roles.sort();
            put_user(&mut records, &r.user, u);
        }
        Request::UserRevokeRole(r) => {
            if cur.enabled && r.name == ROOT && r.role == ROOT {
                return Err(RequestError::InvalidAuthMgmt);
            }
            let u = next
                .users
                .get_mut(&r.name)
                .ok_or(RequestError::UserNotFound)?;
            let before = u.roles.len();
            u.roles.retain(|x| *x != r.role);
            if u.roles.len() == before {
                return Err(RequestError::RoleNotGranted);
            }
            put_user(&mut records, &r.name, u);
        }
        Request::RoleAdd(r) => {
            if r.name.is_empty() {
                return Err(RequestError::RoleEmpty);
            }
            // The name is part of a fjall key (`role/<name>`).
            if r.name.len() > MAX_KEY_BYTES {
                return Err(RequestError::KeyTooLarge);
            }
            if cur.roles.contains_key(&r.name) {
                return Err(RequestError::RoleAlreadyExist);
            }
            let role = Role {
                name: r.name.as_bytes().to_vec().into(),
                key_permission: Vec::new(),
            };
            put_role(&mut records, &r.name, &role);
            next.roles.insert(r.name.clone(), role);
        }
        Request::RoleDelete(r) => {
            if cur.enabled && r.role == ROOT {
                return Err(RequestError::InvalidAuthMgmt);
            }
            if next.roles.remove(&r.role).is_none() {
                return Err(RequestError::RoleNotFound);
            }
            records.push((role_key(&r.role), None));
            // Users lose the role (etcd deletes it from every user holding it).
            for (name, u) in next.users.iter_mut() {
                if u.roles.contains(&r.role) {
                    u.roles.retain(|x| *x != r.role);
                    records.push((user_key(name), Some(u.encode_to_vec())));
                }
            }
        }
        Request::RoleGrantPermission(r) => {
            let mut perm = r.perm.clone().ok_or(RequestError::PermissionNotGiven)?;
            // The request was decoded from its raft entry without copies (its fields are
            // slices of the entry, or of the peer frame that carried it); the auth state keeps
            // the permission for good, so it takes the few bytes it needs, not the buffer.
            perm.key = bytes::Bytes::copy_from_slice(&perm.key);
            perm.range_end = bytes::Bytes::copy_from_slice(&perm.range_end);
            let role = next
                .roles
                .get_mut(&r.name)
                .ok_or(RequestError::RoleNotFound)?;
            match role
                .key_permission
                .iter_mut()
                .find(|p| p.key == perm.key && p.range_end == perm.range_end)
            {
                Some(p) => p.perm_type = perm.perm_type,
                None => {
                    role.key_permission.push(perm);
                    role.key_permission
                        .sort_by(|a, b| a.key.cmp(&b.key).then(a.range_end.cmp(&b.range_end)));
                }
            }
            put_role(&mut records, &r.name, role);
        }
        Request::RoleRevokePermission(r) => {
            let role = next
                .roles
                .get_mut(&r.role)
                .ok_or(RequestError::RoleNotFound)?;
            let before = role.key_permission.len();
            role.key_permission
                .retain(|p| !(p.key == r.key && p.range_end == r.range_end));
            if role.key_permission.len() == before {
                return Err(RequestError::PermissionNotGranted);
            }
            put_role(&mut records, &r.role, role);
        }
        // Not an auth request: the caller routes only auth requests here.
        _ => return Ok((None, None)),
    }
    Ok((
        Some(AuthChange {
            state: next,
            records,
        }),
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etch_protocol::authpb::Permission;

    fn perm(t: PermType, key: &str, end: &[u8]) -> Permission {
        Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec().into(),
            range_end: end.to_vec().into(),
        }
    }

    fn state(perms: Vec<Permission>) -> AuthState {
        let mut s = AuthState {
            enabled: true,
            revision: 3,
            ..Default::default()
        };
        s.roles.insert(
            "r".into(),
            Role {
                name: b"r".to_vec().into(),
                key_permission: perms,
            },
        );
        s.users.insert(
            "u".into(),
            User {
                name: b"u".to_vec().into(),
                roles: vec!["r".into()],
                ..Default::default()
            },
        );
        s.users.insert(
            "admin".into(),
            User {
                name: b"admin".to_vec().into(),
                roles: vec![ROOT.into()],
                ..Default::default()
            },
        );
        s
    }

    fn who(name: &str, rev: u64) -> AuthInfo {
        AuthInfo {
            username: name.into(),
            auth_revision: rev,
        }
    }

    #[test]
    fn prefix_read_permission_covers_keys_and_subranges_only() {
        let s = state(vec![perm(PermType::Read, "/a/", b"/a0")]);
        let u = who("u", 3);
        assert_eq!(s.check(&u, b"/a/x", b"", false), Ok(()));
        assert_eq!(s.check(&u, b"/a/", b"/a0", false), Ok(()));
        assert_eq!(s.check(&u, b"/a/b", b"/a/c", false), Ok(()));
        assert_eq!(
            s.check(&u, b"/a/x", b"", true),
            Err(RequestError::PermissionDenied)
        );
        assert_eq!(
            s.check(&u, b"/b/x", b"", false),
            Err(RequestError::PermissionDenied)
        );
        // A range that runs past the prefix, or to the end of the keyspace.
        assert_eq!(
            s.check(&u, b"/a/", b"/b", false),
            Err(RequestError::PermissionDenied)
        );
        assert_eq!(
            s.check(&u, b"/a/", &[0], false),
            Err(RequestError::PermissionDenied)
        );
    }

    #[test]
    fn adjacent_and_overlapping_permissions_merge() {
        let s = state(vec![
            perm(PermType::Readwrite, "a", b"c"),
            perm(PermType::Read, "c", b"e"),
            perm(PermType::Write, "k", &[]),
            perm(PermType::Read, "x", &[0]),
        ]);
        let u = who("u", 3);
        assert_eq!(s.check(&u, b"a", b"e", false), Ok(()));
        assert!(s.check(&u, b"a", b"e", true).is_err());
        assert_eq!(s.check(&u, b"k", b"", true), Ok(()));
        assert!(s.check(&u, b"k", b"k\0\0", true).is_err());
        assert_eq!(s.check(&u, b"zzz", &[0], false), Ok(()));
    }

    #[test]
    fn identity_rules() {
        let s = state(vec![perm(PermType::Read, "a", b"")]);
        assert_eq!(
            s.check(&who("", 3), b"a", b"", false),
            Err(RequestError::UserEmpty)
        );
        assert_eq!(
            s.check(&who("u", 2), b"a", b"", false),
            Err(RequestError::AuthOldRevision)
        );
        assert_eq!(
            s.check(&who("ghost", 3), b"a", b"", false),
            Err(RequestError::PermissionDenied)
        );
        assert_eq!(s.check(&who("admin", 3), b"zz", &[0], true), Ok(()));
        assert_eq!(s.check_admin(&who("admin", 3)), Ok(()));
        assert_eq!(
            s.check_admin(&who("u", 3)),
            Err(RequestError::PermissionDenied)
        );
        assert_eq!(
            s.check_admin(&who("ghost", 3)),
            Err(RequestError::UserNotFound)
        );
        let mut off = s.clone();
        off.enabled = false;
        assert_eq!(off.check(&who("", 0), b"zz", b"", true), Ok(()));
        assert_eq!(off.check_admin(&who("", 0)), Ok(()));
    }

    #[test]
    fn txn_checks_both_branches_and_compares() {
        use etch_protocol::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp};
        let s = state(vec![perm(PermType::Readwrite, "/a/", b"/a0")]);
        let u = who("u", 3);
        let put = |k: &str| RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: k.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        };
        let mut t = TxnRequest {
            compare: vec![Compare {
                key: b"/a/x".to_vec().into(),
                ..Default::default()
            }],
            success: vec![put("/a/y")],
            failure: vec![put("/b/sneaky")],
        };
        let mut no_lease = |_| Ok(());
        assert_eq!(
            s.check_txn(&u, &t, &mut no_lease),
            Err(RequestError::PermissionDenied)
        );
        t.failure = vec![RequestOp {
            request: Some(Op::RequestRange(RangeRequest {
                key: b"/a/z".to_vec().into(),
                ..Default::default()
            })),
        }];
        assert_eq!(s.check_txn(&u, &t, &mut no_lease), Ok(()));
        t.compare[0].key = b"/b/x".to_vec().into();
        assert_eq!(
            s.check_txn(&u, &t, &mut no_lease),
            Err(RequestError::PermissionDenied)
        );
    }
}
