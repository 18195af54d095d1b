//! The migration planner's proposal.

use firefleet_api::{PlanQuery, PlanResponse};
use reqwest::Method;

use crate::{Client, ClientError};

impl Client {
    /// The migration planner's proposal (`apply`: and start it).
    pub async fn plan(&self, q: &PlanQuery, apply: bool) -> Result<PlanResponse, ClientError> {
        let mut query = vec![format!("rebalance={}", q.rebalance)];
        if let Some(i) = q.imbalance {
            query.push(format!("imbalance={i}"));
        }
        if let Some(b) = q.battery_below {
            query.push(format!("battery_below={b}"));
        }
        let (method, path) = if apply {
            (Method::POST, "/v1/plan/apply")
        } else {
            (Method::GET, "/v1/plan")
        };
        self.call_required_body::<(), _>(method, &format!("{path}?{}", query.join("&")), None)
            .await
    }
}
