use super::*;
use crate::testkit::synthetic_world;

#[test]
fn recovers_the_proxy_share_from_a_synthetic_world() {
    // Power emissions follow 0.8 × thermal + 0.2 fixed, with small idiosyncratic noise.
    let (inv, proxies) = synthetic_world(0.8, 0.01, 42);
    let cfg = ModelConfig::default();
    let cal = calibrate(&inv, &proxies, 2016, 1, &cfg).unwrap();
    let power = cfg.components.iter().position(|c| c.item == InventoryItem::Sector(Sector::Power)).unwrap();
    let fit = &cal.fits[power];
    assert!((fit.drivers[0].phi - 0.8).abs() < 0.1, "{fit:?}");
    assert!(fit.drivers[0].se < 0.1, "{fit:?}");
    let s = cal.scale(Province::Hebei, Sector::Power).unwrap();
    assert!(s.drift_sd_per_year < 0.05, "{s:?}");
}

#[test]
fn never_reads_inventory_after_the_base_year() {
    let (mut inv, proxies) = synthetic_world(0.8, 0.02, 7);
    let cfg = ModelConfig::default();
    let before = calibrate(&inv, &proxies, 2016, 1, &cfg).unwrap();
    // Corrupt every later year wildly: the calibration must not change at all.
    for p in Province::ALL {
        for y in 2017..=2019 {
            inv.add(p, InventoryItem::Sector(Sector::Power), y, 1.0e6);
        }
    }
    let after = calibrate(&inv, &proxies, 2016, 1, &cfg).unwrap();
    assert_eq!(before.fits, after.fits);
    assert_eq!(before.scales, after.scales);
}

#[test]
fn refuses_without_history() {
    let (inv, proxies) = synthetic_world(0.8, 0.02, 7);
    let e = calibrate(&inv.up_to(2008), &proxies, 2030, 1, &ModelConfig::default()).unwrap_err();
    assert!(e.to_string().contains("base year 2030"), "{e}");
}
