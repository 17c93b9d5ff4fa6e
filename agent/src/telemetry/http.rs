//! The `http` probe: N requests to a URL, spaced by an interval.

use std::time::Instant;

use super::ProbeSummary;
use crate::config::HttpProbeConfig;

/// Takes one sample window. Any 2xx or 3xx answer is a success.
pub async fn sample(client: &reqwest::Client, name: &str, cfg: &HttpProbeConfig) -> ProbeSummary {
    let mut outcomes = Vec::with_capacity(cfg.samples as usize);
    for i in 0..cfg.samples {
        if i > 0 {
            tokio::time::sleep(cfg.interval.0).await;
        }
        let start = Instant::now();
        let result = client.get(&cfg.url).timeout(cfg.timeout.0).send().await;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        outcomes.push(match result {
            Ok(resp) => {
                let ok = resp.status().is_success() || resp.status().is_redirection();
                // Drain the body so the connection can be reused.
                let _ = resp.bytes().await;
                (Some(ms), ok)
            }
            Err(_) => (None, false),
        });
    }
    ProbeSummary::from_outcomes(name, &outcomes)
}
