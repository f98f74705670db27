//! Plugins fetched from an `https://` URL (pinned by digest in the pipeline
//! file). A signature, if published, sits beside it at `URL.sig`.

use futures::StreamExt;

use super::oci::MAX_COMPONENT_BYTES;

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()?)
}

/// The bytes at `url`, at most [`MAX_COMPONENT_BYTES`]. `Ok(None)` on 404.
async fn get(url: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let resp = client()?
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        anyhow::bail!("GET {url}: HTTP {}", resp.status());
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        if body.len() + chunk.len() > MAX_COMPONENT_BYTES as usize {
            anyhow::bail!(
                "GET {url}: larger than the {MAX_COMPONENT_BYTES}-byte limit for a component"
            );
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The component at `url` and its signature, if one is published.
pub async fn fetch(url: &str) -> anyhow::Result<(Vec<u8>, Option<String>)> {
    let bytes = get(url)
        .await?
        .ok_or_else(|| anyhow::anyhow!("GET {url}: HTTP 404 Not Found"))?;
    let sig = get(&format!("{url}.sig"))
        .await?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok((bytes, sig))
}
