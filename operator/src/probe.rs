//! Asking the constellation itself. Before a pod is removed, a member other than that pod says
//! which ranges still name it among their replicas (`GET /replicas/<node id>` on the member's
//! HTTP port): a pod's own status entry saying "decommissioned" is not enough, since whoever
//! controls the pod writes it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pleiades_crds::MemberStatus;
use serde::Deserialize;

/// How long one member may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// An answer lists range ids; anything longer is not one.
const MAX_ANSWER_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{member} has no address")]
    NoAddress { member: String },
    #[error("asking {member}: {detail}")]
    Failed { member: String, detail: String },
}

#[derive(Debug, Deserialize)]
struct ReplicasOf {
    node_id: u64,
    ranges: Vec<u64>,
}

/// What a member said of the node being removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Testimony {
    /// The pod that answered.
    pub member: String,
    /// Ranges that still name the node among their replicas.
    pub ranges: Vec<u64>,
}

/// The ranges `node_id` holds according to `member`, asked on its HTTP port.
pub async fn ranges_held(member: &MemberStatus, http_port: u16, node_id: u64) -> Result<Testimony, ProbeError> {
    let failed = |detail: String| ProbeError::Failed { member: member.pod.clone(), detail };
    // The address a member reports is its QUIC `host:port`; its HTTP port is the chart's.
    let host = member
        .address
        .rsplit_once(':')
        .map(|(host, _)| host)
        .filter(|host| !host.is_empty())
        .ok_or_else(|| ProbeError::NoAddress { member: member.pod.clone() })?;
    let uri: http::Uri =
        format!("http://{host}:{http_port}/replicas/{node_id}").parse().map_err(|e| failed(format!("{e}")))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let ask = async {
        let response = client.get(uri).await.map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("answered {}", response.status())));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| failed(format!("reading the answer: {e}")))?
            .to_bytes();
        serde_json::from_slice::<ReplicasOf>(&body).map_err(|e| failed(format!("malformed answer: {e}")))
    };
    let answer = tokio::time::timeout(ANSWER_WITHIN, ask)
        .await
        .map_err(|_| failed(format!("no answer in {ANSWER_WITHIN:?}")))??;
    if answer.node_id != node_id {
        return Err(failed(format!("answered for node {} instead of {node_id}", answer.node_id)));
    }
    Ok(Testimony { member: member.pod.clone(), ranges: answer.ranges })
}

/// Asks the ready members other than `leaving`, in turn, until one answers.
pub async fn confirm_empty(
    members: &[MemberStatus],
    leaving: &MemberStatus,
    http_port: u16,
) -> Result<Testimony, Vec<ProbeError>> {
    let mut errors = Vec::new();
    let witnesses = members.iter().filter(|m| m.pod != leaving.pod && m.ready && m.node_id != leaving.node_id);
    let node_id = u64::try_from(leaving.node_id).unwrap_or_default();
    for witness in witnesses {
        match ranges_held(witness, http_port, node_id).await {
            Ok(testimony) => return Ok(testimony),
            Err(e) => errors.push(e),
        }
    }
    Err(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member's HTTP endpoint on loopback, answering `body` to every request.
    async fn member_answering(body: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route("/replicas/{node}", axum::routing::get(move || async move { body }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    fn member(pod: &str, node_id: i64, ready: bool) -> MemberStatus {
        MemberStatus { pod: pod.into(), node_id, address: "127.0.0.1:7400".into(), ready, ..Default::default() }
    }

    #[tokio::test]
    async fn another_ready_member_is_asked_about_the_leaving_node() {
        let port = member_answering(r#"{"node_id":5,"ranges":[3,7]}"#).await;
        let members = [member("db-0", 1, false), member("db-1", 2, true), member("db-4", 5, true)];
        let testimony = confirm_empty(&members, &members[2], port).await.unwrap();
        assert_eq!(testimony, Testimony { member: "db-1".into(), ranges: vec![3, 7] }, "db-0 is not ready");
    }

    #[tokio::test]
    async fn an_answer_about_another_node_or_none_at_all_confirms_nothing() {
        let port = member_answering(r#"{"node_id":9,"ranges":[]}"#).await;
        let members = [member("db-1", 2, true), member("db-4", 5, true)];
        let errors = confirm_empty(&members, &members[1], port).await.unwrap_err();
        assert!(errors[0].to_string().contains("instead of 5"), "{errors:?}");
        let alone = [member("db-4", 5, true)];
        assert!(confirm_empty(&alone, &alone[0], port).await.unwrap_err().is_empty(), "no witness: unconfirmed");
    }
}
