//! An HTTP function for AWS Lambda (API Gateway HTTP API, `lambda_http`) with nonstop: the
//! usual `lambda_http` handler, run by `lambda_runtime`'s `Runtime` so the layer can wrap it
//! (`lambda_http::run` builds its own runtime and takes no layer).
//!
//! `GET /greet?name=NAME` answers `hello NAME (N letters)`. With `--without-nonstop` it runs
//! the same function without the layer, which the tests compare against.
use lambda_http::{Body, Error, Request, RequestExt, Response, service_fn};
use nonstop_lambda::NonstopLayer;
use std::hint::black_box;

/// The letters in a name.
#[inline(never)]
fn letters(name: &str) -> usize {
    let count = name.chars().filter(|c| c.is_alphabetic()).count();
    black_box((name, count)); // @mark counted
    count
}

async fn handler(request: Request) -> Result<Response<Body>, Error> {
    let name = request
        .query_string_parameters_ref()
        .and_then(|q| q.first("name"))
        .unwrap_or("world")
        .to_owned();
    let count = letters(&name);
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(format!("hello {name} ({count} letters)").into())?)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let function = lambda_http::Adapter::from(service_fn(handler));
    if std::env::args().any(|a| a == "--without-nonstop") {
        return lambda_http::lambda_runtime::Runtime::new(function)
            .run()
            .await;
    }
    lambda_http::lambda_runtime::Runtime::new(function)
        .layer(NonstopLayer::new())
        .run()
        .await
}
