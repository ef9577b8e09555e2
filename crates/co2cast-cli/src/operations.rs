//! The operators' endpoint flags shared by `run` and `serve`: `/metrics`, `/healthz` and
//! `/readyz` (see docs/metrics.md and docs/operations.md).

#[derive(clap::Args, Clone)]
pub struct MetricsFlags {
    /// Address of the operators' endpoint (/metrics, /healthz, /readyz); port 0 picks a free one.
    #[arg(long, default_value_t = format!("127.0.0.1:{}", co2cast_metrics::http::DEFAULT_PORT))]
    pub metrics_listen: String,
    /// Do not serve the operators' endpoint.
    #[arg(long, conflicts_with = "metrics_listen")]
    pub no_metrics: bool,
}

impl MetricsFlags {
    /// Starts the endpoint (unless disabled). A port that cannot be bound is a setting to
    /// fix, so it ends the command with one line.
    pub fn start(&self, quiet: bool) -> Result<(), String> {
        if self.no_metrics {
            return Ok(());
        }
        let addr = co2cast_metrics::http::serve(&self.metrics_listen)
            .map_err(|e| format!("metrics endpoint {}: {e} (choose another with --metrics-listen, or --no-metrics)", self.metrics_listen))?;
        if !quiet {
            eprintln!("co2cast: metrics on http://{addr}/metrics (health /healthz, readiness /readyz)");
        }
        Ok(())
    }
}

/// `host:port[,host:port…]`: anything else would be retried forever as a broker outage, so it
/// is refused as a setting.
pub fn check_brokers(brokers: &str) -> Result<(), String> {
    let bad = brokers.split(',').map(str::trim).find(|h| h.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()));
    if brokers.trim().is_empty() || bad.is_some() {
        return Err(format!("brokers: `{brokers}` is not a list of host:port (e.g. kafka:9092,kafka2:9092)"));
    }
    Ok(())
}

/// Monte Carlo members: enough for a 95 % band from quantiles (20), and not so many that the
/// ensemble cannot be held (100,000).
pub fn members(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|_| format!("`{text}` is not a number of members"))?;
    if !(20..=100_000).contains(&n) {
        return Err(format!("{n} members: between 20 and 100000 are accepted"));
    }
    Ok(n)
}
