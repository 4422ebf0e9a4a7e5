//! `put` and `delete`: write the table as credstash does, straight to AWS,
//! or with `--server` through a credsync's self-service API with the
//! current kubeconfig context's token (no AWS credentials needed).

use std::io::Read;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::http::{Method, StatusCode};
use kube::client::Body;

use crate::cli::args::{PutArgs, ThroughServer};
use crate::cli::settings::Settings;
use crate::cli::setup;
use crate::credstash::{NewItem, PutVersion};
use crate::metrics::Metrics;
use crate::secret::SecretValue;

pub(in crate::cli) async fn put(settings: &Settings, args: &PutArgs) -> Result<u8> {
    let value = read_value(args)?;
    if let Err(reason) = settings.mapping.map(&args.name) {
        tracing::warn!(name = %args.name, %reason, "this name maps to no Secret key: sync will skip it");
    }
    if let Some(server) = &args.through.server {
        let path = api_path(&args.name)?;
        let answer = call(&args.through, Method::PUT, &path, value.expose().to_vec()).await?;
        println!(
            "{} version {} stored through {server}",
            args.name,
            answer["version"].as_str().unwrap_or("?")
        );
        return Ok(0);
    }
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let source = setup::source(settings, metrics).await;
    let version = match (args.autoversion, args.version) {
        (true, _) => PutVersion::Next,
        (false, n) => PutVersion::Exact(n.unwrap_or(1)),
    };
    let written = source
        .put(NewItem {
            name: &args.name,
            value: &value,
            version,
            key_id: &args.key_id,
        })
        .await?;
    println!("{} version {} stored", written.name, written.version);
    Ok(0)
}

pub(in crate::cli) async fn delete(
    settings: &Settings,
    name: &str,
    through: &ThroughServer,
) -> Result<u8> {
    if let Some(server) = &through.server {
        let answer = call(through, Method::DELETE, &api_path(name)?, Vec::new()).await?;
        let versions = answer["deleted_versions"].as_array().map_or(0, Vec::len);
        println!("{name}: {versions} version(s) deleted through {server}");
        return Ok(0);
    }
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let source = setup::source(settings, metrics).await;
    let deleted = source.delete(name).await?;
    for id in &deleted {
        println!("deleted {} version {}", id.name, id.version);
    }
    Ok(0)
}

/// The value from the argument, stdin (`-`) or a file, as exact bytes.
fn read_value(args: &PutArgs) -> Result<SecretValue> {
    let bytes = match (&args.file, args.value.as_deref()) {
        (Some(file), _) => std::fs::read(file)
            .with_context(|| format!("reading the value from {}", file.display()))?,
        (None, Some("-")) => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the value from stdin")?;
            bytes
        }
        (None, Some(value)) => value.as_bytes().to_vec(),
        (None, None) => bail!("give the value as VALUE, - (stdin) or -f FILE"),
    };
    Ok(SecretValue::new(bytes))
}

/// `/v1/secrets/NS/SECRET/KEY` for a name that maps to a Secret key.
/// Checked with credsync's own mapping, which maps every name the
/// kubestash-v2 one does: the server refuses what its mapping does not map.
fn api_path(name: &str) -> Result<String> {
    crate::manifest::map_name(name).map_err(|reason| {
        anyhow::anyhow!("--server writes Secret keys only, named namespace/secret/KEY: {reason}")
    })?;
    Ok(format!("/v1/secrets/{name}"))
}

/// One call to the self-service API, authenticated as the current
/// kubeconfig context's user (tokens, token files and exec plugins such as
/// OIDC helpers, as kubectl does).
async fn call(
    through: &ThroughServer,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<serde_json::Value> {
    let server = through.server.as_deref().unwrap_or_default();
    let url: axum::http::Uri = server
        .parse()
        .with_context(|| format!("--server '{server}' is not a URL"))?;
    let loopback = matches!(
        url.host(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    );
    match url.scheme_str() {
        Some("https") => {}
        Some("http") if loopback => {}
        _ => bail!(
            "--server must be https:// (your Kubernetes token would travel in clear text), \
             or http:// to 127.0.0.1 through kubectl port-forward"
        ),
    }
    let mut config = kube::Config::infer()
        .await
        .context("reading the kubeconfig for your token (set KUBECONFIG or a current context)")?;
    config.cluster_url = url;
    // The kubeconfig's CA is the API server's, not credsync's: use the system
    // roots. Its `insecure-skip-tls-verify` is the API server's too: the
    // token goes over verified TLS unless this command line says otherwise.
    config.root_cert = None;
    config.tls_server_name = None;
    config.accept_invalid_certs = through.insecure_skip_tls_verify;
    if through.insecure_skip_tls_verify {
        tracing::warn!(
            server,
            "--insecure-skip-tls-verify: the server's certificate is not checked"
        );
    }
    let client = kube::Client::try_from(config).context("building the HTTP client")?;
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/octet-stream")
        .body(Body::from(body))
        .context("building the request")?;
    let response = client
        .send(request)
        .await
        .with_context(|| format!("calling {server}"))?;
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .with_context(|| format!("reading the answer of {server}"))?
        .to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if status == StatusCode::OK || status == StatusCode::CREATED {
        return Ok(answer);
    }
    let message = answer["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
    // The server's words, on one line: whatever sits at that address.
    let message = crate::text::one_line(&message, 1000);
    bail!("{server} answered {status}: {message}")
}
