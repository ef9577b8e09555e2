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
