//! Client authentication (`[auth]`): a request without valid credentials gets `401` with a
//! challenge and goes no further; the user's name travels on for the grant check.

use http::Method;

use super::snapshot::app;
use super::{Next, Req, Resp};
use crate::error::ProxyError;

/// The client's address, set per connection by the server.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// The authenticated user, when `[auth]` is on.
#[derive(Debug, Clone)]
pub struct User(pub String);

pub async fn authenticate(mut req: Req, next: Next) -> Resp {
    let app = app(&req);
    if let Some(auth) = &app.auth {
        let peer = req.extensions().get::<Peer>().map(|p| p.0.ip());
        match auth.authenticate(req.headers(), peer).await {
            Some(user) => {
                req.extensions_mut().insert(User(user));
            }
            None => {
                let head = req.method() == Method::HEAD;
                return ProxyError::Unauthorized("send basic credentials or a bearer token".into())
                    .into_response(head);
            }
        }
    }
    next.run(req).await
}
