//! Peers' requests to this member, served by the services.

use std::sync::Arc;

use etch_protocol::etchpb::{peer_answer, peer_request};

use super::Service;

/// The services answering peers' requests: HashKV for the corruption checks, and the lease
/// and membership requests followers forward to the leader (the follower checked the client's
/// permissions).
pub struct PeerRequests(pub Arc<Service>);

impl crate::actors::transport::PeerServer for PeerRequests {
    fn serve(
        &self,
        from: u64,
        request: peer_request::Body,
    ) -> futures::future::BoxFuture<'static, peer_answer::Body> {
        let svc = self.0.clone();
        Box::pin(async move {
            let answer = match request {
                peer_request::Body::HashKv(r) => svc
                    .peer_hash_kv(r.revision)
                    .await
                    .map(peer_answer::Body::HashKv),
                peer_request::Body::LeaseKeepAlive(r) => svc
                    .lease_keep_alive(r)
                    .await
                    .map(peer_answer::Body::LeaseKeepAlive),
                peer_request::Body::LeaseTimeToLive(r) => svc
                    .lease_time_to_live(r)
                    .await
                    .map(peer_answer::Body::LeaseTimeToLive),
                peer_request::Body::MemberList(r) => {
                    svc.member_list(r).await.map(peer_answer::Body::MemberList)
                }
                peer_request::Body::MemberAdd(r) => {
                    svc.member_add(r).await.map(peer_answer::Body::MemberAdd)
                }
                peer_request::Body::MemberRemove(r) => svc
                    .member_remove(r)
                    .await
                    .map(peer_answer::Body::MemberRemove),
                peer_request::Body::MemberUpdate(r) => svc
                    .member_update(r)
                    .await
                    .map(peer_answer::Body::MemberUpdate),
                peer_request::Body::MemberPromote(r) => svc
                    .member_promote(r)
                    .await
                    .map(peer_answer::Body::MemberPromote),
                peer_request::Body::Alarm(r) => svc
                    .peer_no_space(from, r)
                    .await
                    .map(peer_answer::Body::Alarm),
            };
            answer.unwrap_or_else(|e| crate::actors::transport::answer_error(&e))
        })
    }
}
