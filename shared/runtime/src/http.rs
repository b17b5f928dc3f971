//! Plain HTTP GET for the few places push0 reads an HTTP endpoint (a NATS server's monitoring
//! port, a service's metrics, a Prometheus query in the tests): blocking, with a timeout, the
//! status returned rather than turned into an error.

use std::time::Duration;

/// GETs `url`; returns the status and the body as text, or why there is no answer.
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    get_with(url, &[], timeout)
}

/// GETs `url` with `query` pairs added to it (encoded here).
pub fn get_with(
    url: &str,
    query: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut request = agent.get(url);
    for (key, value) in query {
        request = request.query(*key, *value);
    }
    let mut response = request.call().map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    Ok((status, body))
}
