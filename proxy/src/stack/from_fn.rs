//! A layer from an `async fn(Request, Next) -> Response`: tower has no such adapter (axum's
//! `middleware::from_fn` is the model), and it keeps each layer a plain function.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt as _};

use super::{Req, Resp};

/// What is below a layer: call it at most once.
pub struct Next(BoxCloneService<Req, Resp, Infallible>);

impl Next {
    pub async fn run(self, req: Req) -> Resp {
        match self.0.oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

#[derive(Clone)]
pub struct FromFn<F> {
    f: F,
}

pub fn layer<F>(f: F) -> FromFn<F> {
    FromFn { f }
}

impl<S, F> Layer<S> for FromFn<F>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    F: Clone,
{
    type Service = Around<F>;

    fn layer(&self, inner: S) -> Around<F> {
        Around {
            inner: BoxCloneService::new(inner),
            f: self.f.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Around<F> {
    inner: BoxCloneService<Req, Resp, Infallible>,
    f: F,
}

impl<F, Fut> Service<Req> for Around<F>
where
    F: Fn(Req, Next) -> Fut,
    Fut: Future<Output = Resp> + Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // `Next::run` drives the inner service's readiness itself (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = (self.f)(req, Next(self.inner.clone()));
        Box::pin(async move { Ok(fut.await) })
    }
}
