//! Loader tests on the real public files in `../shared/data` (present beside the repository
//! on every developer machine and in CI), plus bad-file fixtures.

use co2cast_data::bundle::{self, RawSources};
use co2cast_data::{ceads, proxies, DataError};
use co2cast_model::domain::{CeadsSectorMap, Province, Sector};
use co2cast_model::inventory::InventoryItem;
use co2cast_model::proxy::{Scope, Signal};
use co2cast_model::series::{MonthlyProvenance, YearMonth};
use std::path::{Path, PathBuf};

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if p.join("README.md").exists() {
        return Some(p);
    }
    // In CI the data must be there: a silent skip would hide a broken test.
    assert!(std::env::var_os("CI").is_none(), "shared/data not found beside the repository at {}", p.display());
    eprintln!("skipping: {} not present", p.display());
    None
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn ceads_workbooks_of_both_label_vintages_load_and_close() {
    let Some(d) = shared() else { return };
    let map = CeadsSectorMap::bundled();
    for (year, label_era) in [(2019, "TotalEmissions"), (2016, "Total Consumption")] {
        let f = d.join(format!("ceads/raw_xlsx/Emission_Inventories_for_30_Provinces_{year}.xlsx"));
        let recs = ceads::load_workbook(&f).unwrap_or_else(|e| panic!("{label_era}: {e}"));
        let inv = ceads::to_inventory(&recs, &map, "test").unwrap();
        assert_eq!(inv.provinces().len(), 30, "{year}");
        // Against the tidy CSV, which has the same totals without the fuel split.
        let tidy = ceads::load_tidy_csv(&d.join("ceads/ceads_province_sector_scope1_1997_2019.csv")).unwrap();
        for p in [Province::Beijing, Province::Hebei, Province::Guangdong] {
            let tidy_total: f64 = tidy.iter().filter(|r| r.year == year && r.province == p).map(|r| r.mtco2).sum();
            let total = inv.total(p, year).unwrap();
            assert!((total - tidy_total).abs() < 1e-2, "{p} {year}: {total} vs {tidy_total}");
        }
    }
    // Known values: Beijing's 2019 power sector is 31.92 Mt; aviation is the transport kerosene.
    let recs = ceads::load_workbook(&d.join("ceads/raw_xlsx/Emission_Inventories_for_30_Provinces_2019.xlsx")).unwrap();
    let inv = ceads::to_inventory(&recs, &map, "test").unwrap();
    assert!((inv.sector(Province::Beijing, Sector::Power, 2019).unwrap() - 31.9245).abs() < 1e-3);
    assert!(inv.sector(Province::Shanghai, Sector::Aviation, 2019).unwrap() > 20.0);
}

#[test]
fn tidy_csv_without_fuels_maps_whole_sectors() {
    let Some(d) = shared() else { return };
    let recs = ceads::load_tidy_csv(&d.join("ceads/ceads_province_sector_scope1_1997_2019.csv")).unwrap();
    let inv = ceads::to_inventory(&recs, &CeadsSectorMap::bundled(), "tidy").unwrap();
    assert_eq!(inv.years().len(), 23);
    // Without the fuel split nothing can be attributed to aviation.
    assert!(inv.sector(Province::Shanghai, Sector::Aviation, 2019).is_none());
    let national: f64 = inv.provinces().iter().map(|p| inv.total(*p, 2019).unwrap()).sum();
    assert!(national > 9000.0 && national < 12000.0, "{national}");
}

#[test]
fn thermal_generation_is_differenced_with_jan_feb_split() {
    let Some(d) = shared() else { return };
    let m = proxies::load_crea_provincial_generation(&d.join("crea_china_co2/provincial_generation_by_source_monthly_ytd_1997_2024_tidy.csv")).unwrap();
    let bj2019: f64 = m
        .iter()
        .filter(|x| x.signal == Signal::ThermalGeneration && x.scope == Scope::Province(Province::Beijing) && x.month.year == 2019)
        .map(|x| x.value)
        .sum();
    // NBS: Beijing thermal 2019 = 420.5 × 1e8 kWh = 42,050 GWh.
    assert!((bj2019 - 42_050.0).abs() < 1.0, "{bj2019}");
    let jan = m
        .iter()
        .find(|x| x.signal == Signal::ThermalGeneration && x.scope == Scope::Province(Province::Beijing) && x.month == YearMonth::new(2019, 1))
        .unwrap();
    assert!(matches!(jan.provenance, MonthlyProvenance::JanFebSplit { share } if share > 0.45 && share < 0.6), "{jan:?}");
}

#[test]
fn nbs_long_matches_published_national_sum() {
    let Some(d) = shared() else { return };
    let m = proxies::load_nbs_long(&d.join("nbs_proxies/nbs_provincial_monthly_power_generation_2015_2022_long.csv")).unwrap();
    let thermal_2019: f64 = m.iter().filter(|x| x.signal == Signal::ThermalGeneration && x.month.year == 2019).map(|x| x.value).sum();
    // shared/data README: 2019 national thermal 51,654 × 1e8 kWh.
    assert!((thermal_2019 / 5_165_400.0 - 1.0).abs() < 0.01, "{thermal_2019}");
    let ind = proxies::load_nbs_long(&d.join("nbs_proxies/nbs_provincial_monthly_industrial_output_2015_2021_long.csv")).unwrap();
    assert!(ind.iter().any(|x| x.signal == Signal::Cement && x.scope == Scope::Province(Province::Hebei)));
    assert!(ind.iter().all(|x| x.value >= 0.0));
}

#[test]
fn wind_exports_give_provincial_output_and_transport() {
    let Some(d) = shared() else { return };
    let w = d.join("crea_china_co2/wind_format_raw/iron_and_steel_output_by_province.csv");
    let pig = proxies::load_wind_provincial_output(&w, "Pig Iron", Signal::PigIron).unwrap();
    let hebei: f64 = pig.iter().filter(|x| x.scope == Scope::Province(Province::Hebei) && x.month.year == 2019).map(|x| x.value).sum();
    assert!((hebei / 2.1774e8 - 1.0).abs() < 0.001, "{hebei}");
    let t = proxies::load_wind_transport(&d.join("crea_china_co2/transport_volumes_monthly.csv")).unwrap();
    assert!(t.iter().any(|x| x.signal == Signal::AviationPassengers && x.month == YearMonth::new(2019, 7)));
}

#[test]
fn bundled_extract_is_what_the_raw_sources_give() {
    let Some(d) = shared() else { return };
    let (inv, months) = RawSources::at(&d).load(2005..=2019).unwrap();
    let emb = co2cast_data::embedded().unwrap();
    for (p, item, year, v) in inv.iter() {
        let e = emb.inventory.get(p, item, year).unwrap_or(f64::NAN);
        assert!((e - v).abs() < 1e-5 * v.abs().max(1.0), "{p} {item:?} {year}: {e} vs {v}");
    }
    assert_eq!(months.len(), emb.proxies.monthly_len());
    for m in months.iter().step_by(97) {
        let e = emb.proxies.monthly(m.signal, m.scope, m.month).unwrap();
        assert!((e - m.value).abs() <= 1e-6 * m.value.abs().max(1.0), "{m:?} vs {e}");
    }
    assert!(emb.inventory.get(Province::Hebei, InventoryItem::Sector(Sector::Industry), 2019).unwrap() > 100.0);
}

fn expect_err(r: Result<impl std::fmt::Debug, DataError>, needles: &[&str]) {
    let e = r.expect_err("bad input must be an error").to_string();
    for n in needles {
        assert!(e.contains(n), "error `{e}` should mention `{n}`");
    }
}

#[test]
fn bad_files_give_errors_naming_file_and_field() {
    assert_eq!(ceads::load_workbook(&fixture("good_tiny_2019.xlsx")).unwrap().len(), 3);
    expect_err(ceads::load_workbook(&fixture("bad_sheet_2019.xlsx")), &["bad_sheet_2019.xlsx", "Atlantis2019", "not a province"]);
    expect_err(ceads::load_workbook(&fixture("bad_unit_2019.xlsx")), &["bad_unit_2019.xlsx", "Hebei2019/Raw_Coal", "kt CO2"]);
    expect_err(ceads::load_workbook(&fixture("missing_column_2019.xlsx")), &["missing_column_2019.xlsx", "Scope_1_Total"]);
    expect_err(ceads::load_tidy_csv(&fixture("missing_sector_column.csv")), &["missing_sector_column.csv", "`sector`"]);
    let f = fixture("unit_mismatch_monthly.csv");
    expect_err(bundle::proxies_from_bytes(&f, &std::fs::read(&f).unwrap()), &["unit_mismatch_monthly.csv", "unit", "GWh"]);
    expect_err(ceads::load_workbook(&fixture("does_not_exist_2019.xlsx")), &["does_not_exist_2019.xlsx"]);
    expect_err(co2cast_data::load_dir(&fixture("")), &["neither a bundled extract"]);
}

#[test]
fn hourly_load_shape_has_the_calendar_in_it() {
    use co2cast_data::activity::load_hourly_load;
    use chrono::NaiveDate;
    let Some(d) = shared() else { return };
    let load = load_hourly_load(&d.join("misc/provincial_hourly_electricity_demand_2018_ndrc_reconstructed_pypsa_china.csv"), 2018).unwrap();
    assert_eq!(load.mw.len(), 31);
    let annual_twh: f64 = load.mw.values().flatten().sum::<f64>() / 1.0e6;
    assert!((annual_twh - 6900.0).abs() < 100.0, "{annual_twh}");
    // The national daily energy dips at the Spring Festival (16 Feb 2018) and on Sundays,
    // which is what the power day factors in day_factors.csv were fitted from.
    let national = |day: NaiveDate| -> f64 { Province::ALL.iter().map(|p| load.daily_gwh(*p).into_iter().find(|x| x.0 == day).unwrap().1).sum() };
    let date = |m, d| NaiveDate::from_ymd_opt(2018, m, d).unwrap();
    assert!(national(date(2, 16)) < 0.9 * national(date(1, 17)));
    assert!(national(date(6, 10)) < national(date(6, 13)), "Sunday below Wednesday");
    let shape = load.hourly_shape(Province::Guangdong, date(7, 4)).unwrap();
    assert!((shape.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!(shape[4] < shape[15], "night below afternoon");
}

#[test]
fn passengers_airports_and_coal_load() {
    use co2cast_data::activity::{load_caac_throughput, load_coal_for_power, load_daily_passengers};
    let Some(d) = shared() else { return };
    let daily = load_daily_passengers(&d.join("mobility/mot_daily_passenger_traffic_2020_2023.csv")).unwrap();
    assert!(daily.len() > 200 && daily.iter().all(|x| x.2 >= 0.0));
    let caac = load_caac_throughput(&d.join("misc/caac_passenger_throughput_by_region.csv"), &d.join("misc/caac_airport_regions.csv")).unwrap();
    let im = caac.iter().find(|x| x.scope == Scope::Province(Province::InnerMongolia) && x.month == YearMonth::new(2019, 7));
    assert!(im.is_some_and(|x| x.value > 1.0e7), "{im:?}");
    let coal = load_coal_for_power(&d.join("crea_china_co2/coal_use_for_power_generation_by_province_monthly_ytd_2006_2022.csv")).unwrap();
    let hebei_2019: f64 = coal.iter().filter(|x| x.scope == Scope::Province(Province::Hebei) && x.month.year == 2019).map(|x| x.value).sum();
    // Jan–Nov YTD 2019 for Hebei: 8,808 × 1e4 t (December is not published in this series).
    assert!((hebei_2019 / 8.808e7 - 1.0).abs() < 1e-6, "{hebei_2019}");
}

/// The loaders of issue 13's provincial signals, on the real files.
#[test]
fn new_provincial_signals_load_from_the_real_files() {
    let Some(d) = shared() else { return };
    let wind = d.join("crea_china_co2/wind_format_raw");
    // Electricity consumption, 1e8 kWh monthly → GWh: Guangdong, July 2019 = 680.0 × 1e8 kWh.
    let ec = proxies::load_wind_electricity_consumption(&wind.join("Electricity_Consumption_by_province_2023.csv")).unwrap();
    let gd = ec.iter().find(|m| m.scope == Scope::Province(Province::Guangdong) && m.month == YearMonth::new(2019, 7)).unwrap();
    assert!((gd.value - 68_000.0).abs() < 2_000.0, "{}", gd.value);
    assert!(ec.iter().any(|m| m.month == YearMonth::new(2024, 12)), "consumption runs to December 2024");
    assert_eq!(ec.iter().filter(|m| m.month == YearMonth::new(2019, 7)).count(), 31);
    // Annual registers, every month of a year carries the year's level.
    let vs = proxies::load_annual_register(&d.join("misc/vehicle_stock_by_province.csv"), Signal::VehicleStock, 1.0e4, "t").unwrap();
    let sh: Vec<f64> = vs.iter().filter(|m| m.scope == Scope::Province(Province::Shanghai) && m.month.year == 2019).map(|m| m.value).collect();
    assert_eq!(sh.len(), 12);
    assert!(sh.iter().all(|v| (v - 4_138_172.0).abs() < 1.0), "{sh:?}");
    let ha = proxies::load_annual_register(&d.join("misc/heating_area_by_province.csv"), Signal::HeatingArea, 1.0e8, "t").unwrap();
    let national_2019: f64 = ha.iter().filter(|m| m.month == YearMonth::new(2019, 12)).map(|m| m.value).sum();
    assert!((national_2019 / 1e8 - 92.5).abs() < 0.5, "China's district-heated area 2019: {national_2019}");
    // Unpublished zeros are left out (2022 is all zero in the file).
    assert!(ha.iter().all(|m| m.month.year < 2022));
    // CAAC throughput by region, spread to the region's provinces.
    let caac = bundle::RawSources::at(&d);
    let air = co2cast_data::activity::load_caac_throughput(&caac.root.join("misc/caac_passenger_throughput_by_region.csv"), &caac.root.join("misc/caac_airport_regions.csv")).unwrap();
    assert!(air.iter().all(|m| m.signal == Signal::AirportPassengers));
    let (he, hb) = (Scope::Province(Province::Hebei), Scope::Province(Province::Hubei));
    let m = YearMonth::new(2019, 7);
    let v = |s| air.iter().find(|x| x.scope == s && x.month == m).map(|x| x.value);
    assert!(v(he).is_some() && v(hb).is_some());
    // Fuel output, YTD in 1e4 t → monthly t: 2019 diesel ≈ 166 Mt.
    let fuel = proxies::load_wind_fuel_output(&wind.join("monthly_industry_stats.csv")).unwrap();
    let diesel_2019: f64 = fuel.iter().filter(|m| m.signal == Signal::DieselOutput && m.month.year == 2019).map(|m| m.value).sum();
    assert!((diesel_2019 / 1e6 - 166.4).abs() < 0.5, "{diesel_2019}");
    // National references: GCP 2019 = 10,741 MtCO2; Energy Institute 2022 = 10,550.
    let refs = caac.references().unwrap();
    let gcp = refs.iter().find(|r| r.source == "gcp").unwrap();
    assert!((gcp.values[&2019] - 10_741.0).abs() < 1.0 && gcp.last_year() == Some(2021));
    let ei = refs.iter().find(|r| r.source == "energy_institute").unwrap();
    assert!((ei.values[&2022] - 10_550.2).abs() < 0.5 && !ei.scope_difference.is_empty());
}

/// The provincial series run to December 2024, and the provinces' 2024 months (differenced
/// from year-to-date releases, January–February split) add up to NBS's published national
/// output for 2024.
#[test]
fn provincial_series_reach_december_2024_and_add_up_to_the_national_totals() {
    let Some(d) = shared() else { return };
    let (_, months) = RawSources::at(&d).load(2005..=2019).unwrap();
    let year_sum = |s: Signal, y: i32| -> f64 { months.iter().filter(|m| m.signal == s && m.month.year == y && m.scope != Scope::National).map(|m| m.value).sum() };
    let december_provinces = |s: Signal| months.iter().filter(|m| m.signal == s && m.month == YearMonth::new(2024, 12) && m.scope != Scope::National).count();
    // NBS 2024 national figures: cement 1,825 Mt, crude steel 1,005 Mt, pig iron 852 Mt,
    // ten non-ferrous metals 79.2 Mt, thermal generation 6,374 TWh (above-scale plants).
    for (signal, published, unit_per_published, tolerance) in [
        (Signal::Cement, 1_825.0, 1e6, 0.01),
        (Signal::CrudeSteel, 1_005.0, 1e6, 0.01),
        (Signal::PigIron, 852.0, 1e6, 0.01),
        (Signal::NonferrousMetals, 79.2, 1e6, 0.01),
        (Signal::ThermalGeneration, 6_374.0, 1e3, 0.02),
    ] {
        let got = year_sum(signal, 2024) / unit_per_published;
        assert!((got / published - 1.0).abs() < tolerance, "{signal}: provinces sum to {got:.1} in 2024, NBS published {published}");
        assert!(december_provinces(signal) >= 25, "{signal}: {} provinces in December 2024", december_provinces(signal));
    }
    assert!(december_provinces(Signal::ElectricityConsumption) >= 30);
    // The bundled extract holds them too.
    let emb = co2cast_data::embedded().unwrap();
    assert!(emb.proxies.monthly(Signal::Cement, Scope::Province(Province::Guangdong), YearMonth::new(2024, 12)).is_some());
}
