//! Tokens and agents' join tokens (admin).

use firefleet_api::{
    CreateJoinTokenRequest, CreateTokenRequest, JoinTokenResponse, TokenInfo, TokenList,
    TokenResponse,
};
use reqwest::Method;

use crate::transport::enc;
use crate::{Client, ClientError};

impl Client {
    /// Creates a token.
    pub async fn token_create(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<TokenResponse, ClientError> {
        self.call_required_body(Method::POST, "/v1/tokens", Some(req))
            .await
    }

    /// Lists tokens (one tenant's with `tenant`).
    pub async fn token_list(&self, tenant: Option<&str>) -> Result<TokenList, ClientError> {
        let path = match tenant {
            Some(t) => format!("/v1/tokens?tenant={}", enc(t)),
            None => "/v1/tokens".to_owned(),
        };
        self.call_required_body::<(), _>(Method::GET, &path, None)
            .await
    }

    /// Revokes a token by id.
    pub async fn token_revoke(&self, id: &str) -> Result<TokenInfo, ClientError> {
        self.call_required_body::<(), _>(Method::DELETE, &format!("/v1/tokens/{}", enc(id)), None)
            .await
    }

    /// Creates a join token.
    pub async fn join_token_create(
        &self,
        req: &CreateJoinTokenRequest,
    ) -> Result<JoinTokenResponse, ClientError> {
        self.call_required_body(Method::POST, "/v1/join-tokens", Some(req))
            .await
    }
}
