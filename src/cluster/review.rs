//! Who a caller is and what they may do, asked of the API server itself.
//!
//! The self-service API never judges a token on its own: a TokenReview
//! tells who holds it (any authenticator the cluster trusts: OIDC, service
//! account tokens, webhooks), and a SubjectAccessReview on the virtual
//! resource `credentials.credsync.io` tells whether RBAC lets them act in a
//! namespace. Cluster admins grant it with ordinary Roles and bindings.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::{Cluster, ClusterError, api_error};

/// The API group and resource RBAC rules name to grant self-service writes.
pub const CREDENTIALS_GROUP: &str = "credsync.io";
pub const CREDENTIALS_RESOURCE: &str = "credentials";

/// An authenticated caller, as the API server reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a TokenReview said of a token.
#[derive(Debug)]
pub enum TokenVerdict {
    Authenticated(Caller),
    /// Not valid (expired, garbage, revoked): the API server's reason, which
    /// names the failure, never the token.
    Refused(String),
}

impl Cluster {
    /// Asks the API server who holds `token`. An error means the review
    /// itself failed (no RBAC for tokenreviews, API server down).
    pub async fn review_token(&self, token: &str) -> Result<TokenVerdict, ClusterError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        self.count("review");
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answered = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| api_error("reviewing a caller's token (TokenReview)", e))?;
        let status = answered.status.unwrap_or_default();
        match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Ok(TokenVerdict::Authenticated(Caller {
                username: user.username.unwrap_or_default(),
                uid: user.uid,
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            })),
            _ => Ok(TokenVerdict::Refused(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "the token is not valid".to_owned()),
            )),
        }
    }

    /// Whether RBAC lets `caller` `verb` credentials in `namespace` (for
    /// the Secret `name`, if given, so `resourceNames` rules work too).
    pub async fn may(
        &self,
        caller: &Caller,
        verb: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<bool, ClusterError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.username.clone()),
                uid: caller.uid.clone(),
                groups: Some(caller.groups.clone()),
                extra: (!caller.extra.is_empty()).then(|| caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(CREDENTIALS_GROUP.to_owned()),
                    resource: Some(CREDENTIALS_RESOURCE.to_owned()),
                    verb: Some(verb.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    name: name.map(str::to_owned),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        self.count("review");
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answered = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| api_error("authorizing a caller (SubjectAccessReview)", e))?;
        Ok(answered.status.is_some_and(|s| s.allowed))
    }
}
