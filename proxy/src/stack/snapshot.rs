//! Pins the configuration in force for the whole request: `App` goes into the request's
//! extensions, where every layer below and the handler find it.

use std::sync::Arc;

use super::{Next, Req, Resp};
use crate::app::App;
use crate::server::State;

pub async fn pin(state: State, mut req: Req, next: Next) -> Resp {
    let app: Arc<App> = state.load_full();
    req.extensions_mut().insert(app);
    next.run(req).await
}

/// The configuration pinned for this request.
pub fn app(req: &Req) -> Arc<App> {
    Arc::clone(
        req.extensions()
            .get::<Arc<App>>()
            .expect("the snapshot layer runs first"),
    )
}
