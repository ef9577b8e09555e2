//! `co2cast`: streaming estimates of China's CO2 emissions by province and sector.

mod backtest;
mod broker;
mod config;
mod estimate;
mod operations;
mod produce;
mod plot;
mod run;
mod sql;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "co2cast", version, about = "Near-real-time CO2 estimates for China's provinces and sectors, with calibrated uncertainty")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the streaming job (embedded Kafka and bundled sample unless --brokers is given).
    Run(run::Args),
    /// Publish real data files as proxy messages, in release order.
    Replay(produce::ReplayArgs),
    /// Host a development Kafka broker (librdkafka's mock cluster, co2cast's topics) for
    /// multi-process runs on one machine.
    Broker(broker::Args),
    /// Generate synthetic proxy streams for load tests.
    Simulate(produce::SimulateArgs),
    /// Calibrate on inventory year Y only, estimate year T from proxies, score against the inventory.
    Backtest(backtest::Args),
    /// Daily estimates for one year (CSV on stdout), with bands from the joint ensemble.
    Estimate(estimate::Args),
    /// Run one read-only SQL query over the lake and print the result.
    Query(sql::QueryArgs),
    /// Serve SQL over the PostgreSQL wire protocol on an existing lake, without consuming.
    Serve(sql::ServeArgs),
    /// Export daily estimates for a period to Parquet or CSV.
    Export(sql::ExportArgs),
    /// Draw the daily series of a province and sector with its band and the inventory years (PNG or SVG).
    Plot(plot::PlotArgs),
    /// Write an HTML report of a year's estimates against the inventory, with charts.
    Report(plot::ReportArgs),
    /// Print the default model settings as JSON (edit and pass with --model-config).
    ModelConfig,
    /// Rebuild the bundled extract in data/ from the raw public sources.
    Extract {
        /// The raw data tree (the repository's ../shared/data).
        #[arg(long, default_value = "../shared/data")]
        shared: PathBuf,
        /// Where to write the extract.
        #[arg(long, default_value = "data")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as K;
            if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand) {
                e.exit();
            }
            // A bad flag is the user's error, on one line like every other.
            // The message is the paragraph before the usage (it may list the missing flags).
            let text = e.render().to_string();
            let message: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
            let message = message.join(" ");
            eprintln!("error (user): {} (see --help)", message.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CO2CAST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Replay(args) => produce::replay(args),
        Command::Broker(args) => broker::run(args),
        Command::Simulate(args) => produce::simulate(args),
        Command::Backtest(args) => backtest::run(args),
        Command::Query(args) => sql::query(args),
        Command::Serve(args) => sql::serve(args),
        Command::Export(args) => sql::export(args),
        Command::Plot(args) => plot::plot(args),
        Command::Report(args) => plot::report(args),
        Command::Estimate(args) => estimate::run(args),
        Command::Extract { shared, out } => extract(&shared, &out),
        Command::ModelConfig => serde_json::to_string_pretty(&co2cast_model::calibration::ModelConfig::default())
            .map(|s| println!("{s}"))
            .map_err(|e| e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error ({}): {}", error_domain(e.as_ref()).as_str(), one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Whose error it is: a setting or input of the user's, something outside co2cast (a broker,
/// a disk), or co2cast itself. Pipeline errors know; I/O errors are external unless they name
/// the user's own setting (a port in use, a path that is not there or not allowed); the rest
/// are flags, settings and inputs.
fn error_domain(e: &(dyn std::error::Error + 'static)) -> co2cast_metrics::ErrorDomain {
    use co2cast_metrics::ErrorDomain as D;
    if let Some(p) = e.downcast_ref::<co2cast_pipeline::processor::PipelineError>() {
        return p.domain();
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind as K;
        return match io.kind() {
            K::AddrInUse | K::AddrNotAvailable | K::PermissionDenied | K::NotFound | K::InvalidInput => D::User,
            _ => D::External,
        };
    }
    D::User
}

/// One line: a multi-line message (a settings file's parse error) joined.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_are_one_line_with_a_domain() {
        assert_eq!(super::one_line("a\n  |\n  ^ b\n"), "a | ^ b");
        let io: Box<dyn std::error::Error> = Box::new(std::io::Error::new(std::io::ErrorKind::AddrInUse, "x"));
        assert_eq!(super::error_domain(io.as_ref()).as_str(), "user");
        let s: Box<dyn std::error::Error> = "unknown province XX".into();
        assert_eq!(super::error_domain(s.as_ref()).as_str(), "user");
    }
}

fn extract(shared: &std::path::Path, out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let raw = co2cast_data::bundle::RawSources::at(shared);
    let (inv, months) = raw.load(2005..=2019)?;
    co2cast_data::bundle::write_extract(out, &inv, &months)?;
    co2cast_data::bundle::write_references(out, &raw.references()?)?;
    co2cast_data::bundle::write_grid_references(out, &raw.grid_references()?)?;
    eprintln!("wrote {} inventory values and {} monthly proxy values to {}", inv.len(), months.len(), out.display());
    Ok(())
}
