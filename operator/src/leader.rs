//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run and
//! only one reconciles. Updates are compare-and-swap on the Lease's resourceVersion; a holder
//! that cannot renew before its lease expires stops reconciling.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tracing::{info, warn};

pub const LEASE_DURATION: Duration = Duration::from_secs(15);

#[derive(Debug, PartialEq)]
pub enum Decision {
    Create,
    Renew,
    /// The holder let its lease expire (or released it).
    TakeOver,
    Wait {
        holder: String,
    },
}

/// What this replica should do about the lease, given what it read.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_some() { Decision::TakeOver } else { Decision::Create };
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Decision::Renew,
        None | Some("") => Decision::TakeOver,
        Some(holder) => {
            let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            let expired = spec.renew_time.as_ref().is_none_or(|renewed| renewed.0 + duration < now);
            if expired {
                Decision::TakeOver
            } else {
                Decision::Wait { holder: holder.to_string() }
            }
        }
    }
}

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str) -> LeaseLock {
        LeaseLock { api, name: name.into(), identity: identity.into() }
    }

    /// One attempt: true when this replica holds the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(current.as_ref(), &self.identity, now);
        let mut lease = current.clone().unwrap_or_else(|| Lease {
            metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
            spec: None,
        });
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        match &decision {
            Decision::Wait { .. } => return Ok(false),
            Decision::Renew => {}
            Decision::Create | Decision::TakeOver => {
                spec.holder_identity = Some(self.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        spec.renew_time = Some(MicroTime(now));
        let written = match decision {
            Decision::Create => self.api.create(&PostParams::default(), &lease).await,
            // Carries the resourceVersion we read: a concurrent writer makes this a 409.
            _ => self.api.replace(&self.name, &PostParams::default(), &lease).await,
        };
        match written {
            Ok(_) => {
                if decision != Decision::Renew {
                    info!(identity = %self.identity, "acquired the leader lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => warn!(%error, "leader election"),
            }
            tokio::time::sleep(LEASE_DURATION / 5).await;
        }
    }

    /// Renews until a renewal has failed for as long as the lease lasts; then returns, and the
    /// caller must stop acting as leader.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(LEASE_DURATION / 3).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!("another replica took the leader lease");
                    return;
                }
                Err(error) => warn!(%error, "could not renew the leader lease"),
            }
            if last_renewed.elapsed() > LEASE_DURATION * 2 / 3 {
                warn!("leader lease about to expire without renewal");
                return;
            }
        }
    }

    /// Gives the lease up so another replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            if let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(&self.identity)) {
                spec.holder_identity = None;
                let _ = self.api.replace(&self.name, &PostParams::default(), &lease).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_live_lease_is_respected_and_an_expired_one_taken_over() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let recent = now - SignedDuration::from_secs(5);
        let expired = now - SignedDuration::from_secs(16);
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(decide(Some(&lease(Some("a"), recent)), "a", now), Decision::Renew);
        assert_eq!(decide(Some(&lease(Some("b"), recent)), "a", now), Decision::Wait { holder: "b".into() });
        assert_eq!(decide(Some(&lease(Some("b"), expired)), "a", now), Decision::TakeOver);
        assert_eq!(decide(Some(&lease(None, recent)), "a", now), Decision::TakeOver, "a released lease");
    }
}
